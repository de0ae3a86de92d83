"""The mobile pairing page ``/pair/<token>`` speaks the phone user's language: ``?lang=``, else
the browser's Accept-Language, else the account's locale, else English; Urdu is right-to-left
with the API URL and the code left-to-right; the expired and invalid pages are translated too;
the CLI and the JSON API keep their English steps; Flask-Babel is still not loaded at start-up."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests
from android_support import phone_server

API_URL = "https://relaybox.lan/api/mobile/v1"
SCRIPTS = {"ur": "\u0600-\u06FF", "ne": "\u0900-\u097F", "bn": "\u0980-\u09FF"}
HEADERS = {"en": "en-US,en;q=0.9", "ur": "ur-PK,ur;q=0.9,en;q=0.5", "ne": "ne-NP,ne;q=0.9,en;q=0.4",
           "bn": "bn-BD,bn;q=0.9,en;q=0.4"}
TITLES = {"en": "Pair this phone with relaybox", "ur": "اس فون کو relaybox کے ساتھ pair کریں",
          "ne": "यो फोनलाई relaybox सँग pair गर्नुहोस्", "bn": "এই ফোনটি relaybox-এর সঙ্গে pair করুন"}
SWITCHER = ("English", "اردو", "नेपाली", "বাংলা")
EXPIRED = {"en": "This pairing link is no longer valid", "ur": "یہ pairing لنک اب درست نہیں رہا",
           "ne": "यो pairing लिङ्क अब मान्य छैन", "bn": "এই pairing লিংকটি আর বৈধ নয়"}


class Page(HTMLParser):
    """The visible text of a page (no script/style), by element id, and the list items."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.items: list[str] = []
        self._skip = 0
        self._li: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "li":
            self._li = []
        if a.get("id"):
            self.by_id[str(a["id"])] = a

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        if tag == "li" and self._li is not None:
            self.items.append("".join(self._li))
            self._li = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)
            if self._li is not None:
                self._li.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    @property
    def content(self) -> str:
        """The visible text without the language switcher (which names each language in its script)."""
        text = self.visible
        for name in SWITCHER:
            text = text.replace(name, "", 1)
        return text


def html_tag(html: str) -> str:
    m = re.search(r"<html[^>]*>", html)
    assert m
    return m.group(0)


def native(text: str, lang: str) -> int:
    return len(re.findall(f"[{SCRIPTS[lang]}]", text))


def foreign(text: str) -> int:
    """Letters of any of the three scripts (the danda ।, U+0964, is shared by Bengali and Nepali)."""
    return len(re.findall("[" + "".join(SCRIPTS.values()) + "]", text.replace("\u0964", "").replace("\u0965", "")))


def new_pairing(srv: Any) -> dict[str, Any]:
    r = srv.api().post("/devices/pairing", json={"api_url": API_URL}, headers={"Accept-Language": "ur"})
    assert r.status_code == 201, r.text
    return r.json()["data"]


def get(srv: Any, path: str, accept: str | None = None, **params: str) -> requests.Response:
    headers = {"Accept-Language": accept} if accept else {}
    return requests.get(srv.url + path, headers=headers, params=params, timeout=10)


def assert_page_in(lang: str, r: requests.Response, data: dict[str, Any]) -> None:
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Language"] == lang and "Accept-Language" in r.headers["Vary"]
    assert "no-store" in r.headers["Cache-Control"] and r.headers["Referrer-Policy"] == "no-referrer"
    tag = html_tag(r.text)
    assert f'lang="{lang}"' in tag
    assert ('dir="rtl"' in tag) == (lang == "ur") and ('dir="ltr"' in tag) == (lang != "ur")
    page = Page(r.text)
    text = page.content
    assert TITLES[lang] in text
    # The values to copy: present, and left-to-right also on the Urdu page.
    assert data["code"] in text and API_URL in text
    assert page.by_id["api-url"].get("dir") == "ltr" and page.by_id["code"].get("dir") == "ltr"
    assert "SSE Only" in text and "SMS Gateway for Android" in text and "APK" in text
    # The numbered steps (pairing.steps()) are translated, with the URL and the code in them.
    assert len(page.items) == 5
    assert any(API_URL in item for item in page.items) and any(data["code"] in item for item in page.items)
    assert f'<bdi dir="ltr">{API_URL}</bdi>' in r.text
    # The expiry: a time element (UTC hours and minutes; the page's script shows the phone's local time).
    assert f'<time datetime="{data["expires_at"]}">{data["expires_at"][11:16]} UTC</time>' in r.text
    if lang == "en":
        assert foreign(text) == 0
        assert page.items[1] == f"In the app: Settings > Cloud Server > API URL = {API_URL}"
    else:
        assert native(text, lang) > 300, (lang, native(text, lang))
        assert all(native(item, lang) for item in page.items), page.items
        assert foreign(text) == native(text.replace("\u0964", ""), lang)  # no other language's script
    # The switcher: one link per language, the current one marked.
    for code in ("en", "ur", "ne", "bn"):
        assert f'href="?lang={code}"' in r.text
    assert re.search(rf'hreflang="{lang}"[^>]*aria-current="true"', r.text)
    # The "Copied" confirmation of the copy buttons is translated as well.
    assert page.by_id["api-url"] and 'data-copied="' in r.text


def test_the_page_in_each_language_by_accept_language_and_by_query(server_factory):
    srv = phone_server(server_factory)
    data = new_pairing(srv)
    token = data["page_url"].rsplit("/", 1)[1]
    for lang in ("en", "ur", "ne", "bn"):
        assert_page_in(lang, get(srv, f"/pair/{token}", HEADERS[lang]), data)
        # ?lang= wins over the browser's languages.
        other = "bn" if lang != "bn" else "ur"
        assert_page_in(lang, get(srv, f"/pair/{token}", HEADERS[other], lang=lang), data)
    # Viewing the page in every language neither used nor changed the code.
    assert get(srv, f"/pair/{token}").status_code == 200


def test_with_tls_the_ca_certificate_block_and_its_step_are_translated(server_factory):
    srv = phone_server(server_factory)
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "tls", "init", "--no-lan", "--host", "relaybox.lan",
                          "--data-dir", str(srv.data_dir)], env=srv.env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    data = new_pairing(srv)
    assert len(data["steps"]) == 6 and all(step.isascii() for step in data["steps"])
    path = "/pair/" + data["page_url"].rsplit("/", 1)[1]
    words = {"en": "Download the CA certificate", "ur": "CA certificate ڈاؤن لوڈ کریں",
             "ne": "CA certificate डाउनलोड गर्नुहोस्", "bn": "CA certificate ডাউনলোড করুন"}
    for lang in ("en", "ur", "ne", "bn"):
        page = Page(get(srv, path, HEADERS[lang]).text)
        assert words[lang] in page.content and 'href="/pair/ca.crt"' in get(srv, path, lang=lang).text
        assert len(page.items) == 6 and "Encryption & credentials" in page.items[1]
        if lang != "en":
            assert all(native(item, lang) for item in page.items), page.items
    assert get(srv, "/pair/ca.crt", HEADERS["ur"]).headers["Content-Type"] == "application/x-x509-ca-cert"


def test_unknown_languages_fall_back_to_the_browser_then_the_account_then_english(server_factory):
    srv = phone_server(server_factory)
    data = new_pairing(srv)
    path = "/pair/" + data["page_url"].rsplit("/", 1)[1]
    assert_page_in("en", get(srv, path, "fr-FR,de;q=0.8", lang="fr"), data)
    assert_page_in("en", get(srv, path, None, lang="../../etc"), data)
    assert_page_in("ne", get(srv, path, "fr,ne;q=0.3", lang="xx"), data)
    # No language the page speaks in the browser's list: the locale of the account that made the code.
    srv.sql("UPDATE account SET locale = 'bn' WHERE id = ?", (srv.account_id,))
    assert_page_in("bn", get(srv, path, "fr-FR,de;q=0.8"), data)
    assert_page_in("bn", get(srv, path), data)
    assert_page_in("en", get(srv, path, "en-GB"), data)
    srv.sql("UPDATE account SET locale = 'xx' WHERE id = ?", (srv.account_id,))
    assert_page_in("en", get(srv, path), data)


@pytest.mark.parametrize("lang", ["en", "ur", "ne", "bn"])
def test_expired_used_and_unknown_links_are_translated(server_factory, lang):
    srv = phone_server(server_factory)
    data = new_pairing(srv)
    token = data["page_url"].rsplit("/", 1)[1]
    srv.sql("UPDATE pairing_code SET expires_at = expires_at - 600001")
    for r in (get(srv, f"/pair/{token}", HEADERS[lang]), get(srv, "/pair/not-a-token", None, lang=lang),
              get(srv, "/pair/ca.crt", HEADERS[lang])):
        assert r.status_code in (404, 410) and r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Content-Language"] == lang
        tag = html_tag(r.text)
        assert f'lang="{lang}"' in tag and ('dir="rtl"' in tag) == (lang == "ur")
        text = Page(r.text).content
        assert EXPIRED[lang] in text and data["code"] not in text and API_URL not in text
        assert "relaybox device pair" in text  # the command stays a command
        assert re.search(r'<code dir="ltr">relaybox device pair</code>', r.text)
        if lang == "en":
            assert foreign(text) == 0
        else:
            assert native(text, lang) > 40
    # /pair/ca.crt without TLS says so, in the language asked for.
    no_tls = {"en": "TLS is not set up", "ur": "TLS سیٹ اپ نہیں", "ne": "TLS सेटअप गरिएको छैन",
              "bn": "TLS সেট আপ করা নেই"}
    assert no_tls[lang] in Page(get(srv, "/pair/ca.crt", None, lang=lang).text).visible


def test_the_json_api_and_the_cli_keep_english_steps(server_factory):
    srv = phone_server(server_factory)
    data = new_pairing(srv)  # asked with Accept-Language: ur
    assert len(data["steps"]) == 5 and all(step.isascii() for step in data["steps"])
    assert data["steps"][1] == f"In the app: Settings > Cloud Server > API URL = {API_URL}"
    assert data["steps"][3].startswith('Home: enable "Cloud server", tap Start, choose "Sign in by code" and enter '
                                       f'the code {data["code"]} (valid 10 minutes, once)')
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "device", "pair", "--no-qr", "--url",
                          "https://box.lan", "--data-dir", str(srv.data_dir)],
                         env={**srv.env, "LANG": "ur_PK.UTF-8", "LANGUAGE": "ur"}, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert foreign(out.stdout) == 0
    assert "  3. In the app: Settings > Cloud Server > API URL = https://box.lan/api/mobile/v1" in out.stdout


def test_babel_is_not_loaded_at_start_up_only_on_the_first_page(tmp_path):
    """Flask-Babel (and Babel's CLDR data) load on the first page rendered, not at start-up."""
    script = f"""
import json, sys
from relaybox.app import create_app
from relaybox.config import load_config
app = create_app(load_config(None, data_dir={str(tmp_path)!r}))
before = sorted(m for m in ("flask_babel", "babel.core", "pytz") if m in sys.modules)
r = app.test_client().get("/pair/not-a-token?lang=ur")
after = sorted(m for m in ("flask_babel", "babel.core") if m in sys.modules)
print(json.dumps({{"before": before, "after": after, "status": r.status_code,
                   "rtl": 'dir="rtl"' in r.get_data(as_text=True)}}))
"""
    # Twice: a first start compiles stale .mo files (with Babel's catalogue reader), the second
    # is the ordinary start of a box.
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             check=False)
        assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"before": [], "after": ["babel.core", "flask_babel"], "status": 410, "rtl": True}


def test_the_urdu_page_in_chromium_is_right_to_left_with_ltr_values(server_factory):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium fonts-noto-core)")
    srv = phone_server(server_factory)
    data = new_pairing(srv)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                      is_mobile=True, has_touch=True, locale="ur-PK")
            page = ctx.new_page()
            page.set_default_timeout(15_000)
            page.goto(srv.url + "/pair/" + data["page_url"].rsplit("/", 1)[1])
            assert page.evaluate("document.documentElement.dir") == "rtl"
            assert page.evaluate("document.documentElement.lang") == "ur"
            assert page.inner_text("h1") == TITLES["ur"]
            style = "(s) => getComputedStyle(document.querySelector(s)).direction"
            assert page.evaluate(style, "body") == "rtl"
            assert page.evaluate(style, "#api-url") == "ltr" and page.evaluate(style, "#code") == "ltr"
            assert page.inner_text("#api-url") == API_URL and page.inner_text("#code") == data["code"]
            assert re.search(r"\d", page.inner_text("time")) and "UTC" not in page.inner_text("time")
            # Right-to-left: the heading and the buttons start at the right edge.
            h1 = page.locator("h1").bounding_box()
            button = page.locator("button[data-copy=code]").bounding_box()
            assert h1["x"] + h1["width"] > 330 and button["x"] + button["width"] > 330, (h1, button)
            sizes = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
            assert sizes[0] <= sizes[1], sizes
            # The copy button copies the code and confirms in Urdu.
            ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=srv.url)
            page.click("button[data-copy=code]")
            page.wait_for_function("document.querySelector('button[data-copy=code]').textContent === 'کاپی ہو گیا'")
            assert page.evaluate("navigator.clipboard.readText()") == data["code"]
            page.screenshot(path="/tmp/pair-ur.png", full_page=True)
            # The switcher leads to the same page in another language.
            page.click('a[hreflang="bn"]')
            page.wait_for_load_state()
            assert page.evaluate("document.documentElement.dir") == "ltr"
            assert page.inner_text("h1") == TITLES["bn"]
            ctx.close()
        finally:
            browser.close()
