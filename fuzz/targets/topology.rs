//! AFL++ target: [`tapyard_fuzz::topology`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::topology(data);
    });
}
