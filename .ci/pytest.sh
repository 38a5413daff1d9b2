#!/usr/bin/env bash
# Runs pytest from the project venv; pytest's exit code 5 ("no tests collected") is not a failure
# of the code under test, so it maps to 0 with a loud note.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5); treating as success"
  exit 0
fi
exit "$rc"
