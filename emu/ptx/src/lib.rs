//! A PTX executor: loads the PTX that NVRTC makes from CUDA C++ and runs its kernels on the CPU,
//! each warp in lockstep with per-lane active masks, with the memory model of a GPU checked as it
//! goes (bounds, alignment, uninitialised reads, races between threads and between blocks,
//! divergent barriers and collectives).

pub mod alu;
pub mod check;
pub mod decode;
pub mod error;
pub mod exec;
pub mod fp;
pub mod ir;
pub mod machine;
pub mod memory;
pub mod parse;
pub mod regalloc;

pub use error::{EmuError, Fault, FaultKind, Result};
pub use exec::{Checks, LaunchStats, Order, RunOptions};
pub use machine::{pack_params, Device, DeviceConfig, LaunchRequest, Module};
