//! AFL++ target: [`tapyard_fuzz::frame_path`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::frame_path(data);
    });
}
