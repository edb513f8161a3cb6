//! Process-unique ids of parameter sets (a layer's weights, a mask's bits): a device backend
//! keys its own copies by them, and unloading a model evicts exactly the ids its loader took.
//! Apart from `nn` so that anything holding parameters (layers, masks) can take one without
//! importing the layers.

/// A process-unique id for a layer's parameters, so a device backend can key its own copies.
pub fn fresh_uid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let uid = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    UIDS_TAKEN.with(|r| {
        if let Some(taken) = r.borrow_mut().as_mut() {
            taken.push(uid);
        }
    });
    uid
}

thread_local! {
    /// The uids handed out on this thread while `taking_uids` runs.
    static UIDS_TAKEN: std::cell::RefCell<Option<Vec<u64>>> = const { std::cell::RefCell::new(None) };
}

/// `build()`, and the uid of every layer it made: a model's loader runs on one thread, so this
/// is exactly the set of keys a device's parameter copies of that model have (what unloading
/// evicts).
pub(crate) fn taking_uids<T>(build: impl FnOnce() -> T) -> (T, Vec<u64>) {
    let outer = UIDS_TAKEN.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = build();
    let mine = UIDS_TAKEN.with(|r| {
        let mut r = r.borrow_mut();
        let mine = r.take().unwrap_or_default();
        // A nested recording (an expert built inside a model) also counts for the outer one.
        *r = outer.map(|mut o| {
            o.extend_from_slice(&mine);
            o
        });
        mine
    });
    (out, mine)
}
