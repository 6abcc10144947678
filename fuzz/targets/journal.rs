//! AFL++ target: [`tapyard_fuzz::journal`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::journal(data);
    });
}
