#!/usr/bin/env bash
# The test command of the README and of CI: installs NVRTC and ptxas into .cache/cuda (once; see
# tools/cuda_toolchain.sh), builds the workspace (the PTX executor's libraries among it), checks
# that no modules import each other in a circle and that every public item is documented, then runs
# every test in release mode with FREELUNCH_DEVICE=emu: the GPU suites (tests/gpu_*.rs, the sampler
# loops on the GPU) run the CUDA backend on the PTX executor, with its checks on, and fail rather
# than skip; the kernel test fails rather than skips if NVRTC or ptxas is missing.
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/cuda_toolchain.sh
cargo build --release --workspace
# No import circles between the crate's modules (tools/import_graph.py lists any).
python3 tools/import_graph.py
# Every public item documented, and no broken intra-doc links.
RUSTDOCFLAGS='-D missing_docs -D rustdoc::broken_intra_doc_links' cargo doc --no-deps -p freelunch
FREELUNCH_REQUIRE_CUDA_TOOLS=1 FREELUNCH_DEVICE=emu exec cargo test --release --workspace "$@"
