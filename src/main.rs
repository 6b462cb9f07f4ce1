//! The `mailbag` command: parses the command line and hands over to the
//! library. See `mailbag --help`.
#![forbid(unsafe_code)]

mod assets;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
