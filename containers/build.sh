#!/usr/bin/env bash
# The image's build steps, shared by containers/Dockerfile and containers/flatmix.def: Python 3.11 and the
# libraries OpenCV needs from the OS, then envs/ by the same envs/install.sh as the local set-up, with
# mmcv's ops compiled for the CUDA architectures in TORCH_CUDA_ARCH_LIST. Runs as root in the image, on
# the repository copied to /opt/flatmix.
set -euo pipefail
: "${TORCH_CUDA_ARCH_LIST:?set the CUDA architectures, e.g. 7.5 8.0 8.6 8.9 9.0+PTX}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends software-properties-common gpg-agent
add-apt-repository -y ppa:deadsnakes/ppa  # Ubuntu 24.04 ships Python 3.12; the pinned set is for 3.11
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev libgl1 libglib2.0-0
rm -rf /var/lib/apt/lists/*

cd /opt/flatmix
FLATMIX_VENV=/opt/flatmix/venv FLATMIX_WHEEL_CACHE=/tmp/flatmix-wheels PYTHON=python3.11 FORCE_CUDA=1 \
  TORCH_CUDA_ARCH_LIST="$TORCH_CUDA_ARCH_LIST" bash envs/install.sh
rm -rf /tmp/flatmix-wheels /root/.cache/pip
