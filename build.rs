//! Build script. The CUDA kernels in `kernels/` are compiled at run time (NVRTC) by the CUDA
//! backend; until that lands there is nothing to build here beyond tracking the sources.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
}
