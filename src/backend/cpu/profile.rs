//! An opt-in per-op wall-clock profile of the CPU backend: with `FREELUNCH_PROFILE=1` in the
//! environment, every op the `Cpu` backend runs adds its wall time to the total of its kind
//! (`conv3x3`, `linear`, `attention (self)`, …), and the table is printed to stderr when the
//! process exits; [`snapshot`] and [`reset`] read and clear it from code (the profile bench,
//! `benches/profile_forward.rs`, uses them). Off, each op pays one relaxed atomic load.
//!
//! Times are wall time of the op as the model calls it (on the calling thread, including its
//! rayon fan-out), so they sum to the forward's time minus the graph's own glue.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

/// The kinds of op the profile tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// k×k stride-1 "same" convolution with k > 1 (the resnets' 3×3).
    Conv3x3,
    /// 1×1 stride-1 convolution (shortcuts, `proj_in`/`proj_out` of conv transformers).
    Conv1x1,
    /// Strided convolution (the downsamplers).
    ConvStrided,
    /// A linear layer.
    Linear,
    /// Attention whose keys are the queries' own tokens.
    AttentionSelf,
    /// Attention over another sequence (text states).
    AttentionCross,
    /// Causal self-attention (text encoders).
    AttentionCausal,
    /// GroupNorm, with its fused scale/shift and SiLU when the model asks for them.
    GroupNorm,
    /// LayerNorm.
    LayerNorm,
    /// GEGLU's gate (after its projection).
    Geglu,
    /// SiLU on its own.
    Silu,
    /// Other pointwise activations (GELU, quick GELU).
    Activation,
    /// Elementwise adds: `add`, and the epilogues of convolutions and linears.
    Add,
    /// Elementwise scaling.
    Scale,
    /// Nearest-neighbour upsampling.
    Upsample,
    /// Channel concatenation of the skips.
    Cat,
    /// NCHW ↔ tokens.
    Layout,
    /// FreeU's backbone scaling and Fourier filter.
    FreeU,
    /// Sinusoidal timestep embedding.
    Timestep,
}

const OPS: [Op; 19] = [
    Op::Conv3x3,
    Op::Conv1x1,
    Op::ConvStrided,
    Op::Linear,
    Op::AttentionSelf,
    Op::AttentionCross,
    Op::AttentionCausal,
    Op::GroupNorm,
    Op::LayerNorm,
    Op::Geglu,
    Op::Silu,
    Op::Activation,
    Op::Add,
    Op::Scale,
    Op::Upsample,
    Op::Cat,
    Op::Layout,
    Op::FreeU,
    Op::Timestep,
];

impl Op {
    /// The op's name in the table (what `tools/profile_cpu.py` matches PyTorch's ops to).
    pub fn name(self) -> &'static str {
        match self {
            Op::Conv3x3 => "conv3x3",
            Op::Conv1x1 => "conv1x1",
            Op::ConvStrided => "conv_stride2",
            Op::Linear => "linear",
            Op::AttentionSelf => "attention_self",
            Op::AttentionCross => "attention_cross",
            Op::AttentionCausal => "attention_causal",
            Op::GroupNorm => "group_norm",
            Op::LayerNorm => "layer_norm",
            Op::Geglu => "geglu",
            Op::Silu => "silu",
            Op::Activation => "activation",
            Op::Add => "add",
            Op::Scale => "scale",
            Op::Upsample => "upsample",
            Op::Cat => "cat",
            Op::Layout => "layout",
            Op::FreeU => "freeu",
            Op::Timestep => "timestep_embedding",
        }
    }

    fn index(self) -> usize {
        OPS.iter().position(|&o| o == self).unwrap_or(0)
    }
}

/// 0: not looked at the environment yet; 1: off; 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
static NANOS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];
static CALLS: [AtomicU64; OPS.len()] = [const { AtomicU64::new(0) }; OPS.len()];

extern "C" fn print_at_exit() {
    eprint!("{}", table());
}

/// Whether the profile is recording (`FREELUNCH_PROFILE` set to anything but `0` or empty, or
/// [`enable`] called).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("FREELUNCH_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0");
            let to = if on { 2 } else { 1 };
            // Only the first caller to decide registers the exit print.
            if STATE
                .compare_exchange(0, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
                && on
            {
                // SAFETY: `print_at_exit` is a plain `extern "C" fn()` that only formats and
                // writes.
                unsafe { libc::atexit(print_at_exit) };
            }
            on
        }
        s => s == 2,
    }
}

/// Turns recording on or off from code. Turning it on from the environment also prints the
/// table at exit; turning it on here does not.
pub fn enable(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Runs `f`, adding its wall time to `op`'s total when the profile is on.
#[inline]
pub fn time<T>(op: Op, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t0 = Instant::now();
    let out = f();
    let ns = t0.elapsed().as_nanos() as u64;
    NANOS[op.index()].fetch_add(ns, Ordering::Relaxed);
    CALLS[op.index()].fetch_add(1, Ordering::Relaxed);
    out
}

/// One line of the profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The op kind's name ([`Op::name`]).
    pub op: &'static str,
    /// Total wall time, in seconds.
    pub seconds: f64,
    /// How many calls.
    pub calls: u64,
}

/// The totals so far, for the kinds that ran at least once, longest first.
pub fn snapshot() -> Vec<Entry> {
    let mut v: Vec<Entry> = OPS
        .iter()
        .map(|&op| Entry {
            op: op.name(),
            seconds: NANOS[op.index()].load(Ordering::Relaxed) as f64 * 1e-9,
            calls: CALLS[op.index()].load(Ordering::Relaxed),
        })
        .filter(|e| e.calls > 0)
        .collect();
    v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    v
}

/// Clears the totals.
pub fn reset() {
    for (n, c) in NANOS.iter().zip(&CALLS) {
        n.store(0, Ordering::Relaxed);
        c.store(0, Ordering::Relaxed);
    }
}

/// The totals as a text table (op, ms, calls, share of the total).
pub fn table() -> String {
    let rows = snapshot();
    let total: f64 = rows.iter().map(|e| e.seconds).sum();
    let mut s = format!("{:<20} {:>12} {:>8} {:>7}\n", "op", "ms", "calls", "share");
    for e in &rows {
        s += &format!(
            "{:<20} {:>12.2} {:>8} {:>6.1}%\n",
            e.op,
            e.seconds * 1e3,
            e.calls,
            100.0 * e.seconds / total.max(1e-12)
        );
    }
    s += &format!("{:<20} {:>12.2}\n", "total", total * 1e3);
    s
}
