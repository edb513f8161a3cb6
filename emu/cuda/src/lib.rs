//! The CUDA driver API (the calls cudarc makes) over the PTX executor, exported with C linkage
//! from a library whose SONAME is `libcuda.so`.
//!
//! A process gets it only by loading this file by its path before anything opens the driver
//! (`freelunch --device emu`, or `FREELUNCH_DEVICE=emu` in tests and benches); the loader then
//! hands it to cudarc's `dlopen("libcuda.so")`. It is never on the loader's search path.
//!
//! Semantics follow the driver's: one primary context per device, the current context per host
//! thread, streams and stream-ordered allocation (work runs to completion when it is enqueued, so
//! every stream is always idle), events timed on the host clock, and the driver's error codes. A
//! kernel fault is what a GPU makes of it: the launch returns success, the context's next calls
//! return the fault's code (sticky), and `cuGetErrorString` of that code returns the executor's
//! diagnostic (kernel, instruction, `kernels/*.cu` line, thread, address). Limits are checked as
//! the driver checks them, so host error paths run too.
//!
//! Settings, read at `cuInit`: `FREELUNCH_EMU_ARCH` (`sm_90`, the default, or `sm_80`),
//! `FREELUNCH_EMU_CHECKS` (`all`, `none`, or a list of `init`, `races`), `FREELUNCH_EMU_ORDER`
//! (`forward`, `reverse`, `shuffle[:SEED]`), `FREELUNCH_EMU_THREADS`, `FREELUNCH_EMU_MEMORY_MB`,
//! `FREELUNCH_EMU_BUDGET` (warp-instructions per launch), `FREELUNCH_EMU_DEVICES`.

#![allow(non_snake_case)]
#![allow(clippy::missing_safety_doc)]

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use freelunch_ptx::ir::Kernel;
use freelunch_ptx::{
    Checks, Device, DeviceConfig, EmuError, FaultKind, LaunchRequest, Order, RunOptions,
};

type CUresult = c_uint;
type CUdevice = c_int;
type CUdeviceptr = u64;
type Handle = *mut c_void;

const SUCCESS: CUresult = 0;
const INVALID_VALUE: CUresult = 1;
const OUT_OF_MEMORY: CUresult = 2;
const NOT_INITIALIZED: CUresult = 3;
const NO_DEVICE: CUresult = 100;
const INVALID_DEVICE: CUresult = 101;
const INVALID_IMAGE: CUresult = 200;
const INVALID_CONTEXT: CUresult = 201;
const NO_BINARY_FOR_GPU: CUresult = 209;
const INVALID_PTX: CUresult = 218;
const INVALID_HANDLE: CUresult = 400;
const NOT_FOUND: CUresult = 500;
const ILLEGAL_ADDRESS: CUresult = 700;
const LAUNCH_TIMEOUT: CUresult = 702;
const MISALIGNED_ADDRESS: CUresult = 716;
const LAUNCH_FAILED: CUresult = 719;
const NOT_SUPPORTED: CUresult = 801;

/// The version this stand-in reports: CUDA 13.0, as the GPU machine's driver 580.
const DRIVER_VERSION: c_int = 13000;

struct Ctx {
    device: usize,
}

struct Stream {
    device: usize,
}

struct Event {
    at: Mutex<Option<Instant>>,
}

struct ModuleH {
    device: usize,
    module: Option<freelunch_ptx::Module>,
    functions: Mutex<HashMap<String, usize>>,
}

struct Function {
    kernel: Arc<Kernel>,
    device: usize,
    max_dynamic_smem: Mutex<u32>,
}

/// A device's default memory pool. Its only field gives each device's pool a distinct address.
struct Pool {
    #[allow(dead_code)]
    device: usize,
}

struct DeviceState {
    device: Arc<Device>,
    ctx: usize,
    pool: usize,
    /// The fault that spoiled this context (CUDA's sticky errors).
    sticky: Mutex<Option<CUresult>>,
    /// References to the primary context; when the last is released the context is destroyed
    /// (its memory, modules and sticky error go) and the next retain makes a fresh one.
    retains: u32,
}

struct State {
    devices: Vec<DeviceState>,
    /// Live handles by kind, for validation.
    streams: HashSet<usize>,
    events: HashSet<usize>,
    modules: HashSet<usize>,
    functions: HashSet<usize>,
    /// Device allocations: address → device.
    allocations: HashMap<u64, usize>,
}

static STATE: OnceLock<Result<Mutex<State>, CUresult>> = OnceLock::new();
/// Messages returned by cuGetErrorString: the last detailed message for each code.
static MESSAGES: Mutex<Vec<(CUresult, &'static CStr)>> = Mutex::new(Vec::new());
static LAUNCHES: AtomicU64 = AtomicU64::new(0);
static WARP_INSTRUCTIONS: AtomicU64 = AtomicU64::new(0);
static LAUNCH_NANOS: AtomicU64 = AtomicU64::new(0);

extern "C" {
    fn atexit(f: extern "C" fn()) -> c_int;
}

/// `FREELUNCH_EMU_STATS=1`: what the executor did, printed when the process exits.
extern "C" fn print_stats() {
    let (n, w, t) = (
        LAUNCHES.load(Ordering::Relaxed),
        WARP_INSTRUCTIONS.load(Ordering::Relaxed),
        LAUNCH_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
    );
    eprintln!(
        "freelunch PTX executor: {n} launches, {w} warp-instructions in {t:.2} s of launches ({:.1} M warp-instructions/s)",
        if t > 0.0 { w as f64 / t * 1e-6 } else { 0.0 }
    );
}

thread_local! {
    static CURRENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Half the host's available memory: the device memory this stand-in offers by default.
fn default_memory() -> u64 {
    let avail = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    (avail.unwrap_or(16 << 30) / 2).min(141 << 30)
}

fn options_from_env() -> Result<RunOptions, String> {
    let mut o = RunOptions::default();
    if let Some(c) = env("FREELUNCH_EMU_CHECKS") {
        o.checks = match c.as_str() {
            "all" => Checks::ALL,
            "none" => Checks::NONE,
            list => {
                let mut ch = Checks::NONE;
                for part in list.split(',') {
                    match part.trim() {
                        "init" => ch.init = true,
                        "races" => ch.races = true,
                        p => {
                            return Err(format!(
                            "FREELUNCH_EMU_CHECKS: unknown check `{p}` (all, none, init, races)"
                        ))
                        }
                    }
                }
                ch
            }
        };
    }
    if let Some(ord) = env("FREELUNCH_EMU_ORDER") {
        o.order = match ord.as_str() {
            "forward" => Order::Forward,
            "reverse" => Order::Reverse,
            s if s == "shuffle" || s.starts_with("shuffle:") => {
                let seed = s
                    .strip_prefix("shuffle:")
                    .map_or(Ok(1), |n| n.parse::<u64>());
                Order::Shuffled(
                    seed.map_err(|_| format!("FREELUNCH_EMU_ORDER: bad seed in `{s}`"))?,
                )
            }
            s => {
                return Err(format!(
                    "FREELUNCH_EMU_ORDER: `{s}` (forward, reverse, shuffle[:SEED])"
                ))
            }
        };
    }
    if let Some(t) = env("FREELUNCH_EMU_THREADS") {
        o.threads = t
            .parse()
            .map_err(|_| format!("FREELUNCH_EMU_THREADS: `{t}` is not a number"))?;
    }
    if let Some(b) = env("FREELUNCH_EMU_BUDGET") {
        o.budget = b
            .parse()
            .map_err(|_| format!("FREELUNCH_EMU_BUDGET: `{b}` is not a number"))?;
    }
    Ok(o)
}

fn init_state() -> Result<Mutex<State>, CUresult> {
    let fail = |msg: String| {
        eprintln!("freelunch PTX executor: {msg}");
        set_message(INVALID_VALUE, &msg);
        INVALID_VALUE
    };
    let options = options_from_env().map_err(fail)?;
    let memory = match env("FREELUNCH_EMU_MEMORY_MB") {
        Some(m) => {
            m.parse::<u64>()
                .map_err(|_| fail(format!("FREELUNCH_EMU_MEMORY_MB: `{m}`")))?
                << 20
        }
        None => default_memory(),
    };
    let config = match env("FREELUNCH_EMU_ARCH").as_deref() {
        None | Some("sm_90") => DeviceConfig::h200(memory),
        Some("sm_80") => DeviceConfig::a100(memory),
        Some(a) => return Err(fail(format!("FREELUNCH_EMU_ARCH: `{a}` (sm_80 or sm_90)"))),
    };
    let count = match env("FREELUNCH_EMU_DEVICES") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| fail(format!("FREELUNCH_EMU_DEVICES: `{n}`")))?,
        None => 1,
    };
    let devices = (0..count)
        .map(|i| DeviceState {
            device: Arc::new(Device::new(config.clone(), options.clone())),
            ctx: Box::into_raw(Box::new(Ctx { device: i })) as usize,
            pool: Box::into_raw(Box::new(Pool { device: i })) as usize,
            sticky: Mutex::new(None),
            retains: 0,
        })
        .collect();
    Ok(Mutex::new(State {
        devices,
        streams: HashSet::new(),
        events: HashSet::new(),
        modules: HashSet::new(),
        functions: HashSet::new(),
        allocations: HashMap::new(),
    }))
}

fn state() -> Result<std::sync::MutexGuard<'static, State>, CUresult> {
    match STATE.get() {
        Some(Ok(s)) => Ok(s.lock().unwrap_or_else(|e| e.into_inner())),
        Some(Err(e)) => Err(*e),
        None => Err(NOT_INITIALIZED),
    }
}

fn set_message(code: CUresult, msg: &str) {
    let c: &'static CStr = Box::leak(
        CString::new(msg.replace('\0', " "))
            .expect("no NUL")
            .into_boxed_c_str(),
    );
    let mut m = MESSAGES.lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|(k, _)| *k != code);
    m.push((code, c));
}

/// The driver's code for an executor error, with its message recorded for cuGetErrorString.
fn code_of(e: &EmuError) -> CUresult {
    let (code, prefix) = match e {
        EmuError::Parse { .. } => (INVALID_PTX, "a PTX JIT compilation failed"),
        EmuError::Unsupported { .. } => (NOT_SUPPORTED, "operation not supported"),
        EmuError::InvalidLaunch(_) | EmuError::InvalidValue(_) => {
            (INVALID_VALUE, "invalid argument")
        }
        EmuError::OutOfMemory { .. } => (OUT_OF_MEMORY, "out of memory"),
        EmuError::Fault(f) => match f.kind {
            FaultKind::OutOfBounds => (ILLEGAL_ADDRESS, "an illegal memory access was encountered"),
            FaultKind::Misaligned => (MISALIGNED_ADDRESS, "misaligned address"),
            FaultKind::Watchdog => (LAUNCH_TIMEOUT, "the launch timed out and was terminated"),
            _ => (LAUNCH_FAILED, "unspecified launch failure"),
        },
    };
    set_message(code, &format!("{prefix} [PTX executor: {e}]"));
    code
}

fn current() -> Result<usize, CUresult> {
    let c = CURRENT.with(|c| c.get());
    if c == 0 {
        return Err(INVALID_CONTEXT);
    }
    // SAFETY: current contexts are primary contexts, never freed.
    Ok(unsafe { (*(c as *const Ctx)).device })
}

/// The current context's device, unless an earlier fault spoiled it.
fn live_device() -> Result<(Arc<Device>, usize), CUresult> {
    let dev = current()?;
    let s = state()?;
    let d = &s.devices[dev];
    if let Some(code) = *d.sticky.lock().unwrap_or_else(|e| e.into_inner()) {
        return Err(code);
    }
    Ok((d.device.clone(), dev))
}

fn stream_device(s: &State, stream: Handle) -> Result<Option<usize>, CUresult> {
    if stream.is_null() || stream as usize == 1 || stream as usize == 2 {
        return Ok(None); // the legacy / per-thread default stream
    }
    if !s.streams.contains(&(stream as usize)) {
        return Err(INVALID_HANDLE);
    }
    // SAFETY: validated as a live stream handle.
    Ok(Some(unsafe { (*(stream as *const Stream)).device }))
}

fn check_stream(stream: Handle) -> Result<(), CUresult> {
    let dev = current()?;
    let s = state()?;
    match stream_device(&s, stream)? {
        Some(d) if d != dev => Err(INVALID_HANDLE),
        _ => Ok(()),
    }
}

fn result(r: Result<(), CUresult>) -> CUresult {
    match r {
        Ok(()) => SUCCESS,
        Err(c) => c,
    }
}

unsafe fn out<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: the caller's out-pointer, checked non-null.
    unsafe { p.write(v) };
    Ok(())
}

/// A mark other libraries of this process (the cuFFT stand-in) look for.
#[no_mangle]
pub extern "C" fn freelunch_emu_version() -> c_int {
    1
}

/// Whether `bytes` at `ptr` have all been written (the cuFFT stand-in's initialisation check).
#[no_mangle]
pub extern "C" fn freelunch_emu_initialised(ptr: CUdeviceptr, bytes: usize) -> CUresult {
    result((|| {
        let (dev, _) = live_device()?;
        match dev.initialised(ptr, bytes as u64) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NOT_FOUND),
            Err(e) => Err(code_of(&e)),
        }
    })())
}

// ---- Initialisation, devices, contexts. ----

#[no_mangle]
pub extern "C" fn cuInit(flags: c_uint) -> CUresult {
    if flags != 0 {
        return INVALID_VALUE;
    }
    static STATS: std::sync::Once = std::sync::Once::new();
    STATS.call_once(|| {
        if env("FREELUNCH_EMU_STATS").is_some_and(|v| v != "0") {
            // SAFETY: registers a plain function with the C runtime.
            unsafe { atexit(print_stats) };
        }
    });
    match STATE.get_or_init(init_state) {
        Ok(_) => SUCCESS,
        Err(e) => *e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    result(unsafe { out(v, DRIVER_VERSION) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    result((|| {
        let s = state()?;
        unsafe { out(n, s.devices.len() as c_int) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(d: *mut CUdevice, ordinal: c_int) -> CUresult {
    result((|| {
        let s = state()?;
        if ordinal < 0 || ordinal as usize >= s.devices.len() {
            return Err(if s.devices.is_empty() {
                NO_DEVICE
            } else {
                INVALID_DEVICE
            });
        }
        unsafe { out(d, ordinal) }
    })())
}

fn device_of(s: &State, d: CUdevice) -> Result<&DeviceState, CUresult> {
    if d < 0 {
        return Err(INVALID_DEVICE);
    }
    s.devices.get(d as usize).ok_or(INVALID_DEVICE)
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, d: CUdevice) -> CUresult {
    result((|| {
        let s = state()?;
        let dev = device_of(&s, d)?;
        if name.is_null() || len <= 0 {
            return Err(INVALID_VALUE);
        }
        let text = dev.device.config.name.as_bytes();
        let n = text.len().min(len as usize - 1);
        // SAFETY: the caller's buffer of `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, name, n);
            *name.add(n) = 0;
        }
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], d: CUdevice) -> CUresult {
    result((|| {
        let s = state()?;
        device_of(&s, d)?;
        let mut u = *b"freelunch-emu-00";
        u[15] = b'0' + (d as u8 % 10);
        unsafe { out(uuid, u) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], d: CUdevice) -> CUresult {
    unsafe { cuDeviceGetUuid(uuid, d) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, d: CUdevice) -> CUresult {
    result((|| {
        let s = state()?;
        let dev = device_of(&s, d)?;
        unsafe { out(bytes, dev.device.config.total_memory as usize) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    v: *mut c_int,
    attrib: c_int,
    d: CUdevice,
) -> CUresult {
    result((|| {
        let s = state()?;
        let c = &device_of(&s, d)?.device.config;
        let value: i64 = match attrib {
            1 => c.max_threads_per_block as i64,
            2..=4 => c.max_block[(attrib - 2) as usize] as i64,
            5..=7 => c.max_grid[(attrib - 5) as usize] as i64,
            8 => c.shared_per_block as i64,
            9 => 65536,            // total constant memory
            10 => 32,              // warp size
            11 => i32::MAX as i64, // max pitch
            12 => c.registers_per_block as i64,
            13 => c.clock_khz as i64,
            14 => 512, // texture alignment
            15 => 1,   // gpu overlap
            16 => c.multiprocessors as i64,
            17 => 0,    // kernel exec timeout
            18 => 0,    // integrated
            19 => 1,    // can map host memory
            20 => 0,    // compute mode default
            31 => 1,    // concurrent kernels
            32 => 1,    // ECC
            33 => 0x10, // PCI bus id
            34 => 0,    // PCI device id
            36 => c.memory_clock_khz as i64,
            37 => c.memory_bus_width as i64,
            38 => c.l2_bytes as i64,
            39 => 2048, // threads per multiprocessor
            40 => 2,    // async engines
            41 => 1,    // unified addressing
            50 => 0,    // PCI domain
            75 => c.compute_capability.0 as i64,
            76 => c.compute_capability.1 as i64,
            81 => c.shared_per_multiprocessor as i64,
            82 => 65536, // registers per multiprocessor
            83 => 1,     // managed memory
            84 => 0,     // multi-GPU board
            95 => 1,     // cooperative launch
            97 => c.shared_per_block_optin as i64,
            106 => 32, // blocks per multiprocessor
            115 => 1,  // memory pools supported
            _ => {
                set_message(INVALID_VALUE, &format!("invalid argument [PTX executor: device attribute {attrib} is not modelled]"));
                return Err(INVALID_VALUE);
            }
        };
        unsafe { out(v, value as c_int) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, d: CUdevice) -> CUresult {
    result((|| {
        let mut s = state()?;
        device_of(&s, d)?;
        let dev = &mut s.devices[d as usize];
        dev.retains += 1;
        unsafe { out(ctx, dev.ctx as Handle) }
    })())
}

/// Destroys device `d`'s primary context: a fresh device memory, no modules, no sticky error.
fn reset_context(s: &mut State, d: usize) {
    let config = s.devices[d].device.config.clone();
    let options = s.devices[d].device.options();
    s.devices[d].device = Arc::new(Device::new(config, options));
    *s.devices[d]
        .sticky
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
    s.allocations.retain(|_, dev| *dev != d);
    let gone: Vec<usize> = s
        .modules
        .iter()
        .copied()
        // SAFETY: registered module handles are live.
        .filter(|&m| unsafe { (*(m as *const ModuleH)).device } == d)
        .collect();
    for m in gone {
        s.modules.remove(&m);
        // SAFETY: a live module handle, now unregistered; its functions go with it.
        let module = unsafe { Box::from_raw(m as *mut ModuleH) };
        for (_, f) in module
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            s.functions.remove(&f);
            drop(unsafe { Box::from_raw(f as *mut Function) });
        }
    }
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(d: CUdevice) -> CUresult {
    result((|| {
        let mut s = state()?;
        device_of(&s, d)?;
        let dev = &mut s.devices[d as usize];
        if dev.retains == 0 {
            return Err(INVALID_CONTEXT);
        }
        dev.retains -= 1;
        if dev.retains == 0 {
            reset_context(&mut s, d as usize);
        }
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxReset_v2(d: CUdevice) -> CUresult {
    result((|| {
        let mut s = state()?;
        device_of(&s, d)?;
        reset_context(&mut s, d as usize);
        Ok(())
    })())
}

fn ctx_device(s: &State, ctx: Handle) -> Result<usize, CUresult> {
    s.devices
        .iter()
        .position(|d| d.ctx == ctx as usize)
        .ok_or(INVALID_CONTEXT)
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    result((|| {
        if !ctx.is_null() {
            let s = state()?;
            ctx_device(&s, ctx)?;
        }
        CURRENT.with(|c| c.set(ctx as usize));
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Handle) -> CUresult {
    result(unsafe { out(ctx, CURRENT.with(|c| c.get()) as Handle) })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(d: *mut CUdevice) -> CUresult {
    result((|| {
        let dev = current()?;
        unsafe { out(d, dev as CUdevice) }
    })())
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CUresult {
    result(live_device().map(drop))
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetStreamPriorityRange(
    least: *mut c_int,
    greatest: *mut c_int,
) -> CUresult {
    if !least.is_null() {
        unsafe { *least = 0 };
    }
    if !greatest.is_null() {
        unsafe { *greatest = -5 };
    }
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetLimit(v: *mut usize, limit: c_int) -> CUresult {
    let value = match limit {
        0 => 1024,    // stack size
        1 => 1 << 20, // printf FIFO
        2 => 8 << 20, // malloc heap
        _ => return INVALID_VALUE,
    };
    result(unsafe { out(v, value) })
}

#[no_mangle]
pub extern "C" fn cuCtxSetLimit(_limit: c_int, _value: usize) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSetCacheConfig(_c: c_int) -> CUresult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn cuCtxSetFlags(_f: c_uint) -> CUresult {
    SUCCESS
}

// ---- Streams and events. ----

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Handle, _flags: c_uint) -> CUresult {
    result((|| {
        let dev = current()?;
        let h = Box::into_raw(Box::new(Stream { device: dev })) as Handle;
        state()?.streams.insert(h as usize);
        unsafe { out(stream, h) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(
    stream: *mut Handle,
    flags: c_uint,
    _p: c_int,
) -> CUresult {
    unsafe { cuStreamCreate(stream, flags) }
}

#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CUresult {
    result((|| {
        if !state()?.streams.remove(&(stream as usize)) {
            return Err(INVALID_HANDLE);
        }
        // SAFETY: a live stream handle, now unregistered.
        drop(unsafe { Box::from_raw(stream as *mut Stream) });
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize(stream: Handle) -> CUresult {
    result((|| {
        check_stream(stream)?;
        live_device().map(drop)
    })())
}

#[no_mangle]
pub extern "C" fn cuStreamQuery(stream: Handle) -> CUresult {
    cuStreamSynchronize(stream)
}

#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(stream: Handle, event: Handle, _flags: c_uint) -> CUresult {
    result((|| {
        check_stream(stream)?;
        if !state()?.events.contains(&(event as usize)) {
            return Err(INVALID_HANDLE);
        }
        live_device().map(drop)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamIsCapturing(stream: Handle, status: *mut c_int) -> CUresult {
    result((|| {
        check_stream(stream)?;
        unsafe { out(status, 0) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(
    stream: Handle,
    f: Option<unsafe extern "C" fn(*mut c_void)>,
    data: *mut c_void,
) -> CUresult {
    result((|| {
        check_stream(stream)?;
        live_device()?;
        let f = f.ok_or(INVALID_VALUE)?;
        // SAFETY: the caller's host function; the stream is idle, so it runs now.
        unsafe { f(data) };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut Handle, _flags: c_uint) -> CUresult {
    result((|| {
        current()?;
        let h = Box::into_raw(Box::new(Event {
            at: Mutex::new(None),
        })) as Handle;
        state()?.events.insert(h as usize);
        unsafe { out(event, h) }
    })())
}

fn event<'a>(s: &State, h: Handle) -> Result<&'a Event, CUresult> {
    if !s.events.contains(&(h as usize)) {
        return Err(INVALID_HANDLE);
    }
    // SAFETY: a live event handle (events are freed only by cuEventDestroy).
    Ok(unsafe { &*(h as *const Event) })
}

#[no_mangle]
pub extern "C" fn cuEventRecord(ev: Handle, stream: Handle) -> CUresult {
    result((|| {
        check_stream(stream)?;
        let st = state()?;
        let e = event(&st, ev)?;
        drop(st);
        *e.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        live_device().map(drop)
    })())
}

#[no_mangle]
pub extern "C" fn cuEventRecordWithFlags(ev: Handle, stream: Handle, _flags: c_uint) -> CUresult {
    cuEventRecord(ev, stream)
}

#[no_mangle]
pub extern "C" fn cuEventSynchronize(ev: Handle) -> CUresult {
    result((|| {
        {
            let st = state()?;
            event(&st, ev)?;
        }
        live_device().map(drop)
    })())
}

#[no_mangle]
pub extern "C" fn cuEventQuery(ev: Handle) -> CUresult {
    cuEventSynchronize(ev)
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CUresult {
    result((|| {
        let s = state()?;
        let (a, b) = (event(&s, start)?, event(&s, end)?);
        let (Some(a), Some(b)) = (
            *a.at.lock().unwrap_or_else(|e| e.into_inner()),
            *b.at.lock().unwrap_or_else(|e| e.into_inner()),
        ) else {
            return Err(600); // CUDA_ERROR_NOT_READY
        };
        let d = if b >= a {
            (b - a).as_secs_f64()
        } else {
            -(a - b).as_secs_f64()
        };
        unsafe { out(ms, (d * 1e3) as f32) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(
    ms: *mut f32,
    start: Handle,
    end: Handle,
) -> CUresult {
    unsafe { cuEventElapsedTime(ms, start, end) }
}

#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(ev: Handle) -> CUresult {
    result((|| {
        if !state()?.events.remove(&(ev as usize)) {
            return Err(INVALID_HANDLE);
        }
        // SAFETY: a live event handle, now unregistered.
        drop(unsafe { Box::from_raw(ev as *mut Event) });
        Ok(())
    })())
}

// ---- Memory. ----

fn alloc(bytes: usize) -> Result<CUdeviceptr, CUresult> {
    let (dev, d) = live_device()?;
    if bytes == 0 {
        return Err(INVALID_VALUE);
    }
    let p = dev.alloc(bytes as u64).map_err(|e| code_of(&e))?;
    state()?.allocations.insert(p, d);
    Ok(p)
}

fn free(p: CUdeviceptr) -> Result<(), CUresult> {
    let (dev, d) = live_device()?;
    if p == 0 {
        return Ok(());
    }
    let mut s = state()?;
    if s.allocations.get(&p) != Some(&d) {
        drop(s);
        set_message(INVALID_VALUE, &format!("invalid argument [PTX executor: free of {p:#x}, which is not a live allocation of this context]"));
        return Err(INVALID_VALUE);
    }
    s.allocations.remove(&p);
    drop(s);
    dev.free(p).map_err(|e| code_of(&e))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(p: *mut CUdeviceptr, bytes: usize) -> CUresult {
    result(alloc(bytes).and_then(|a| unsafe { out(p, a) }))
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(p: CUdeviceptr) -> CUresult {
    result(free(p))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    p: *mut CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    result(
        check_stream(stream)
            .and_then(|_| alloc(bytes))
            .and_then(|a| unsafe { out(p, a) }),
    )
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    p: *mut CUdeviceptr,
    bytes: usize,
    _pool: Handle,
    stream: Handle,
) -> CUresult {
    unsafe { cuMemAllocAsync(p, bytes, stream) }
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync(p: CUdeviceptr, stream: Handle) -> CUresult {
    result(check_stream(stream).and_then(|_| free(p)))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    result((|| {
        let (dev, _) = live_device()?;
        let (f, t) = dev.memory_info();
        unsafe {
            out(free, f as usize)?;
            out(total, t as usize)
        }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Handle, d: CUdevice) -> CUresult {
    result((|| {
        let s = state()?;
        let dev = device_of(&s, d)?;
        unsafe { out(pool, dev.pool as Handle) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut Handle, d: CUdevice) -> CUresult {
    unsafe { cuDeviceGetDefaultMemPool(pool, d) }
}

fn check_pool(pool: Handle) -> Result<(), CUresult> {
    let s = state()?;
    if s.devices.iter().any(|d| d.pool == pool as usize) {
        Ok(())
    } else {
        Err(INVALID_HANDLE)
    }
}

#[no_mangle]
pub extern "C" fn cuMemPoolSetAttribute(
    pool: Handle,
    _attr: c_int,
    value: *mut c_void,
) -> CUresult {
    result(check_pool(pool).and_then(|_| {
        if value.is_null() {
            Err(INVALID_VALUE)
        } else {
            Ok(())
        }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: Handle,
    _attr: c_int,
    value: *mut c_void,
) -> CUresult {
    result(check_pool(pool).and_then(|_| unsafe { out(value as *mut u64, 0) }))
}

#[no_mangle]
pub extern "C" fn cuMemPoolTrimTo(pool: Handle, _keep: usize) -> CUresult {
    result(check_pool(pool))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    p: *mut *mut c_void,
    bytes: usize,
    _flags: c_uint,
) -> CUresult {
    result((|| {
        let layout =
            std::alloc::Layout::from_size_align(bytes.max(1), 4096).map_err(|_| INVALID_VALUE)?;
        // SAFETY: a non-zero layout; freed by cuMemFreeHost with the size recorded below.
        let mem = unsafe { std::alloc::alloc_zeroed(layout) };
        if mem.is_null() {
            return Err(OUT_OF_MEMORY);
        }
        HostAllocs::insert(
            &mut *HOST_ALLOCS.lock().unwrap_or_else(|e| e.into_inner()),
            mem as usize,
            layout,
        );
        unsafe { out(p, mem as *mut c_void) }
    })())
}

static HOST_ALLOCS: Mutex<Option<HashMap<usize, std::alloc::Layout>>> = Mutex::new(None);

trait HostAllocs {
    fn insert(&mut self, p: usize, l: std::alloc::Layout);
    fn remove(&mut self, p: usize) -> Option<std::alloc::Layout>;
}
impl HostAllocs for Option<HashMap<usize, std::alloc::Layout>> {
    fn insert(&mut self, p: usize, l: std::alloc::Layout) {
        self.get_or_insert_with(HashMap::new).insert(p, l);
    }
    fn remove(&mut self, p: usize) -> Option<std::alloc::Layout> {
        self.as_mut().and_then(|m| m.remove(&p))
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    match HostAllocs::remove(
        &mut *HOST_ALLOCS.lock().unwrap_or_else(|e| e.into_inner()),
        p as usize,
    ) {
        // SAFETY: allocated by cuMemHostAlloc with this layout.
        Some(l) => {
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
            SUCCESS
        }
        None => INVALID_VALUE,
    }
}

fn htod(dst: CUdeviceptr, src: *const c_void, bytes: usize) -> Result<(), CUresult> {
    let (dev, _) = live_device()?;
    if bytes == 0 {
        return Ok(());
    }
    if src.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: the caller's host buffer of `bytes` bytes.
    let data = unsafe { std::slice::from_raw_parts(src as *const u8, bytes) };
    dev.write(dst, data).map_err(|e| code_of(&e))
}

fn dtoh(dst: *mut c_void, src: CUdeviceptr, bytes: usize) -> Result<(), CUresult> {
    let (dev, _) = live_device()?;
    if bytes == 0 {
        return Ok(());
    }
    if dst.is_null() {
        return Err(INVALID_VALUE);
    }
    // SAFETY: the caller's host buffer of `bytes` bytes.
    let data = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, bytes) };
    dev.read(src, data).map_err(|e| code_of(&e))
}

fn dtod(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> Result<(), CUresult> {
    let (dev, _) = live_device()?;
    dev.copy(dst, src, bytes as u64).map_err(|e| code_of(&e))
}

fn memset8(dst: CUdeviceptr, v: u8, n: usize) -> Result<(), CUresult> {
    let (dev, _) = live_device()?;
    dev.memset(dst, v, n as u64).map_err(|e| code_of(&e))
}

#[no_mangle]
pub extern "C" fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize) -> CUresult {
    result(htod(dst, src, bytes))
}
#[no_mangle]
pub extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    result(check_stream(stream).and_then(|_| htod(dst, src, bytes)))
}
#[no_mangle]
pub extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize) -> CUresult {
    result(dtoh(dst, src, bytes))
}
#[no_mangle]
pub extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    result(check_stream(stream).and_then(|_| dtoh(dst, src, bytes)))
}
#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize) -> CUresult {
    result(dtod(dst, src, bytes))
}
#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    bytes: usize,
    stream: Handle,
) -> CUresult {
    result(check_stream(stream).and_then(|_| dtod(dst, src, bytes)))
}
#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dst: CUdeviceptr, v: u8, n: usize) -> CUresult {
    result(memset8(dst, v, n))
}
#[no_mangle]
pub extern "C" fn cuMemsetD8Async(dst: CUdeviceptr, v: u8, n: usize, stream: Handle) -> CUresult {
    result(check_stream(stream).and_then(|_| memset8(dst, v, n)))
}

fn memset32(dst: CUdeviceptr, v: u32, n: usize) -> Result<(), CUresult> {
    if !dst.is_multiple_of(4) {
        return Err(INVALID_VALUE);
    }
    let bytes: Vec<u8> = std::iter::repeat_n(v.to_le_bytes(), n).flatten().collect();
    htod(dst, bytes.as_ptr() as *const c_void, bytes.len())
}
#[no_mangle]
pub extern "C" fn cuMemsetD32_v2(dst: CUdeviceptr, v: c_uint, n: usize) -> CUresult {
    result(memset32(dst, v, n))
}
#[no_mangle]
pub extern "C" fn cuMemsetD32Async(
    dst: CUdeviceptr,
    v: c_uint,
    n: usize,
    stream: Handle,
) -> CUresult {
    result(check_stream(stream).and_then(|_| memset32(dst, v, n)))
}

// ---- Modules and functions. ----

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CUresult {
    result((|| {
        let (dev, d) = live_device()?;
        if image.is_null() {
            return Err(INVALID_VALUE);
        }
        // SAFETY: a module image: PTX text is NUL-terminated.
        let head = unsafe { std::slice::from_raw_parts(image as *const u8, 4) };
        if head == b"\x7fELF" || head == [0x50, 0xed, 0x55, 0xba] {
            set_message(NO_BINARY_FOR_GPU, "no kernel image is available [PTX executor: it runs PTX text only, not cubins or fatbins]");
            return Err(NO_BINARY_FOR_GPU);
        }
        let text = unsafe { CStr::from_ptr(image as *const c_char) }
            .to_str()
            .map_err(|_| {
                set_message(
                    INVALID_IMAGE,
                    "device kernel image is invalid [PTX executor: the PTX is not UTF-8]",
                );
                INVALID_IMAGE
            })?;
        let m = dev.load_module(text).map_err(|e| {
            let code = code_of(&e);
            if let EmuError::InvalidValue(msg) = &e {
                // A target above the device: what the driver calls no binary for the GPU.
                set_message(
                    NO_BINARY_FOR_GPU,
                    &format!("no kernel image is available [PTX executor: {msg}]"),
                );
                return NO_BINARY_FOR_GPU;
            }
            eprintln!("freelunch PTX executor: loading a module failed: {e}");
            code
        })?;
        let h = Box::into_raw(Box::new(ModuleH {
            device: d,
            module: Some(m),
            functions: Mutex::new(HashMap::new()),
        })) as Handle;
        state()?.modules.insert(h as usize);
        unsafe { out(module, h) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadDataEx(
    module: *mut Handle,
    image: *const c_void,
    _n: c_uint,
    _o: *mut c_int,
    _v: *mut *mut c_void,
) -> CUresult {
    unsafe { cuModuleLoadData(module, image) }
}

#[no_mangle]
pub extern "C" fn cuModuleUnload(module: Handle) -> CUresult {
    result((|| {
        let mut s = state()?;
        if !s.modules.remove(&(module as usize)) {
            return Err(INVALID_HANDLE);
        }
        // SAFETY: a live module handle, now unregistered.
        let mut m = unsafe { Box::from_raw(module as *mut ModuleH) };
        for (_, f) in m
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            s.functions.remove(&f);
            // SAFETY: functions belong to their module and go with it.
            drop(unsafe { Box::from_raw(f as *mut Function) });
        }
        let dev = s.devices[m.device].device.clone();
        drop(s);
        if let Some(module) = m.module.take() {
            dev.unload(module);
        }
        Ok(())
    })())
}

fn module<'a>(s: &State, h: Handle) -> Result<&'a ModuleH, CUresult> {
    if !s.modules.contains(&(h as usize)) {
        return Err(INVALID_HANDLE);
    }
    // SAFETY: a live module handle.
    Ok(unsafe { &*(h as *const ModuleH) })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    f: *mut Handle,
    module_h: Handle,
    name: *const c_char,
) -> CUresult {
    result((|| {
        let mut s = state()?;
        let m = module(&s, module_h)?;
        if name.is_null() {
            return Err(INVALID_VALUE);
        }
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let mut fns = m.functions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&h) = fns.get(&name) {
            return unsafe { out(f, h as Handle) };
        }
        let kernel = m
            .module
            .as_ref()
            .and_then(|x| x.kernels.get(&name))
            .ok_or(NOT_FOUND)?
            .clone();
        let default_dyn = s.devices[m.device]
            .device
            .config
            .shared_per_block
            .saturating_sub(kernel.static_smem);
        let h = Box::into_raw(Box::new(Function {
            kernel,
            device: m.device,
            max_dynamic_smem: Mutex::new(default_dyn),
        })) as usize;
        fns.insert(name, h);
        drop(fns);
        s.functions.insert(h);
        unsafe { out(f, h as Handle) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    p: *mut CUdeviceptr,
    bytes: *mut usize,
    module_h: Handle,
    name: *const c_char,
) -> CUresult {
    result((|| {
        let s = state()?;
        let m = module(&s, module_h)?;
        if name.is_null() {
            return Err(INVALID_VALUE);
        }
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let &(addr, size) = m
            .module
            .as_ref()
            .and_then(|x| x.globals.get(name.as_ref()))
            .ok_or(NOT_FOUND)?;
        if !p.is_null() {
            unsafe { *p = addr };
        }
        if !bytes.is_null() {
            unsafe { *bytes = size as usize };
        }
        Ok(())
    })())
}

fn function<'a>(s: &State, h: Handle) -> Result<&'a Function, CUresult> {
    if !s.functions.contains(&(h as usize)) {
        return Err(INVALID_HANDLE);
    }
    // SAFETY: a live function handle.
    Ok(unsafe { &*(h as *const Function) })
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(v: *mut c_int, attrib: c_int, f: Handle) -> CUresult {
    result((|| {
        let s = state()?;
        let func = function(&s, f)?;
        let k = &func.kernel;
        let value = match attrib {
            0 => k
                .maxntid
                .map_or(1024, |m| m.iter().product::<u32>().min(1024)) as c_int,
            1 => k.static_smem as c_int,
            2 => 0,
            3 => k.local_bytes as c_int,
            4 => 0, // registers: ptxas decides them; the executor has no figure
            5 | 6 => {
                let (a, b) = s.devices[func.device].device.config.compute_capability;
                (a * 10 + b) as c_int
            }
            7 => 0,
            8 => *func
                .max_dynamic_smem
                .lock()
                .unwrap_or_else(|e| e.into_inner()) as c_int,
            9 => -1,
            _ => return Err(INVALID_VALUE),
        };
        unsafe { out(v, value) }
    })())
}

#[no_mangle]
pub extern "C" fn cuFuncSetAttribute(f: Handle, attrib: c_int, value: c_int) -> CUresult {
    result((|| {
        let s = state()?;
        let func = function(&s, f)?;
        match attrib {
            8 => {
                let c = &s.devices[func.device].device.config;
                let max = c
                    .shared_per_block_optin
                    .saturating_sub(func.kernel.static_smem);
                if value < 0 || value as u32 > max {
                    drop(s);
                    set_message(
                        INVALID_VALUE,
                        &format!("invalid argument [PTX executor: {value} bytes of dynamic shared memory for `{}`; at most {max}]", func.kernel.name),
                    );
                    return Err(INVALID_VALUE);
                }
                *func
                    .max_dynamic_smem
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = value as u32;
                Ok(())
            }
            9 if (-1..=100).contains(&value) => Ok(()),
            _ => Err(INVALID_VALUE),
        }
    })())
}

#[no_mangle]
pub extern "C" fn cuFuncSetCacheConfig(f: Handle, _c: c_int) -> CUresult {
    result(state().and_then(|s| function(&s, f).map(drop)))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    smem: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    result((|| {
        check_stream(stream)?;
        let (dev, d) = live_device()?;
        let s = state()?;
        let func = function(&s, f)?;
        if func.device != d {
            return Err(INVALID_HANDLE);
        }
        let kernel = func.kernel.clone();
        let max_dyn = *func
            .max_dynamic_smem
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(s);
        let mut buf = vec![0u8; kernel.param_bytes as usize];
        if !params.is_null() {
            for (i, p) in kernel.params.iter().enumerate() {
                // SAFETY: kernelParams holds one pointer per parameter, each to its value.
                let src = unsafe { *params.add(i) };
                if src.is_null() {
                    return Err(INVALID_VALUE);
                }
                let v = unsafe { std::slice::from_raw_parts(src as *const u8, p.size as usize) };
                buf[p.offset as usize..(p.offset + p.size) as usize].copy_from_slice(v);
            }
        } else if !extra.is_null() {
            // CU_LAUNCH_PARAM_BUFFER_POINTER (1), ptr, CU_LAUNCH_PARAM_BUFFER_SIZE (2), &size, END (0)
            let (mut ptr, mut size) = (std::ptr::null::<u8>(), 0usize);
            let mut k = 0;
            loop {
                let key = unsafe { *extra.add(k) } as usize;
                match key {
                    0 => break,
                    1 => ptr = unsafe { *extra.add(k + 1) } as *const u8,
                    2 => size = unsafe { *(*extra.add(k + 1) as *const usize) },
                    _ => return Err(INVALID_VALUE),
                }
                k += 2;
            }
            if ptr.is_null() || size != buf.len() {
                return Err(INVALID_VALUE);
            }
            buf.copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, size) });
        } else if !buf.is_empty() {
            return Err(INVALID_VALUE);
        }
        let req = LaunchRequest {
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            dynamic_smem: smem,
            max_dynamic_smem: max_dyn,
            params: &buf,
        };
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let r = dev.launch(&kernel, &req);
        LAUNCH_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match r {
            Ok(stats) => {
                WARP_INSTRUCTIONS.fetch_add(stats.warp_instructions, Ordering::Relaxed);
                Ok(())
            }
            Err(e @ EmuError::Fault(_)) => {
                // Asynchronous, as on a GPU: the launch is accepted and the context is spoiled.
                let code = code_of(&e);
                eprintln!("freelunch PTX executor: {e}");
                *state()?.devices[d]
                    .sticky
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(code);
                Ok(())
            }
            Err(e) => Err(code_of(&e)),
        }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    n: *mut c_int,
    f: Handle,
    block: c_int,
    smem: usize,
) -> CUresult {
    result((|| {
        let s = state()?;
        let func = function(&s, f)?;
        let c = &s.devices[func.device].device.config;
        let warps = (block.max(1) as u32).div_ceil(32);
        let by_warps = 64 / warps.max(1);
        let per = func.kernel.static_smem as usize + smem;
        let by_smem = if per == 0 {
            32
        } else {
            (c.shared_per_multiprocessor as usize)
                .checked_div(per)
                .unwrap_or(32)
        } as u32;
        unsafe { out(n, by_warps.min(by_smem).min(32) as c_int) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    n: *mut c_int,
    f: Handle,
    block: c_int,
    smem: usize,
    _flags: c_uint,
) -> CUresult {
    unsafe { cuOccupancyMaxActiveBlocksPerMultiprocessor(n, f, block, smem) }
}

// ---- Errors. ----

fn standard_name(e: CUresult) -> &'static str {
    match e {
        SUCCESS => "CUDA_SUCCESS",
        INVALID_VALUE => "CUDA_ERROR_INVALID_VALUE",
        OUT_OF_MEMORY => "CUDA_ERROR_OUT_OF_MEMORY",
        NOT_INITIALIZED => "CUDA_ERROR_NOT_INITIALIZED",
        NO_DEVICE => "CUDA_ERROR_NO_DEVICE",
        INVALID_DEVICE => "CUDA_ERROR_INVALID_DEVICE",
        INVALID_IMAGE => "CUDA_ERROR_INVALID_IMAGE",
        INVALID_CONTEXT => "CUDA_ERROR_INVALID_CONTEXT",
        NO_BINARY_FOR_GPU => "CUDA_ERROR_NO_BINARY_FOR_GPU",
        INVALID_PTX => "CUDA_ERROR_INVALID_PTX",
        INVALID_HANDLE => "CUDA_ERROR_INVALID_HANDLE",
        NOT_FOUND => "CUDA_ERROR_NOT_FOUND",
        600 => "CUDA_ERROR_NOT_READY",
        ILLEGAL_ADDRESS => "CUDA_ERROR_ILLEGAL_ADDRESS",
        LAUNCH_TIMEOUT => "CUDA_ERROR_LAUNCH_TIMEOUT",
        MISALIGNED_ADDRESS => "CUDA_ERROR_MISALIGNED_ADDRESS",
        LAUNCH_FAILED => "CUDA_ERROR_LAUNCH_FAILED",
        NOT_SUPPORTED => "CUDA_ERROR_NOT_SUPPORTED",
        _ => "CUDA_ERROR_UNKNOWN",
    }
}

fn standard_string(e: CUresult) -> &'static str {
    match e {
        SUCCESS => "no error",
        INVALID_VALUE => "invalid argument",
        OUT_OF_MEMORY => "out of memory",
        NOT_INITIALIZED => "initialization error",
        NO_DEVICE => "no CUDA-capable device is detected",
        INVALID_DEVICE => "invalid device ordinal",
        INVALID_CONTEXT => "invalid device context",
        INVALID_HANDLE => "invalid resource handle",
        NOT_FOUND => "named symbol not found",
        600 => "device not ready",
        _ => "unknown error",
    }
}

fn leak(s: &str) -> *const c_char {
    static NAMES: Mutex<Vec<(String, &'static CStr)>> = Mutex::new(Vec::new());
    let mut n = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = n.iter().find(|(k, _)| k == s) {
        return c.as_ptr();
    }
    let c: &'static CStr = Box::leak(CString::new(s).expect("no NUL").into_boxed_c_str());
    n.push((s.to_string(), c));
    c.as_ptr()
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(e: CUresult, p: *mut *const c_char) -> CUresult {
    let msg = MESSAGES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(k, _)| *k == e)
        .map(|(_, c)| c.as_ptr());
    result(unsafe { out(p, msg.unwrap_or_else(|| leak(standard_string(e)))) })
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(e: CUresult, p: *mut *const c_char) -> CUresult {
    result(unsafe { out(p, leak(standard_name(e))) })
}
