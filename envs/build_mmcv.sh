#!/usr/bin/env bash
# Build mmcv's wheel (with its compiled ops) from the PyPI sdist into the wheel cache, once.
# mmcv 2.1.0 has no wheel for torch 2.14, and its setup.py needs two fixes to build against it:
#   - torch 2.14's headers need C++20, but setup.py hard-codes -std=c++14 / -std=c++17 (and the C++ files are
#     compiled with -g0: Python's flags carry -g, whose debug information nearly doubles each file's compile
#     time, 15 s against 8.6 s measured, for a wheel nobody debugs);
#   - setup.py imports pkg_resources, gone from setuptools >= 70 while torch 2.14 needs >= 77: the build
#     alone sees an older setuptools, from a side folder put first on PYTHONPATH (--no-build-isolation).
# Usage: build_mmcv.sh PYTHON CACHE_DIR   (PYTHON: an interpreter that already has torch installed)
# Environment: FORCE_CUDA=1 and TORCH_CUDA_ARCH_LIST select a CUDA build (the container does this). Its
# compiler: CUDA_HOME's or PATH's nvcc where a CUDA toolkit is installed, else PyPI's (envs/cuda-compiler.txt).
set -euo pipefail
python=$1
cache=$2
mmcv_spec=$(grep -E '^mmcv==' "$(dirname "$0")/mmcv.txt")
version=${mmcv_spec#mmcv==}

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-deps --no-binary :all: "$mmcv_spec" -d "$work"
tar -xzf "$work/mmcv-$version.tar.gz" -C "$work"
src="$work/mmcv-$version"
sed -i -E "s/^( +extra_compile_args\['cxx'\] = \['-std=c\+\+1[47]')\]/\1, '-g0']/" "$src/setup.py"
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/setup.py"
grep -q "'-std=c++20', '-g0'" "$src/setup.py" || { echo "build_mmcv: no cxx -std flag to patch (to C++20 and -g0) in $src/setup.py" >&2; exit 1; }

# A CUDA_HOME from PyPI: the compiler wheels, with the headers and libraries of the torch wheels' own CUDA
# (nvidia/cu13) linked in beside them, unversioned .so names and lib64 as CUDA's installers make them.
pypi_cuda_home() {
  "$python" -m pip install --quiet --no-deps --target "$work/cuda" -r "$(dirname "$0")/cuda-compiler.txt"
  local home=$work/cuda/nvidia/cu13 torch_cuda
  torch_cuda=$("$python" -c 'import pathlib, torch; print(pathlib.Path(torch.__file__).parents[1] / "nvidia" / "cu13")')
  [ -d "$torch_cuda/include" ] && [ -d "$torch_cuda/lib" ] \
    || { echo "build_mmcv: no CUDA headers and libraries from the torch wheels in $torch_cuda" >&2; exit 1; }
  cp -rsn "$torch_cuda/include/." "$home/include/"
  mkdir -p "$home/lib"
  cp -rsn "$torch_cuda/lib/." "$home/lib/"
  for so in "$home"/lib/lib*.so.*; do
    [ -e "${so%%.so.*}.so" ] || ln -s "$(basename "$so")" "${so%%.so.*}.so"
  done
  ln -sfn lib "$home/lib64"
  echo "$home"
}
if [ "${FORCE_CUDA:-0}" = 1 ] && [ ! -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ] && ! command -v nvcc >/dev/null; then
  CUDA_HOME=$(pypi_cuda_home)
  export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
  echo "build_mmcv: no CUDA toolkit here; nvcc from PyPI: $(nvcc --version | tail -n1)" >&2
fi

build_setuptools=$(sed -n 's/^# build-setuptools: //p' "$(dirname "$0")/mmcv.txt")
"$python" -m pip install --quiet --target "$work/build-setuptools" "setuptools==$build_setuptools"

echo "build_mmcv: compiling mmcv $version ops (FORCE_CUDA=${FORCE_CUDA:-0}); this takes several minutes" >&2
PYTHONPATH="$work/build-setuptools${PYTHONPATH:+:$PYTHONPATH}" MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  "$python" -m pip wheel --no-build-isolation --no-deps "$src" -w "$work/dist"
mv "$work"/dist/mmcv-*.whl "$cache/"
