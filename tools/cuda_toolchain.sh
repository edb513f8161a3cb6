#!/usr/bin/env bash
# Installs NVRTC (libnvrtc), the CUDA headers and ptxas from NVIDIA's pip wheels into
# .cache/cuda of the project, so that build.rs can compile kernels/*.cu to PTX and the kernel
# test can run `ptxas -v` on a machine with no CUDA toolkit and no GPU. Idempotent: a second
# run with the same versions does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/cuda
pins="nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvcc-cu12==12.9.86"
if [[ -f $dest/pins && "$(cat $dest/pins)" == "$pins" ]]; then
    exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
# shellcheck disable=SC2086
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
    --target "$dest/site" $pins
echo "$pins" >"$dest/pins"
echo "CUDA build tools installed in $dest/site/nvidia"
