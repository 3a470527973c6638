//! One training process per output directory: two runs writing the same checkpoints and log
//! would each destroy the other's work. The lock is a file holding the owner's process id; one
//! left by a process that was killed is taken over.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::checkpoint_dir::process_alive;

pub const LOCK_FILE: &str = "train.lock";

/// Held for the life of a run; the file is removed when it is dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}: another ddpm train (process {pid}) is writing to this directory; wait for it to finish or choose another --out", dir.display())]
    Held { dir: PathBuf, pid: u32 },
    #[error("cannot lock {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl RunLock {
    /// Takes the lock of `dir` (which must exist).
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Two tries: the second after removing a lock whose owner is gone.
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id()).map_err(io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let owner = fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok());
                    match owner {
                        Some(pid) if process_alive(pid) => {
                            return Err(LockError::Held {
                                dir: dir.to_path_buf(),
                                pid,
                            })
                        }
                        // Stale (its process was killed) or unreadable: take it over.
                        _ => fs::remove_file(&path).map_err(io)?,
                    }
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(io(io::Error::other("the lock file keeps reappearing")))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_blocks_and_a_dead_one_is_taken_over() {
        let dir = std::env::temp_dir().join(format!("ddpm-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        // This process is alive: a second lock is refused, naming it.
        let e = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(lock);
        assert!(!dir.join(LOCK_FILE).exists());
        // A lock left by a process that no longer exists is taken over.
        fs::write(dir.join(LOCK_FILE), "4294967").unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            std::process::id().to_string()
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }
}
