//! The masked GEMM path of MaskUNet: linear and convolution layers whose weight is multiplied by a
//! per-sample binary mask. Weights are staged in tiles of `TILE` output rows, each tile masked as
//! it is copied (the CPU analogue of masking while a GPU kernel stages a weight tile), and
//! multiplied right away, so `W ⊙ M_b` never exists whole for any sample.
//!
//! Linear layers run this path with or without a mask: unmasked, the tile is read in place
//! instead of staged, and the products are otherwise identical, so an all-ones mask gives the
//! dense output bit for bit.

use std::cell::Cell;

use rayon::prelude::*;

use super::gemm::{sgemm, Mat, Precision, Threads};
use super::SendPtr;
use crate::boosters::masks::MaskView;
use crate::error::{Error, Result};
use crate::tensor::{try_repeat, try_zeroed_vec, Tensor};

const TILE: usize = 64;

thread_local! {
    /// This thread's staging buffer for masked weight tiles: grown once, then reused by every
    /// task that runs here, so masked layers allocate nothing per task.
    static STAGING: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A masked weight tile in this thread's staging buffer (given back when dropped).
pub struct StagedRows(Vec<f32>);

impl std::ops::Deref for StagedRows {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for StagedRows {
    fn drop(&mut self) {
        let tile = std::mem::take(&mut self.0);
        // A thread being torn down has no slot left; the buffer is then simply freed.
        let _ = STAGING.try_with(|s| s.set(tile));
    }
}

/// Rows r0..r1 of a weight with rows of `row_len`, each multiplied by its mask row.
pub fn stage_masked_rows(
    weight: &[f32],
    row_len: usize,
    (r0, r1): (usize, usize),
    mask: MaskView,
) -> StagedRows {
    let mut tile = STAGING.try_with(Cell::take).unwrap_or_default();
    tile.clear();
    tile.resize((r1 - r0) * row_len, 0.0);
    for (r, dst) in (r0..r1).zip(tile.chunks_mut(row_len)) {
        mask.apply_row(r, &weight[r * row_len..(r + 1) * row_len], dst);
    }
    StagedRows(tile)
}

pub use crate::boosters::masks::MaskFn;

/// `x`: [B, ..., in]; `y_b = x_b · (W ⊙ M_b)ᵀ + bias` with `mask(b)` the mask of sample b, or
/// `x_b · Wᵀ + bias` without a mask.
/// Panics where `try_masked_linear` errs.
pub fn masked_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
) -> Tensor {
    try_masked_linear(x, weight, bias, mask).unwrap_or_else(|e| panic!("{e}"))
}

/// As `masked_linear`; shapes that do not agree and memory that cannot be had are errors.
pub fn try_masked_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
) -> Result<Tensor> {
    try_masked_linear_in(x, weight, bias, mask, Precision::F32)
}

/// As `try_masked_linear`, its products in `precision`.
pub fn try_masked_linear_in(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
    precision: Precision,
) -> Result<Tensor> {
    linear_keyed(x, weight, bias, mask, precision, None)
}

/// As `try_masked_linear_in` for the layer `uid`, as the backend runs it: a dense bf16 layer
/// keeps its packed tiles under `uid` (`cpu::pack_cache`).
pub fn try_linear_layer(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
    precision: Precision,
    uid: u64,
) -> Result<Tensor> {
    linear_keyed(x, weight, bias, mask, precision, Some(uid))
}

/// GEGLU of the layer `uid`'s output (`h · gelu(gate)` of its two halves, diffusers' `GEGLU`),
/// as the backend runs it. A bf16 layer of whole tiles gates inside the tile kernel, so the
/// wide product is never stored; elsewhere the product, then `activation::try_geglu`.
pub fn try_linear_geglu_layer(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
    precision: Precision,
    uid: u64,
) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16 && x.rank() >= 2 {
        let (_, in_f, out_f) = super::linear::check_linear(x, weight, bias)?;
        if super::linear_amx::takes(in_f, out_f, true) {
            let key = mask.is_none().then_some(uid);
            return super::linear_amx::linear(x, weight, bias, key, mask, true);
        }
    }
    super::activation::try_geglu(&linear_keyed(x, weight, bias, mask, precision, Some(uid))?)
}

fn linear_keyed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&[f32]>,
    mask: Option<MaskFn>,
    precision: Precision,
    key: Option<u64>,
) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(Error::shape(
            "linear",
            format!("input must be [B, ..., in], got {:?}", x.shape()),
        ));
    }
    let (all_rows, in_f, out_f) = super::linear::check_linear(x, weight, bias)?;
    // bf16 layers of whole tiles run on the tile kernel; with a mask, its packing is per
    // sample and not kept.
    #[cfg(target_arch = "x86_64")]
    if precision == Precision::Bf16 && super::linear_amx::takes(in_f, out_f, false) {
        let key = key.filter(|_| mask.is_none());
        return super::linear_amx::linear(x, weight, bias, key, mask, false);
    }
    let _ = key;
    let b = x.shape()[0];
    let rows = all_rows.checked_div(b).unwrap_or(0);
    let mut out = match bias {
        Some(bv) => try_repeat(bv, all_rows, "linear output")?,
        None => try_zeroed_vec(all_rows * out_f, "linear output")?,
    };
    if out.is_empty() {
        let mut shape = crate::Shape::from(x.shape());
        *shape.last_mut().expect("rank ≥ 2") = out_f;
        return Ok(Tensor::from_parts(shape, out));
    }
    // A dense bf16 layer is one product over every sample's rows, split by the product itself.
    let whole = precision == Precision::Bf16 && mask.is_none();
    let (b, rows, tile_rows, threads) = if whole {
        (1, all_rows, out_f, Threads::Pool)
    } else {
        (b, rows, TILE, Threads::Single)
    };
    let tiles = out_f.div_ceil(tile_rows);
    // Tasks own disjoint column strips [r0, r1) of one sample's output rows.
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_len = out.len();
    (0..b * tiles).into_par_iter().for_each(|task| {
        let (bi, t) = (task / tiles, task % tiles);
        let (r0, r1) = (t * tile_rows, ((t + 1) * tile_rows).min(out_f));
        let staged;
        let (tile, tile_offset) = match mask {
            Some(mask) => {
                staged = stage_masked_rows(weight.data(), in_f, (r0, r1), mask(bi));
                (&staged[..], 0)
            }
            None => (weight.data(), r0 * in_f),
        };
        // SAFETY: `out` outlives the loop; this task writes only columns r0..r1 of rows of
        // sample bi, through the bounds-checked `sgemm`.
        let dst = unsafe { std::slice::from_raw_parts_mut(out_ptr.get(), out_len) };
        sgemm(
            rows,
            r1 - r0,
            in_f,
            x.data(),
            Mat::row_major(bi * rows * in_f, in_f),
            tile,
            Mat::transposed(tile_offset, in_f),
            dst,
            Mat {
                offset: bi * rows * out_f + r0,
                rs: out_f,
                cs: 1,
            },
            bias.is_some(),
            1.0,
            threads,
            precision,
        );
    });
    let mut shape = crate::Shape::from(x.shape());
    *shape.last_mut().expect("rank ≥ 2") = out_f;
    Ok(Tensor::from_parts(shape, out))
}
