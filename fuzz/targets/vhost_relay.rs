//! AFL++ target: [`tapyard_fuzz::vhost_relay`] (see fuzz/src/lib.rs).

fn main() {
    afl::fuzz!(|data: &[u8]| {
        tapyard_fuzz::vhost_relay(data);
    });
}
