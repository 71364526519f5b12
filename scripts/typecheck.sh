#!/usr/bin/env bash
# Static checks: mypy on the headless layers (studies, inference, review, explain) and ruff on
# the whole tree. Settings live in pyproject.toml ([tool.mypy], [tool.ruff]). Exit status is
# non-zero when either finds something. Needs the test extra (mypy, ruff) in .venv.
#
# Why the symlink folder: the package maps radreview.studies -> studies/ etc. through setuptools
# package-dir, and the editable install resolves that with an import hook mypy cannot follow. So
# build/typecheck/radreview/<sub> links to each repository folder and mypy runs from there, with
# radreview as a namespace package (explicit package bases).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="${VENV:-$ROOT/.venv}"
TC="$ROOT/build/typecheck"
mkdir -p "$TC/radreview"
for sub in studies inference review explain viewer resources; do
  ln -sfn "$ROOT/$sub" "$TC/radreview/$sub"
done

status=0
echo "== mypy (studies, inference, review, explain)"
(cd "$TC" && "$VENV/bin/mypy" --config-file "$ROOT/pyproject.toml" \
    -p radreview.studies -p radreview.inference -p radreview.review -p radreview.explain) || status=1

echo "== ruff check"
"$VENV/bin/ruff" check --config "$ROOT/pyproject.toml" "$ROOT" || status=1
exit $status
