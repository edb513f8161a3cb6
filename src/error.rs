//! The crate's one error type. Every failure a user can cause (bad files, bad config, bad inputs)
//! ends here with a message that names the thing that is wrong; nothing on those paths panics.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not a valid safetensors file: {msg}")]
    Safetensors { origin: String, msg: String },
    #[error("{origin}: invalid JSON: {msg}")]
    Json { origin: String, msg: String },
    #[error("config {origin}: {msg}")]
    Config { origin: String, msg: String },
    #[error("unsupported config value: `{field}` = {value}")]
    Unsupported { field: String, value: String },
    #[error("weight `{name}`: {msg}")]
    Weight { name: String, msg: String },
    #[error("missing weight `{0}` in the checkpoint")]
    MissingWeight(String),
    #[error("input `{name}`: {msg}")]
    Input { name: String, msg: String },
    /// A plan or an allocation that the memory available cannot hold.
    #[error("{what} needs ~{} GiB, {} GiB available", gib(*needed), gib(*available))]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
    },
    /// A size computed from input that overflows what the machine can address.
    #[error("{what} is too large: {detail}")]
    TooLarge { what: String, detail: String },
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
    pub fn input(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Input {
            name: name.into(),
            msg: msg.into(),
        }
    }

    pub fn weight(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Weight {
            name: name.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
