#!/usr/bin/env bash
# Set up radreview on Debian/Ubuntu: the system libraries Qt/VTK/Xvfb need, a virtual
# environment in .venv and the package (editable) with its test, explain and gui extras (torch
# 2.13.0, the CPU build pip finds on this kind of machine; captum). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0 \
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 \
libxcb-xinerama0 libxcb-xkb1 libxcb-xfixes0 libxrender1 libxi6 libxext6 libsm6 libice6 libxt6 \
libdbus-1-3 libfontconfig1 \
orthanc orthanc-dicomweb postgresql dicom3tools strace"
if command -v dpkg >/dev/null 2>&1; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "radreview needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,explain,gui]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import radreview.studies, radreview.viewer, vtk, PySide6, SimpleITK, pydicom, onnxruntime, torch, captum" \
  || { echo "setup: the environment is incomplete (see pip output above)" >&2; exit 1; }
echo "setup: ready (.venv)"
