//! AFL++ target: [`tapyard_fuzz::dhcp`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::dhcp(data);
    });
}
