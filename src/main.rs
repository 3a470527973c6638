//! The `ddpm` binary: parse, dispatch, report errors without a backtrace.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ddpm::cli::Cli::parse();
    match ddpm::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
