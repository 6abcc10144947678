//! The `tapyard` binary: parse the command line and hand over to the CLI.

fn main() {
    std::process::exit(tapyard_switch::cli::main());
}
