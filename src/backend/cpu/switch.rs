//! The process-wide settings of the CPU's hand-written kernels: on/off switches (where the CPU
//! has AVX-512F, unless an environment variable or a bench turns them off) and numeric tunables,
//! each read from the environment once.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// Whether the CPU has AVX-512F, which every hand-written kernel needs.
pub(crate) fn avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A kernel's switch: on where AVX-512F is detected, unless `var` is set to `off` in the
/// environment or [`Switch::set`] turned it off.
pub(crate) struct Switch {
    /// 0: not decided yet; 1: off; 2: on.
    state: AtomicU8,
    var: &'static str,
    off: &'static str,
}

impl Switch {
    pub(crate) const fn new(var: &'static str, off: &'static str) -> Self {
        Switch {
            state: AtomicU8::new(0),
            var,
            off,
        }
    }

    /// Whether the kernel runs (one relaxed load once decided).
    pub(crate) fn on(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let off = std::env::var(self.var).is_ok_and(|v| v == self.off);
                self.set(!off)
            }
            s => s == 2,
        }
    }

    /// Turns the kernel on (where AVX-512F is detected) or off for the whole process; returns
    /// whether it is on now.
    pub(crate) fn set(&self, on: bool) -> bool {
        let on = on && avx512f();
        self.state.store(if on { 2 } else { 1 }, Ordering::Relaxed);
        on
    }
}

/// A positive integer from the environment variable `var`, read once into `cell` (benches tune
/// block sizes this way), else `default`.
pub(crate) fn tunable(cell: &OnceLock<usize>, var: &str, default: usize) -> usize {
    *cell.get_or_init(|| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&v| v > 0)
            .unwrap_or(default)
    })
}
