//! What can go wrong: a module that does not parse or decode, a launch the device would refuse,
//! host calls with bad arguments, and faults found while a kernel runs. A fault names the kernel,
//! the PTX instruction, its source line from `.loc`, the thread and block, and what was wrong.

use std::fmt;

/// The executor's result type.
pub type Result<T> = std::result::Result<T, EmuError>;

/// The kind of a fault found while a kernel ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An access outside every allocation, a shared/local window or a parameter buffer.
    OutOfBounds,
    /// An address that is not a multiple of the access width.
    Misaligned,
    /// A read of global or shared bytes that nothing has written.
    Uninitialised,
    /// Two threads of a block touching one byte between barriers, one of them writing.
    Race,
    /// Two blocks of one launch touching one byte, one of them writing.
    BlockRace,
    /// A barrier or warp collective reached by only part of the threads it needs.
    Divergence,
    /// No thread can make progress.
    Deadlock,
    /// An integer division by zero.
    DivideByZero,
    /// The launch ran past the executor's instruction budget.
    Watchdog,
}

impl FaultKind {
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::OutOfBounds => "out-of-bounds access",
            FaultKind::Misaligned => "misaligned access",
            FaultKind::Uninitialised => "read of uninitialised memory",
            FaultKind::Race => "data race",
            FaultKind::BlockRace => "data race between blocks",
            FaultKind::Divergence => "divergent collective",
            FaultKind::Deadlock => "deadlock",
            FaultKind::DivideByZero => "integer division by zero",
            FaultKind::Watchdog => "instruction budget exhausted",
        }
    }
}

/// A fault in a running kernel, with everything needed to find it in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub kernel: String,
    /// The PTX instruction as written.
    pub instruction: String,
    /// Its 1-based line in the module's PTX text.
    pub ptx_line: u32,
    /// `kernels/gemm.cu:95`, with ` (inlined at ...)` where `.loc` says so; empty without `.loc`.
    pub source: String,
    pub block: [u32; 3],
    pub thread: [u32; 3],
    pub detail: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in kernel `{}` at ",
            self.kind.describe(),
            self.kernel
        )?;
        if !self.source.is_empty() {
            write!(f, "{}, ", self.source)?;
        }
        write!(
            f,
            "PTX line {} `{}`, block ({},{},{}) thread ({},{},{}): {}",
            self.ptx_line,
            self.instruction,
            self.block[0],
            self.block[1],
            self.block[2],
            self.thread[0],
            self.thread[1],
            self.thread[2],
            self.detail
        )
    }
}

/// Every error of the executor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmuError {
    /// The PTX text does not parse.
    Parse { line: u32, msg: String },
    /// A kernel uses something the executor does not implement (an unknown instruction, a
    /// modifier, an operand form), or is malformed; found when the module is loaded.
    Unsupported {
        kernel: String,
        ptx_line: u32,
        instruction: String,
        msg: String,
    },
    /// A kernel fault found while it ran.
    Fault(Box<Fault>),
    /// A launch the device refuses (block or grid too large, too much shared memory, ...).
    InvalidLaunch(String),
    /// A host call with an invalid argument (an unknown pointer, a range past an allocation).
    InvalidValue(String),
    /// An allocation larger than the free device memory.
    OutOfMemory { requested: u64, free: u64 },
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmuError::Parse { line, msg } => write!(f, "PTX line {line}: {msg}"),
            EmuError::Unsupported {
                kernel,
                ptx_line,
                instruction,
                msg,
            } => write!(
                f,
                "kernel `{kernel}`, PTX line {ptx_line} `{instruction}`: {msg}"
            ),
            EmuError::Fault(fault) => fault.fmt(f),
            EmuError::InvalidLaunch(msg) | EmuError::InvalidValue(msg) => f.write_str(msg),
            EmuError::OutOfMemory { requested, free } => write!(
                f,
                "out of device memory: {requested} bytes requested, {free} free"
            ),
        }
    }
}

impl std::error::Error for EmuError {}

impl EmuError {
    /// The fault, if this is one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            EmuError::Fault(f) => Some(f),
            _ => None,
        }
    }
}
