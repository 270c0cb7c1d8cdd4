//! The `fugo` binary. The command line lives here, not in the library: its
//! flags, settings and messages are for people, not an API for programs.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
