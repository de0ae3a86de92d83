"""``relaybox tls init`` and the HTTPS path: the shipped nginx site on loopback in front of
relaybox, a simulated phone that trusts only the generated CA, SSE events flushed through nginx."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from android_support import new_code, phone_server, send, wait_for
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from relaybox.channels.android.simulator import SimulatedDevice
from relaybox.tls import init_tls

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "packaging" / "nginx" / "relaybox.conf"


def _nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def test_tls_init_makes_a_local_ca_and_a_server_certificate(tmp_path):
    info = init_tls(str(tmp_path), ["relaybox.test"], ["10.1.2.3"], lan=False)
    tls = tmp_path / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "relaybox.test" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    assert {"10.1.2.3", "127.0.0.1"} <= set(ips)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert (tls / "fullchain.crt").read_bytes() == (tls / "server.crt").read_bytes() + (tls / "ca.crt").read_bytes()
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    # Again: the CA stays (phones keep trusting it), the server certificate is new.
    again = init_tls(str(tmp_path), ["relaybox.test"], [], lan=False)
    assert again["ca_sha256"] == info["ca_sha256"] and not again["ca_created"]
    assert init_tls(str(tmp_path), [], [], lan=False, new_ca=True)["ca_sha256"] != info["ca_sha256"]
    with pytest.raises(ValueError):
        init_tls(str(tmp_path), [], ["not-an-ip"], lan=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nginx_conf(tmp: Path, data_dir: Path, https_port: int, upstream_port: int) -> Path:
    """The shipped site, pointed at this test's data dir and ports, inside a minimal nginx.conf."""
    site = SITE.read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("listen [::]:443 ssl;", ""),
                     ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")):
        assert site.count(old) == 1, old
        site = site.replace(old, new)
    assert "/var/lib/relaybox/tls/fullchain.crt;" in site and "/var/lib/relaybox/tls/server.key;" in site
    site = site.replace("/var/lib/relaybox/tls/", f"{data_dir}/tls/")
    (tmp / "relaybox-site.conf").write_text(site)
    temp = "\n".join(f"  {k}_temp_path {tmp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(f"""{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {tmp}/access.log;
{temp}
  include {tmp}/relaybox-site.conf;
}}
""")
    return conf


@pytest.fixture
def nginx_https(server_factory, tmp_path):
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run installs it)")
    srv = phone_server(server_factory)
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "tls", "init", "--data-dir", str(srv.data_dir),
                          "--host", "relaybox.test", "--no-lan", "--json"], env=srv.env, capture_output=True, check=False,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ca = json.loads(out.stdout)["ca"]
    port = _free_port()
    ng = tmp_path / "nginx"
    ng.mkdir()
    conf = _nginx_conf(ng, srv.data_dir, port, srv.port)
    check = subprocess.run([nginx, "-t", "-p", str(ng), "-c", str(conf), "-e", str(ng / "early.log")],
                           capture_output=True, text=True, timeout=30, check=False)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-p", str(ng), "-c", str(conf), "-e", str(ng / "early.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                assert proc.poll() is None, (ng / "error.log").read_text() if (ng / "error.log").exists() else ""
                return False

        wait_for(listening, 10, message="nginx listening")
        yield srv, f"https://127.0.0.1:{port}", ca
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (as sudo would be)")
def test_tls_init_as_root_hands_the_files_to_the_data_dirs_owner(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chown(tmp_path, 65534, 65534)
    os.chown(data, 65534, 65534)  # the service user's data dir (here: nobody)
    info = init_tls(str(data), ["relaybox.test"], [], lan=False)
    for path in (info["dir"], info["ca"], info["fullchain"], info["server_key"]):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (65534, 65534), path
    assert stat.S_IMODE(os.stat(info["server_key"]).st_mode) == 0o600


def test_https_through_nginx_with_a_phone_trusting_only_the_generated_ca(nginx_https, phones):
    srv, base, ca = nginx_https
    # Nobody else trusts this certificate (system CAs only → refused).
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(base + "/api/v1/health", timeout=5)
    assert requests.get(base + "/api/v1/health", verify=ca, timeout=5).json()["ok"] is True

    api_url = base + "/api/mobile/v1"
    stranger = SimulatedDevice(api_url, code=new_code(srv), backoff_scale=0.02)  # verify=True: system CAs
    with pytest.raises(requests.exceptions.SSLError):
        stranger.start()

    data = srv.api().post("/devices/pairing", json={"api_url": api_url}).json()["data"]
    assert data["ca_certificate_url"] == base + "/pair/ca.crt"
    page = requests.get(data["page_url"], verify=ca, timeout=5)
    assert page.status_code == 200 and data["code"] in page.text and "CA certificate" in page.text
    cert = requests.get(base + "/pair/ca.crt", verify=ca, timeout=5)
    assert cert.status_code == 200 and cert.content == Path(ca).read_bytes()
    assert cert.headers["Content-Type"] == "application/x-x509-ca-cert"

    dev = phones.add(srv, url=api_url, code=data["code"], verify=ca, delay_ms=10)
    # Its webhook URL is the HTTPS one it reached us by (nginx passes Host and X-Forwarded-Proto).
    assert dev.webhooks[0]["url"] == f"{api_url}/inbound/{dev.device_id}"

    before = len(dev.events)
    t0 = time.time()
    m = send(srv, body="through nginx")
    wait_for(lambda: len(dev.events) > before, 3, interval=0.005, message="MessageEnqueued via nginx")
    assert dev.events[before].name == "MessageEnqueued"
    assert dev.events[before].received_at - t0 < 0.5  # not held in a proxy buffer
    assert dev.wait_state(m["id"], "Delivered", 10), dev.errors
    wait_for(lambda: srv.api().get(f"/sms/{m['id']}").json()["data"]["status"] == "delivered", 5,
             message="delivered")
    assert dev.keepalives >= 1 or dev.wait_for(lambda: dev.keepalives >= 1, 3)

    [hook] = dev.post_inbound_sms("+923001234567", "over https")
    assert hook.status == 200
    inbound = srv.api().get("/messages", params={"direction": "inbound"}).json()["data"]["messages"]
    assert [x["body"] for x in inbound] == ["over https"]
    assert srv.api().get(f"/devices/{dev.device_id}").json()["data"]["sse_connected"] is True
