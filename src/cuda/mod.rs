pub mod kernels;
pub mod source;
