use std::process::ExitCode;

fn main() -> ExitCode {
    rds_csi::cli::main()
}
