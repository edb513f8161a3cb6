//! Scaled dot-product attention, softmax(q·kᵀ·scale)·v, per (sample, head, block of query rows):
//! the score matrix exists only one row block at a time, so memory stays bounded at any
//! sequence length. Heads live side by side in the last dimension, as diffusers' projections
//! produce them, and are read with strides (no head transposes).
//!
//! On CPUs with AVX-512F both entry points run the flash kernel of `attention_flash.rs`
//! (online softmax over key blocks, nothing larger than L2-sized blocks); the `gemm`-crate
//! path here is the fallback elsewhere, or everywhere with `FREELUNCH_CPU_ATTENTION=gemm`.
//! With `--dtype bf16`, where the CPU has AMX tiles, non-causal attention runs the bf16 flash
//! kernel of `attention_amx.rs` (`FREELUNCH_ATTN_AMX=off` keeps it on the f32 one).

use rayon::prelude::*;

use super::gemm::{sgemm, Mat, Precision, Threads};
use super::SendPtr;
use crate::error::{Error, Result};
use crate::tensor::{numel_of, try_zeroed_vec, Scratch, Tensor};

const ROW_BLOCK: usize = 128;

/// `q`: [B, N, heads·dh], `k`, `v`: [B, M, heads·dh]; returns [B, N, heads·dh]. Panics where
/// `try_attention` errs.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f32) -> Tensor {
    try_attention(q, k, v, heads, scale).unwrap_or_else(|e| panic!("{e}"))
}

/// The score rows one task holds at once: what attention needs beyond its output, per thread.
pub fn scores_per_task(n: usize, m: usize) -> Option<usize> {
    n.min(ROW_BLOCK).checked_mul(m)
}

/// As `attention`; shapes that do not agree and memory that cannot be had are errors.
pub fn try_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    try_attention_in(q, k, v, heads, scale, Precision::F32)
}

/// As `try_attention`, in `precision`: `Bf16` runs q·kᵀ and P·v on AMX tiles with bf16
/// operands (`attention_amx`) where the CPU has them and the flash path is on (unless
/// `FREELUNCH_ATTN_AMX=off`); f32 elsewhere.
pub fn try_attention_in(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    precision: Precision,
) -> Result<Tensor> {
    attention_on(q, k, v, heads, scale, Kernel::pick(precision))
}

/// The kernel an attention call runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kernel {
    /// Two `gemm` products around a softmax per block of query rows (the portable path).
    Gemm,
    /// The f32 flash kernel (`attention_flash`); needs AVX-512F.
    Flash,
    /// The bf16 flash kernel on AMX tiles (`attention_amx`); needs it available.
    FlashBf16,
}

impl Kernel {
    /// The fastest kernel for `precision` here, with the flash path's switch respected.
    fn pick(precision: Precision) -> Kernel {
        if !super::attention_flash::available() {
            return Kernel::Gemm;
        }
        #[cfg(target_arch = "x86_64")]
        if precision == Precision::Bf16 && super::attention_amx::enabled() {
            return Kernel::FlashBf16;
        }
        let _ = precision;
        Kernel::Flash
    }
}

/// `try_attention` on `kernel` (which must be available here), whatever the process-wide
/// switch says: tests set the kernels side by side with it.
pub(super) fn attention_on(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    kernel: Kernel,
) -> Result<Tensor> {
    let bad = |msg: String| Err(Error::shape("attention", msg));
    let [b, n, inner] = q.shape()[..] else {
        return bad(format!("q must be rank 3 [B, N, C], got {:?}", q.shape()));
    };
    let m = match (k.shape(), v.shape()) {
        ([kb, m, kc], [vb, vm, vc])
            if *kb == b && *vb == b && *vm == *m && *kc == inner && *vc == inner =>
        {
            *m
        }
        _ => {
            return bad(format!(
                "q {:?}, k {:?} and v {:?} do not agree (k and v must be [{b}, M, {inner}])",
                q.shape(),
                k.shape(),
                v.shape()
            ))
        }
    };
    if heads == 0 || inner % heads != 0 {
        return bad(format!("{heads} heads do not divide {inner} channels"));
    }
    let dh = inner / heads;
    let out_len = numel_of(&[b, n, inner], "attention output")?;
    let per_task = scores_per_task(n, m).ok_or_else(|| Error::TooLarge {
        what: "attention scores".into(),
        detail: format!("{n} × {m}"),
    })?;
    numel_of(
        &[per_task, rayon::current_num_threads()],
        "attention scores",
    )?;
    let mut out = try_zeroed_vec(out_len, "attention output")?;
    if out_len == 0 {
        return Ok(Tensor::from_parts([b, n, inner], out));
    }
    if m > 0 && kernel != Kernel::Gemm {
        let p = super::attention_flash::Problem {
            q: q.data(),
            k: k.data(),
            v: v.data(),
            b,
            n,
            m,
            heads,
            dh,
            scale,
            causal: false,
        };
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::FlashBf16 => super::attention_amx::run(&p, &mut out)?,
            _ => super::attention_flash::run(&p, &mut out)?,
        }
        return Ok(Tensor::from_parts([b, n, inner], out));
    }
    // Each task owns the rows [r0, r1) of one head of one sample: disjoint column strips of
    // `out`, which safe chunking cannot express, so tasks write through a shared pointer.
    let blocks = n.div_ceil(ROW_BLOCK);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let out_len = out.len();
    (0..b * heads * blocks)
        .into_par_iter()
        .try_for_each(|task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, h) = (bh / heads, bh % heads);
            let (r0, r1) = (blk * ROW_BLOCK, ((blk + 1) * ROW_BLOCK).min(n));
            let rows = r1 - r0;
            let mut scores = Scratch::zeroed(rows * m, "attention scores")?;
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
                Precision::F32,
            );
            scores.chunks_mut(m).for_each(super::vector::softmax_row);
            let mut o = Scratch::zeroed(rows * dh, "attention output")?;
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
                Precision::F32,
            );
            let base = (bi * n + r0) * inner + h * dh;
            for (r, src) in o.chunks(dh).enumerate() {
                let start = base + r * inner;
                assert!(start + dh <= out_len);
                // SAFETY: in bounds (checked), and no other task writes row r0+r of head h of
                // sample bi.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), out_ptr.get().add(start), dh)
                };
            }
            Ok(())
        })?;
    Ok(Tensor::from_parts([b, n, inner], out))
}

/// As `try_attention` for self-attention under a causal mask: query `i` sees keys `0..=i` only
/// (CLIP's text encoder, transformers' `is_causal=True`); `q`, `k` and `v` are all
/// `[B, N, heads·dh]`. One task per (sample, head) holds that head's whole `N × N` score matrix,
/// which is small at text lengths (77 × 77).
pub fn try_causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    causal_attention_on(q, k, v, heads, scale, super::attention_flash::available())
}

/// `try_causal_attention` on the flash kernel or the `gemm` path, as `attention_on`.
pub(super) fn causal_attention_on(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    flash: bool,
) -> Result<Tensor> {
    let bad = |msg: String| Err(Error::shape("causal attention", msg));
    let [b, n, inner] = q.shape()[..] else {
        return bad(format!("q must be rank 3 [B, N, C], got {:?}", q.shape()));
    };
    if k.shape() != q.shape() || v.shape() != q.shape() {
        return bad(format!(
            "q {:?}, k {:?} and v {:?} must have one shape (self-attention)",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    if heads == 0 || inner % heads != 0 {
        return bad(format!("{heads} heads do not divide {inner} channels"));
    }
    let dh = inner / heads;
    let out_len = numel_of(&[b, n, inner], "attention output")?;
    numel_of(&[n, n, rayon::current_num_threads()], "attention scores")?;
    let mut out = try_zeroed_vec(out_len, "attention output")?;
    if out_len == 0 {
        return Ok(Tensor::from_parts([b, n, inner], out));
    }
    if flash {
        let p = super::attention_flash::Problem {
            q: q.data(),
            k: k.data(),
            v: v.data(),
            b,
            n,
            m: n,
            heads,
            dh,
            scale,
            causal: true,
        };
        super::attention_flash::run(&p, &mut out)?;
        return Ok(Tensor::from_parts([b, n, inner], out));
    }
    // Each task owns the columns of one head of one sample: disjoint strips of `out`, written
    // through a shared pointer as in `try_attention`.
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..b * heads).into_par_iter().try_for_each(|task| {
        let (bi, h) = (task / heads, task % heads);
        let base = bi * n * inner + h * dh;
        let mut scores = Scratch::zeroed(n * n, "attention scores")?;
        sgemm(
            n,
            n,
            dh,
            q.data(),
            Mat::row_major(base, inner),
            k.data(),
            Mat::transposed(base, inner),
            &mut scores,
            Mat::row_major(0, n),
            false,
            scale,
            Threads::Single,
            Precision::F32,
        );
        for (r, row) in scores.chunks_mut(n).enumerate() {
            // Key 0 is never masked, so every row keeps a finite maximum.
            row[r + 1..].fill(f32::NEG_INFINITY);
            super::vector::softmax_row(row);
        }
        let mut o = Scratch::zeroed(n * dh, "attention output")?;
        sgemm(
            n,
            dh,
            n,
            &scores,
            Mat::row_major(0, n),
            v.data(),
            Mat::row_major(base, inner),
            &mut o,
            Mat::row_major(0, dh),
            false,
            1.0,
            Threads::Single,
            Precision::F32,
        );
        for (r, src) in o.chunks(dh).enumerate() {
            let start = base + r * inner;
            assert!(start + dh <= out_len);
            // SAFETY: in bounds (checked), and no other task writes head h of sample bi.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), out_ptr.get().add(start), dh) };
        }
        Ok(())
    })?;
    Ok(Tensor::from_parts([b, n, inner], out))
}
