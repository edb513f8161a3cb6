//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod goldens;
pub mod gpu;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repo root: `FREELUNCH_ROOT` if set (test binaries carried to another machine and run from
/// a copy of the repo), else the compiled-in manifest dir.
pub fn root() -> PathBuf {
    std::env::var_os("FREELUNCH_ROOT").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// The `freelunch` binary: `FREELUNCH_BIN` if set (carried test binaries), else the one cargo
/// built alongside the tests.
pub fn freelunch_bin() -> PathBuf {
    std::env::var_os("FREELUNCH_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_freelunch").into(), Into::into)
}

/// Where scratch folders go: `FREELUNCH_SCRATCH` if set, else the target dir's tmp folder when
/// the target dir exists (it does not where test binaries were carried to), else the system's.
fn scratch_base() -> PathBuf {
    if let Some(dir) = std::env::var_os("FREELUNCH_SCRATCH") {
        return dir.into();
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    match tmp.parent() {
        Some(target) if target.is_dir() => tmp.to_path_buf(),
        _ => std::env::temp_dir().join("freelunch-tests"),
    }
}

/// `n` mask bytes, each 1 (keep) with probability `keep`.
pub fn random_mask_bytes(n: usize, keep: f64, seed: u64) -> Vec<u8> {
    let mut rng = freelunch::rng::Rng::new(seed);
    (0..n).map(|_| u8::from(rng.uniform() < keep)).collect()
}

/// The `sample` tensor of a safetensors file (a golden or a CLI output).
pub fn load_sample(path: &Path) -> freelunch::Tensor {
    freelunch::safetensors_io::load(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .remove("sample")
        .unwrap_or_else(|| panic!("{}: no `sample`", path.display()))
        .tensor
}

/// Runs the `freelunch` CLI with `args`, asserts success, and returns the `sample` it wrote to
/// `out`.
pub fn cli_sample<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    out: &Path,
) -> freelunch::Tensor {
    let o = std::process::Command::new(freelunch_bin())
        .args(args)
        .arg("--output")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    load_sample(out)
}

/// A fresh, empty scratch folder under the target dir (see `scratch_base`).
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = scratch_base().join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a flat fixture folder into a scratch folder.
pub fn copy_fixture(name: &str) -> PathBuf {
    let dst = scratch(name);
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    dst
}

/// Writes a safetensors file by hand: (name, dtype string, shape, raw little-endian bytes).
pub fn write_raw_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = String::from("{");
    let mut offset = 0;
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{}]}}",
            offset + bytes.len()
        ));
        offset += bytes.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut buf = (header.len() as u64).to_le_bytes().to_vec();
    buf.extend_from_slice(header.as_bytes());
    for (_, _, _, bytes) in tensors {
        buf.extend_from_slice(bytes);
    }
    std::fs::write(path, buf).unwrap();
}
