//! AFL++ target: [`tapyard_fuzz::control_json`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::control_json(data);
    });
}
