//! Kernel parameter structs, laid out exactly as their C counterparts in `kernels/*.cu`
//! (`#[repr(C)]`, device addresses as u64).

use cudarc::driver::DeviceRepr;

/// `ConvGemmParams` of kernels/gemm.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvGemmParams {
    pub x: u64,
    pub w: u64,
    pub mask: u64,
    pub bias: u64,
    pub add_bn: u64,
    pub residual: u64,
    pub y: u64,
    pub mask_sample_stride: i64,
    pub h: i32,
    pub w_in: i32,
    pub cin: i32,
    pub ho: i32,
    pub wo: i32,
    pub n: i32,
    pub k: i32,
    pub kw: i32,
    pub stride: i32,
    pub pad_top: i32,
    pub pad_left: i32,
    pub kwords: i32,
    pub out_scale: f32,
}

// SAFETY: plain old data, matching the C struct field for field.
unsafe impl DeviceRepr for ConvGemmParams {}

/// `AttentionParams` of kernels/attention.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    pub q_batch: i64,
    pub k_batch: i64,
    pub v_batch: i64,
    pub o_batch: i64,
    pub q_row: i32,
    pub k_row: i32,
    pub v_row: i32,
    pub o_row: i32,
    pub nq: i32,
    pub nk: i32,
    pub heads: i32,
    pub d: i32,
    pub scale: f32,
}

// SAFETY: plain old data, matching the C struct field for field.
unsafe impl DeviceRepr for AttentionParams {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C layouts: 7 pointers + i64 + 12 ints + float = 116 bytes, padded to 120; 4 pointers
    /// + 4 i64 + 8 ints + float = 100, padded to 104.
    #[test]
    fn sizes_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<ConvGemmParams>(), 120);
        assert_eq!(std::mem::size_of::<AttentionParams>(), 104);
    }
}
