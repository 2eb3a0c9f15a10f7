#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with exactly the pinned packages of envs/.
# Used by the README's commands, CI and the container recipes alike.
#   FLATMIX_VENV        where the environment goes (default: .venv at the repository root)
#   FLATMIX_WHEEL_CACHE where the built mmcv wheel is kept between installs (default: ~/.cache/flatmix/wheels)
#   PYTHON              the interpreter to build the environment from (default: python3.11)
#   FLATMIX_INSTALL     all (default); or environment (envs/ only) then package (this package alone), the
#                       image's two layers, so that a change to the package leaves envs/'s layer cached
# A second run with unchanged envs/ and pyproject.toml returns at once. Each step prints one line to
# stderr, with the seconds since the start; the mmcv line says whether its wheel came from the cache.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${FLATMIX_VENV:-$root/.venv}
cache_root=${FLATMIX_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flatmix/wheels}
python=${PYTHON:-python3.11}
say() { echo "install: $* (${SECONDS}s)" >&2; }

stamp_of() {
  cat "$root/envs/requirements.txt" "$root/envs/mmcv.txt" "$root/envs/cuda-compiler.txt" "$root/envs/install.sh" \
      "$root/envs/build_mmcv.sh" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1
  echo "FORCE_CUDA=${FORCE_CUDA:-0} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}"
}
part=${FLATMIX_INSTALL:-all}
case "$part" in
  all|environment|package) ;;
  *) echo "install: FLATMIX_INSTALL=$part: not all, environment or package" >&2; exit 2 ;;
esac
if [ "$part" = all ] && [ -f "$venv/.flatmix-env" ] && [ "$(cat "$venv/.flatmix-env")" = "$(stamp_of)" ]; then
  echo "install: environment $venv is up to date" >&2
  exit 0
fi

# made, or made again in place where an interrupted install left a venv without pip
"$venv/bin/python" -m pip --version >/dev/null 2>&1 || "$python" -m venv "$venv"
vpy=$venv/bin/python

environment() {
  say "pip: the pinned packages of envs/requirements.txt into $venv"
  "$vpy" -m pip install --quiet -r "$root/envs/requirements.txt"
  # The mmcv wheel depends on the mmcv, torch and Python versions and on the CUDA flavour: key the cache on all.
  local torch_version py_tag mmcv_version flavour cache
  torch_version=$("$vpy" -c 'import torch; print(torch.__version__.split("+")[0])')
  py_tag=$("$vpy" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  mmcv_version=$(sed -n 's/^mmcv==//p' "$root/envs/mmcv.txt")
  if [ "${FORCE_CUDA:-0}" = 1 ]; then
    flavour="cuda$("$vpy" -c 'import torch; print(torch.version.cuda)')"
    flavour+="-$(echo "${TORCH_CUDA_ARCH_LIST:-default}" | tr ' ;+.' '____')"
  else
    flavour=cpu
  fi
  cache=$cache_root/mmcv-$mmcv_version-torch$torch_version-$py_tag-$flavour
  if ls "$cache"/mmcv-*.whl >/dev/null 2>&1; then
    say "mmcv $mmcv_version ($flavour): the cached wheel in $cache"
  else
    say "mmcv $mmcv_version ($flavour): no cached wheel, building it into $cache (minutes: its C++ ops)"
    bash "$root/envs/build_mmcv.sh" "$vpy" "$cache"
    say "mmcv $mmcv_version: built"
  fi
  "$vpy" -m pip install --quiet --no-deps "$cache"/mmcv-*.whl
}
[ "$part" = package ] || environment
[ "$part" = environment ] && { say "envs/ installed in $venv (the package is not)"; exit 0; }
say "flatmix itself, editable"
"$vpy" -m pip install --quiet --no-deps --no-build-isolation -e "$root"

say "checking that mmdet, mmcv's ops, torch, torchvision and snakemake import"
"$vpy" -c 'import mmdet, mmcv.ops, torch, torchvision, snakemake' \
  || { echo "install: the environment in $venv does not import (see above)" >&2; exit 1; }
stamp_of > "$venv/.flatmix-env"
say "environment ready in $venv"
