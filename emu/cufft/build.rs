//! As the driver stand-in: the SONAME is cuFFT's, so cudarc's `dlopen("libcufft.so")` finds
//! this library once it has been loaded by its path.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcufft.so");
}
