//! The `coffer` binary: see `coffer --help`.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    coffer::cli::run()
}
