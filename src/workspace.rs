//! Reusable host buffers for repeated calls of one shape: an engine serving a sampling loop
//! makes the same forward call, with the same intermediate sizes, many times over. Inside
//! [`Workspace::scope`], every tensor value buffer that the crate allocates on the calling thread (op outputs, concatenations, layout changes) is taken
//! from the workspace when one of that exact size is free there, and every such buffer a tensor
//! drops on that thread goes back to it rather than to the allocator. After the first call of a
//! shape, later calls of that shape reuse what the first one freed.
//!
//! What it does not cover, and why:
//! - scratch allocated inside parallel tasks on other threads: the matrix product's and the
//!   flash attention kernel's packing buffers, and MaskUNet's masked weight tiles, are kept per
//!   thread instead (grown once, then reused); the fallback attention's score rows
//!   (`FREELUNCH_CPU_ATTENTION=gemm`) go to the allocator, and so do the `gemm` crate's packing
//!   buffers on CPUs without AVX-512F, where it runs the products;
//! - a GPU's memory (the CUDA backend has its own allocations; only host tensors are pooled).
//!
//! A tensor's shape is held inline ([`Shape`](crate::Shape)) and the `Arc` that lets clones
//! share its values is reused per thread, so with every value buffer pooled, a repeated call
//! of one shape allocates nothing on the CPU backend's hot path (BENCHMARKS.md counts it).
//!
//! A workspace holds what it was given back until it is dropped or [`Workspace::clear`]ed: at
//! most about the peak of one call's intermediates (BENCHMARKS.md measures it). Values taken
//! from it are overwritten (zeroed where the caller asked for zeros), so no call sees another's
//! numbers: outputs are bit-identical with and without a workspace, as tests/engine.rs checks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The size class of a request for `n` values: the least `m·2^e ≥ n` with `m` in 4..8. Buffers
/// are pooled by class, so one freed at one size serves requests of any size near it (at most
/// 25% more than asked for is held), and a pool holds about a call's peak, not the sum of every
/// size's.
fn class_above(n: usize) -> usize {
    let e = (usize::BITS - n.leading_zeros()).saturating_sub(3);
    let m = n.div_ceil(1 << e);
    m << e
}

/// The largest class a buffer of capacity `c` can serve.
fn class_below(c: usize) -> usize {
    let e = (usize::BITS - c.leading_zeros()).saturating_sub(3);
    (c >> e) << e
}

/// The capacity to allocate for `n` values inside a workspace's scope (so the buffer can serve
/// its whole class later); `n` itself outside one.
pub(crate) fn capacity_for(n: usize) -> usize {
    if n > 0 && active() {
        class_above(n)
    } else {
        n
    }
}

/// A pool of host buffers, shared by clones of this handle (and by every call that runs in its
/// scope, on any number of threads at once).
///
/// ```
/// use freelunch::workspace::Workspace;
/// use freelunch::{Tensor, UNet, UNetInputs};
///
/// let unet = UNet::from_dir("tests/fixtures/ddpm_basic".as_ref())?;
/// let pooled = unet.clone().with_workspace(Workspace::new());
/// let inputs = UNetInputs::new(Tensor::randn([2, 3, 16, 16], 0), 250.0);
/// let mut out = vec![0.0; 2 * 3 * 16 * 16];
/// pooled.forward_into(&inputs, &Default::default(), &mut out)?; // fills the pool
/// pooled.forward_into(&inputs, &Default::default(), &mut out)?; // reuses it
/// let stats = pooled.placement().workspace().unwrap().stats();
/// assert!(stats.reused > 0);
/// assert_eq!(out, unet.forward(&inputs)?.data());
/// # Ok::<(), freelunch::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Workspace {
    pool: Arc<Mutex<Pool>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("stats", &self.stats())
            .finish()
    }
}

/// What a workspace has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceStats {
    /// Buffers handed out from the pool.
    pub reused: u64,
    /// Buffers the pool had none of that size for (allocated as usual).
    pub missed: u64,
    /// Bytes the pool holds now, free for the next call.
    pub held_bytes: u64,
}

#[derive(Default)]
struct Pool {
    /// Free buffers by the size class they serve (`class_below` their capacity), each empty.
    free: HashMap<usize, Vec<Vec<f32>>>,
    stats: WorkspaceStats,
}

thread_local! {
    /// The workspace of the scope this thread is in, if any.
    static CURRENT: RefCell<Option<Workspace>> = const { RefCell::new(None) };
}

impl Workspace {
    /// An empty workspace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with this workspace serving the buffers this thread allocates and frees
    /// (nested scopes: the innermost serves; the previous one is back when `f` returns or
    /// unwinds).
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<Workspace>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                // A thread being torn down has no slot left; there is nothing to restore then.
                let _ = CURRENT.try_with(|c| *c.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        f()
    }

    /// Its counters.
    pub fn stats(&self) -> WorkspaceStats {
        self.lock().stats
    }

    /// Returns every free buffer to the allocator (the counters stay).
    pub fn clear(&self) {
        let mut pool = self.lock();
        pool.free.clear();
        pool.stats.held_bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while the lock was held leaves a pool of plain buffers: still sound to use.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An empty buffer with capacity at least `n` from the current scope's workspace, if it has
/// one of `n`'s class free; `None` outside a scope, for no values, or when none is free.
pub(crate) fn take(n: usize) -> Option<Vec<f32>> {
    if n == 0 {
        return None;
    }
    let ws = CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()?;
    let mut pool = ws.lock();
    let found = pool.free.get_mut(&class_above(n)).and_then(Vec::pop);
    match &found {
        Some(v) => {
            pool.stats.reused += 1;
            pool.stats.held_bytes -= (v.capacity() * 4) as u64;
        }
        None => pool.stats.missed += 1,
    }
    found
}

/// Gives `v`'s buffer to the current scope's workspace; outside a scope it is simply freed.
pub(crate) fn give(mut v: Vec<f32>) {
    let n = v.capacity();
    if n == 0 {
        return;
    }
    let Some(ws) = CURRENT.try_with(|c| c.borrow().clone()).ok().flatten() else {
        return;
    };
    v.clear();
    let mut pool = ws.lock();
    pool.stats.held_bytes += (n * 4) as u64;
    pool.free.entry(class_below(n)).or_default().push(v);
}

/// Whether this thread is in a workspace's scope (so a dropped buffer is worth giving back).
pub(crate) fn active() -> bool {
    CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_every_request_within_a_quarter() {
        for n in (1..5000).chain([4095, 4096, 4097, 1 << 20, (1 << 20) + 1, 123_456_789]) {
            let up = class_above(n);
            assert!(up >= n && (up - n) * 4 <= n, "{n} -> {up}");
            assert_eq!(class_below(up), up, "{n}: {up} is a class");
            // A buffer of any capacity serves the class below it and no class above.
            let down = class_below(n);
            assert!(down <= n && class_above(down) == down, "{n} -> {down}");
        }
    }

    /// A size that is its own class.
    const N: usize = 4096;

    #[test]
    fn buffers_come_back_only_inside_a_scope_and_only_at_their_size() {
        let ws = Workspace::new();
        give(vec![1.0; N]); // no scope: freed
        assert_eq!(ws.stats().held_bytes, 0);
        ws.scope(|| {
            assert!(take(N).is_none());
            let mut v = Vec::with_capacity(N);
            v.extend(std::iter::repeat_n(2.0f32, N));
            let ptr = v.as_ptr();
            give(v);
            give(Vec::new()); // nothing to keep
            assert_eq!(ws.stats().held_bytes, (N * 4) as u64);
            // N + 1 is of the next class up.
            assert!(take(N + 1).is_none());
            let back = take(N).expect("the buffer given back");
            assert_eq!((back.as_ptr(), back.len()), (ptr, 0));
            // Small buffers are kept too.
            give(vec![3.0; 3]);
            assert_eq!(take(3).map(|v| v.capacity()), Some(3));
        });
        assert!(!active());
        let stats = ws.stats();
        assert_eq!((stats.reused, stats.missed, stats.held_bytes), (2, 2, 0));
    }

    #[test]
    fn nested_scopes_restore_the_outer_one_even_on_unwind() {
        let (outer, inner) = (Workspace::new(), Workspace::new());
        outer.scope(|| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inner.scope(|| panic!("inside"));
            }));
            assert!(r.is_err());
            give(vec![0.0; N]);
        });
        assert_eq!(outer.stats().held_bytes, (N * 4) as u64);
        assert_eq!(inner.stats().held_bytes, 0);
    }
}
