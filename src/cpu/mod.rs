//! The CPU backend: the reference every GPU kernel is tested against, and the fallback where
//! there is no GPU. Multi-threaded with rayon (the caller's pool: `ThreadPool::install` bounds
//! it); matrix products go through the `gemm` crate's packed SIMD kernels.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod fourier;
pub mod gemm;
pub mod linear;
pub mod masked;
pub mod norm;
pub mod resample;
pub mod vector;

pub use activation::{geglu, gelu, silu, silu_inplace};
pub use attention::attention;
pub use conv::{conv2d, Padding};
pub use linear::linear;
pub use norm::{group_norm, layer_norm};
pub use resample::upsample_nearest;

pub mod layout;
pub use layout::{add_inplace, cat_channels, nchw_to_nlc, nlc_to_nchw};

/// A pointer into an output buffer that parallel tasks write disjoint parts of (column strips,
/// which safe chunking cannot express). Each use states why its writes are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: only handed to tasks whose writes are disjoint, as each call site shows.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub fn get(self) -> *mut f32 {
        self.0
    }
}
