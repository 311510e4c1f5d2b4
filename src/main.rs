//! The `portcullis` binary: dispatch only. Everything it does lives in the library, starting at
//! `cli::run`, which also decides the exit code.

fn main() -> std::process::ExitCode {
    portcullis::cli::run()
}
