#!/usr/bin/env bash
# Set-up for a fresh machine: system libraries (when apt is available), .venv, the project and its pins.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb-1.0 to import; speech synthesis uses espeak-ng and festival's diphone voices.
APT_PACKAGES="libusb-1.0-0 espeak-ng festival festvox-kallpc16k festvox-kdlpc16k"
if command -v apt-get >/dev/null 2>&1; then
  if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing system packages: $APT_PACKAGES"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
  fi
else
  echo "warning: apt-get not found; install $APT_PACKAGES with your package manager" >&2
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch/torchvision/torchaudio are pinned in pyproject.toml (checked combination, CPU use works on the CUDA build).
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, open3d, monai, pocketsphinx; print('set-up ok: torch', torch.__version__)"
