//! The process-wide cache of dense layers' packed weights (the direct f32 convolution's and the
//! bf16 tile convolution's), keyed by layer uid (`nn::fresh_uid`) and kernel, so a layer is
//! packed once rather than on every call. Capped at FREELUNCH_PACK_CACHE_MB (default 2048) for
//! all kernels together; layers past the cap are packed on every call. A model's entries go when
//! its last handle drops (`evict`).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;

/// Which kernel's packing an entry holds (one layer may have one of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// `conv_direct`'s f32 weight panels.
    Direct,
    /// `conv_amx`'s bf16 VNNI tiles.
    Amx,
}

/// An entry: the addresses of the weight and bias it was packed from (a uid names one layer's
/// parameters for the process's life, so these only guard against a caller reusing a uid), its
/// bytes, and the packing.
struct Entry {
    id: (usize, usize),
    bytes: usize,
    packed: Arc<dyn Any + Send + Sync>,
}

static CACHE: Mutex<Option<HashMap<(u64, Kernel), Entry>>> = Mutex::new(None);
static CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

fn cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| {
        std::env::var("FREELUNCH_PACK_CACHE_MB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(2048)
            .saturating_mul(1 << 20)
    })
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<(u64, Kernel), Entry>>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Layer `uid`'s packing for `kernel`, made by `pack` (returning it and its bytes) the first
/// time and kept while the cache is under its cap. `id` is the (weight, bias) addresses.
pub(crate) fn get_or_pack<T: Send + Sync + 'static>(
    uid: u64,
    kernel: Kernel,
    id: (usize, usize),
    pack: impl FnOnce() -> Result<(T, usize)>,
) -> Result<Arc<T>> {
    if let Some(e) = lock().as_ref().and_then(|c| c.get(&(uid, kernel))) {
        if e.id == id {
            if let Ok(p) = e.packed.clone().downcast::<T>() {
                return Ok(p);
            }
        }
    }
    let (packed, bytes) = pack()?;
    let packed = Arc::new(packed);
    if CACHED_BYTES.load(Ordering::Relaxed) + bytes <= cap() {
        let mut guard = lock();
        let entry = Entry {
            id,
            bytes,
            packed: packed.clone(),
        };
        if let Some(old) = guard
            .get_or_insert_with(HashMap::new)
            .insert((uid, kernel), entry)
        {
            CACHED_BYTES.fetch_sub(old.bytes, Ordering::Relaxed);
        }
        CACHED_BYTES.fetch_add(bytes, Ordering::Relaxed);
    }
    Ok(packed)
}

/// Drops every kernel's packing of the layers `uids` (a model's, when its last handle goes), so
/// a dropped model's packing does not hold memory or count against the cap.
pub(crate) fn evict(uids: &[u64]) {
    let mut guard = lock();
    if let Some(cache) = guard.as_mut() {
        for &uid in uids {
            for kernel in [Kernel::Direct, Kernel::Amx] {
                if let Some(old) = cache.remove(&(uid, kernel)) {
                    CACHED_BYTES.fetch_sub(old.bytes, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Whether layer `uid`'s packing for `kernel` is held (tests).
#[cfg(test)]
pub(crate) fn holds(uid: u64, kernel: Kernel) -> bool {
    lock()
        .as_ref()
        .is_some_and(|c| c.contains_key(&(uid, kernel)))
}
