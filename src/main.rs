//! The `ddpm` binary: parse, dispatch, report errors without a backtrace.

use clap::Parser;
use ddpm::cli::Command;

fn main() -> std::process::ExitCode {
    // A panic is a bug in ddpm, never the user's fault: one line saying so, no backtrace hint.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error, a bug in ddpm (please report it): {info}");
    }));
    ddpm::heap::keep_freed_memory();
    let cli = ddpm::cli::Cli::parse();
    // Commands that write results: a Ctrl-C or SIGTERM lets the file in flight finish, and
    // training saves a checkpoint first (src/interrupt.rs).
    let note = match cli.command {
        Command::Train(_) => Some(
            "\ninterrupted before the first training step: nothing new to save (run the same command \
             again)\n",
        ),
        Command::Sample(_) | Command::Invert(_) | Command::Interpolate(_) | Command::Fid(_) => {
            Some("\ninterrupted: stopped early; every file written so far is complete\n")
        }
        _ => None,
    };
    if let Some(note) = note {
        if let Err(e) = ddpm::interrupt::install(note) {
            eprintln!("warning: cannot handle Ctrl-C (an interrupt stops at once): {e}");
        }
    }
    match ddpm::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(stop) = e.downcast_ref::<ddpm::interrupt::Interrupted>() {
                eprintln!("{stop}");
                return std::process::ExitCode::from(stop.signal.exit_code());
            }
            eprintln!("error: {}", ddpm::usage_error::report(&e));
            // 2 for a flag that cannot work, as for clap's own errors; 1 for anything else.
            std::process::ExitCode::from(if ddpm::usage_error::is_usage(&e) {
                2
            } else {
                1
            })
        }
    }
}
