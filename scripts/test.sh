#!/usr/bin/env bash
# Lint and run the whole test suite (real FUSE mounts, real S3 servers on 127.0.0.1).
# Extra arguments go to pytest, e.g. scripts/test.sh -k mount -x
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
.venv/bin/ruff check cachefs tests scripts
.venv/bin/python -m pytest "$@"
