//! One training process per output directory: two runs writing the same checkpoints and log
//! would each destroy the other's work. The lock is an exclusive advisory lock (`flock`, on
//! Unix) on `train.lock`, which holds the owner's process id for the message. The operating
//! system drops the lock when its process ends, however it ends, so a killed run never leaves
//! a directory locked; the file itself stays.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "train.lock";

/// Held for the life of a run.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: another ddpm train ({owner}) is writing to this directory; wait for it to finish or choose another --out", dir.display())]
    Held { dir: PathBuf, owner: String },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        if !try_lock(&file).map_err(io)? {
            let owner = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
                .map_or_else(|| "another process".to_string(), |p| format!("process {p}"));
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                owner,
            });
        }
        file.set_len(0).map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

/// An exclusive, non-blocking `flock`; `false` when another open file holds it.
#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this File owns for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere the lock is not enforced.
#[cfg(not(unix))]
fn try_lock(_: &File) -> io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_held_lock_is_refused_naming_its_owner_and_released_on_drop() {
        let dir = std::env::temp_dir().join(format!("ddpm-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // A lock file left behind by a process that died holds no lock.
        fs::write(dir.join(LOCK_FILE), "4294967").unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(lock);
        RunLock::acquire(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
