//! Usage errors: a flag value that cannot work (out of range, unknown name, an output path that
//! cannot be written). The binary exits with status 2 for them, as for clap's own parse errors,
//! and 1 for everything else (a bad file, a failed run).

use std::fmt;

#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an [`anyhow::Error`].
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Whether `e`, or anything it wraps, is a usage error.
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<UsageError>())
}

/// `e` and its causes on one line, as `{:#}` writes them, leaving out a cause whose text is
/// already there (an error whose message quotes its source would otherwise say it twice:
/// `cannot read x: No such file or directory: No such file or directory`).
pub fn report(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `Err(usage(format!(...)))` unless the condition holds.
#[macro_export]
macro_rules! ensure_usage {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::usage_error::usage(format!($($arg)+)).into());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_errors_are_found_under_context() {
        let e: anyhow::Result<()> = Err(usage("--steps 0: expected at least 1"));
        let e = e.context("sampling").unwrap_err();
        assert!(is_usage(&e));
        assert!(!is_usage(&anyhow::anyhow!("cannot read x.png")));
    }

    #[test]
    fn a_report_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Quoting {
            source: std::io::Error,
        }
        let os = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Quoting { source: os }).context("--data x");
        assert_eq!(
            format!("{e:#}"),
            "--data x: cannot read x: no such file: no such file"
        );
        assert_eq!(report(&e), "--data x: cannot read x: no such file");
    }
}
