#!/usr/bin/env bash
# Set up (scripts/setup.sh), check the one-way import rule, run the whole test suite.
# Starts Xvfb itself when DISPLAY is unset. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RADREVIEW_DATA_MIRROR="${RADREVIEW_DATA_MIRROR:-$(cd .. && pwd)/shared/data}"
export PYTHONDONTWRITEBYTECODE=1
echo "== import-linter (one-way rule: viewer -> review, explain, inference -> studies)"
.venv/bin/lint-imports
echo "== static checks (mypy on studies/inference/review/explain, ruff on the tree)"
bash scripts/typecheck.sh
echo "== wheel check (build the wheel, fresh venv, headless commands + one snapshot from it)"
if [ -n "${RADREVIEW_SKIP_WHEEL_CHECK:-}" ]; then
  echo "wheel check SKIPPED (RADREVIEW_SKIP_WHEEL_CHECK is set)"
else
  bash scripts/wheel_check.sh
fi
echo "== pytest"
if [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python -m pytest "$@"
else
  exec .venv/bin/python -m pytest "$@"
fi
