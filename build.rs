//! Build script: embeds the CUDA kernels of `kernels/` in the crate and, where NVRTC can be
//! loaded, compiles each `kernels/*.cu` to PTX for every architecture of
//! [`source::ARCHS`] so that a kernel that does not compile fails the build. Without NVRTC the
//! build goes on with a warning and the CUDA backend compiles the sources at first use.
//!
//! NVRTC is looked for in `$FREELUNCH_NVRTC` (the path of the library), then in the wheels that
//! `tools/cuda_toolchain.sh` installs into `.cache/cuda`, then by the dynamic loader. Writes
//! `$OUT_DIR/kernels.rs`, included by `src/backend/cuda/kernels.rs`, and the PTX files beside it.

#[path = "src/backend/cuda/source.rs"]
mod source;

use std::env;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use libloading::Library;

/// The environment variable naming the NVRTC library to use.
const NVRTC_ENV: &str = "FREELUNCH_NVRTC";
/// Where `tools/cuda_toolchain.sh` puts NVRTC, relative to the manifest directory.
const CACHED_NVRTC: &str = ".cache/cuda/site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12";
/// What the dynamic loader is asked for when neither of the above loads.
const LOADER_NVRTC: [&str; 3] = [
    "libnvrtc.so.12",
    "libnvrtc.so",
    "/usr/local/cuda/lib64/libnvrtc.so",
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed={NVRTC_ENV}");
    // Run again when tools/cuda_toolchain.sh installs or updates NVRTC; it writes
    // .cache/cuda/pins last. Cargo reruns a build script on every build while a path it watches
    // is missing, so before the first install this watches .cache (kept in git by its README).
    if manifest.join(".cache/cuda/pins").exists() {
        println!("cargo:rerun-if-changed=.cache/cuda/pins");
    } else if manifest.join(".cache").is_dir() {
        println!("cargo:rerun-if-changed=.cache");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let kernels = manifest.join("kernels");
    let common_path = kernels.join("common.cuh");
    let common_path = common_path.is_file().then_some(common_path.as_path());
    let common = common_path.map(read).unwrap_or_default();
    let sources = kernel_sources(&kernels);

    let mut ptx = Vec::new();
    if !sources.is_empty() {
        match Nvrtc::find(&manifest) {
            Some(nvrtc) => ptx = compile_all(&nvrtc, &sources, &common, &out_dir),
            None => println!(
                "cargo:warning=freelunch: NVRTC not found; CUDA kernels will be compiled at first use"
            ),
        }
    }

    let generated = generated_rust(common_path, &sources, &ptx);
    write_if_changed(&out_dir.join("kernels.rs"), &generated);
}

/// A kernel file: its stem (`attention` for `kernels/attention.cu`), path and text.
struct Source {
    stem: String,
    path: PathBuf,
    text: String,
}

/// Every `*.cu` directly in `dir`, sorted by stem; none when `dir` does not exist.
fn kernel_sources(dir: &Path) -> Vec<Source> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sources: Vec<Source> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())))
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cu") && path.is_file())
        .map(|path| Source {
            stem: path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or_else(|| panic!("{}: file name is not UTF-8", path.display()))
                .to_owned(),
            text: read(&path),
            path,
        })
        .collect();
    sources.sort_by(|a, b| a.stem.cmp(&b.stem));
    sources
}

/// One compiled (source, architecture) pair: the stem, the architecture and the PTX file.
struct Ptx {
    stem: String,
    arch: &'static str,
    path: PathBuf,
}

/// Compiles every source for every architecture on a few threads, writes the PTX into
/// `$OUT_DIR/ptx/` and returns the files in (stem, architecture) order. Compiler warnings become
/// cargo warnings; if anything fails to compile, reports every failure and exits the build.
fn compile_all(nvrtc: &Nvrtc, sources: &[Source], common: &str, out_dir: &Path) -> Vec<Ptx> {
    let jobs: Vec<(&Source, &'static str)> = sources
        .iter()
        .flat_map(|source| source::ARCHS.iter().map(move |&arch| (source, arch)))
        .collect();
    let expanded: Vec<String> = sources
        .iter()
        .map(|s| source::expand(&s.stem, &s.text, common))
        .collect();
    let results: Vec<Mutex<Option<Result<Compiled, String>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(jobs.len());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let job = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(source, arch)) = jobs.get(job) else {
                    break;
                };
                let text = &expanded[job / source::ARCHS.len()];
                let options = source::nvrtc_options(arch);
                let result = nvrtc.compile(&format!("{}.cu", source.stem), text, &options);
                *results[job].lock().unwrap() = Some(result);
            });
        }
    });

    let ptx_dir = out_dir.join("ptx");
    fs::create_dir_all(&ptx_dir).unwrap_or_else(|e| panic!("creating {}: {e}", ptx_dir.display()));
    let mut ptx = Vec::new();
    let mut warnings = Vec::new();
    let mut failures = Vec::new();
    for (&(source, arch), result) in jobs.iter().zip(results) {
        match result.into_inner().unwrap().expect("every job ran") {
            Ok(compiled) => {
                if !compiled.log.trim().is_empty() {
                    add_message(&mut warnings, source, arch, compiled.log.trim().to_owned());
                }
                let path = ptx_dir.join(format!("{}.{arch}.ptx", source.stem));
                write_if_changed(&path, &compiled.ptx);
                ptx.push(Ptx {
                    stem: source.stem.clone(),
                    arch,
                    path,
                });
            }
            Err(message) => add_message(&mut failures, source, arch, message),
        }
    }
    for (source, archs, log) in &warnings {
        for line in log.lines().filter(|line| !line.trim().is_empty()) {
            println!(
                "cargo:warning=freelunch: NVRTC on kernels/{}.cu ({}): {line}",
                source.stem,
                archs.join(", ")
            );
        }
    }
    if failures.is_empty() {
        return ptx;
    }
    for (source, archs, message) in &failures {
        let index = sources.iter().position(|s| s.stem == source.stem).unwrap();
        let dump = out_dir.join("expanded").join(format!("{}.cu", source.stem));
        fs::create_dir_all(dump.parent().unwrap()).ok();
        write_if_changed(&dump, &expanded[index]);
        eprintln!(
            "error: kernels/{}.cu does not compile for {} with NVRTC ({})\n\
             options for {}: {}\n\
             line numbers count lines of the source with kernels/common.cuh expanded, \
             as written to {}\n{message}\n",
            source.stem,
            archs.join(", "),
            nvrtc.origin,
            archs[0],
            source::nvrtc_options(archs[0]).join(" "),
            dump.display(),
        );
    }
    std::process::exit(1);
}

/// A compiler message about a source, for the architectures it came for.
type Message<'a> = (&'a Source, Vec<&'static str>, String);

/// Adds `text` for (`source`, `arch`) to `list`, merged with the last message when that is the
/// same text for the same source, so that a log is shown once for all architectures.
fn add_message<'a>(
    list: &mut Vec<Message<'a>>,
    source: &'a Source,
    arch: &'static str,
    text: String,
) {
    match list.last_mut() {
        Some((last, archs, last_text)) if last.stem == source.stem && *last_text == text => {
            archs.push(arch)
        }
        _ => list.push((source, vec![arch], text)),
    }
}

/// The text of `$OUT_DIR/kernels.rs`.
fn generated_rust(common: Option<&Path>, sources: &[Source], ptx: &[Ptx]) -> String {
    let mut out = String::from("// Generated by build.rs; do not edit.\n\n");
    out.push_str("/// The shared header, `kernels/common.cuh`.\n");
    match common {
        Some(path) => writeln!(out, "pub static COMMON: &str = {};", include(path)),
        None => writeln!(out, "pub static COMMON: &str = \"\";"),
    }
    .unwrap();
    out.push_str("/// (file stem, source as written) for every kernels/*.cu.\n");
    out.push_str("pub static SOURCES: &[(&str, &str)] = &[\n");
    for source in sources {
        writeln!(out, "    ({:?}, {}),", source.stem, include(&source.path)).unwrap();
    }
    out.push_str("];\n");
    out.push_str(
        "/// (file stem, arch, PTX) compiled by build.rs; empty when NVRTC was not found.\n",
    );
    out.push_str("pub static PTX: &[(&str, &str, &str)] = &[\n");
    for ptx in ptx {
        writeln!(
            out,
            "    ({:?}, {:?}, {}),",
            ptx.stem,
            ptx.arch,
            include(&ptx.path)
        )
        .unwrap();
    }
    out.push_str("];\n");
    out
}

/// `include_str!("<path>")`, the path written as a Rust string literal.
fn include(path: &Path) -> String {
    let path = path
        .to_str()
        .unwrap_or_else(|| panic!("{}: path is not UTF-8", path.display()));
    format!("include_str!({path:?})")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Writes `text` to `path` unless it already holds exactly that, so that an unchanged file keeps
/// its modification time and does not make cargo rebuild what includes it.
fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// What NVRTC made of one program: the PTX and the compiler's log (warnings; usually empty).
struct Compiled {
    ptx: String,
    log: String,
}

type Program = *mut c_void;
type NvrtcResult = c_int;
const NVRTC_SUCCESS: NvrtcResult = 0;

/// The few NVRTC entry points the build needs, from a loaded library.
struct Nvrtc {
    /// Where the library came from, for messages.
    origin: String,
    create_program: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> NvrtcResult,
    compile_program: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> NvrtcResult,
    get_program_log_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    get_program_log: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    get_ptx_size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
    get_ptx: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    destroy_program: unsafe extern "C" fn(*mut Program) -> NvrtcResult,
    get_error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
    /// Keeps the functions above loaded; never used directly.
    _library: Library,
}

impl Nvrtc {
    /// The first NVRTC that loads, in the order the module documentation gives. A library that
    /// was named explicitly or is in the cache but does not load is worth a warning; one the
    /// loader does not find is not.
    fn find(manifest: &Path) -> Option<Nvrtc> {
        if let Some(path) = env::var_os(NVRTC_ENV) {
            match Nvrtc::load(Path::new(&path)) {
                Ok(nvrtc) => return Some(nvrtc),
                Err(e) => println!(
                    "cargo:warning=freelunch: {NVRTC_ENV}={}: {e}",
                    Path::new(&path).display()
                ),
            }
        }
        let cached = manifest.join(CACHED_NVRTC);
        if cached.exists() {
            match Nvrtc::load(&cached) {
                Ok(nvrtc) => return Some(nvrtc),
                Err(e) => println!("cargo:warning=freelunch: {}: {e}", cached.display()),
            }
        }
        LOADER_NVRTC
            .iter()
            .find_map(|name| Nvrtc::load(Path::new(name)).ok())
    }

    fn load(path: &Path) -> Result<Nvrtc, libloading::Error> {
        // SAFETY: loading NVRTC runs no initialisation with preconditions, and each symbol is
        // given the type of its declaration in NVIDIA's nvrtc.h.
        unsafe {
            let library = Library::new(path)?;
            Ok(Nvrtc {
                origin: path.display().to_string(),
                create_program: *library.get(b"nvrtcCreateProgram\0")?,
                compile_program: *library.get(b"nvrtcCompileProgram\0")?,
                get_program_log_size: *library.get(b"nvrtcGetProgramLogSize\0")?,
                get_program_log: *library.get(b"nvrtcGetProgramLog\0")?,
                get_ptx_size: *library.get(b"nvrtcGetPTXSize\0")?,
                get_ptx: *library.get(b"nvrtcGetPTX\0")?,
                destroy_program: *library.get(b"nvrtcDestroyProgram\0")?,
                get_error_string: *library.get(b"nvrtcGetErrorString\0")?,
                _library: library,
            })
        }
    }

    /// Compiles `source` as the program `name` (the name compiler messages use). The error is
    /// the NVRTC status and the full log.
    fn compile(&self, name: &str, source: &str, options: &[String]) -> Result<Compiled, String> {
        let source = CString::new(source).map_err(|_| "the source contains a NUL byte")?;
        let name = CString::new(name).map_err(|_| "the name contains a NUL byte")?;
        let options: Vec<CString> = options
            .iter()
            .map(|o| CString::new(o.as_str()).expect("options hold no NUL"))
            .collect();
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let mut program: Program = ptr::null_mut();
        // SAFETY: the strings outlive the calls, `program` is created before it is used and
        // destroyed once, and the buffers passed to the getters have the sizes NVRTC reported.
        unsafe {
            let status = (self.create_program)(
                &mut program,
                source.as_ptr(),
                name.as_ptr(),
                0,
                ptr::null(),
                ptr::null(),
            );
            self.check(status, "nvrtcCreateProgram")?;
            let status = (self.compile_program)(
                program,
                c_int::try_from(option_ptrs.len()).unwrap(),
                option_ptrs.as_ptr(),
            );
            let log = self.read(program, self.get_program_log_size, self.get_program_log);
            let result = match (status, log) {
                (NVRTC_SUCCESS, Ok(log)) => self
                    .read(program, self.get_ptx_size, self.get_ptx)
                    .map(|ptx| Compiled { ptx, log }),
                (NVRTC_SUCCESS, Err(e)) => Err(e),
                (_, log) => Err(format!(
                    "{}\n{}",
                    self.error_string(status),
                    log.unwrap_or_else(|e| format!("(no log: {e})"))
                )),
            };
            (self.destroy_program)(&mut program);
            result
        }
    }

    /// A string NVRTC hands out through a size getter and a copy getter (the log, the PTX),
    /// without its terminating NUL.
    unsafe fn read(
        &self,
        program: Program,
        size: unsafe extern "C" fn(Program, *mut usize) -> NvrtcResult,
        get: unsafe extern "C" fn(Program, *mut c_char) -> NvrtcResult,
    ) -> Result<String, String> {
        let mut len = 0usize;
        self.check(size(program, &mut len), "nvrtcGet*Size")?;
        let mut buffer = vec![0u8; len.max(1)];
        self.check(get(program, buffer.as_mut_ptr().cast()), "nvrtcGet*")?;
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        buffer.truncate(end);
        String::from_utf8(buffer).map_err(|e| format!("NVRTC returned text that is not UTF-8: {e}"))
    }

    fn check(&self, status: NvrtcResult, call: &str) -> Result<(), String> {
        if status == NVRTC_SUCCESS {
            Ok(())
        } else {
            Err(format!("{call}: {}", self.error_string(status)))
        }
    }

    fn error_string(&self, status: NvrtcResult) -> String {
        // SAFETY: NVRTC returns a static NUL-terminated string for any status.
        let text = unsafe { (self.get_error_string)(status) };
        if text.is_null() {
            format!("NVRTC status {status}")
        } else {
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        }
    }
}
