#!/usr/bin/env bash
# Set up a virtual environment (once) and run the bot. Settings come from the environment or .env.
# With neither OPENAI_BASE_URL nor OPENAI_API_KEY set, the bot runs the school's own trainer beside itself,
# so the trainer's packages are installed too (torch's CPU build first).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv-bot}"
source scripts/venv.sh
pip_install -r requirements.txt
if [ "$("$VENV/bin/python" -m bot backend)" = "trainer" ]; then
  # torch first: pip then takes the CPU build instead of pulling a multi-GB CUDA one.
  pip_install torch==2.13.0
  pip_install -r requirements-trainer.txt
fi
exec "$VENV/bin/python" -m bot "$@"
