"""packaging/build-deb.sh: the wheel and the .deb are built and hold what they must, and the
packaged virtualenv runs from /opt/relaybox (checked in a private mount namespace)."""
from __future__ import annotations

import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian package dpkg)")
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(["bash", str(ROOT / "packaging" / "build-deb.sh"), "--out", str(out)],
                         capture_output=True, text=True, timeout=840, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    debs = list(out.glob("relaybox_*.deb"))
    wheels = list(out.glob("relaybox-*.whl"))
    assert len(debs) == 1 and len(wheels) == 1, list(out.iterdir())
    x = tmp_path_factory.mktemp("extract")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(x)], check=True)
    ctl = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "-e", str(debs[0]), str(ctl)], check=True)
    return {"deb": debs[0], "wheel": wheels[0], "root": x, "control": ctl}


def test_wheel_holds_the_package_and_its_data(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    assert "relaybox/ops.py" in names and "relaybox/cli.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    if (ROOT / "relaybox" / "templates").is_dir():
        assert any(n.startswith("relaybox/templates/") for n in names)


def test_deb_contents_control_and_conffiles(built):
    listing = subprocess.run(["dpkg-deb", "-c", str(built["deb"])], capture_output=True, text=True,
                             check=True).stdout
    for path in ("./opt/relaybox/bin/relaybox", "./opt/relaybox/pyvenv.cfg",
                 "./lib/systemd/system/relaybox.service", "./etc/relaybox/config.toml",
                 "./opt/relaybox/lib/python3.11/site-packages/relaybox/app.py",
                 "./usr/share/doc/relaybox/copyright"):
        assert f" {path}\n" in listing + "\n" or f" {path} " in listing, path
    assert re.search(r"\./opt/relaybox/bin/python3 -> /usr/bin/python3", listing)
    assert re.search(r"\./usr/bin/relaybox -> /opt/relaybox/bin/relaybox", listing)
    for dep in ("peewee.py", "playhouse/", "waitress/", "flask/", "huey/", "psycopg2/", "redis/",
                "prometheus_client/", "pydantic_core/", "async_timeout/"):
        assert f"/site-packages/{dep}" in listing, dep
    assert "__pycache__" not in listing and ".pyc" not in listing
    assert "root/root" in listing and "/tmp/" not in listing

    ctl = built["control"]
    control = (ctl / "control").read_text()
    assert re.search(r"^Package: relaybox$", control, re.MULTILINE)
    assert re.search(r"^Depends: .*python3 \(>= 3\.11\).*adduser", control, re.MULTILINE)
    assert (ctl / "conffiles").read_text().split() == ["/etc/relaybox/config.toml"]
    assert (ctl / "md5sums").read_text().count("opt/relaybox/") > 100
    postinst = (ctl / "postinst").read_text()
    assert "adduser --system" in postinst and "adduser relaybox dialout" in postinst
    assert "relaybox init" in postinst and "deb-systemd-helper enable relaybox.service" in postinst
    for script in ("postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(ctl / script)], check=True)
        assert (ctl / script).stat().st_mode & 0o111

    root = built["root"]
    assert (root / "lib/systemd/system/relaybox.service").read_text() == \
        (ROOT / "systemd/relaybox.service").read_text()
    example = ROOT / "config.example.toml"
    if example.exists():
        assert (root / "etc/relaybox/config.toml").read_text() == example.read_text()
    assert (root / "etc/relaybox/config.toml").stat().st_mode & 0o777 == 0o640


def test_packaged_venv_runs_from_opt_relaybox_and_serves(built, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed to mount the package at /opt/relaybox")
    venv = built["root"] / "opt" / "relaybox"
    data = tmp_path / "data"
    script = f"""
set -e
mount -t tmpfs tmpfs /opt && mkdir -p /opt/relaybox && mount --bind {venv} /opt/relaybox
/opt/relaybox/bin/relaybox --version
/opt/relaybox/bin/relaybox init --data-dir {data} --json
/opt/relaybox/bin/relaybox doctor --data-dir {data}
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify {built['root']}/lib/systemd/system/relaybox.service
fi
exec /opt/relaybox/bin/relaybox serve --data-dir {data} --port 0 --config {built['root']}/etc/relaybox/config.toml
"""
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        port = None
        assert proc.stdout is not None
        while time.monotonic() < deadline and port is None:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        out = "".join(lines)
        if port is None and ("unshare failed" in out or "mount:" in out):
            pytest.skip(f"cannot mount here: {out[-300:]}")
        assert port is not None, out[-3000:]
        assert out.startswith("relaybox ")
        assert '"api_key": "rbx_' in out and "all checks passed" in out
        r = requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10)
        assert r.status_code == 200 and r.json()["data"]["status"] == "ok"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
