"""Languages of the web page: English, Urdu (right-to-left), Nepali, Bengali (CONTRACT.md).

The wording lives in Babel message catalogues under ``relaybox/translations`` (``.po`` files in
git). ``.mo`` files are build output and gitignored, so the app compiles missing or stale ones at
start-up: a git checkout on a Pi works without a build step. When the package directory is
read-only (installed system-wide), they are compiled into the data dir instead.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import request, session
from flask_babel import Babel

log = logging.getLogger("relaybox.admin.i18n")

TRANSLATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "translations")
LANGUAGES: dict[str, str] = {"en": "English", "ur": "اردو", "ne": "नेपाली", "bn": "বাংলা"}
DEFAULT = "en"


def compile_catalogues(src_dir: str = TRANSLATIONS_DIR, fallback_dir: str | None = None) -> str:
    """Compile every ``<lang>/LC_MESSAGES/messages.po`` whose ``.mo`` is missing or older.

    Returns the directory Flask-Babel should read: ``src_dir``, or ``fallback_dir`` when the
    package directory cannot be written.
    """
    try:
        _compile_all(src_dir, src_dir)
        return src_dir
    except OSError:
        if fallback_dir is None:
            raise
        log.info("translations dir is read-only; compiling catalogues into %s", fallback_dir)
        _compile_all(src_dir, fallback_dir)
        return fallback_dir


def _compile_all(src_dir: str, out_dir: str) -> None:
    for lang in sorted(os.listdir(src_dir)):
        po_path = os.path.join(src_dir, lang, "LC_MESSAGES", "messages.po")
        if os.path.isfile(po_path):
            mo_path = os.path.join(out_dir, lang, "LC_MESSAGES", "messages.mo")
            if not _fresh(po_path, mo_path):
                _compile(po_path, mo_path)


def _fresh(po_path: str, mo_path: str) -> bool:
    try:
        return os.path.getmtime(mo_path) >= os.path.getmtime(po_path)
    except OSError:
        return False


def _compile(po_path: str, mo_path: str) -> None:
    with open(po_path, "rb") as fh:
        catalog = read_po(fh)
    os.makedirs(os.path.dirname(mo_path), exist_ok=True)
    tmp = f"{mo_path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        write_mo(fh, catalog, use_fuzzy=False)
    os.replace(tmp, mo_path)  # atomic: a second process never reads half a file


def select_locale() -> str:
    """``?lang=`` (kept in the session), then the session, then the browser's languages."""
    asked = request.args.get("lang")
    if asked in LANGUAGES:
        session["lang"] = asked
        return asked
    kept = session.get("lang")
    if kept in LANGUAGES:
        return kept
    return request.accept_languages.best_match(list(LANGUAGES)) or DEFAULT


def direction(lang: str) -> str:
    """``rtl`` for Urdu, from CLDR (Babel), not from a hand-kept list."""
    return "rtl" if Locale.parse(lang).character_order == "right-to-left" else "ltr"


def init_babel(app: Any, data_dir: str) -> None:
    directory = compile_catalogues(TRANSLATIONS_DIR, os.path.join(data_dir, "translations"))
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = directory
    app.config["BABEL_DEFAULT_LOCALE"] = DEFAULT
    Babel(app, locale_selector=select_locale)
