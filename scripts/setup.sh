#!/usr/bin/env bash
# Install what cachefs needs on a fresh Debian/Ubuntu machine, then the package into .venv.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(fuse3 libfuse3-dev pkg-config gcc attr golang-go zsh fish stress-ng)
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
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: done; the command is .venv/bin/cachefs"
