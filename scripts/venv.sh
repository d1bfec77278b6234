# Sourced by run-bot.sh and test.sh (from the repository root, with VENV set): creates the virtual environment once
# and installs into it, skipping an install already done with the same arguments and requirements files. A bot's
# every start no longer spends seconds asking pip about packages it has. Change a requirements*.txt, or delete the
# environment, and the installs run again.

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi

# pip_install ARGS...: pip install ARGS into $VENV, unless done before with these ARGS and requirements files.
pip_install() {
  local stamp
  stamp="$VENV/.installed-$( (echo "$*"; cat requirements*.txt) | cksum | cut -d" " -f1)"
  if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"
    touch "$stamp"
  fi
}
