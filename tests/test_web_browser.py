"""The admin page in real headless Chromium (Debian's ``chromium``, driven by Playwright with
``executable_path``; no browser download): log in, the dashboard, pair a simulated phone by its
code and watch it appear by itself, regenerate the key, Urdu right-to-left, and a phone-sized
viewport without horizontal scrolling. Screenshots go to ``artifacts/``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")

from web_support import PASSWORD, create_admin, module_server

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts"
CHROMIUM = os.environ.get("RELAYBOX_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
PAGES = ["/admin/", "/admin/start", "/admin/messages", "/admin/devices", "/admin/settings", "/admin/contacts",
         "/admin/accounts", "/admin/developers"]


@pytest.fixture(scope="module")
def chrome():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium fonts-noto-core")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Phones: a 1 s SSE keep-alive, offline 5 s after last seen, as in the Android tests.
    gen = module_server(tmp_path_factory, "browser", sandbox=True, sandbox_delay_ms=20,
                        sse_keepalive_seconds=1, device_offline_after=5)
    srv = next(gen)
    create_admin(srv)
    yield srv
    gen.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"web-{name}.png"), full_page=True)


def log_in(page, server) -> None:
    page.goto(server.url + "/admin/")
    assert "/admin/login" in page.url
    page.fill("#username", "admin")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/admin/")


def no_horizontal_scroll(page) -> None:
    sizes = page.evaluate("() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[2] and sizes[1] <= sizes[2], (page.url, sizes)


def test_login_dashboard_pair_a_phone_and_regenerate_the_key(chrome, server, tmp_path):
    from relaybox.channels.android.simulator import SimulatedDevice

    ctx = chrome.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    log_in(page, server)
    # The dashboard: the sandbox channel online, the queue, recent messages refreshing by themselves.
    page.wait_for_selector('tr[data-channel-id="sandbox"] .badge.online')
    r = server.api().post("/sms/send", json={"to": "+923001234567", "body": "From the browser test"})
    assert r.status_code == 202
    mid = r.json()["data"]["id"]
    page.wait_for_selector(f'#recent tr[data-message-id="{mid}"]')  # no reload: the fragment refreshed
    page.wait_for_selector(f'#recent tr[data-message-id="{mid}"] .badge.delivered')
    shot(page, "dashboard")
    # The message page with its timeline.
    page.click(f'#recent tr[data-message-id="{mid}"] a')
    page.wait_for_selector('#timeline li[data-status="delivered"]')
    assert page.locator("#timeline li").count() >= 4

    # Pair a simulated phone with the code the page shows; it appears on the page by itself.
    page.goto(server.url + "/admin/devices")
    assert page.locator('tr[data-kind="android"]').count() == 0
    page.click("#pair-button")
    page.wait_for_selector("#pair-code")
    code = page.inner_text("#pair-code").strip()
    api_url = page.inner_text("#pair-api-url").strip()
    assert code.isdigit() and len(code) == 8
    assert api_url == server.url + "/api/mobile/v1"
    assert page.locator("#pair-qr svg").count() == 1
    checklist = page.inner_text("#pair-checklist")
    for words in ("Allow restricted settings", "battery optimisation", "SSE Only", "charging"):
        assert words in checklist
    shot(page, "pairing")
    phone = SimulatedDevice(api_url, code=code, delay_ms=20, backoff_scale=0.02, seed=7,
                            name="Google/Pixel 7", state_file=tmp_path / "phone.json")
    try:
        phone.start()
        assert phone.wait_for(lambda: phone.connected, 10), phone.errors
        row = page.wait_for_selector(f'#channels tr[data-channel-id="{phone.device_id}"]', timeout=15_000)
        assert "online" in row.inner_text()
        shot(page, "paired")
        # The phone sends for real: a message routed to it is delivered and shows on the dashboard.
        r = server.api().post("/sms/send", json={"to": "+923001234568", "body": "via the phone",
                                                 "device_id": phone.device_id})
        assert r.status_code == 202, r.text
        page.goto(server.url + "/admin/")
        page.wait_for_selector(f'#recent tr[data-message-id="{r.json()["data"]["id"]}"] .badge.delivered')
        page.wait_for_selector(f'#channels tr[data-channel-id="{phone.device_id}"]')
    finally:
        phone.stop()

    # Regenerate the key: confirm, the new key is shown once, the old one stops working.
    old_key = server.key
    page.goto(server.url + "/admin/settings")
    masked = page.inner_text("#api-key-masked")
    assert masked.startswith(old_key[:8]) and old_key not in page.content()
    page.on("dialog", lambda d: d.accept())
    page.check("#confirm-regenerate")
    page.click("#regenerate-key")
    page.wait_for_selector("#new-api-key")
    new_key = page.inner_text("#new-api-key").strip()
    shot(page, "regenerated")
    assert new_key != old_key and new_key.startswith("rbx_")
    assert server.api().get("/messages").status_code == 401
    assert server.api(key=new_key).get("/messages").status_code == 200
    server.key = new_key
    ctx.close()


def test_urdu_is_right_to_left_and_every_language_renders(chrome, server):
    ctx = chrome.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    log_in(page, server)
    page.click('a[hreflang="ur"]')
    page.wait_for_load_state()
    assert page.evaluate("document.documentElement.dir") == "rtl"
    assert page.evaluate("document.documentElement.lang") == "ur"
    assert "ڈیش بورڈ" in page.inner_text("nav.main")
    # Mirrored: the brand sits at the right edge, the logout button at the left.
    brand = page.locator(".brand").bounding_box()
    logout = page.locator(".topbar form button").last.bounding_box()
    assert brand["x"] > 640 > logout["x"], (brand, logout)
    assert page.evaluate("getComputedStyle(document.querySelector('main')).direction") == "rtl"
    shot(page, "dashboard-ur")
    # The language stays for the next pages; code stays code (left to right).
    page.goto(server.url + "/admin/developers")
    assert page.evaluate("document.documentElement.dir") == "rtl"
    assert page.evaluate("getComputedStyle(document.querySelector('pre')).direction") == "ltr"
    assert "curl -X POST" in page.inner_text("#code-send_sms-curl")
    shot(page, "developers-ur")
    for lang, word in (("ne", "ड्यासबोर्ड"), ("bn", "ড্যাশবোর্ড")):
        page.goto(server.url + f"/admin/?lang={lang}")
        assert page.evaluate("document.documentElement.dir") == "ltr"
        assert word in page.inner_text("nav.main")
        shot(page, f"dashboard-{lang}")
    page.goto(server.url + "/admin/?lang=en")
    ctx.close()


def test_phone_viewport_has_no_horizontal_scrolling(chrome, server):
    ctx = chrome.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                              has_touch=True)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    log_in(page, server)
    server.api().post("/sms/send", json={"to": "+923001234567", "body": "A longer message to see wrapping on a phone"})
    page.wait_for_selector("#recent tr[data-message-id]")
    no_horizontal_scroll(page)
    shot(page, "mobile-dashboard")
    for path in PAGES[1:]:
        page.goto(server.url + path)
        no_horizontal_scroll(page)
    shot(page, "mobile-developers")
    page.goto(server.url + "/admin/?lang=ur")
    no_horizontal_scroll(page)
    shot(page, "mobile-dashboard-ur")
    ctx.close()
