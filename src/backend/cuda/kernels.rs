//! The kernel sources and their PTX, embedded in the binary by `build.rs`: `COMMON` (the shared
//! header `kernels/common.cuh`), `SOURCES` (every `kernels/*.cu` as written, sorted by file stem)
//! and `PTX` (each source compiled by NVRTC for each of [`ARCHS`](super::source::ARCHS); empty
//! when the build found no NVRTC, and then the kernels are compiled at first use).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
