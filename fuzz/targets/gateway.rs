//! AFL++ target: [`tapyard_fuzz::gateway`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::gateway(data);
    });
}
