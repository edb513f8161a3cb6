//! Models in the Hugging Face cache, as `huggingface_hub` lays it out, resolved without a network
//! (this crate never downloads): a cache repo folder `models--org--name/` (its `refs/<revision>`
//! file names a commit, whose files are under `snapshots/<commit>/`, symlinks into `blobs/`), a
//! snapshot folder itself, or a bare repo id `org/name` looked up in the cache folder that
//! `HF_HUB_CACHE`, `HF_HOME` (`$HF_HOME/hub`) or the default `~/.cache/huggingface/hub` names.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The folder a model argument names: `arg` itself when it is a folder other than a cache repo;
/// a cache repo folder's snapshot of `revision` (default `main`); or, when `arg` is no folder and
/// reads as `org/name`, that repo's snapshot in the cache. A `revision` that could not apply is
/// an error, as is a repo id not in the cache.
pub fn resolve(arg: &Path, revision: Option<&str>) -> Result<PathBuf> {
    if arg.is_dir() {
        if is_cache_repo(arg) {
            return snapshot(arg, revision);
        }
        if let Some(r) = revision {
            return Err(Error::not_found(
                format!("--revision {r}"),
                format!(
                    "--revision {r}: {} is a plain folder, not a Hugging Face cache repo \
                 (models--org--name) or a repo id",
                    arg.display()
                ),
            ));
        }
        return Ok(arg.to_path_buf());
    }
    let Some(id) = repo_id(arg) else {
        return Err(Error::not_found(
            arg.display().to_string(),
            format!(
                "model folder {} does not exist or is not a folder",
                arg.display()
            ),
        ));
    };
    let cache = cache_dir().ok_or_else(|| {
        Error::not_found(
            arg.display().to_string(),
            format!(
                "{} is not a folder, and no Hugging Face cache folder is known to look for it in \
             (set HF_HUB_CACHE or HF_HOME)",
                arg.display()
            ),
        )
    })?;
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    if !repo.is_dir() {
        return Err(Error::not_found(
            id.to_string(),
            format!(
                "{id} is neither a folder here nor in the Hugging Face cache ({} has no {}); this \
             tool reads models from disk only and never downloads: fetch it first (e.g. \
             `huggingface-cli download {id}`) or give its folder",
                cache.display(),
                repo.file_name().unwrap_or_default().to_string_lossy()
            ),
        ));
    }
    snapshot(&repo, revision)
}

/// `org/name`: two non-empty parts of letters, digits, `-`, `_` and `.`, as the Hub allows.
fn repo_id(arg: &Path) -> Option<String> {
    let s = arg.to_str()?;
    let (org, name) = s.split_once('/')?;
    let part = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (part(org) && part(name)).then(|| s.to_string())
}

/// The cache folder `huggingface_hub` uses: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("huggingface").join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
}

fn is_cache_repo(dir: &Path) -> bool {
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("models--"));
    named && dir.join("snapshots").is_dir()
}

/// A 40-hex-digit commit hash.
fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot of `revision` in cache repo folder `repo`: `refs/<revision>` holds its commit;
/// a commit hash names its snapshot directly.
fn snapshot(repo: &Path, revision: Option<&str>) -> Result<PathBuf> {
    let rev = revision.unwrap_or("main");
    let bad_name = rev.is_empty()
        || rev
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || rev.contains('\\');
    if bad_name {
        return Err(Error::Unsupported {
            field: "revision".into(),
            value: format!("`{rev}` (not a branch, tag or commit name)"),
        });
    }
    let refs = repo.join("refs").join(rev);
    let commit = if refs.is_file() {
        let text = std::fs::read_to_string(&refs).map_err(|e| Error::io(&refs, e))?;
        let commit = text.trim().to_string();
        if !is_commit(&commit) {
            return Err(Error::not_found(
                refs.display().to_string(),
                format!("{}: holds `{commit}`, not a commit hash", refs.display()),
            ));
        }
        commit
    } else if is_commit(rev) {
        rev.to_string()
    } else {
        let mut known: Vec<String> = std::fs::read_dir(repo.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        known.sort();
        return Err(Error::not_found(
            format!("--revision {rev}"),
            format!(
                "{}: no revision `{rev}` in the cache (it has refs: {}); this tool never \
             downloads",
                repo.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let dir = repo.join("snapshots").join(&commit);
    if !dir.is_dir() {
        return Err(Error::not_found(
            format!("--revision {rev}"),
            format!(
                "{}: revision `{rev}` is commit {commit}, whose snapshot folder is missing (an \
             interrupted download?)",
                repo.display()
            ),
        ));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_two_hub_names() {
        assert!(repo_id(Path::new("runwayml/stable-diffusion-v1-5")).is_some());
        assert!(repo_id(Path::new("google/ddpm-cifar10-32")).is_some());
        for bad in ["name", "a/b/c", "../x", "a/..", "/abs", "a b/c", "org/"] {
            assert!(repo_id(Path::new(bad)).is_none(), "{bad}");
        }
    }

    #[test]
    fn revisions_that_climb_out_of_refs_are_refused() {
        let dir = std::env::temp_dir().join(format!("fl-hub-{}", std::process::id()));
        let repo = dir.join("models--a--b");
        std::fs::create_dir_all(repo.join("snapshots")).unwrap();
        for rev in ["../../x", "", "a//b", "main/.."] {
            let e = snapshot(&repo, Some(rev)).unwrap_err().to_string();
            assert!(e.contains("not a branch"), "{rev}: {e}");
        }
        let e = snapshot(&repo, None).unwrap_err().to_string();
        assert!(
            e.contains("no revision `main`") && e.contains("never"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
