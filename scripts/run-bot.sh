#!/usr/bin/env bash
# Set up a virtual environment (once) and run the bot. Settings come from the environment or .env.
# With neither OPENAI_BASE_URL nor OPENAI_API_KEY set, the bot runs the school's own trainer beside itself,
# so the trainer's packages are installed too (torch's CPU build first).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-bot}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -r requirements.txt
if [ "$("$VENV/bin/python" -m bot backend)" = "trainer" ]; then
  # torch first: pip then takes the CPU build instead of pulling a multi-GB CUDA one.
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" -r requirements-trainer.txt
fi
exec "$VENV/bin/python" -m bot "$@"
