"""Shared helpers of the web tests: admin users made with the real CLI, logged-in sessions,
CSRF tokens read from the served HTML, and snippets read from the developer page."""
from __future__ import annotations

import html
import re
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any

import requests

PASSWORD = "correct horse battery staple"


def create_admin(srv: Any, username: str = "admin", password: str = PASSWORD) -> None:
    """``relaybox admin create USER --password-stdin`` against the server's data dir."""
    cmd = [sys.executable, "-m", "relaybox.cli", "admin", "create", username, "--password-stdin",
           "--data-dir", str(srv.data_dir)]
    if srv.config_path:
        cmd += ["--config", str(srv.config_path)]
    r = subprocess.run(cmd, input=password + "\n", env=srv.env, capture_output=True, text=True, check=False, timeout=60)
    assert r.returncode == 0, r.stderr


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page) or re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert m, "no CSRF token on the page"
    return html.unescape(m.group(1))


def login(srv: Any, username: str = "admin", password: str = PASSWORD) -> requests.Session:
    s = requests.Session()
    r = s.get(srv.url + "/admin/login", timeout=30)
    assert r.status_code == 200
    r = s.post(srv.url + "/admin/login", data={"username": username, "password": password,
                                               "csrf_token": csrf_of(r.text)}, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:500]
    return s


def admin(srv: Any) -> requests.Session:
    create_admin(srv)
    return login(srv)


def post_form(s: requests.Session, srv: Any, page_path: str, action: str, data: dict[str, Any] | None = None,
              **kw: Any) -> requests.Response:
    """Submit a form the way a browser does: token from the page that holds the form."""
    token = csrf_of(s.get(srv.url + page_path, timeout=30).text)
    return s.post(srv.url + action, data={**(data or {}), "csrf_token": token}, timeout=60, **kw)


class CodeBlocks(HTMLParser):
    """``<code data-op=... data-lang=...>`` blocks of the developer page, unescaped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: dict[tuple[str, str], str] = {}
        self._cur: tuple[str, str] | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "code" and a.get("data-op") and a.get("data-lang"):
            self._cur = (str(a["data-op"]), str(a["data-lang"]))
            self._buf = []

    def handle_data(self, data: str) -> None:
        if self._cur:
            self._buf.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "code" and self._cur:
            self.blocks[self._cur] = "".join(self._buf)
            self._cur = None


def snippets_of(page: str) -> dict[tuple[str, str], str]:
    p = CodeBlocks()
    p.feed(page)
    return p.blocks


def module_server(tmp_path_factory: Any, name: str, **settings: Any) -> Any:
    """A generator for a module-scoped fixture: one real server shared by a module's tests
    (same setup as conftest's ``server_factory``, torn down with its scale-out databases)."""
    from conftest import RelayboxServer, _env

    cleanups: list[Any] = []
    settings.setdefault("log_level", "INFO")
    srv = RelayboxServer(tmp_path_factory.mktemp(name), _env(settings, cleanups)).start()
    try:
        yield srv
    finally:
        srv.stop()
        for drop in cleanups:
            try:
                drop()
            except Exception as exc:  # noqa: BLE001 - a leftover test database is not a failure
                print(f"cleanup failed: {exc}")
