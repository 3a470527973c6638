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
}
