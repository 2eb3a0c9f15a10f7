#!/usr/bin/env bash
# The image's build steps, shared by containers/Dockerfile and containers/flatmix.def, in two layers:
#   build.sh environment  Debian's own Python 3.11, a C++ compiler (mmcv's ops) and the libraries OpenCV loads,
#                         then envs/ by the same envs/install.sh as the local set-up (the slow layer, which a
#                         build reuses while envs/ is unchanged);
#   build.sh package      this package, into that environment.
# Runs as root in the image, on the repository copied to /opt/flatmix. Environment:
#   FORCE_CUDA=1 (default) with TORCH_CUDA_ARCH_LIST compiles mmcv's ops for those GPUs, with nvcc from PyPI
#   (envs/cuda-compiler.txt) as the Debian base has no CUDA toolkit; FORCE_CUDA=0 makes a CPU image.
#   BUILD_CACHE: a folder mounted into the build (pip's cache and the mmcv wheel cache, as pip/ and wheels/),
#   kept after the build; empty, the caches go to a temporary folder removed with the build.
set -euo pipefail
part=${1:?say environment or package}
export FLATMIX_VENV=/opt/flatmix/venv PYTHON=python3.11 FORCE_CUDA=${FORCE_CUDA:-1} FLATMIX_INSTALL=$part
cd /opt/flatmix
if [ "$part" = package ]; then
  exec bash envs/install.sh
fi
if [ "$FORCE_CUDA" = 1 ]; then
  : "${TORCH_CUDA_ARCH_LIST:?set the CUDA architectures, e.g. 7.5 8.0 8.6 8.9 9.0+PTX}"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends ca-certificates python3.11 python3.11-venv python3.11-dev g++ \
  libgl1 libglib2.0-0
rm -rf /var/lib/apt/lists/*

if [ -n "${BUILD_CACHE:-}" ]; then
  cache=$BUILD_CACHE
else
  cache=$(mktemp -d)
  trap 'rm -rf "$cache"' EXIT
fi
PIP_CACHE_DIR=$cache/pip FLATMIX_WHEEL_CACHE=$cache/wheels bash envs/install.sh
