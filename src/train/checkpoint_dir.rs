//! A run's `checkpoints/` folder: `step_NNNNNNN.safetensors` files, the newest K kept, and
//! `latest.safetensors` (a hard link to the newest, or a copy where links are not possible).
//!
//! Every file appears whole or not at all (written to a hidden temporary name, flushed to disk,
//! renamed), so a run killed at any moment leaves only complete checkpoints and, at worst, a
//! hidden temporary file, which the next run in the folder removes. Resuming picks the newest
//! checkpoint that verifies ([`Checkpoint::load`]) and names any it had to pass over.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{Checkpoint, CheckpointError};
use crate::atomic_file::{link_or_copy_atomic, TEMP_MARKER};

pub const LATEST: &str = "latest.safetensors";

/// `step_0001000.safetensors`.
pub fn step_file_name(step: u64) -> String {
    format!("step_{step:07}.safetensors")
}

/// The step in a `step_N.safetensors` name.
fn step_of_name(name: &str) -> Option<u64> {
    name.strip_prefix("step_")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// The `step_N` checkpoints in `dir`, oldest first.
pub fn step_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(step) = entry.file_name().to_str().and_then(step_of_name) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The name of the newest checkpoint in `dir` (a step file, else `latest`), if any.
pub fn newest_name(dir: &Path) -> Option<String> {
    let newest = step_files(dir).ok().and_then(|f| f.into_iter().last());
    match newest {
        Some((_, p)) => Some(p.file_name()?.to_string_lossy().into_owned()),
        None => dir.join(LATEST).is_file().then(|| LATEST.to_string()),
    }
}

/// Makes `dir/latest.safetensors` the file `newest`, then deletes all but the newest `keep`
/// step files (`keep` = 0 keeps them all). Only called after `newest` was written whole.
pub fn publish(dir: &Path, newest: &Path, keep: usize) -> io::Result<Vec<PathBuf>> {
    link_or_copy_atomic(newest, &dir.join(LATEST))?;
    let mut removed = Vec::new();
    if keep > 0 {
        let files = step_files(dir)?;
        let excess = files.len().saturating_sub(keep);
        for (_, path) in files.into_iter().take(excess) {
            if path != newest {
                fs::remove_file(&path)?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// Moves step files past `step`, and a `latest` that is not at or before it, into
/// `dir/abandoned/`; returns (from, to) of each.
pub fn set_aside_newer(dir: &Path, step: u64) -> io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut newer: Vec<PathBuf> = step_files(dir)?
        .into_iter()
        .filter(|(s, _)| *s > step)
        .map(|(_, p)| p)
        .collect();
    let latest = dir.join(LATEST);
    if latest.is_file() && peek_step(&latest).is_none_or(|s| s > step) {
        newer.push(latest);
    }
    let aside = dir.join("abandoned");
    let mut moved = Vec::new();
    for from in newer {
        fs::create_dir_all(&aside)?;
        let to = aside.join(from.file_name().expect("a file name"));
        fs::rename(&from, &to)?;
        moved.push((from, to));
    }
    Ok(moved)
}

/// Removes temporary files left by a writer that was killed mid-save (their process is gone).
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(removed);
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((_, pid)) = name.rsplit_once(TEMP_MARKER) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if name.starts_with('.') && !process_alive(pid) {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Whether process `pid` still runs (Linux: its /proc entry). Elsewhere, only our own pid
/// counts as alive, so temporaries of other processes are treated as stale.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        false
    }
}

/// The step recorded in a checkpoint's header, read without loading its tensors.
pub fn peek_step(path: &Path) -> Option<u64> {
    let mut f = fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&header).ok()?;
    v.get("__metadata__")?.get("step")?.as_str()?.parse().ok()
}

/// The checkpoint to resume from, and the newer ones that did not verify.
pub struct Resumable {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    pub rejected: Vec<CheckpointError>,
}

/// The newest checkpoint in `dir` that verifies: step files and `latest`, newest step first.
pub fn newest_valid(dir: &Path) -> Result<Resumable, NoValidCheckpoint> {
    let mut candidates: Vec<(u64, bool, PathBuf)> = step_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(s, p)| (s, true, p))
        .collect();
    let latest = dir.join(LATEST);
    if latest.is_file() {
        // Usually the same file as the newest step file; it counts on its own when that one is
        // gone. Unreadable headers sort last but are still tried.
        candidates.push((peek_step(&latest).unwrap_or(0), false, latest));
    }
    // Newest first; at equal steps the step file before `latest`.
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut rejected = Vec::new();
    for (_, _, path) in candidates {
        match Checkpoint::load(&path) {
            Ok(checkpoint) => {
                return Ok(Resumable {
                    path,
                    checkpoint,
                    rejected,
                })
            }
            Err(e) => rejected.push(e),
        }
    }
    Err(NoValidCheckpoint {
        dir: dir.to_path_buf(),
        rejected,
    })
}

/// No checkpoint in a folder verifies.
#[derive(Debug)]
pub struct NoValidCheckpoint {
    pub dir: PathBuf,
    pub rejected: Vec<CheckpointError>,
}

impl std::fmt::Display for NoValidCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rejected.is_empty() {
            return write!(f, "{}: no checkpoints", self.dir.display());
        }
        write!(f, "{}: no checkpoint verifies", self.dir.display())?;
        for e in &self.rejected {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoValidCheckpoint {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip_and_others_are_ignored() {
        assert_eq!(step_file_name(1000), "step_0001000.safetensors");
        assert_eq!(step_of_name(&step_file_name(1000)), Some(1000));
        assert_eq!(step_of_name("step_12345678.safetensors"), Some(12345678));
        for other in [
            "latest.safetensors",
            ".step_0000001.safetensors.tmp-12",
            "step_x.safetensors",
            "step_0000001.safetensors.bak",
        ] {
            assert_eq!(step_of_name(other), None, "{other}");
        }
    }
}
