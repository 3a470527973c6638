//! Output paths are checked before any work starts: a run or a sampling job that cannot write
//! its results fails at once with a usage error naming the flag, not after hours of compute; and
//! a job that fails leaves behind no directory it created and left empty.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::usage_error::usage;

/// A directory made ready for output. Dropping it removes the directories it created that are
/// still empty (a job that failed before writing anything leaves no trace).
pub struct OutputDir {
    /// Directories this guard created, innermost first.
    created: Vec<PathBuf>,
}

impl OutputDir {
    /// Creates `path` and its missing parents, and checks that a file can be written in it.
    pub fn prepare(path: &Path, flag: &str) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(usage(format!(
                "{flag} {}: exists and is not a directory",
                path.display()
            )));
        }
        let mut created = Vec::new();
        let mut p = Some(path);
        while let Some(dir) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            created.push(dir.to_path_buf());
            p = dir.parent();
        }
        let guard = Self { created };
        fs::create_dir_all(path).map_err(|e| {
            usage(format!(
                "{flag} {}: cannot create the directory: {e}",
                path.display()
            ))
        })?;
        probe(path).map_err(|e| {
            usage(format!(
                "{flag} {}: cannot write there: {e}",
                path.display()
            ))
        })?;
        Ok(guard)
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        for dir in &self.created {
            // Fails, as it should, for a directory that now holds something.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Checks that the file `path` can be created (its directory exists and takes a new file),
/// without touching `path` itself.
pub fn check_writable_file(path: &Path, flag: &str) -> Result<()> {
    if path.is_dir() {
        return Err(usage(format!(
            "{flag} {}: is a directory, expected a file name",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    probe(dir).map_err(|e| {
        usage(format!(
            "{flag} {}: cannot write there: {e}",
            path.display()
        ))
    })
}

/// Writes and removes a small hidden file in `dir`.
fn probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(format!(".ddpm-write-test-{}", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .and_then(|mut f| f.write_all(b"x"));
    let _ = fs::remove_file(&p);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_leaves_no_directory_it_created() {
        let root = std::env::temp_dir().join(format!("ddpm-output-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let out = root.join("a").join("b");
        drop(OutputDir::prepare(&out, "--out").unwrap());
        assert!(
            !root.exists(),
            "nothing written: every created directory goes"
        );

        let kept = OutputDir::prepare(&out, "--out").unwrap();
        fs::write(out.join("grid.png"), b"x").unwrap();
        drop(kept);
        assert!(
            out.join("grid.png").exists(),
            "a directory with output stays"
        );

        let file = root.join("file");
        fs::write(&file, b"x").unwrap();
        let e = OutputDir::prepare(&file, "--out").err().unwrap();
        assert!(crate::usage_error::is_usage(&e), "{e}");
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = OutputDir::prepare(&file.join("sub"), "--out")
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot create"), "{e}");
        let e = check_writable_file(&root.join("nope").join("x.st"), "--save-raw")
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        check_writable_file(&root.join("x.st"), "--save-raw").unwrap();
        assert!(!root.join("x.st").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
