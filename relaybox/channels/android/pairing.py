"""Pairing a phone: one-time numeric codes, device tokens, per-phone signing keys, the QR code.

The app's code field takes digits only (ANDROID-PROTOCOL.md §8), so a code is 8 digits, single
use, valid 10 minutes. The mobile pairing page ``/pair/<token>`` shows the code to whoever holds
the token (the QR code carries it): the code is *derived* from the token with the instance
secret, so the database holds neither in clear (both are stored as keyed HMACs).
"""
from __future__ import annotations

import io
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relaybox.channels.android.models import PairingCode
from relaybox.db import write_tx
from relaybox.ids import new_id
from relaybox.security import digest
from relaybox.timeutil import now_ms

PAIRING_TTL_MS = 10 * 60 * 1000
CODE_DIGITS = 8
MOBILE_PREFIX = "/api/mobile/v1"
APK_URL = "https://github.com/capcom6/android-sms-gateway/releases"

_CODE = "android-pairing-code"
_PAGE = "android-pairing-page"
_DERIVE = "android-pairing-code-from-page"
_TOKEN = "android-device-token"
_SIGNING = "android-webhook-signing-key"


@dataclass
class Pairing:
    """A fresh pairing code and where to use it (the clear values exist only here)."""

    id: str
    code: str
    token: str
    api_url: str
    page_url: str
    expires_at: int


def code_for_token(token: str) -> str:
    """The 8-digit code a page token shows (HMAC with the instance secret, reduced mod 10^8)."""
    return f"{int(digest(token, _DERIVE), 16) % 10 ** CODE_DIGITS:0{CODE_DIGITS}d}"


def origin_of(api_url: str) -> str:
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}"


def create_pairing(account_id: str, api_url: str) -> Pairing:
    """Write a new single-use code for ``account_id``; returns the clear code and page URL."""
    now = now_ms()
    with write_tx():
        for _ in range(20):
            token = secrets.token_urlsafe(18)
            code = code_for_token(token)
            code_hash = digest(code, _CODE)
            clash = PairingCode.select().where(
                (PairingCode.code_hash == code_hash) & PairingCode.used_at.is_null()
                & (PairingCode.expires_at > now)).exists()
            if not clash:
                break
        else:  # pragma: no cover - 20 collisions among live 8-digit codes
            raise RuntimeError("could not find a free pairing code")
        row = PairingCode.create(id=new_id("pair"), account=account_id, code_hash=code_hash,
                                 token_hash=digest(token, _PAGE), api_url=api_url, created_at=now,
                                 expires_at=now + PAIRING_TTL_MS)
    return Pairing(id=row.id, code=code, token=token, api_url=api_url,
                   page_url=f"{origin_of(api_url)}/pair/{token}", expires_at=row.expires_at)


def redeem_code(code: str) -> PairingCode | None:
    """Use a code once: the live, unused row (now marked used), or None. Call inside the write
    transaction that creates the device, so a failed registration does not burn the code."""
    if not code.isdigit() or len(code) > 32:
        return None
    now = now_ms()
    row = PairingCode.get_or_none((PairingCode.code_hash == digest(code, _CODE))
                                  & PairingCode.used_at.is_null() & (PairingCode.expires_at > now))
    if row is None:
        return None
    n = (PairingCode.update(used_at=now)
         .where((PairingCode.id == row.id) & PairingCode.used_at.is_null()).execute())
    return row if n == 1 else None


def page_pairing(token: str) -> tuple[PairingCode, str] | None:
    """The live pairing behind a page token and its code, or None (unknown, used or expired)."""
    if not token or len(token) > 64:
        return None
    row = PairingCode.get_or_none(PairingCode.token_hash == digest(token, _PAGE))
    if row is None or row.used_at is not None or row.expires_at <= now_ms():
        return None
    return row, code_for_token(token)


def prune_pairings(now: int | None = None) -> int:
    """Codes expired more than a day ago are deleted."""
    now = now or now_ms()
    return PairingCode.delete().where(PairingCode.expires_at < now - 86_400_000).execute()


# -- device secrets -------------------------------------------------------------------------------
def new_device_token() -> str:
    return secrets.token_urlsafe(16)


def token_hash(token: str) -> str:
    return digest(token, _TOKEN)


def signing_key(device_id: str, version: int) -> str:
    """The phone's webhook signing key (served in /settings); derived, so never stored."""
    return digest(f"{device_id}:{version}", _SIGNING)[:32]


# -- QR codes --------------------------------------------------------------------------------------
def _qr(data: str) -> Any:
    import qrcode  # imported on use: the server only needs it when a code is made

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(data)
    qr.make(fit=True)
    return qr


def qr_text(data: str) -> str:
    """A QR code drawn with half blocks, for the terminal (dark modules on a light background)."""
    out = io.StringIO()
    _qr(data).print_ascii(out=out, invert=True)
    return out.getvalue()


def qr_svg(data: str) -> str:
    """A standalone SVG QR code (no Pillow needed)."""
    import qrcode.image.svg

    img = _qr(data).make_image(image_factory=qrcode.image.svg.SvgPathImage)
    return img.to_string(encoding="unicode")


def N_(text: str) -> str:
    """Marks a string for the Babel catalogues (``pybabel extract -k N_``) without translating it:
    the CLI and the JSON API show the English text, the pairing page translates it."""
    return text


_STEPS_APP = {
    True: N_('Install "SMS Gateway for Android" (1.53 or newer) from %(apk_url)s (the release APK).'),
    False: N_('Install "SMS Gateway for Android" (1.53 or newer) from %(apk_url)s (the "insecure" APK '
              'allows plain HTTP on a trusted LAN).'),
}
_STEP_CA = N_("Install relaybox's CA certificate on the phone: Settings > Security > Encryption & "
              "credentials > Install a certificate > CA certificate (link on the pairing page).")
_STEPS_APP_SETTINGS = [
    N_("In the app: Settings > Cloud Server > API URL = %(api_url)s"),
    N_("Settings > Cloud Server > Notification channel = SSE Only (real time without Google push)."),
    N_('Home: enable "Cloud server", tap Start, choose "Sign in by code" and enter the code %(code)s '
       "(valid 10 minutes, once)."),
    N_("Allow the permissions and keep the app's foreground service on, so sending and the status "
       "heartbeat continue."),
]


def steps(api_url: str, code: str, tls: bool, translate: Callable[[str], str] | None = None,
          value: Callable[[str], Any] | None = None) -> list[Any]:
    """What a person does on the phone, in order: English, or through ``translate`` (a gettext)
    with each inserted value (URL, code) passed through ``value`` (the page marks them LTR)."""
    tr = translate or (lambda text: text)
    wrap = value or (lambda text: text)
    values = {"apk_url": wrap(APK_URL), "api_url": wrap(api_url), "code": wrap(code)}
    texts = [_STEPS_APP[tls], *([_STEP_CA] if tls else []), *_STEPS_APP_SETTINGS]
    return [tr(text) % values for text in texts]
