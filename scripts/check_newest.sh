#!/usr/bin/env bash
# The suite against today's newest releases of ft's dependencies, in a throw-away virtual environment
# that reuses this machine's torch, so that a release that breaks ft is seen before users install it.
# Run it on a schedule (CI runs it after the pinned suite; see the README's "Tests"):
#
#   bash scripts/check_newest.sh          # exit 0: newest = pinned, or the suite passed on the newest
#   bash scripts/check_newest.sh --force  # run the suite even when nothing newer was released
#
# When it passes on newer releases, pin them: `python scripts/pin_constraints.py` in that environment
# (it prints the command), commit scripts/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${FT_NEWEST_VENV:-/tmp/ft-newest-venv}"
rm -rf "$VENV"
"$PY" -m venv --system-site-packages "$VENV"
keep_torch="$(mktemp)"
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$keep_torch"
echo "check-newest: installing the newest releases into $VENV"
"$VENV/bin/python" -m pip install -q -U --upgrade-strategy eager -e ".[test]" -c "$keep_torch"
rm -f "$keep_torch"
if "$VENV/bin/python" scripts/pin_constraints.py --check 2>/dev/null && [ "${1:-}" != "--force" ]; then
  echo "check-newest: the newest releases are the pinned ones (scripts/constraints.txt); nothing to run"
  exit 0
fi
"$VENV/bin/python" scripts/pin_constraints.py --out "$VENV/newest-constraints.txt" >/dev/null
echo "check-newest: releases newer than the pins:"
diff <(grep -v '^#' scripts/constraints.txt) <(grep -v '^#' "$VENV/newest-constraints.txt") | grep '^>' || true
status=0
"$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider || status=$?
if [ "$status" = 0 ]; then
  echo "check-newest: PASSED on the newest releases; pin them with: $VENV/bin/python scripts/pin_constraints.py"
else
  echo "check-newest: FAILED on the newest releases (exit $status): fix ft before users install them"
fi
exit "$status"
