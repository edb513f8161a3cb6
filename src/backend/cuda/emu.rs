//! `--device emu`: the CUDA backend on the PTX executor (the `emu/` crates of this workspace).
//!
//! The executor is a pair of shared libraries whose SONAMEs are `libcuda.so` and
//! `libcufft.so`. Loading them here by their paths, before anything opens the driver, makes
//! cudarc's `dlopen("libcuda.so")` and `dlopen("libcufft.so")` return them (the dynamic loader
//! hands back an already-loaded object whose SONAME matches), so the unchanged backend and the
//! unchanged kernels run on it. They are never on the loader's search path, and `auto` never
//! picks them: only `--device emu` or `FREELUNCH_DEVICE=emu` load them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The driver stand-in's file name (`emu/cuda`).
pub const DRIVER_FILE: &str = "libfreelunch_emu_cuda.so";
/// The cuFFT stand-in's file name (`emu/cufft`).
pub const CUFFT_FILE: &str = "libfreelunch_emu_cufft.so";
/// The folder to find them in, where the default (beside the executable) does not hold them.
pub const DIR_ENV: &str = "FREELUNCH_EMU_DIR";

static LOADED: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Whether the executor stands in for the driver in this process.
pub fn is_loaded() -> bool {
    matches!(LOADED.get(), Some(Ok(_)))
}

/// Where the libraries are: `$FREELUNCH_EMU_DIR`, else the newest pair among the executable's
/// folder, its `deps/` and its parent (cargo puts test and bench binaries in
/// `target/<profile>/deps`, and `cargo test` refreshes the libraries there without copying them
/// up to `target/<profile>`).
fn find() -> std::result::Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os(DIR_ENV) {
        candidates.push(PathBuf::from(d));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_path_buf());
            candidates.push(dir.join("deps"));
            if let Some(up) = dir.parent() {
                candidates.push(up.to_path_buf());
            }
        }
    }
    let modified = |dir: &Path| -> Option<std::time::SystemTime> {
        let driver = std::fs::metadata(dir.join(DRIVER_FILE)).ok()?;
        dir.join(CUFFT_FILE).is_file().then_some(())?;
        driver.modified().ok()
    };
    let newest = candidates
        .iter()
        .filter_map(|d| modified(d).map(|t| (t, d)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, d)| d.clone());
    newest.ok_or_else(|| {
        format!(
            "the PTX executor ({DRIVER_FILE}, {CUFFT_FILE}) is not built: run `cargo build --release \
             --workspace` (it builds emu/cuda and emu/cufft), or point {DIR_ENV} at their folder \
             (looked in: {})",
            if candidates.is_empty() {
                "nowhere".to_string()
            } else {
                candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        )
    })
}

/// Whether a CUDA driver is already loaded in this process, and if so whether it is ours.
fn driver_already_loaded() -> Option<bool> {
    use libloading::os::unix::{Library, RTLD_NOW};
    /// glibc's `RTLD_NOLOAD`: look up an object only if it is already loaded.
    const RTLD_NOLOAD: std::ffi::c_int = 4;
    // SAFETY: RTLD_NOLOAD only looks up an already-loaded object; nothing is initialised.
    let lib = unsafe { Library::open(Some("libcuda.so"), RTLD_NOW | RTLD_NOLOAD) }
        .or_else(|_| unsafe { Library::open(Some("libcuda.so.1"), RTLD_NOW | RTLD_NOLOAD) })
        .ok()?;
    // SAFETY: only asks whether the symbol exists.
    let ours =
        unsafe { lib.get::<unsafe extern "C" fn() -> i32>(b"freelunch_emu_version") }.is_ok();
    Some(ours)
}

fn load_from(dir: &Path) -> std::result::Result<PathBuf, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    if driver_already_loaded() == Some(false) {
        return Err(
            "a CUDA driver is already loaded in this process, so the PTX executor cannot \
                    stand in for it; choose --device emu before anything else uses CUDA"
                .into(),
        );
    }
    for file in [DRIVER_FILE, CUFFT_FILE] {
        let path = dir.join(file);
        // SAFETY: our own libraries; their initialisers do nothing but register symbols.
        let lib = unsafe { Library::open(Some(&path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| format!("loading {}: {e}", path.display()))?;
        // Loaded for the life of the process: cudarc keeps their symbols.
        std::mem::forget(lib);
    }
    match driver_already_loaded() {
        Some(true) => Ok(dir.to_path_buf()),
        _ => Err(format!(
            "{} loaded but does not answer as libcuda.so (was it built without its SONAME?)",
            dir.join(DRIVER_FILE).display()
        )),
    }
}

/// Loads the executor as this process's CUDA driver (once; later calls report the first
/// outcome).
pub fn load() -> Result<()> {
    LOADED
        .get_or_init(|| find().and_then(|dir| load_from(&dir)))
        .as_ref()
        .map(drop)
        .map_err(|e| Error::DeviceUnavailable {
            device: "emu".into(),
            msg: format!("device emu: {e}"),
        })
}
