//! The CUDA backend: one device, one stream, the kernels of `kernels/*.cu`.
//!
//! Libraries are loaded at run time (cudarc's dynamic loading), so this module builds and the
//! crate's CPU paths run on machines with no CUDA at all; `Gpu::new` checks that the driver
//! library and a device exist before touching either, and answers with an error otherwise.
//! Kernels come as PTX embedded by build.rs (for sm_80 and sm_90) or, where the build had no
//! NVRTC, are compiled with NVRTC at first use and cached on disk.

pub mod backend;
pub mod emu;
pub mod kernels;
pub(crate) mod params;
pub mod source;
pub mod tensor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    DriverError,
};

use crate::dtype::DType;
use crate::error::{Error, Result};
pub use tensor::GpuTensor;

/// A driver error as this crate's error, naming what was being done.
pub(crate) fn driver(what: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| {
        let oom = e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY;
        Error::Cuda {
            during: what.to_string(),
            code: if oom {
                "out of memory".into()
            } else {
                format!("{e:?}")
            },
        }
    }
}

/// Whether a CUDA driver library can be loaded here (no GPU is needed to answer).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// How many CUDA devices this machine has; 0 where there is no driver, and where the PTX
/// executor stands in for it (its devices are `emu`, never `cuda`).
pub fn device_count() -> usize {
    if emu::is_loaded() || !driver_present() || cudarc::driver::result::init().is_err() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// One opened CUDA device with its kernels, stream and per-layer parameter copies.
pub struct Gpu {
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) dtype: DType,
    name: String,
    compute_capability: (i32, i32),
    modules: Vec<Arc<CudaModule>>,
    functions: Mutex<HashMap<String, CudaFunction>>,
    pub(crate) cache: backend::ParamCache,
    poison: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("compute_capability", &self.compute_capability)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Gpu {
    /// Opens GPU `ordinal` for models stored in `dtype`.
    pub fn new(ordinal: usize, dtype: DType) -> Result<Self> {
        if emu::is_loaded() {
            return Err(Error::DeviceUnavailable {
                device: format!("cuda:{ordinal}"),
                msg: format!(
                    "device cuda:{ordinal}: the PTX executor stands in for the CUDA driver in \
                     this process (--device emu), so no GPU can be opened alongside it"
                ),
            });
        }
        Self::open(ordinal, dtype)
    }

    /// Opens device `ordinal` of the PTX executor (`--device emu`), loading it first.
    pub fn emulated(ordinal: usize, dtype: DType) -> Result<Self> {
        Self::emulated_with_sources(ordinal, dtype, &[])
    }

    /// As [`Gpu::emulated`], with `sources` — (file stem, CUDA source) pairs — in place of the
    /// embedded kernels of those stems, compiled now with NVRTC (`tools/cuda_toolchain.sh`
    /// installs it): to run a changed kernel without rebuilding the crate, and for the mutation
    /// tests.
    pub fn emulated_with_sources(
        ordinal: usize,
        dtype: DType,
        sources: &[(&str, &str)],
    ) -> Result<Self> {
        emu::load()?;
        if let Some((stem, _)) = sources
            .iter()
            .find(|(s, _)| !kernels::SOURCES.iter().any(|(k, _)| k == s))
        {
            return Err(Error::not_found(
                format!("kernels/{stem}.cu"),
                format!("there is no kernels/{stem}.cu to replace"),
            ));
        }
        Self::open_with("emu", ordinal, dtype, sources)
    }

    /// Whether this device is the PTX executor.
    pub fn is_emulated(&self) -> bool {
        emu::is_loaded()
    }

    fn open(ordinal: usize, dtype: DType) -> Result<Self> {
        Self::open_with("cuda", ordinal, dtype, &[])
    }

    /// `device` names the device in messages (`cuda` or `emu`).
    fn open_with(
        device: &str,
        ordinal: usize,
        dtype: DType,
        overrides: &[(&str, &str)],
    ) -> Result<Self> {
        if !driver_present() {
            return Err(Error::DeviceUnavailable {
                device: format!("{device}:{ordinal}"),
                msg: format!(
                    "device {device}:{ordinal}: no CUDA driver library (libcuda.so) on this \
                     machine; use --device cpu"
                ),
            });
        }
        cudarc::driver::result::init().map_err(driver("initialising the CUDA driver"))?;
        let count = CudaContext::device_count().map_err(driver("counting CUDA devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::DeviceUnavailable {
                device: format!("{device}:{ordinal}"),
                msg: format!(
                    "device {device}:{ordinal}: this machine has {count} {} device(s)",
                    if device == "emu" { "emulated" } else { "CUDA" }
                ),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("opening the device"))?;
        let cc = ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?;
        if cc.0 < 8 {
            return Err(Error::DeviceUnavailable {
                device: format!("{device}:{ordinal}"),
                msg: format!(
                    "device {device}:{ordinal} has compute capability {}.{}; the kernels need \
                     8.0 or newer (mma.sync with bf16, cvt.rn.bf16)",
                    cc.0, cc.1
                ),
            });
        }
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if ctx.has_async_alloc() {
            keep_freed_memory(ctx.cu_device());
        }
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        // One stream only: cudarc's cross-stream event tracking has nothing to do.
        // SAFETY: every buffer of this backend is used on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        let mut modules = Vec::new();
        for (stem, src) in kernels::SOURCES {
            let ptx = match overrides.iter().find(|(s, _)| s == stem) {
                Some((_, text)) => compile_ptx(stem, text, arch_of(cc))?,
                None => ptx_for(stem, src, cc)?,
            };
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(driver(&format!("loading kernels/{stem}.cu")))?;
            modules.push(module);
        }
        Ok(Gpu {
            stream,
            dtype,
            name,
            compute_capability: cc,
            modules,
            functions: Mutex::new(HashMap::new()),
            cache: backend::ParamCache::default(),
            poison: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The device's name, as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The type this device stores weights and activations in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How many layers' parameters are on the device now: uploaded on a layer's first use (or
    /// by `warm_up`), evicted when their model is unloaded or dropped.
    pub fn resident_layers(&self) -> usize {
        self.cache.resident()
    }

    /// The stream every kernel of this device runs on (for peers such as cuBLAS in benches).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device address of a tensor's storage (for peers such as cuBLAS in benches).
    pub fn device_ptr(&self, t: &GpuTensor) -> u64 {
        self.ptr(&t.buf)
    }

    /// The compute capability, (major, minor): 8.0 or newer.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// Tests: fill every new output buffer with all-ones bytes (NaN in f32, f16 and bf16) so
    /// an element a kernel forgets to write cannot pass as a plausible value.
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn poisoned(&self) -> bool {
        self.poison.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for all queued work; kernel faults surface here.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the GPU"))
    }

    /// The kernel `name` from whichever kernel file defines it.
    pub(crate) fn function(&self, name: &str) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().expect("function cache");
        if let Some(f) = cache.get(name) {
            return Ok(f.clone());
        }
        let f = self
            .modules
            .iter()
            .find_map(|m| m.load_function(name).ok())
            .ok_or_else(|| Error::Cuda {
                during: format!("looking up kernel `{name}`"),
                code: "no such kernel in the loaded modules".into(),
            })?;
        cache.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Uninitialised device memory of `len` elements (at least one, so every pointer is
    /// distinct and valid).
    pub(crate) fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller writes the buffer before reading it.
        unsafe { self.stream.alloc::<T>(len.max(1)) }
            .map_err(|e| self.alloc_error(e, "allocating GPU memory", len * size_of::<T>()))
    }

    /// A failed allocation of `bytes`: `Error::OutOfMemory` (with what the device has free)
    /// when the driver says so, else the driver's error.
    fn alloc_error(&self, e: DriverError, what: &str, bytes: usize) -> Error {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let free = self.stream.context().mem_get_info().map_or(0, |(f, _)| f);
            return Error::OutOfMemory {
                what: format!("{what} on the GPU"),
                needed: bytes as u64,
                available: free as u64,
            };
        }
        driver(what)(e)
    }

    pub(crate) fn upload_slice<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return self.alloc(1);
        }
        self.stream
            .clone_htod(data)
            .map_err(|e| self.alloc_error(e, "copying to the GPU", std::mem::size_of_val(data)))
    }

    pub(crate) fn download_slice<T: DeviceRepr + Default + Clone>(
        &self,
        data: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        let mut out = vec![T::default(); data.len()];
        self.stream
            .memcpy_dtoh(data, &mut out)
            .map_err(driver("copying from the GPU"))?;
        self.synchronize()?;
        out.truncate(len);
        Ok(out)
    }

    /// The raw device address of a buffer, for kernel parameter structs.
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }
}

/// Bytes the device's default pool has reserved but not handed out (freed buffers it keeps).
pub(crate) fn pool_unused(dev: cudarc::driver::sys::CUdevice) -> Option<u64> {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let (mut reserved, mut used) = (0u64, 0u64);
    // SAFETY: plain driver calls on a valid device with out-pointers to locals.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev)
            .result()
            .ok()?;
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
            &mut reserved as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .ok()?;
        sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            &mut used as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .ok()?;
    }
    Some(reserved.saturating_sub(used))
}

/// Buffers are allocated and freed stream-ordered (`cuMemAllocAsync`) from the device's default
/// pool, whose release threshold is 0: every synchronisation (one per U-Net call, when the
/// output is copied back) would hand all freed memory back to the driver and the next call
/// would map it again. Keeping it makes the pool a caching allocator, like PyTorch's. Failing
/// to set this costs speed only, so errors are ignored.
fn keep_freed_memory(dev: cudarc::driver::sys::CUdevice) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: plain driver calls on a valid device with out-pointers to locals.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, dev) == sys::CUresult::CUDA_SUCCESS {
            let mut threshold = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

/// PTX of kernel file `stem` for a device of compute capability `cc`: the embedded sm_90 PTX
/// on 9.x, sm_80 on every other 8.0+ device (PTX JIT-compiles forward); without embedded PTX,
/// NVRTC now, cached under the user's cache folder by a hash of source and options.
fn ptx_for(stem: &str, src: &str, cc: (i32, i32)) -> Result<String> {
    let arch = arch_of(cc);
    if let Some((_, _, ptx)) = kernels::PTX
        .iter()
        .find(|(s, a, _)| *s == stem && *a == arch)
    {
        return Ok(ptx.to_string());
    }
    compile_ptx(stem, src, arch)
}

/// The embedded PTX's architecture for a device: sm_90 on 9.x, sm_80 on every other 8.0+.
fn arch_of(cc: (i32, i32)) -> &'static str {
    if cc.0 == 9 {
        "sm_90"
    } else {
        "sm_80"
    }
}

/// Loads NVRTC by path where the dynamic loader would not find it: `$FREELUNCH_NVRTC`, else
/// the copy `tools/cuda_toolchain.sh` installs in this checkout's `.cache/cuda` (its SONAME is
/// then what cudarc's `dlopen("libnvrtc.so.12")` finds).
fn preload_nvrtc() {
    let candidates = [
        std::env::var_os("FREELUNCH_NVRTC").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.cache/cuda/site/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
        ))),
    ];
    for path in candidates.into_iter().flatten().filter(|p| p.is_file()) {
        // SAFETY: NVRTC's initialisers have no preconditions; it stays loaded for the process.
        if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
            std::mem::forget(lib);
            return;
        }
    }
}

/// `src` (kernels/{stem}.cu) compiled with NVRTC for `arch`, cached under the user's cache
/// folder by a hash of source and options.
fn compile_ptx(stem: &str, src: &str, arch: &str) -> Result<String> {
    let code = source::expand(stem, src, kernels::COMMON);
    let options = source::nvrtc_options(arch);
    let key = crate::rng::fnv1a(format!("{code}\n{}", options.join(" ")).as_bytes());
    let cache = cache_dir().map(|d| d.join(format!("{stem}-{arch}-{key:016x}.ptx")));
    if let Some(Ok(ptx)) = cache.as_ref().map(std::fs::read_to_string) {
        return Ok(ptx);
    }
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        preload_nvrtc();
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable {
            device: "cuda".into(),
            msg: "this build has no embedded PTX and NVRTC (libnvrtc) is not installed, so the \
                  CUDA kernels cannot be compiled; rebuild where NVRTC is found \
                  (tools/cuda_toolchain.sh) or install the CUDA toolkit"
                .into(),
        });
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        name: Some(format!("{stem}.cu")),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&code, opts)
        .map_err(|e| Error::Cuda {
            during: format!("compiling kernels/{stem}.cu with NVRTC"),
            code: format!("{e:?}"),
        })?
        .to_src();
    if let Some(path) = cache {
        // A cache that cannot be written only costs a recompile next time.
        let _ = std::fs::create_dir_all(path.parent().expect("file in a folder"))
            .and_then(|_| std::fs::write(&path, &ptx));
    }
    Ok(ptx)
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("freelunch").join("ptx"))
}
