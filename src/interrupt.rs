//! Ctrl-C (SIGINT) and SIGTERM: what the commands that run for a long time do with them.
//!
//! Why a module of its own: the default action of both signals kills the process wherever it
//! is. Files survive that (every file is written atomically, [`crate::atomic_file`]), but a
//! training run loses every step since its last checkpoint, and a killed write leaves its hidden
//! temporary file behind. Here the signal handler does only what a handler may safely do —
//! record the signal in an atomic, or end the process with `_exit` — and the [`Policy`] in force
//! says which:
//!
//! - [`Policy::Exit`] (sampling, inversion, interpolation, and training until its first step):
//!   exit at once with status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM),
//!   unless a file is being written (see [`writing`]): then right after that file is complete;
//! - [`Policy::Defer`] (the training loop, [`Deferred`]): record only; the loop finishes the
//!   step in flight, saves a checkpoint and returns [`Interrupted`], which `main` turns into
//!   its message and exit status.
//!
//! Under either, a second signal exits at once: someone who presses Ctrl-C twice means it. The
//! atomic writes keep what is on disk whole: a save cut short never replaces a checkpoint.
//!
//! Nothing happens until [`install`] is called (the `ddpm` binary does, for the commands that
//! write results); a library user keeps the default handling.

use std::fmt;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicUsize, Ordering::SeqCst,
};

/// A signal that asks the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: `kill`, a job scheduler, a container stopping.
    Terminate,
}

impl Signal {
    /// The conventional exit status of a process this signal stopped: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// How a user knows it: `Ctrl-C (SIGINT)`, `SIGTERM`.
    pub fn describe(self) -> &'static str {
        match self {
            Signal::Interrupt => "Ctrl-C (SIGINT)",
            Signal::Terminate => "SIGTERM",
        }
    }

    fn number(self) -> i32 {
        i32::from(self.exit_code()) - 128
    }

    fn from_number(n: i32) -> Option<Self> {
        [Signal::Interrupt, Signal::Terminate]
            .into_iter()
            .find(|s| s.number() == n)
    }
}

/// What a first signal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Exit at once, or right after the file being written.
    Exit,
    /// Record it for the program to act on ([`pending`]).
    Defer,
}

const EXIT: u8 = 0;
const DEFER: u8 = 1;

/// Whether the handlers are in place.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The signal received first (its number), 0 for none.
static PENDING: AtomicI32 = AtomicI32::new(0);
static POLICY: AtomicU8 = AtomicU8::new(EXIT);
/// Files being written now ([`writing`]).
static WRITING: AtomicUsize = AtomicUsize::new(0);
/// The line [`Policy::Exit`] prints on stderr before it exits ([`install`]'s `note`), as a
/// pointer and length: a signal handler may read atomics, not a lock.
static NOTE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static NOTE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Handles SIGINT and SIGTERM from now on, under [`Policy::Exit`], which prints `note` (one
/// line saying what stopping now means, e.g. that nothing needed saving yet) before it exits.
/// Calling it again does nothing.
pub fn install(note: &'static str) -> std::io::Result<()> {
    if INSTALLED.swap(true, SeqCst) {
        return Ok(());
    }
    NOTE_LEN.store(note.len(), SeqCst);
    NOTE.store(note.as_ptr().cast_mut(), SeqCst);
    #[cfg(unix)]
    for signal in [Signal::Interrupt, Signal::Terminate] {
        let n = signal.number();
        // SAFETY: the action only touches atomics and calls `_exit`, both async-signal-safe.
        let registered = unsafe { signal_hook::low_level::register(n, move || on_signal(n)) };
        if let Err(e) = registered {
            INSTALLED.store(false, SeqCst);
            return Err(e);
        }
    }
    Ok(())
}

/// The signal handler: runs on whichever thread the signal lands, so atomics, `write(2)` and
/// `_exit` only.
#[cfg(unix)]
fn on_signal(n: i32) {
    let status = 128 + n;
    if PENDING.swap(n, SeqCst) != 0 {
        signal_hook::low_level::exit(status);
    }
    // After `PENDING` is set: a write ending now either sees it or is seen here.
    if POLICY.load(SeqCst) == EXIT && WRITING.load(SeqCst) == 0 {
        let (note, len) = (NOTE.load(SeqCst), NOTE_LEN.load(SeqCst));
        if !note.is_null() {
            // SAFETY: `note` is a 'static string of `len` bytes ([`install`]); write(2) is
            // async-signal-safe. What it returns changes nothing: the process ends either way.
            let _ = unsafe { libc::write(2, note.cast(), len) };
        }
        signal_hook::low_level::exit(status);
    }
}

/// The first SIGINT or SIGTERM received since [`install`], if any.
pub fn pending() -> Option<Signal> {
    Signal::from_number(PENDING.load(SeqCst))
}

/// [`Policy::Defer`] while this lives (the previous policy again when dropped).
#[must_use = "the policy reverts when the guard is dropped"]
pub struct Deferred {
    previous: u8,
}

impl Deferred {
    pub fn begin() -> Self {
        Self {
            previous: POLICY.swap(DEFER, SeqCst),
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        POLICY.store(self.previous, SeqCst);
    }
}

/// The policy in force.
pub fn policy() -> Policy {
    match POLICY.load(SeqCst) {
        DEFER => Policy::Defer,
        _ => Policy::Exit,
    }
}

/// Marks a file write in flight: under [`Policy::Exit`] a signal waits for it, and the process
/// exits when the last write in flight ends (dropping the guard, after the file is in place).
#[must_use = "the write counts as in flight while the guard lives"]
pub struct Writing(());

pub fn writing() -> Writing {
    WRITING.fetch_add(1, SeqCst);
    Writing(())
}

impl Drop for Writing {
    fn drop(&mut self) {
        let last = WRITING.fetch_sub(1, SeqCst) == 1;
        if last && POLICY.load(SeqCst) == EXIT {
            if let Some(signal) = pending() {
                let (note, len) = (NOTE.load(SeqCst), NOTE_LEN.load(SeqCst));
                if !note.is_null() {
                    // SAFETY: a 'static string of `len` bytes ([`install`]).
                    let note = unsafe { std::slice::from_raw_parts(note, len) };
                    eprint!("{}", String::from_utf8_lossy(note));
                }
                // `exit` rather than `_exit`: the file is complete, and buffered output may go.
                std::process::exit(i32::from(signal.exit_code()));
            }
        }
    }
}

/// A command stopped by a signal, having saved what it could: `main` prints the message as it
/// is and exits with [`Signal::exit_code`].
#[derive(Debug)]
pub struct Interrupted {
    pub signal: Signal,
    pub message: String,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_the_conventional_statuses() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
        assert_eq!(Signal::from_number(2), Some(Signal::Interrupt));
        assert_eq!(Signal::from_number(15), Some(Signal::Terminate));
        assert_eq!(Signal::from_number(0), None);
    }

    #[test]
    fn deferring_is_undone_when_the_guard_goes() {
        // No handler is installed in the test process: nothing is pending, writes are plain.
        assert_eq!(pending(), None);
        let before = policy();
        {
            let _d = Deferred::begin();
            assert_eq!(policy(), Policy::Defer);
            drop(writing());
        }
        assert_eq!(policy(), before);
    }
}
