#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything (simulator, solver, CPU runtime,
# tests). torch is pinned first so pip takes the local CPU build instead of pulling
# several GB of CUDA packages; re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e '.[runtime,test]'
