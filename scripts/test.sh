#!/usr/bin/env bash
# The whole test suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
