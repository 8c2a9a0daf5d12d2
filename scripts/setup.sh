#!/usr/bin/env bash
# Install what cachefs needs on a fresh Debian/Ubuntu machine, then the package into .venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(fuse3 libfuse3-dev pkg-config gcc patch attr golang-go zsh fish stress-ng)
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  packages+=(python3-venv python3-dev)
fi
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
else
  echo "setup: not a Debian/Ubuntu machine; install fuse3, libfuse3-dev, pkg-config and gcc yourself" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null

# pyfuse3, built from its PyPI sdist with one patch (scripts/pyfuse3-3.5.0-inode.patch): it
# hands the inode to read/write/flush/readdir, which serving files without OPEN/RELEASE needs
# (docs/PERFORMANCE.md). Rebuilt when the patch changes (its hash is kept in .venv).
PYFUSE3_VERSION=3.5.0
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
patch_sum=$(sha256sum scripts/pyfuse3-3.5.0-inode.patch | cut -d' ' -f1)
if [ "$(cat .venv/pyfuse3-patch.sha256 2>/dev/null)" != "$patch_sum" ] || \
   ! .venv/bin/python -c "import pyfuse3, sys; sys.exit(not hasattr(pyfuse3.Operations, 'pass_inode'))" 2>/dev/null; then
  echo "setup: building pyfuse3 $PYFUSE3_VERSION with cachefs's patch"
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d "$build" \
    "pyfuse3==$PYFUSE3_VERSION" 2>/dev/null
  sdist="$build/pyfuse3-$PYFUSE3_VERSION.tar.gz"
  echo "$PYFUSE3_SHA256  $sdist" | sha256sum -c --quiet -
  tar -xzf "$sdist" -C "$build"
  patch -s -p1 -d "$build/pyfuse3-$PYFUSE3_VERSION" < scripts/pyfuse3-3.5.0-inode.patch
  rm -f "$build/pyfuse3-$PYFUSE3_VERSION/src/pyfuse3/__init__.c"  # made again from the .pyx
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$build/pyfuse3-$PYFUSE3_VERSION"
  echo "$patch_sum" > .venv/pyfuse3-patch.sha256
fi

.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import pyfuse3, sys; sys.exit(not hasattr(pyfuse3.Operations, 'pass_inode'))" \
  || { echo "setup: the installed pyfuse3 lacks cachefs's patch" >&2; exit 1; }

echo "setup: done; the command is .venv/bin/cachefs"
