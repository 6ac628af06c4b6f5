#!/usr/bin/env bash
# Creates .venv in the repo root and installs the whole stack (system packages too). Idempotent: re-running it
# only installs what is missing. Works on a CPU-only machine (no CUDA wheels) and on a GPU box (CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."

# pyrealsense2 fails to import without libusb; ffmpeg is not needed (imageio-ffmpeg ships its own binary).
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing libusb-1.0-0 (needed by pyrealsense2)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip >/dev/null

# torch FIRST and pinned: on these machines this takes the local CPU wheel; on a GPU box the CUDA build from the
# registry. Installed later through an unpinned requirement, it would pull the newest CUDA build (several GB).
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "setup: installing torch 2.13.0"
  $PIP install torch==2.13.0
fi
if ! command -v nvidia-smi >/dev/null && .venv/bin/python -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "setup: warning: CUDA packages are installed on a machine without an NVIDIA GPU" >&2
fi

echo "setup: installing robo-stack and its extras"
$PIP install -e ".[all]"
echo "setup: done (.venv ready)"
