#!/usr/bin/env bash
# Set up ft on a fresh Debian/Ubuntu machine: the servers the tests use (redis-server, PostgreSQL),
# the headless browser of the dashboard's tests (chromium, chromium-driver),
# a CPU build of torch unless one is installed, and ft itself (editable) with its test extras, at the
# releases the suite last passed with (scripts/constraints.txt).
#
#   bash scripts/setup.sh                # then: ft quickstart   or   python -m pytest
#   FT_NEWEST=1 bash scripts/setup.sh    # today's newest releases instead of the pinned ones
#
# On a GPU machine install the CUDA build of torch first; this script keeps an installed torch.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The dashboard's browser tests drive a real headless Chromium through Selenium.
{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} (apt)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: warning: no apt-get; install ${need_apt[*]} yourself for the server and browser tests" >&2
  fi
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch (CPU build)"
  "$PY" -m pip install -q torch==2.13.0
fi
if [ "${FT_NEWEST:-0}" = 1 ]; then
  echo "setup: installing ft with the newest releases of its dependencies (FT_NEWEST=1)"
  # ...all but torch: an eager upgrade would replace this machine's torch with a CUDA build of GBs.
  keep_torch="$(mktemp)"
  "$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$keep_torch"
  "$PY" -m pip install -q -U --upgrade-strategy eager -e ".[test]" -c "$keep_torch"
  rm -f "$keep_torch"
else
  echo "setup: installing ft (dependencies pinned by scripts/constraints.txt)"
  "$PY" -m pip install -q -e ".[test]" -c scripts/constraints.txt
fi
echo "setup: done ($("$PY" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))"
