//! One emulated device: its limits, its memory, the modules loaded on it and launches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::decode::{self, Globals};
use crate::error::{EmuError, Result};
use crate::exec::{self, LaunchStats, RunOptions, Worker};
use crate::ir::Kernel;
use crate::parse::{self, Operand, Space};

/// The limits a real device reports (`cuDeviceGetAttribute`) and enforces at launch.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub name: String,
    pub compute_capability: (u32, u32),
    pub multiprocessors: u32,
    pub total_memory: u64,
    pub max_threads_per_block: u32,
    pub max_block: [u32; 3],
    pub max_grid: [u32; 3],
    /// Shared memory a block gets without opting in (static + dynamic).
    pub shared_per_block: u32,
    /// The most a block can opt in to (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`).
    pub shared_per_block_optin: u32,
    pub shared_per_multiprocessor: u32,
    pub registers_per_block: u32,
    pub clock_khz: u32,
    pub memory_clock_khz: u32,
    pub memory_bus_width: u32,
    pub l2_bytes: u32,
}

impl DeviceConfig {
    /// An H200 (sm_90): the figures of its data sheet and `deviceQuery`, with `memory` bytes of
    /// device memory (the host backs it).
    pub fn h200(memory: u64) -> Self {
        DeviceConfig {
            name: "freelunch PTX executor (NVIDIA H200-like, sm_90)".into(),
            compute_capability: (9, 0),
            multiprocessors: 132,
            total_memory: memory,
            max_threads_per_block: 1024,
            max_block: [1024, 1024, 64],
            max_grid: [i32::MAX as u32, 65535, 65535],
            shared_per_block: 48 * 1024,
            shared_per_block_optin: 227 * 1024,
            shared_per_multiprocessor: 228 * 1024,
            registers_per_block: 65536,
            clock_khz: 1_980_000,
            memory_clock_khz: 3_201_000,
            memory_bus_width: 6144,
            l2_bytes: 50 * 1024 * 1024,
        }
    }

    /// An A100 (sm_80).
    pub fn a100(memory: u64) -> Self {
        DeviceConfig {
            name: "freelunch PTX executor (NVIDIA A100-like, sm_80)".into(),
            compute_capability: (8, 0),
            multiprocessors: 108,
            shared_per_block_optin: 163 * 1024,
            shared_per_multiprocessor: 164 * 1024,
            clock_khz: 1_410_000,
            memory_clock_khz: 1_593_000,
            memory_bus_width: 5120,
            l2_bytes: 40 * 1024 * 1024,
            ..DeviceConfig::h200(memory)
        }
    }
}

/// A loaded module: its kernels by name, and the global variables it allocated.
pub struct Module {
    pub kernels: HashMap<String, Arc<Kernel>>,
    /// `.global`/`.const` variables: name → (device address, bytes).
    pub globals: HashMap<String, (u64, u64)>,
}

/// What a kernel needs of a launch, and the limits it has.
pub struct LaunchRequest<'a> {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem: u32,
    /// The kernel's `MAX_DYNAMIC_SHARED_SIZE_BYTES` attribute (48 KiB minus static by default).
    pub max_dynamic_smem: u32,
    /// The parameter buffer, laid out as `Kernel::params` says.
    pub params: &'a [u8],
}

pub struct Device {
    pub config: DeviceConfig,
    memory: RwLock<crate::memory::Memory>,
    workers: Mutex<Vec<Worker>>,
    seq: AtomicU32,
    options: RwLock<RunOptions>,
}

static KERNEL_IDS: AtomicUsize = AtomicUsize::new(1);

fn elem_size(ty: &str) -> Option<u32> {
    crate::alu::Ty::parse(ty).map(|t| t.bytes())
}

impl Device {
    pub fn new(config: DeviceConfig, options: RunOptions) -> Self {
        let tagged = options.checks.init || options.checks.races;
        Device {
            memory: RwLock::new(crate::memory::Memory::new(config.total_memory, tagged)),
            config,
            workers: Mutex::new(Vec::new()),
            seq: AtomicU32::new(1),
            options: RwLock::new(options),
        }
    }

    pub fn options(&self) -> RunOptions {
        self.options.read().expect("options").clone()
    }

    /// Changes how launches run (the checks can only be turned off once memory exists
    /// untagged, so changing `checks` affects allocations made afterwards).
    pub fn set_options(&self, o: RunOptions) {
        let mut m = self.memory.write().expect("memory");
        m.tagged = o.checks.init || o.checks.races;
        *self.options.write().expect("options") = o;
    }

    pub fn alloc(&self, bytes: u64) -> Result<u64> {
        self.memory.write().expect("memory").alloc(bytes)
    }
    pub fn free(&self, addr: u64) -> Result<()> {
        self.memory.write().expect("memory").free(addr)
    }
    pub fn write(&self, addr: u64, src: &[u8]) -> Result<()> {
        self.memory.read().expect("memory").write(addr, src)
    }
    pub fn read(&self, addr: u64, dst: &mut [u8]) -> Result<()> {
        self.memory.read().expect("memory").read(addr, dst)
    }
    pub fn memset(&self, addr: u64, value: u8, len: u64) -> Result<()> {
        self.memory.read().expect("memory").memset(addr, value, len)
    }
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<()> {
        self.memory.read().expect("memory").copy(dst, src, len)
    }
    pub fn initialised(&self, addr: u64, len: u64) -> Result<bool> {
        self.memory.read().expect("memory").initialised(addr, len)
    }
    /// (free, total) bytes.
    pub fn memory_info(&self) -> (u64, u64) {
        let m = self.memory.read().expect("memory");
        (m.capacity - m.used(), m.capacity)
    }

    /// Parses and decodes a PTX module, allocating and initialising its global variables.
    pub fn load_module(&self, ptx: &str) -> Result<Module> {
        let m = parse::parse(ptx)?;
        let (major, minor) = self.config.compute_capability;
        for t in &m.target {
            if let Some(n) = t.strip_prefix("sm_") {
                let digits: String = n.chars().take_while(|c| c.is_ascii_digit()).collect();
                let want: u32 = digits.parse().unwrap_or(0);
                if want > major * 10 + minor {
                    return Err(EmuError::InvalidValue(format!(
                        "the module targets {t}, above this device's sm_{major}{minor}"
                    )));
                }
            }
        }
        let mut globals = Globals::new();
        let mut allocated = Vec::new();
        let mut sizes = HashMap::new();
        let result = (|| -> Result<HashMap<String, Arc<Kernel>>> {
            for v in m
                .variables
                .iter()
                .filter(|v| matches!(v.space, Space::Global | Space::Const))
            {
                let elem = elem_size(&v.ty).ok_or_else(|| EmuError::Parse {
                    line: v.line,
                    msg: format!("variable type `.{}`", v.ty),
                })?;
                let count = match v.array {
                    None => 1,
                    Some(Some(n)) => n,
                    Some(None) => v.init.len() as u64,
                };
                let mut bytes = vec![0u8; (elem as u64 * count) as usize];
                for (i, init) in v.init.iter().enumerate() {
                    let value: u64 = match init {
                        Operand::Int(x) => *x as u64,
                        Operand::F32(b) => *b as u64,
                        Operand::F64(b) => *b,
                        _ => {
                            return Err(EmuError::Parse {
                                line: v.line,
                                msg: format!("initialiser of `{}` is not a number", v.name),
                            })
                        }
                    };
                    let at = i * elem as usize;
                    if at + elem as usize > bytes.len() {
                        return Err(EmuError::Parse {
                            line: v.line,
                            msg: format!("`{}` has more initialisers than elements", v.name),
                        });
                    }
                    bytes[at..at + elem as usize]
                        .copy_from_slice(&value.to_le_bytes()[..elem as usize]);
                }
                let addr = self.alloc(bytes.len() as u64)?;
                allocated.push(addr);
                // Zero-initialised like any static variable when there is no initialiser.
                self.write(addr, &bytes)?;
                globals.insert(v.name.clone(), addr);
                sizes.insert(v.name.clone(), (addr, bytes.len() as u64));
            }
            let mut kernels = HashMap::new();
            for e in &m.entries {
                let mut k = decode::decode_entry(&m, e, &globals)?;
                if k.static_smem > self.config.shared_per_block {
                    return Err(EmuError::Unsupported {
                        kernel: k.name.clone(),
                        ptx_line: e.line,
                        instruction: String::new(),
                        msg: format!(
                            "{} bytes of static shared memory; a block may have {} (ptxas would refuse it)",
                            k.static_smem, self.config.shared_per_block
                        ),
                    });
                }
                k.id = KERNEL_IDS.fetch_add(1, Ordering::Relaxed);
                kernels.insert(e.name.clone(), Arc::new(k));
            }
            Ok(kernels)
        })();
        match result {
            Ok(kernels) => Ok(Module {
                kernels,
                globals: sizes,
            }),
            Err(e) => {
                for a in allocated {
                    let _ = self.free(a);
                }
                Err(e)
            }
        }
    }

    pub fn unload(&self, m: Module) {
        for (a, _) in m.globals.into_values() {
            let _ = self.free(a);
        }
    }

    /// Validates a launch as the driver does, then runs it to completion.
    pub fn launch(&self, k: &Kernel, r: &LaunchRequest) -> Result<LaunchStats> {
        let c = &self.config;
        let threads: u64 = r.block.iter().map(|&b| b as u64).product();
        let bad = |msg: String| {
            Err(EmuError::InvalidLaunch(format!(
                "kernel `{}`: {msg}",
                k.name
            )))
        };
        if r.block.contains(&0) || r.grid.contains(&0) {
            return bad(format!(
                "grid {:?} and block {:?} must have no zero dimension",
                r.grid, r.block
            ));
        }
        for d in 0..3 {
            if r.block[d] > c.max_block[d] {
                return bad(format!(
                    "block {:?} exceeds the device's {:?}",
                    r.block, c.max_block
                ));
            }
            if r.grid[d] > c.max_grid[d] {
                return bad(format!(
                    "grid {:?} exceeds the device's {:?}",
                    r.grid, c.max_grid
                ));
            }
        }
        if threads > c.max_threads_per_block as u64 {
            return bad(format!(
                "{threads} threads per block; the device allows {}",
                c.max_threads_per_block
            ));
        }
        if let Some(m) = k.maxntid {
            let max: u64 = m.iter().map(|&x| x as u64).product();
            if threads > max {
                return bad(format!(
                    "{threads} threads per block; the kernel's .maxntid allows {max}"
                ));
            }
        }
        if let Some(req) = k.reqntid {
            if req != r.block {
                return bad(format!(
                    "block {:?}; the kernel's .reqntid requires {req:?}",
                    r.block
                ));
            }
        }
        if r.dynamic_smem > r.max_dynamic_smem {
            return bad(format!(
                "{} bytes of dynamic shared memory; the kernel's limit is {} (raise it with cuFuncSetAttribute)",
                r.dynamic_smem, r.max_dynamic_smem
            ));
        }
        let total_smem = k.dynamic_smem_offset as u64 + r.dynamic_smem as u64;
        if total_smem > c.shared_per_block_optin as u64 {
            return bad(format!(
                "{total_smem} bytes of shared memory; the device allows {}",
                c.shared_per_block_optin
            ));
        }
        if r.params.len() != k.param_bytes as usize {
            return Err(EmuError::InvalidValue(format!(
                "kernel `{}` takes {} bytes of parameters, {} given",
                k.name,
                k.param_bytes,
                r.params.len()
            )));
        }
        let options = self.options();
        let memory = self.memory.read().expect("memory");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let launch = exec::Launch {
            kernel: k,
            memory: &memory,
            params: r.params,
            grid: r.grid,
            block: r.block,
            dynamic_smem: r.dynamic_smem,
            seq,
            options: &options,
        };
        exec::run(&launch, &self.workers, k.id).map_err(|f| EmuError::Fault(Box::new(f)))
    }
}

/// The parameter buffer of a launch of `k`: `values[i]` is parameter i's bytes (a u64 device
/// address, an i32, a whole struct), copied to its offset. Panics if a size is wrong.
pub fn pack_params(k: &Kernel, values: &[&[u8]]) -> Vec<u8> {
    assert_eq!(
        values.len(),
        k.params.len(),
        "kernel `{}` takes {} parameters",
        k.name,
        k.params.len()
    );
    let mut buf = vec![0u8; k.param_bytes as usize];
    for (p, v) in k.params.iter().zip(values) {
        assert_eq!(
            v.len(),
            p.size as usize,
            "a parameter of kernel `{}` has {} bytes",
            k.name,
            p.size
        );
        buf[p.offset as usize..(p.offset + p.size) as usize].copy_from_slice(v);
    }
    buf
}
