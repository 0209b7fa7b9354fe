use std::process::ExitCode;

fn main() -> ExitCode {
    mock_rds::cli::main()
}
