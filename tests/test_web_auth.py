"""The admin page's doors: login with argon2 users made by the CLI, server-side sessions in
HttpOnly + SameSite cookies, CSRF on every form, rate-limited logins, and no page but the login
page without a session. Against a real ``relaybox serve`` on loopback."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests
from web_support import PASSWORD, create_admin, csrf_of, login, module_server, post_form

RULES = """
import json, sys, tempfile
from relaybox.app import create_app
from relaybox.config import load_config
app = create_app(load_config(data_dir=tempfile.mkdtemp(prefix="relaybox-rules-")))
print(json.dumps([r.rule for r in app.url_map.iter_rules() if "GET" in r.methods]))
"""


def _page_rules() -> list[str]:
    """Every GET route of the app that is a page (not the key-authenticated API, not static).
    Read from a real app built in a child process (so this test process keeps no app state)."""
    rules = json.loads(subprocess.run([sys.executable, "-c", RULES], capture_output=True, text=True,
                                      check=True, timeout=120).stdout.strip().splitlines()[-1])
    out = []
    for path in rules:
        # Not pages: the JSON API (keys), static files, the phone's capability page (its token is
        # the secret, opened by the phone's camera), Prometheus (token or loopback only).
        if path.startswith(("/api/v1/", "/api/mobile/v1", "/static/", "/pair/", "/metrics")) \
                and not path.startswith("/api/v1/docs"):
            continue
        if path in ("/api/v1/docs/openapi.json", "/api/v1/docs/static/<path:filename>"):
            continue  # the API description itself, like /api/v1/openapi.json
        out.append(re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"x\1", path))
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server with an admin user for the tests that do not trip the login limit."""
    gen = module_server(tmp_path_factory, "auth", sandbox=True, sandbox_delay_ms=20)
    srv = next(gen)
    create_admin(srv)
    yield srv
    gen.close()


def test_no_page_but_login_without_a_session(shared):
    sandbox = shared
    pages = _page_rules()
    assert "/admin/" in pages and "/admin/developers" in pages and "/" in pages
    for path in pages:
        r = requests.get(sandbox.url + path, timeout=30)
        if path == "/admin/login":
            assert r.status_code == 200 and 'name="password"' in r.text
            continue
        assert r.url.split("?")[0] == sandbox.url + "/admin/login", (path, r.status_code, r.url)
        assert 'name="password"' in r.text, path
        assert "Dashboard" not in r.text.split("<main>")[1], path
    # A script asking for a fragment gets the envelope, not a page.
    r = requests.get(sandbox.url + "/admin/f/channels", headers={"X-Requested-With": "fetch"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(shared):
    sandbox = shared
    s = requests.Session()
    page = s.get(sandbox.url + "/admin/login", timeout=30).text
    r = s.post(sandbox.url + "/admin/login", data={"username": "admin", "password": "wrong password",
                                                   "csrf_token": csrf_of(page)}, allow_redirects=False)
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    r = s.post(sandbox.url + "/admin/login", data={"username": "admin", "password": PASSWORD,
                                                   "csrf_token": csrf_of(page), "next": "/admin/settings"},
               allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/settings")
    cookie = r.headers["Set-Cookie"]
    assert "relaybox_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP here; behind the TLS front the cookie is Secure:
    # (nginx on the box sets these; the client here plays both, and sends the Secure cookie back
    # by hand since requests would not send it over plain HTTP.)
    front = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "relaybox.lan",
             "Referer": "https://relaybox.lan/admin/login"}
    first = requests.get(sandbox.url + "/admin/login", headers=front, timeout=30)
    assert "; Secure" in first.headers["Set-Cookie"]
    jar = first.headers["Set-Cookie"].split(";")[0]
    r_tls = requests.post(sandbox.url + "/admin/login", headers={**front, "Cookie": jar}, allow_redirects=False,
                          data={"username": "admin", "password": PASSWORD, "csrf_token": csrf_of(first.text)})
    assert r_tls.status_code == 302 and "; Secure" in r_tls.headers["Set-Cookie"], r_tls.status_code
    assert r_tls.headers["Location"] in ("/admin/", "https://relaybox.lan/admin/")
    assert s.get(sandbox.url + "/admin/", timeout=30).url == sandbox.url + "/admin/"
    stolen = dict(s.cookies)
    r = post_form(s, sandbox, "/admin/", "/admin/logout", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/login")
    assert s.get(sandbox.url + "/admin/", timeout=30).url.startswith(sandbox.url + "/admin/login")
    # The cookie from before the logout is dead too: the session lives on the server.
    replay = requests.get(sandbox.url + "/admin/", cookies=stolen, timeout=30)
    assert replay.url.startswith(sandbox.url + "/admin/login")


def test_login_never_redirects_off_the_admin_page(shared):
    sandbox = shared
    s = requests.Session()
    for target in ("https://evil.example/", "//evil.example/admin", "/api/v1/health", "/admin\\@evil"):
        page = s.get(sandbox.url + "/admin/login", timeout=30).text
        r = s.post(sandbox.url + "/admin/login", data={"username": "admin", "password": PASSWORD,
                                                       "csrf_token": csrf_of(page), "next": target},
                   allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"] in ("/admin/", sandbox.url + "/admin/"), target
        post_form(s, sandbox, "/admin/", "/admin/logout")


def test_every_form_needs_its_csrf_token(shared):
    sandbox = shared
    s = login(sandbox)
    old_hint = s.get(sandbox.url + "/admin/settings").text
    for action in ("/admin/settings/key", "/admin/logout", "/admin/accounts/create", "/admin/devices/pair"):
        r = s.post(sandbox.url + action, data={"confirm": "yes", "name": "x"}, allow_redirects=False)
        assert r.status_code == 400 and "This form has expired" in r.text, action
        r = s.post(sandbox.url + action, data={"confirm": "yes", "csrf_token": "forged"}, allow_redirects=False)
        assert r.status_code == 400, action
    # A script gets the envelope, naming the field.
    r = s.post(sandbox.url + "/admin/settings/key", data={"confirm": "yes"}, headers={"X-Requested-With": "fetch"})
    assert r.status_code == 400 and r.json()["error"] == {
        "code": "INVALID_REQUEST", "message": r.json()["error"]["message"], "field": "csrf_token"}
    # Nothing happened: the old key still works, no account was made.
    assert sandbox.api().get("/messages").status_code == 200
    assert old_hint.count("data-account-id") == s.get(sandbox.url + "/admin/settings").text.count("data-account-id")
    # A token from another browser's session is refused too.
    other = login(sandbox)
    token = csrf_of(other.get(sandbox.url + "/admin/settings").text)
    r = s.post(sandbox.url + "/admin/settings/key", data={"confirm": "yes", "csrf_token": token})
    assert r.status_code == 400
    assert sandbox.api().get("/messages").status_code == 200
    # The API (key auth, no cookies) needs no token.
    assert sandbox.api().post("/sms/send", json={"to": "+923001234567", "body": "x"}).status_code == 202


def test_failed_logins_are_rate_limited(sandbox):
    create_admin(sandbox)
    s = requests.Session()

    def attempt(user: str, password: str) -> requests.Response:
        page = s.get(sandbox.url + "/admin/login", timeout=30).text
        return s.post(sandbox.url + "/admin/login", data={"username": user, "password": password,
                                                          "csrf_token": csrf_of(page)}, allow_redirects=False)

    for _ in range(5):
        assert attempt("admin", "guess-guess").status_code == 401
    r = attempt("admin", PASSWORD)  # even the right password waits now
    assert r.status_code == 429, r.status_code
    assert int(r.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in r.text
    # Per address as well: other names are refused after 10 failures from this client.
    for i in range(5):
        assert attempt(f"someone{i}", "guess-guess").status_code == 401
    assert attempt("someone-else", "guess-guess").status_code == 429
    # Successful logins are not counted (a fresh server, many good logins in a row).


def test_good_logins_do_not_count_against_the_limit(shared):
    sandbox = shared
    for _ in range(12):
        s = login(sandbox)
        post_form(s, sandbox, "/admin/", "/admin/logout")


def test_admin_cli_create_passwd_list_delete(shared):
    sandbox = shared
    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relaybox.cli", "admin", *args, "--data-dir", str(sandbox.data_dir)],
                              input=stdin, env=sandbox.env, capture_output=True, text=True, check=False, timeout=60)

    assert cli("create", "ops@example", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    dup = cli("create", "ops@example", "--password-stdin", stdin=PASSWORD + "\n")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    short = cli("create", "bob", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    bad = cli("create", "no spaces allowed", stdin=PASSWORD + "\n")
    assert bad.returncode == 2
    # Only an argon2id hash is stored.
    ((stored,),) = sandbox.sql("SELECT password_hash FROM admin_user WHERE username = ?", ("ops@example",))
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    s = login(sandbox, "ops@example")
    assert cli("passwd", "ops@example", stdin="a whole new password\n").returncode == 0
    # The new password ended the old session.
    assert s.get(sandbox.url + "/admin/").url.startswith(sandbox.url + "/admin/login")
    with pytest.raises(AssertionError):
        login(sandbox, "ops@example")
    login(sandbox, "ops@example", "a whole new password")
    listed = cli("list")
    assert listed.returncode == 0 and "ops@example" in listed.stdout and PASSWORD not in listed.stdout
    assert cli("delete", "ops@example").returncode == 0
    assert cli("delete", "ops@example").returncode == 2
