//! The L2 step of the per-frame decision, `datapath::decide`: parse the
//! Ethernet header, check the length, learn the source, look up the
//! destination, return the egress (a port, flood, or a drop). This is not
//! the whole per-frame path: `benches/pipeline.rs` measures that (receive,
//! classify, egress, send, counting) over in-memory ports.
//!
//! Setup: the table of `benches/fdb.rs` (capacity 4096, full: 4096 random
//! MACs, half on port 1, half on port 2), MTU 1500. Every frame's source is
//! already known on its ingress port (learning is the no-write refresh path)
//! and every unicast destination is known on the other port, so the verdict
//! is `Unicast`. Frames are 8 bursts of 32 (the worker's batch size), each
//! frame with its own source/destination pair; every iteration is one burst:
//! take the table guard, then decide 32 frames, as `worker::burst` does.
//!
//! - `64B`, `1500B`: known unicast, frames of that length in from port 1.
//! - `broadcast_64B`: destination ff:ff:ff:ff:ff:ff (flood; no lookup).
//! - `64B_2_threads`: `64B` on two threads at once sharing the table, one
//!   thread receiving on port 1, the other on port 2 with its own MAC pairs;
//!   the time is the slower thread's, so it compares directly with `64B`.
//!
//! - `route/lpm_and_ttl_rewrite`: the route lookup and the TTL rewrite
//!   alone (see `route_benches`).
//!
//! Reading the numbers: criterion's `time` is per burst of 32; `thrpt` is in
//! frames, so **ns per frame = 1000 / thrpt in Melem/s** (or `time` / 32).

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapyard_bench::{batches, run_pair, Fixture, NOW, PORT_A, PORT_B};
use tapyard_switch::datapath::{decide, max_frame_len, Decision, Fdb, Learned};
use tapyard_switch::packet::BATCH;
use tapyard_switch::port::PortId;
use tapyard_switch::wire::MacAddr;

const MTU: u32 = 1500;
const BURSTS: usize = 8;

type Burst = Vec<Vec<u8>>;

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// `BURSTS` bursts of frames of length `len` from `srcs` to `dsts` (or to
/// broadcast when `dsts` is `None`), pairs drawn in a shuffled order.
fn bursts(srcs: &[MacAddr], dsts: Option<&[MacAddr]>, len: usize, seed: u64) -> Vec<Burst> {
    let n = BURSTS * BATCH;
    let srcs = batches(srcs, n, seed).swap_remove(0);
    let dsts = match dsts {
        Some(d) => batches(d, n, seed ^ 0xd57).swap_remove(0),
        None => vec![MacAddr::BROADCAST; n],
    };
    let frames: Vec<Vec<u8>> = srcs.iter().zip(&dsts).map(|(&s, &d)| frame(d, s, len)).collect();
    frames.chunks_exact(BATCH).map(<[Vec<u8>]>::to_vec).collect()
}

/// One thread's work: `iters` bursts received on `in_port`, cycling through `bursts`.
fn run(fdb: &Fdb, bursts: &[Burst], in_port: PortId, iters: u64) {
    let max = max_frame_len(MTU);
    for burst in bursts.iter().cycle().take(iters as usize) {
        let t = fdb.table();
        for f in burst {
            black_box(decide(f, in_port, &t, max, NOW));
        }
    }
}

/// Every frame gets `want` and refreshes a known source.
fn check(fdb: &Fdb, bursts: &[Burst], in_port: PortId, want: Decision) {
    let t = fdb.table();
    for f in bursts.iter().flatten() {
        let v = decide(f, in_port, &t, max_frame_len(MTU), NOW);
        assert_eq!((v.decision, v.learned), (want, Some(Learned::Known)));
    }
}

fn decision_benches(c: &mut Criterion) {
    let fx = Fixture::new();
    let fdb = &fx.fdb;
    let seed = 11;
    let a64 = bursts(&fx.macs_a, Some(&fx.macs_b), 64, seed);
    let a1500 = bursts(&fx.macs_a, Some(&fx.macs_b), 1500, seed);
    let a_bcast = bursts(&fx.macs_a, None, 64, seed);
    let b64 = bursts(&fx.macs_b, Some(&fx.macs_a), 64, seed + 1);
    check(fdb, &a64, PORT_A, Decision::Unicast(PORT_B));
    check(fdb, &a1500, PORT_A, Decision::Unicast(PORT_B));
    check(fdb, &a_bcast, PORT_A, Decision::Flood);
    check(fdb, &b64, PORT_B, Decision::Unicast(PORT_A));

    let mut g = c.benchmark_group("decision");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, frames) in [("64B", &a64), ("1500B", &a1500), ("broadcast_64B", &a_bcast)] {
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let t = Instant::now();
                run(fdb, frames, PORT_A, iters);
                t.elapsed()
            })
        });
    }
    g.bench_function("64B_2_threads", |bench| {
        bench.iter_custom(|iters| run_pair(|| run(fdb, &a64, PORT_A, iters), || run(fdb, &b64, PORT_B, iters)))
    });
    g.finish();
}

/// The routing decision and rewrite for one IPv4 packet: longest-prefix match
/// over a router's table (6 routes: connected networks and static routes),
/// then the TTL decrement with its incremental checksum (RFC 1624). The
/// packet's TTL is reset each time so it never expires.
fn route_benches(c: &mut Criterion) {
    use std::net::Ipv4Addr;
    use tapyard_switch::packet::NetId;
    use tapyard_switch::table::{Route, RouteTable};
    use tapyard_switch::wire::ipv4::decrement_ttl;
    let table = RouteTable::new(vec![
        Route::new(Ipv4Addr::new(10, 1, 0, 0), 24, NetId(1), None),
        Route::new(Ipv4Addr::new(10, 2, 0, 0), 24, NetId(2), None),
        Route::new(Ipv4Addr::new(10, 3, 0, 0), 24, NetId(3), None),
        Route::new(Ipv4Addr::new(10, 9, 0, 0), 16, NetId(1), Some(Ipv4Addr::new(10, 1, 0, 9))),
        Route::new(Ipv4Addr::new(192, 168, 7, 0), 24, NetId(2), Some(Ipv4Addr::new(10, 2, 0, 3))),
        Route::new(Ipv4Addr::new(0, 0, 0, 0), 0, NetId(3), Some(Ipv4Addr::new(10, 3, 0, 254))),
    ]);
    let mut pkt = [0u8; 20];
    pkt[0] = 0x45;
    pkt[8] = 64;
    pkt[9] = 17;
    let dsts: Vec<Ipv4Addr> = (0..32u8).map(|i| Ipv4Addr::new(10, 1 + i % 3, 0, 2 + i)).collect();
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(dsts.len() as u64));
    g.bench_function("lpm_and_ttl_rewrite", |b| {
        b.iter(|| {
            for d in &dsts {
                let r = table.lookup(black_box(*d)).expect("a route");
                pkt[8] = 64;
                let ttl = decrement_ttl(&mut pkt).expect("TTL 64 never expires");
                black_box((r.target, ttl));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = tapyard_bench::criterion_config();
    targets = decision_benches, route_benches
}
criterion_main!(benches);
