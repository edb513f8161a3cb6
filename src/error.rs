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
    #[error("{0}")]
    Msg(String),
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
