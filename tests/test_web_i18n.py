"""The four languages come from Babel catalogues (not from code): every catalogue compiles,
nothing is fuzzy or untranslated, placeholders survive, every string of the templates and views
is in every catalogue, Urdu alone is right-to-left, and stale .mo files are rebuilt at start-up
(into the data dir when the package is read-only)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from babel import Locale
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from relaybox.admin import i18n
from relaybox.admin.catalogue_text import MEANINGS
from relaybox.errors import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "relaybox" / "translations"
LANGS = ["en", "ur", "ne", "bn"]
SCRIPTS = {"ur": r"[\u0600-\u06FF]", "ne": r"[\u0900-\u097F]", "bn": r"[\u0980-\u09FF]"}


def _po(lang: str):
    with open(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po", "rb") as fh:
        return read_po(fh, locale=lang)


def _extracted(tmp_path: Path) -> set:
    out = tmp_path / "messages.pot"
    r = subprocess.run([sys.executable, "-m", "babel.messages.frontend", "extract", "-F",
                        str(TRANSLATIONS / "babel.cfg"), "-k", "N_", "--no-location", "-o", str(out), "."],
                       cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    with open(out, "rb") as fh:
        return {m.id for m in read_po(fh) if m.id}


@pytest.mark.parametrize("lang", LANGS)
def test_catalogue_is_complete_and_compiles(lang, tmp_path):
    cat = _po(lang)
    assert {*i18n.LANGUAGES} == set(LANGS)
    assert not cat.fuzzy
    wanted = _extracted(tmp_path)
    have = {m.id for m in cat if m.id}
    assert wanted - have == set(), f"untranslated in {lang}: {sorted(map(str, wanted - have))[:10]}"
    for m in cat:
        if not m.id:
            continue
        assert not m.fuzzy, m.id
        strings = m.string if isinstance(m.string, tuple) else (m.string,)
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        assert all(strings), f"{lang}: empty translation of {m.id!r}"
        for s in strings:
            assert sorted(re.findall(r"%\(\w+\)s", s)) == sorted(re.findall(r"%\(\w+\)s", ids[0])), (lang, m.id)
        # Sentences are written in the language's own script (technical terms stay in English, as
        # the seeds' translations do); a label of three words or fewer may be a technical term alone.
        if lang in SCRIPTS and len(ids[0].split()) > 3:
            assert any(re.search(SCRIPTS[lang], s) for s in strings), (lang, m.id, strings)
    errors = list(cat.check())
    assert errors == [], errors[:3]
    # Compiles (as the app does at start-up).
    out = tmp_path / "out"
    i18n._compile(str(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po"), str(out / "messages.mo"))
    with open(out / "messages.mo", "rb") as fh:
        assert len(list(read_mo(fh))) >= len(have)


def test_wording_is_drawn_from_the_seeds():
    seeds = Path("/work/shared/seeds")
    if not seeds.exists():
        pytest.skip("the seeds are not on this machine")
    pairs = {"ur": "001_eabf97ca20d2b2da.txt", "ne": "002_df2524812d658abb.txt", "bn": "003_5f9607bf45d0e0e5.txt"}
    en = (seeds / "000_b426df6937e773b7.txt").read_text().splitlines()
    for lang, name in pairs.items():
        cat = _po(lang)
        seed = (seeds / name).read_text().splitlines()
        used = 0
        for eng, native in zip(en, seed):
            m = cat.get(eng)
            if m is not None and eng != native:
                assert m.string == native, (lang, eng)
                used += 1
        assert used >= 10, (lang, used)


def test_error_catalogue_meanings_are_all_translatable():
    assert sorted(MEANINGS) == sorted(m for _s, m in CATALOGUE.values())
    for lang in ("ur", "ne", "bn"):
        cat = _po(lang)
        for meaning in MEANINGS:
            assert cat.get(meaning) is not None and cat.get(meaning).string, (lang, meaning)


def test_only_urdu_is_right_to_left():
    assert [lang for lang in LANGS if i18n.direction(lang) == "rtl"] == ["ur"]
    assert Locale.parse("ur").character_order == "right-to-left"


def test_stale_catalogues_are_rebuilt_and_a_read_only_package_uses_the_data_dir(tmp_path):
    src = tmp_path / "translations"
    shutil.copytree(TRANSLATIONS, src, ignore=shutil.ignore_patterns("*.mo"))
    assert i18n.compile_catalogues(str(src)) == str(src)
    mo = src / "ur" / "LC_MESSAGES" / "messages.mo"
    assert mo.exists()
    before = mo.stat().st_mtime_ns
    assert i18n.compile_catalogues(str(src)) == str(src)
    assert mo.stat().st_mtime_ns == before  # fresh: not rewritten
    po = src / "ur" / "LC_MESSAGES" / "messages.po"
    text = po.read_text(encoding="utf-8").replace('msgstr "ڈیش بورڈ"', 'msgstr "ڈیش بورڈ!"')
    po.write_text(text, encoding="utf-8")
    os.utime(po, ns=(before + 10**9, before + 10**9))
    i18n.compile_catalogues(str(src))
    with open(mo, "rb") as fh:
        assert read_mo(fh).get("Dashboard").string == "ڈیش بورڈ!"
    # A package directory the server may not write (installed as root, served as a user): the
    # catalogues are compiled into the data dir instead. As root, a directory standing where the
    # .mo file would go makes the write fail the same way.
    for f in src.rglob("*.mo"):
        f.unlink()
    blocked = src / "ne" / "LC_MESSAGES" / "messages.mo"
    if os.geteuid() == 0:
        blocked.mkdir()
        os.utime(blocked, (0, 0))  # older than the .po: it must be (re)built
    else:
        for d in src.rglob("*"):
            if d.is_dir():
                d.chmod(0o555)
    try:
        fallback = tmp_path / "data" / "translations"
        assert i18n.compile_catalogues(str(src), str(fallback)) == str(fallback)
        for lang in LANGS:
            assert (fallback / lang / "LC_MESSAGES" / "messages.mo").exists()
    finally:
        for d in src.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
