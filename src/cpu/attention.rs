//! Scaled dot-product attention, softmax(q·kᵀ·scale)·v, per (sample, head, block of query rows):
//! the score matrix exists only one row block at a time, so memory stays bounded at any
//! sequence length. Heads live side by side in the last dimension, as diffusers' projections
//! produce them, and are read with strides (no head transposes).

use rayon::prelude::*;

use super::gemm::{sgemm, Mat, Threads};
use super::SendPtr;
use crate::tensor::Tensor;

const ROW_BLOCK: usize = 128;

/// `q`: [B, N, heads·dh], `k`, `v`: [B, M, heads·dh]; returns [B, N, heads·dh].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Tensor {
    let [b, n, inner] = q.shape()[..] else {
        panic!("attention: q rank 3")
    };
    let m = k.shape()[1];
    let dh = inner / heads;
    let mut out = vec![0.0f32; b * n * inner];
    // Each task owns the rows [r0, r1) of one head of one sample: disjoint column strips of
    // `out`, which safe chunking cannot express, so tasks write through a shared pointer.
    let blocks = n.div_ceil(ROW_BLOCK);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_len = out.len();
    (0..b * heads * blocks).into_par_iter().for_each(|task| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (bi, h) = (bh / heads, bh % heads);
        let (r0, r1) = (blk * ROW_BLOCK, ((blk + 1) * ROW_BLOCK).min(n));
        let rows = r1 - r0;
        let mut scores = vec![0.0f32; rows * m];
        sgemm(
            rows,
            m,
            dh,
            q.data(),
            Mat::row_major((bi * n + r0) * inner + h * dh, inner),
            k.data(),
            Mat::transposed(bi * m * inner + h * dh, inner),
            &mut scores,
            Mat::row_major(0, m),
            false,
            scale,
            Threads::Single,
        );
        scores.chunks_mut(m).for_each(super::vector::softmax_row);
        let mut o = vec![0.0f32; rows * dh];
        sgemm(
            rows,
            dh,
            m,
            &scores,
            Mat::row_major(0, m),
            v.data(),
            Mat::row_major(bi * m * inner + h * dh, inner),
            &mut o,
            Mat::row_major(0, dh),
            false,
            1.0,
            Threads::Single,
        );
        let base = (bi * n + r0) * inner + h * dh;
        for (r, src) in o.chunks(dh).enumerate() {
            let start = base + r * inner;
            assert!(start + dh <= out_len);
            // SAFETY: in bounds (checked), and no other task writes row r0+r of head h of
            // sample bi.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out_ptr.get().add(start), dh) };
        }
    });
    Tensor::from_parts(vec![b, n, inner], out)
}
