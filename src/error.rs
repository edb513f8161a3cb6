//! The crate's one error type. Every failure a user can cause (bad files, bad config, bad inputs)
//! ends here with a message that names the thing that is wrong; nothing on those paths panics.

use std::path::PathBuf;

/// Every failure of this crate, by kind, so an engine can match the ones it handles (out of
/// memory, no device, cancelled) and report the rest; each message names what is wrong. New kinds
/// may be added, hence `#[non_exhaustive]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed or truncated safetensors file (`origin` names it).
    #[error("{origin}: not a valid safetensors file: {msg}")]
    Safetensors { origin: String, msg: String },
    /// A JSON file (config, index) that does not parse.
    #[error("{origin}: invalid JSON: {msg}")]
    Json { origin: String, msg: String },
    /// A config value the maths cannot use (out of range, not finite, inconsistent).
    #[error("config {origin}: {msg}")]
    Config { origin: String, msg: String },
    /// A config value, option or class this crate does not implement.
    #[error("unsupported config value: `{field}` = {value}")]
    Unsupported { field: String, value: String },
    /// A checkpoint parameter of the wrong shape or type, stored twice, or not finite.
    #[error("weight `{name}`: {msg}")]
    Weight { name: String, msg: String },
    /// A parameter the model needs and the checkpoint lacks.
    #[error("missing weight `{0}` in the checkpoint")]
    MissingWeight(String),
    /// An input or conditioning tensor of the wrong shape, missing, unusable, or not finite.
    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },
    /// A plan or an allocation that the memory available cannot hold (host or GPU).
    #[error("{what} needs ~{} GiB, {} GiB available", gib(*needed), gib(*available))]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
    },
    /// A size computed from input that overflows what the machine can address.
    #[error("{what} is too large: {detail}")]
    TooLarge { what: String, detail: String },
    /// The step callback of a sampling run asked it to stop (`StepControl::Cancel`).
    #[error("sampling cancelled after step {step} of {total}")]
    Cancelled { step: usize, total: usize },
    /// A MaskUNet mask that does not fit the model or the call (`name` is the weight, or the
    /// file).
    #[error("{msg}")]
    Mask { name: String, msg: String },
    /// A NaN or infinity computed from finite inputs: `at` names where it first appeared (a
    /// layer, the model's output, a sampler step), the message says what to try.
    #[error("{msg}")]
    NonFinite { at: String, msg: String },
    /// The device asked for cannot be used here: no GPU or driver, an unknown or too old device,
    /// kernels that cannot be compiled.
    #[error("{msg}")]
    DeviceUnavailable { device: String, msg: String },
    /// A CUDA driver or library call that failed.
    #[error("CUDA error while {during}: {code}")]
    Cuda { during: String, code: String },
    /// An error of one sampling step: which step (from 1) of how many, at which timestep, and
    /// what went wrong there (`source`: the model's own error, or `NonFinite` naming the model's
    /// output, the guidance, the sampler's input scaling or its update). `Error::root` sees
    /// through it.
    #[error("sampling step {step}/{total} (timestep {timestep}): {source}")]
    AtStep {
        step: usize,
        total: usize,
        timestep: f32,
        source: Box<Error>,
    },
    /// Anything else, in words.
    #[error("{0}")]
    Msg(String),
}

/// Bytes in GiB for messages: one decimal, two below 1 GiB, never a bare 0 for a non-zero size.
pub fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1.0 || bytes == 0 {
        format!("{g:.1}")
    } else if g >= 0.01 {
        format!("{g:.2}")
    } else {
        format!("{g:.4}")
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The error under any step context (`AtStep`): what an engine matches on (out of memory,
    /// cancelled, a bad input) wherever in a run it happened.
    pub fn root(&self) -> &Error {
        match self {
            Error::AtStep { source, .. } => source.root(),
            other => other,
        }
    }

    /// An input error naming input `name`.
    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Input {
            name: name.into(),
            msg: msg.into(),
        }
    }

    /// A weight error naming parameter `name`.
    pub fn weight(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Weight {
            name: name.into(),
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
