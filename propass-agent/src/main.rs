use std::process::ExitCode;

fn main() -> ExitCode {
    propass_agent::cli::main()
}
