#!/usr/bin/env bash
# Set up a virtual environment (once) and run the bot. Settings come from the environment or .env.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-bot}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
exec "$VENV/bin/python" -m bot "$@"
