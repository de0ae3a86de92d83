#!/usr/bin/env bash
# Build the relaybox wheel and the Debian package.
#
#   packaging/build-deb.sh [--arch amd64|arm64] [--out DIR]
#
# The .deb installs:
#   /opt/relaybox                       its own virtualenv (Debian's python3 3.11 + every dependency)
#   /usr/bin/relaybox                   -> /opt/relaybox/bin/relaybox
#   /lib/systemd/system/relaybox.service
#   /etc/relaybox/config.toml           from config.example.toml (a conffile: upgrades keep your edits)
# and its maintainer scripts create the system user `relaybox` (member of `dialout` for USB modems),
# the data dir /var/lib/relaybox, the owner account (its API key is printed once), and enable the
# service. Standard Debian tools only: a staging tree packed by `dpkg-deb --root-owner-group`.
#
# --arch arm64 cross-builds for a Raspberry Pi (64-bit Raspberry Pi OS / Debian bookworm): the
# dependencies come as manylinux aarch64 wheels (all of them have one, see LIBRARIES.md).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ARCH=$(dpkg --print-architecture)
OUT="$ROOT/dist"
# The Python that builds (not the target's): $PYTHON, else an active/PATH venv's python3, else
# the checkout's .venv.
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] || [ ! -x "$ROOT/.venv/bin/python" ]; then PYTHON=python3; else PYTHON="$ROOT/.venv/bin/python"; fi
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--arch amd64|arm64] [--out DIR]" >&2; exit 2 ;;
    esac
done
case "$ARCH" in
    amd64) PLATFORM=manylinux2014_x86_64 ;;
    arm64) PLATFORM=manylinux2014_aarch64 ;;
    *) echo "unsupported arch $ARCH (amd64 or arm64)" >&2; exit 2 ;;
esac
PYVER=3.11   # Debian bookworm's python3; the compiled wheels are cp311/abi3
# The full version matters to markers such as redis's "async-timeout; python_full_version < 3.11.3".
PYVER_FULL=${PYVER_FULL:-3.11.2}
TARGET_PYTHON=/usr/bin/python3

VERSION=$(cd "$ROOT" && "$PYTHON" -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['metadata']['version'])")
DEBVERSION="$VERSION-1"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

echo "== wheel"
if ls "$ROOT"/relaybox/translations/*/LC_MESSAGES/*.po >/dev/null 2>&1 && "$PYTHON" -c "import babel" 2>/dev/null; then
    "$PYTHON" -m babel.messages.frontend compile -d "$ROOT/relaybox/translations" >/dev/null
fi
# `python -m build` (PyPA build, isolated); `pip wheel` is the same PEP 517 build without it.
# (`import build.__main__`: a stray build/ folder of setuptools in the checkout imports as a
# namespace package named build, so `import build` alone proves nothing.)
if (cd "$ROOT" && "$PYTHON" -c "import build.__main__") 2>/dev/null; then
    WHEEL_CMD=("$PYTHON" -m build --wheel --outdir "$WORK/wheel" .)
else
    WHEEL_CMD=("$PYTHON" -m pip wheel --no-deps --wheel-dir "$WORK/wheel" .)
fi
(cd "$ROOT" && "${WHEEL_CMD[@]}" >"$WORK/build.log" 2>&1) || { cat "$WORK/build.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/wheel/relaybox-*.whl)
cp "$WHEEL" "$OUT/"

echo "== staging tree ($ARCH)"
STAGE="$WORK/relaybox_${DEBVERSION}_$ARCH"
VENV="$STAGE/opt/relaybox"
SITE="$VENV/lib/python$PYVER/site-packages"
mkdir -p "$VENV/bin" "$SITE" "$STAGE/DEBIAN" "$STAGE/usr/bin" "$STAGE/lib/systemd/system" \
         "$STAGE/etc/relaybox" "$STAGE/usr/share/doc/relaybox"

# The virtualenv, laid out as `python3 -m venv /opt/relaybox` would on the target: pyvenv.cfg
# and bin/python3 -> Debian's interpreter. Written by hand so that it is right for the final
# path (a venv is not relocatable) and for another architecture.
cat > "$VENV/pyvenv.cfg" <<CFG
home = /usr/bin
include-system-site-packages = false
version = $PYVER
executable = $TARGET_PYTHON
command = $TARGET_PYTHON -m venv /opt/relaybox
CFG
ln -s "$TARGET_PYTHON" "$VENV/bin/python3"
ln -s python3 "$VENV/bin/python"
ln -s lib "$VENV/lib64"

# relaybox and every dependency as binary wheels for the target, pinned by pip's resolver.
# pip evaluates environment markers against the build machine's interpreter, not the target's:
# what the target (3.11.2) needs through a marker is named here (redis: python < 3.11.3).
MARKER_DEPS="async-timeout>=4.0.3"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile --no-warn-script-location \
    --target "$SITE" --platform "$PLATFORM" --python-version "$PYVER_FULL" --implementation cp \
    --only-binary=:all: "$WHEEL" "psycopg2-binary>=2.9" "redis>=5" $MARKER_DEPS
rm -rf "$SITE/bin"   # pip --target scripts carry the build machine's interpreter path

cat > "$VENV/bin/relaybox" <<'LAUNCHER'
#!/opt/relaybox/bin/python3
import sys

from relaybox.cli import main

if __name__ == "__main__":
    sys.exit(main())
LAUNCHER
chmod 755 "$VENV/bin/relaybox"
ln -s /opt/relaybox/bin/relaybox "$STAGE/usr/bin/relaybox"

install -m 644 "$ROOT/systemd/relaybox.service" "$STAGE/lib/systemd/system/relaybox.service"

if [ -f "$ROOT/config.example.toml" ]; then
    install -m 640 "$ROOT/config.example.toml" "$STAGE/etc/relaybox/config.toml"
else
    # No example in this checkout: write one from the settings' defaults (all commented out).
    (cd "$ROOT" && "$PYTHON" - <<'PY') > "$STAGE/etc/relaybox/config.toml"
from relaybox.config import Config
print("# relaybox configuration. Every key can also be set as RELAYBOX_<KEY> in /etc/default/relaybox.")
print("# Uncomment and change what you need; the values shown are the defaults.\n")
for name, field in Config.model_fields.items():
    if name in ("data_dir", "modem"):
        continue
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        value = "true" if default else "false"
    elif isinstance(default, (int, float)):
        value = repr(default)
    elif isinstance(default, str):
        value = '"' + default.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(default, list):
        value = "[" + ", ".join(repr(v) for v in default) + "]"
    else:
        continue
    print(f"# {name} = {value}")
PY
    chmod 640 "$STAGE/etc/relaybox/config.toml"
fi

cp "$HERE/debian/copyright" "$STAGE/usr/share/doc/relaybox/copyright"
gzip -9n -c "$HERE/debian/changelog" > "$STAGE/usr/share/doc/relaybox/changelog.Debian.gz"

# Byte-compiled files are written by postinst (they would embed this build's paths).
find "$STAGE" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$STAGE" -name '*.pyc' -delete

echo "== DEBIAN/"
for f in postinst prerm postrm; do
    install -m 755 "$HERE/debian/$f" "$STAGE/DEBIAN/$f"
done
install -m 644 "$HERE/debian/conffiles" "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$DEBVERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    "$HERE/debian/control.in" > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -print0 | sort -z | xargs -0 md5sum \
    | sed 's|\./||' > DEBIAN/md5sums)

DEB="$OUT/relaybox_${DEBVERSION}_$ARCH.deb"
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "wheel: $OUT/$(basename "$WHEEL")"
echo "deb:   $DEB"
