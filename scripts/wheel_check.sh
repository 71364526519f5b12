#!/usr/bin/env bash
# Build the radreview wheel, install it into a fresh virtual environment (no system site
# packages, no source tree on the path) and run the headless commands from it: info, models
# list/verify, infer, review, audit verify. Those run with the base dependencies only (no
# 'gui' extra: proves they need no Qt/VTK); then the 'gui' extra is added from the same wheel
# and one offscreen snapshot is rendered. Prints one line per check; exit status 1 if any failed.
#
#   bash scripts/wheel_check.sh            (RADREVIEW_DATA_MIRROR or ../shared/data for the CT)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DATA="${RADREVIEW_DATA_MIRROR:-$(cd .. && pwd)/shared/data}"
CT="$DATA/ct-abdomen-dicom/series"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d -t radreview-wheel-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
T0=$(date +%s)
FAILED=0

check() {  # check NAME COMMAND...: run it, print ok/FAIL with the last lines of output on failure
  local name="$1"; shift
  if out="$("$@" 2>&1)"; then
    echo "wheel-check: ok    $name"
  else
    echo "wheel-check: FAIL  $name"; echo "$out" | tail -n 8 | sed 's/^/    /'; FAILED=1
  fi
}

[ -d "$CT" ] || { echo "wheel-check: FAIL  sample CT not found at $CT (set RADREVIEW_DATA_MIRROR)"; exit 1; }
.venv/bin/pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/dist" . >"$WORK/build.log" 2>&1 \
  || { echo "wheel-check: FAIL  wheel build"; tail -n 20 "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/radreview-*.whl)"
echo "wheel-check: built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
"$PY" -m venv "$WORK/venv"   # a fresh environment: --system-site-packages is not used
V="$WORK/venv/bin"
"$V/pip" install -q --no-compile --disable-pip-version-check "$WHEEL" >"$WORK/install.log" 2>&1 \
  || { echo "wheel-check: FAIL  pip install of the wheel"; tail -n 20 "$WORK/install.log"; exit 1; }

# Run from an empty folder with private user folders: nothing from the source tree or $HOME.
mkdir -p "$WORK/run" && cd "$WORK/run"
export RADREVIEW_DATA_DIR="$WORK/userdata" RADREVIEW_DB="$WORK/review.sqlite" RADREVIEW_LOG_DIR="$WORK/logs" \
       XDG_CONFIG_HOME="$WORK/config" XDG_DATA_HOME="$WORK/data" XDG_CACHE_HOME="$WORK/cache" \
       PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
unset PYTHONPATH RADREVIEW_MODELS_PATH
R="$V/radreview"

check "radreview is imported from the wheel, not the source tree" \
  "$V/python" -c "import radreview.studies as s, sys; f = s.__file__; sys.exit(0 if f.startswith('$WORK/venv/') else 'imported from ' + f)"
check "no Qt/VTK installed without the gui extra" \
  "$V/python" -c "import importlib.util as u, sys; bad = [m for m in ('PySide6', 'vtk', 'superqt') if u.find_spec(m)]; sys.exit(f'installed: {bad}' if bad else 0)"
check "info" "$R" info "$CT"
check "info --json" "$R" info --json "$CT"
check "models list --json shows the 2 shipped models" "$V/python" -c "
import json, subprocess, sys
items = json.loads(subprocess.run(['$R', 'models', 'list', '--json'], check=True, capture_output=True, text=True).stdout)
ids = sorted(m['id'] for m in items)
assert ids == ['ct-nodule-2p5d', 'ct-organs-2p5d'], ids
assert all(m['source'] == 'shipped' and m['path'].startswith('$WORK/venv/') for m in items), items"
check "models verify ct-organs-2p5d" "$R" models verify ct-organs-2p5d
check "models verify ct-nodule-2p5d" "$R" models verify ct-nodule-2p5d
check "infer" "$R" infer "$CT" --model ct-organs-2p5d --out "$WORK/infer"
check "infer wrote segmentation.nii.gz and findings.json" test -s "$WORK/infer/segmentation.nii.gz" -a -s "$WORK/infer/findings.json"
check "review" "$R" review "$CT" --json --db "$WORK/review.sqlite" --create
check "audit verify" "$R" audit verify --db "$WORK/review.sqlite"

"$V/pip" install -q --no-compile --disable-pip-version-check "$WHEEL[gui]" >"$WORK/install-gui.log" 2>&1 \
  || { echo "wheel-check: FAIL  pip install of the wheel's gui extra"; tail -n 20 "$WORK/install-gui.log"; FAILED=1; }
check "snapshot (offscreen, gui extra)" "$R" snapshot "$CT" --out "$WORK/snap.png" --layout axial --size 256x256
check "snapshot wrote a PNG" "$V/python" -c "import sys; sys.exit(open('$WORK/snap.png', 'rb').read(8) != b'\x89PNG\r\n\x1a\n')"

echo "wheel-check: $([ $FAILED = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - T0 )) s"
exit $FAILED
