//! `tapyard-cni`: the CNI plugin; all of it is in `tapyard_switch::cni`.

fn main() {
    std::process::exit(tapyard_switch::cni::main());
}
