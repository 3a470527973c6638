//! Writing a file so that a crash never leaves a half-written one behind: write a temporary file
//! in the same directory, flush it to disk, rename it over the target, then sync the directory.
//! A Ctrl-C during a write lets it finish first where the command says so ([`crate::interrupt`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What marks a temporary file: `.NAME.tmp-PID`, beside the file it will become.
pub const TEMP_MARKER: &str = ".tmp-";

/// The directory of `path` and the temporary name to stage it under.
fn staging(path: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}{TEMP_MARKER}{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

/// Renames the staged `tmp` over `path` and makes the rename durable; removes `tmp` on error.
fn commit(dir: &Path, tmp: &Path, path: &Path, staged: io::Result<()>) -> io::Result<()> {
    let result = staged.and_then(|()| fs::rename(tmp, path)).map(|()| {
        // Make the rename itself durable; not every platform can open a directory, so best effort.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    });
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

/// Replaces `path` with `bytes` atomically. On error the previous file (if any) is untouched and
/// the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let _in_flight = crate::interrupt::writing();
    let (dir, tmp) = staging(path)?;
    let staged = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    commit(&dir, &tmp, path, staged)
}

/// Makes `dst` the same content as the complete file `src`, atomically: a hard link where the
/// file system has them (no second copy on disk), else a copy flushed to disk.
pub fn link_or_copy_atomic(src: &Path, dst: &Path) -> io::Result<()> {
    let _in_flight = crate::interrupt::writing();
    let (dir, tmp) = staging(dst)?;
    let _ = fs::remove_file(&tmp);
    let staged = fs::hard_link(src, &tmp).or_else(|_| {
        fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_all()
    });
    commit(&dir, &tmp, dst, staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("ddpm-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.bin");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failure_keeps_the_previous_file() {
        let dir = std::env::temp_dir().join(format!("ddpm-atomic-fail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("keep.bin");
        write_atomic(&p, b"good").unwrap();
        // Renaming a file over a non-empty directory fails: the write must not touch `p`.
        let blocked = dir.join("blocked");
        fs::create_dir_all(blocked.join("inner")).unwrap();
        assert!(write_atomic(&blocked, b"x").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"good");
        assert!(!dir
            .join(".blocked.tmp-".to_string() + &std::process::id().to_string())
            .exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn link_or_copy_replaces_the_target_with_the_source_content() {
        let dir = std::env::temp_dir().join(format!("ddpm-atomic-link-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b, latest) = (dir.join("a"), dir.join("b"), dir.join("latest"));
        write_atomic(&a, b"first").unwrap();
        write_atomic(&b, b"second").unwrap();
        link_or_copy_atomic(&a, &latest).unwrap();
        assert_eq!(fs::read(&latest).unwrap(), b"first");
        link_or_copy_atomic(&b, &latest).unwrap();
        assert_eq!(fs::read(&latest).unwrap(), b"second");
        // The target outlives its source (a link keeps the data, a copy is independent).
        fs::remove_file(&b).unwrap();
        assert_eq!(fs::read(&latest).unwrap(), b"second");
        assert!(link_or_copy_atomic(&dir.join("missing"), &latest).is_err());
        assert_eq!(fs::read(&latest).unwrap(), b"second");
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "latest"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
