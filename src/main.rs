//! The `fugo` binary: see [`fugo::cli`].

fn main() -> std::process::ExitCode {
    fugo::cli::main()
}
