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
        /// The file or folder.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A malformed or truncated safetensors file (`origin` names it).
    #[error("{origin}: not a valid safetensors file: {msg}")]
    Safetensors {
        /// The file, or a name for bytes given in memory.
        origin: String,
        /// What is wrong with it, in words.
        msg: String,
    },
    /// A JSON file (config, index) that does not parse.
    #[error("{origin}: invalid JSON: {msg}")]
    Json {
        /// The file, or a name for text given in code.
        origin: String,
        /// The parser's message, or what the file lacks.
        msg: String,
    },
    /// A config value the maths cannot use (out of range, not finite, inconsistent).
    #[error("config {origin}: {msg}")]
    Config {
        /// The config: its file, or a name for one built in code.
        origin: String,
        /// Which value, and what the maths needs of it.
        msg: String,
    },
    /// A config value, option or class this crate does not implement.
    #[error("unsupported config value: `{field}` = {value}")]
    Unsupported {
        /// The config key, option or flag (`act_fn`, `down_block_types`, `dtype`, ...).
        field: String,
        /// Its value as given (a config's as JSON).
        value: String,
    },
    /// A checkpoint parameter of the wrong shape or type, stored twice, or not finite.
    #[error("weight `{name}`: {msg}")]
    Weight {
        /// The parameter's state-dict name (`down_blocks.0.resnets.0.conv1.weight`).
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A parameter the model needs and the checkpoint lacks.
    #[error("missing weight `{0}` in the checkpoint")]
    MissingWeight(String),
    /// An input or conditioning tensor of the wrong shape, missing, unusable, or not finite.
    #[error("input `{name}`: {msg}")]
    Input {
        /// The input's name as diffusers' forward takes it (`sample`, `timestep`,
        /// `encoder_hidden_states`, `class_labels`, `text_embeds`, `time_ids`, ...).
        name: String,
        /// What is wrong with it (shapes, the first bad index, ...).
        msg: String,
    },
    /// A plan or an allocation that the memory available cannot hold (host or GPU).
    #[error("{what} needs ~{} GiB, {} GiB available", gib(*needed), gib(*available))]
    OutOfMemory {
        /// What was to be allocated (a tensor, a forward call, the weights).
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes available (host: `tensor::available_memory`; GPU: the device's free memory).
        available: u64,
    },
    /// A size computed from input that overflows what the machine can address.
    #[error("{what} is too large: {detail}")]
    TooLarge {
        /// What was being sized.
        what: String,
        /// Which size overflowed.
        detail: String,
    },
    /// The step callback of a sampling run asked it to stop (`StepControl::Cancel`).
    #[error("sampling cancelled after step {step} of {total}")]
    Cancelled {
        /// The step (from 1) after which the callback cancelled.
        step: usize,
        /// The run's number of steps.
        total: usize,
    },
    /// A MaskUNet mask that does not fit the model or the call (`name` is the weight, or the
    /// file).
    #[error("{msg}")]
    Mask {
        /// The weight name the mask is keyed by (empty where `WeightMask::from_bytes` did not
        /// know it).
        name: String,
        /// The whole message, naming the mask.
        msg: String,
    },
    /// A NaN or infinity computed from finite inputs: `at` names where it first appeared (a
    /// layer, the model's output, a sampler step), the message says what to try.
    #[error("{msg}")]
    NonFinite {
        /// Where it first appeared: a module's diffusers name (`up_blocks.1`, `conv_out`, a
        /// mask generator's), `sample` (the GPU's output), or a stage of a sampling step
        /// (`scale_model_input`, `model`, `guidance`, `step`).
        at: String,
        /// The whole message: the value, its index, and what to try.
        msg: String,
    },
    /// The device asked for cannot be used here: no GPU or driver, an unknown or too old device,
    /// kernels that cannot be compiled.
    #[error("{msg}")]
    DeviceUnavailable {
        /// The device as asked for (`cuda:1`, `emu`, `cpu`, ...).
        device: String,
        /// Why it cannot be used.
        msg: String,
    },
    /// A CUDA driver or library call that failed.
    #[error("CUDA error while {during}: {code}")]
    Cuda {
        /// What the crate was doing (`loading kernels/gemm.cu`, `waiting for the GPU`, ...).
        during: String,
        /// The driver's or library's error, as it names it.
        code: String,
    },
    /// An error of one sampling step: which step (from 1) of how many, at which timestep, and
    /// what went wrong there (`source`: the model's own error, or `NonFinite` naming the model's
    /// output, the guidance, the sampler's input scaling or its update). `Error::root` sees
    /// through it.
    #[error("sampling step {step}/{total} (timestep {timestep}): {source}")]
    AtStep {
        /// The step, from 1.
        step: usize,
        /// The run's number of steps.
        total: usize,
        /// The step's timestep, as the model was called with it.
        timestep: f32,
        /// What went wrong in the step.
        source: Box<Error>,
    },
    /// Operands an op cannot take: tensors of shapes that do not agree, the wrong rank, an
    /// empty dimension (a caller of the layers or backend ops, not a model input: those are
    /// `Input`).
    #[error("{op}: {msg}")]
    Shape {
        /// The op or layer (`conv2d`, `attention`, `layer `up_blocks.0.resnets.1.conv1``, ...).
        op: String,
        /// The shapes, and what the op needs of them.
        msg: String,
    },
    /// A sampler that cannot run its schedule: settings or a step count its maths cannot take
    /// (σ's that repeat, too few steps for its order, a timestep outside training).
    #[error("{sampler}: {msg}")]
    Sampler {
        /// The sampler (`DDIM`, `LMS`, `PNDM`, ...).
        sampler: String,
        /// What is wrong, and what to change.
        msg: String,
    },
    /// A booster's settings that do not fit the model or the call (FreeU's factors, skip
    /// scales, DeMe's merge weights or experts, the mask generator's model).
    #[error("{msg}")]
    Booster {
        /// The booster (`freeu`, `skip_scales`, `deme`, `mask_generator`).
        booster: String,
        /// The whole message.
        msg: String,
    },
    /// A model, file, variant or revision that is not where it was looked for (nothing is ever
    /// downloaded).
    #[error("{msg}")]
    NotFound {
        /// What was asked for: the path or repo id as given, or `--variant fp16`,
        /// `--revision main`.
        what: String,
        /// The whole message: where it was looked for, and what is there instead.
        msg: String,
    },
    /// An argument that cannot be used as given: a command-line flag, or a value an engine
    /// passed that no config governs (a thread count, an output path's extension).
    #[error("{msg}")]
    Argument {
        /// The flag or parameter, without dashes (`steps`, `output`, `threads`, ...).
        flag: String,
        /// The whole message: the value, and what would do.
        msg: String,
    },
    /// The operating system refused a resource the crate needs (threads, a memory mapping).
    #[error("{during}: {msg}")]
    System {
        /// What the crate was doing (`starting the thread pool`, ...).
        during: String,
        /// What the system said.
        msg: String,
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

/// `std::result::Result` with this crate's [`Error`].
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

    /// A shape error of op `op`.
    pub fn shape(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Shape {
            op: op.into(),
            msg: msg.into(),
        }
    }

    /// An error of sampler `sampler`'s schedule or settings.
    pub fn sampler(sampler: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Sampler {
            sampler: sampler.into(),
            msg: msg.into(),
        }
    }

    /// An error of booster `booster`'s settings.
    pub fn booster(booster: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Booster {
            booster: booster.into(),
            msg: msg.into(),
        }
    }

    /// `what` was not found: `msg` says where it was looked for.
    pub fn not_found(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::NotFound {
            what: what.into(),
            msg: msg.into(),
        }
    }

    /// An error of argument `flag` (a command-line flag without its dashes, or a parameter).
    pub fn argument(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Argument {
            flag: flag.into(),
            msg: msg.into(),
        }
    }

    /// The system refused a resource while `during`.
    pub fn system(during: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::System {
            during: during.into(),
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
