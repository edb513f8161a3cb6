//! Writing outputs without losing anything. Every file goes to a temporary name beside its
//! destination, is flushed to disk, and is renamed into place only when complete, so a failure
//! (a full disk, a signal) leaves whatever was there before untouched; a set of files (a merged
//! model folder) is renamed into place only once every one of them is written. And no file a call
//! writes may be one of the files it reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// `.NAME.freelunch-PID-N.tmp` beside `path`: hidden, unique within the process, recognisable.
fn temporary_beside(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.freelunch-{}-{n}.tmp", std::process::id()))
}

/// Writes `path`'s temporary twin with `write` and syncs it; returns the temporary path. The
/// temporary file is removed if anything fails.
fn write_temporary(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<PathBuf> {
    let tmp = temporary_beside(path);
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes the file `path` atomically: complete, or not at all (the old file stays).
pub fn write_file(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let tmp = write_temporary(path, write)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A file to write with its contents.
pub type FileWriter<'a> = (PathBuf, Box<dyn FnOnce(&mut dyn Write) -> Result<()> + 'a>);

/// Writes every file of `files` into the folder `dir` (made if missing) and only then renames
/// them into place, one after another; if any write fails nothing is renamed, the temporary files
/// are removed, and so is `dir` if this call made it.
pub fn write_files(dir: &Path, files: Vec<FileWriter<'_>>) -> Result<()> {
    let made = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |written: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in written {
            let _ = std::fs::remove_file(tmp);
        }
        if made {
            let _ = std::fs::remove_dir(dir);
        }
    };
    for (path, write) in files {
        match write_temporary(&path, write) {
            Ok(tmp) => written.push((tmp, path)),
            Err(e) => {
                cleanup(&written);
                return Err(e);
            }
        }
    }
    for (i, (tmp, path)) in written.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&written[i..]);
            return Err(Error::io(path, e));
        }
    }
    Ok(())
}

/// An error if any of `outputs` is one of `inputs` (the same file, however it is named).
pub fn refuse_inputs_as_outputs(outputs: &[&Path], inputs: &[&Path]) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let inputs: Vec<(PathBuf, &Path)> = inputs
        .iter()
        .filter_map(|p| canonical(p).map(|c| (c, *p)))
        .collect();
    for out in outputs {
        let Some(c) = canonical(out) else {
            continue; // does not exist yet, so it is no input
        };
        if let Some((_, input)) = inputs.iter().find(|(i, _)| *i == c) {
            return Err(Error::input(
                "output",
                format!(
                    "the output {} is the input {}: writing it would destroy what is being read; \
                 choose another output",
                    out.display(),
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("freelunch-output-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect()
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_nothing_behind() {
        let d = scratch("file");
        let p = d.join("out.bin");
        std::fs::write(&p, b"old").unwrap();
        let r = write_file(&p, |w: &mut dyn Write| {
            w.write_all(b"half").unwrap();
            Err(Error::Msg("disk full".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(&d).is_empty(), "{:?}", leftovers(&d));
        write_file(&p, |w: &mut dyn Write| {
            w.write_all(b"new").map_err(|e| Error::io(&p, e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn a_failed_set_renames_nothing_and_removes_the_folder_it_made() {
        let d = scratch("set").join("model");
        let files: Vec<FileWriter> = vec![
            (
                d.join("a"),
                Box::new(|w: &mut dyn Write| {
                    w.write_all(b"a").map_err(|e| Error::Msg(e.to_string()))
                }),
            ),
            (
                d.join("b"),
                Box::new(|_: &mut dyn Write| Err(Error::Msg("failed".into()))),
            ),
        ];
        assert!(write_files(&d, files).is_err());
        assert!(!d.exists());
    }

    #[test]
    fn inputs_cannot_be_outputs_under_another_name() {
        let d = scratch("same");
        let p = d.join("in.bin");
        std::fs::write(&p, b"x").unwrap();
        let other = d.join(".").join("in.bin");
        assert!(refuse_inputs_as_outputs(&[&other], &[&p]).is_err());
        assert!(refuse_inputs_as_outputs(&[&d.join("new.bin")], &[&p]).is_ok());
    }
}
