//! The CPU backend: the reference every GPU kernel is tested against, and the fallback where
//! there is no GPU. Multi-threaded with rayon (the caller's pool: `ThreadPool::install` bounds
//! it); matrix products go through `gemm` (the crate's own AVX-512 kernel, or the `gemm` crate's).

pub mod activation;
#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_amx;
pub mod attention_flash;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod backend;
pub mod conv;
#[cfg(target_arch = "x86_64")]
mod conv_amx;
pub mod conv_direct;
pub mod fourier;
pub mod freeu;
pub mod gemm;
#[cfg(target_arch = "x86_64")]
pub mod gemm_avx512;
#[cfg(target_arch = "x86_64")]
mod gemm_bf16;
pub mod linear;
#[cfg(target_arch = "x86_64")]
mod linear_amx;
pub mod masked;
pub mod matrix;
pub mod norm;
pub(crate) mod pack_cache;
pub mod profile;
pub mod resample;
mod switch;
pub mod timestep;
pub mod vector;

// Each kernel comes twice: `try_*` checks shapes and sizes and allocates fallibly (what the
// backend runs, so no input reaches a panic or an abort), and the plain name panics with that
// error's message (for tests and benches on shapes they built).
pub use activation::{geglu, gelu, silu, silu_inplace, try_activation, try_geglu, try_silu};
pub use attention::{attention, try_attention, try_attention_in, try_causal_attention};
pub use backend::Cpu;
pub use conv::{conv2d, try_conv2d, Padding};
pub use linear::{linear, try_linear};
pub use norm::{group_norm, layer_norm, try_group_norm, try_layer_norm};
pub use resample::{try_upsample_nearest, upsample_nearest};
pub use timestep::timestep_embedding;

pub mod layout;
pub use layout::{
    add_inplace, cat_channels, nchw_to_nlc, nlc_to_nchw, try_add_inplace, try_cat_channels,
    try_nchw_to_nlc, try_nlc_to_nchw,
};

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
