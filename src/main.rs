//! The `coffer` binary: see `coffer --help`.

fn main() -> std::process::ExitCode {
    coffer::cli::run()
}
