use std::process::ExitCode;

fn main() -> ExitCode {
    propass_server::cli::main()
}
