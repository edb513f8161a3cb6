#!/usr/bin/env bash
# The test command of the README and of CI: installs NVRTC and ptxas into .cache/cuda (once; see
# tools/cuda_toolchain.sh), then runs the tests in release mode, where the kernel test fails
# rather than skips if they are missing. Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/cuda_toolchain.sh
FREELUNCH_REQUIRE_CUDA_TOOLS=1 exec cargo test --release "$@"
