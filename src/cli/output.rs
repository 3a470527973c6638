//! Output paths are checked before any work starts: a run or a sampling job that cannot write
//! its results fails at once with a usage error naming the flag, not after hours of compute; and
//! a job that fails leaves behind no directory it created and left empty.
//!
//! `sample`, `invert` and `interpolate` (and `export`, through [`refuse_occupied`]) also refuse an
//! `--out` that already holds files, so that new results never sit beside stale ones; with
//! `--force` they replace what the same command wrote there before, and only that.

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
    /// Files of an earlier run of the same command, replaced under `--force`.
    earlier: Vec<PathBuf>,
}

/// The files one command writes into its `--out` directory.
pub struct Naming<'a> {
    /// The command, as the user types it: `ddpm sample`.
    pub command: &'a str,
    /// Its file names, as the user reads them: `sample_00000.png, …, grid.png`.
    pub pattern: &'a str,
    /// Whether a file name is one of them.
    pub owns: &'a dyn Fn(&str) -> bool,
}

impl Naming<'_> {
    /// Whether `name` is one of this command's files or a temporary file left while writing
    /// one (`.NAME.tmp-PID`, see [`crate::atomic_file`]).
    fn owns_file(&self, name: &str) -> bool {
        let staged = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(crate::atomic_file::TEMP_MARKER))
            .filter(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .map(|(n, _)| n);
        (self.owns)(staged.unwrap_or(name))
    }
}

/// Whether `name` is `{prefix}{index}{suffix}` with an index of at least `min_digits` digits
/// (`sample_00012.png`).
pub fn numbered(name: &str, prefix: &str, min_digits: usize, suffix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(suffix))
        .is_some_and(|d| d.len() >= min_digits && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The entries of `dir` (empty when it does not exist), sorted by name.
fn entries(dir: &Path, flag: &str) -> Result<Vec<(String, PathBuf, bool)>> {
    if dir.exists() && !dir.is_dir() {
        return Err(usage(format!(
            "{flag} {}: exists and is not a directory",
            dir.display()
        )));
    }
    if !dir.is_dir() {
        // Not there (yet): creating it says what is wrong, if anything.
        return Ok(Vec::new());
    }
    let read = fs::read_dir(dir).map_err(|e| {
        usage(format!(
            "{flag} {}: cannot list the directory: {e}",
            dir.display()
        ))
    })?;
    let mut found = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| {
            usage(format!(
                "{flag} {}: cannot list the directory: {e}",
                dir.display()
            ))
        })?;
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
            is_file,
        ));
    }
    found.sort();
    Ok(found)
}

/// Up to five names, then how many more: `a.png, b.png, c.png and 14 more`.
fn listing(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text += &format!(" and {} more", names.len() - SHOWN);
    }
    text
}

/// `dir/` for a directory entry, to tell it from a file in a listing.
fn shown(name: &str, is_file: bool) -> String {
    if is_file {
        name.to_string()
    } else {
        format!("{name}/")
    }
}

/// A usage error when `dir` exists and holds anything: it names the directory and what is in
/// it, and says what to do (`remedy`: how `--force` would help, or what it cannot do).
pub fn refuse_occupied(dir: &Path, flag: &str, remedy: &str) -> Result<()> {
    let found = entries(dir, flag)?;
    if found.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = found.iter().map(|(n, _, f)| shown(n, *f)).collect();
    Err(usage(format!(
        "{flag} {}: already holds {} ({}); choose another {flag}{remedy}",
        dir.display(),
        super::args::plural(names.len() as u64, "entry", "entries"),
        listing(&names),
    )))
}

impl OutputDir {
    /// As [`OutputDir::prepare`], for a directory that must hold only this job's results: one
    /// that already holds anything is refused (a usage error naming what is there) unless
    /// `force`, and then only when everything there is `naming`'s files, which
    /// [`OutputDir::clear_earlier`] removes once the new results are ready to be written.
    pub fn prepare_fresh(path: &Path, flag: &str, force: bool, naming: &Naming) -> Result<Self> {
        let found = entries(path, flag)?;
        if !force {
            refuse_occupied(
                path,
                flag,
                &format!(
                    ", or pass --force to replace the earlier output of `{}`",
                    naming.command
                ),
            )?;
        }
        let (ours, others): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|(name, _, is_file)| *is_file && naming.owns_file(name));
        if !others.is_empty() {
            let names: Vec<String> = others.iter().map(|(n, _, f)| shown(n, *f)).collect();
            return Err(usage(format!(
                "{flag} {}: --force replaces only what `{}` writes ({}), but the directory \
                 also holds {}; move {} away or choose another {flag}",
                path.display(),
                naming.command,
                naming.pattern,
                listing(&names),
                if names.len() == 1 { "it" } else { "them" },
            )));
        }
        let mut dir = Self::prepare(path, flag)?;
        dir.earlier = ours.into_iter().map(|(_, p, _)| p).collect();
        Ok(dir)
    }

    /// Removes the earlier results that `--force` replaces (none without it). Called just
    /// before the new results are written, so that a job that fails or is stopped before then
    /// leaves them as they were.
    pub fn clear_earlier(&mut self) -> Result<()> {
        for path in std::mem::take(&mut self.earlier) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot remove the earlier {}: {e}",
                        path.display()
                    ))
                }
            }
        }
        Ok(())
    }

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
        let guard = Self {
            created,
            earlier: Vec::new(),
        };
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

    #[test]
    fn an_occupied_directory_is_refused_and_force_replaces_only_our_files() {
        let root = std::env::temp_dir().join(format!("ddpm-output-fresh-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let owns = |n: &str| n == "grid.png" || numbered(n, "sample_", 5, ".png");
        let naming = Naming {
            command: "ddpm sample",
            pattern: "sample_00000.png, …, grid.png",
            owns: &owns,
        };
        // Absent or empty: fine, with or without --force.
        drop(OutputDir::prepare_fresh(&root, "--out", false, &naming).unwrap());
        fs::create_dir_all(&root).unwrap();
        drop(OutputDir::prepare_fresh(&root, "--out", false, &naming).unwrap());
        for f in ["grid.png", "sample_00000.png", ".sample_00001.png.tmp-42"] {
            fs::write(root.join(f), b"x").unwrap();
        }
        let e = OutputDir::prepare_fresh(&root, "--out", false, &naming)
            .err()
            .unwrap();
        assert!(crate::usage_error::is_usage(&e), "{e}");
        let msg = e.to_string();
        for part in [
            root.to_str().unwrap(),
            "already holds 3 entries",
            "grid.png",
            "--force",
        ] {
            assert!(msg.contains(part), "no `{part}` in: {msg}");
        }
        // --force: our files go, but only once the new output is ready.
        let mut dir = OutputDir::prepare_fresh(&root, "--out", true, &naming).unwrap();
        assert!(root.join("grid.png").exists());
        dir.clear_earlier().unwrap();
        drop(dir);
        assert!(root.exists(), "the directory the user named stays");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        // Anything else is not ours to remove.
        fs::write(root.join("grid.png"), b"x").unwrap();
        fs::write(root.join("notes.txt"), b"x").unwrap();
        fs::create_dir(root.join("sample_00002.png")).unwrap();
        let e = OutputDir::prepare_fresh(&root, "--out", true, &naming)
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("notes.txt, sample_00002.png/"), "{msg}");
        assert!(!msg.contains("grid.png,"), "{msg}");
        assert!(root.join("grid.png").exists() && root.join("notes.txt").exists());
        assert!(!numbered("sample_0001.png", "sample_", 5, ".png"));
        assert!(numbered("sample_123456.png", "sample_", 5, ".png"));
        fs::remove_dir_all(&root).unwrap();
    }
}
