#!/usr/bin/env bash
# Set up a virtual environment (once) and run the whole test suite. Used by README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# torch first: pip then takes the CPU build instead of pulling a multi-GB CUDA one.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
exec "$VENV/bin/python" -m pytest "$@"
