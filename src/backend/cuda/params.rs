//! Kernel parameter structs, laid out exactly as their C counterparts in `kernels/*.cu`
//! (`#[repr(C)]`, device addresses as u64).

use cudarc::driver::DeviceRepr;

/// `ConvGemmParams` of kernels/gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvGemmParams {
    /// Input `[B, H, W, Cin]` (a linear layer's tokens as an image one row high).
    pub x: u64,
    /// Weight `[N, K]`, K = KH·KW·Cin in (ky, kx, ci) order.
    pub w: u64,
    /// MaskUNet's bit-packed masks, `[N, kwords]` 32-bit words each (bit k of row n keeps
    /// `W[n, k]`); 0: dense.
    pub mask: u64,
    /// f32 bias `[N]`; 0: none.
    pub bias: u64,
    /// Added per sample and output channel, `[B, N]` (a resnet's time embedding); 0: none.
    pub add_bn: u64,
    /// Added elementwise, `[B, Ho, Wo, N]`; 0: none.
    pub residual: u64,
    /// Output `[B, Ho, Wo, N]`.
    pub y: u64,
    /// Words between samples' masks; 0: one mask for the whole batch.
    pub mask_sample_stride: i64,
    /// Input height H.
    pub h: i32,
    /// Input width W.
    pub w_in: i32,
    /// Input channels Cin.
    pub cin: i32,
    /// Output height Ho.
    pub ho: i32,
    /// Output width Wo.
    pub wo: i32,
    /// Output channels N (weight rows).
    pub n: i32,
    /// Reduction length K = KH·KW·Cin (weight row length).
    pub k: i32,
    /// Kernel width KW.
    pub kw: i32,
    /// Stride along H and W.
    pub stride: i32,
    /// Zero rows above the input.
    pub pad_top: i32,
    /// Zero columns left of the input.
    pub pad_left: i32,
    /// 32-bit mask words per weight row, ⌈K/32⌉.
    pub kwords: i32,
    /// Applied last: `y = (acc + bias + add_bn + residual) · out_scale`.
    pub out_scale: f32,
}

// SAFETY: plain old data, matching the C struct field for field.
unsafe impl DeviceRepr for ConvGemmParams {}

/// `AttentionParams` of kernels/attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionParams {
    /// Queries, `[B, Nq, heads·D]` at the strides below.
    pub q: u64,
    /// Keys, `[B, Nk, heads·D]`.
    pub k: u64,
    /// Values, `[B, Nk, heads·D]`.
    pub v: u64,
    /// Output, `[B, Nq, heads·D]`.
    pub o: u64,
    /// Elements between samples of `q`.
    pub q_batch: i64,
    /// Elements between samples of `k`.
    pub k_batch: i64,
    /// Elements between samples of `v`.
    pub v_batch: i64,
    /// Elements between samples of `o`.
    pub o_batch: i64,
    /// Elements between tokens of `q`.
    pub q_row: i32,
    /// Elements between tokens of `k`.
    pub k_row: i32,
    /// Elements between tokens of `v`.
    pub v_row: i32,
    /// Elements between tokens of `o`.
    pub o_row: i32,
    /// Query tokens per sample, Nq.
    pub nq: i32,
    /// Key and value tokens per sample, Nk.
    pub nk: i32,
    /// Attention heads, side by side in the last dimension.
    pub heads: i32,
    /// Head width D (a multiple of 8, at most 160).
    pub d: i32,
    /// The score scale, `1/√D` in the U-Net.
    pub scale: f32,
    /// Non-zero: query `i` attends to keys `0..=i` only (CLIP's causal mask).
    pub causal: i32,
}

// SAFETY: plain old data, matching the C struct field for field.
unsafe impl DeviceRepr for AttentionParams {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C layouts: 7 pointers + i64 + 12 ints + float = 116 bytes, padded to 120; 4 pointers
    /// + 4 i64 + 8 ints + float + int = 104.
    #[test]
    fn sizes_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<ConvGemmParams>(), 120);
        assert_eq!(std::mem::size_of::<AttentionParams>(), 104);
    }
}
