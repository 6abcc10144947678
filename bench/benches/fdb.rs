//! Forwarding-table micro-benchmarks: `lookup` of a known and an unknown MAC,
//! and `learn` of an already-known MAC on its own port (the per-frame
//! steady-state path: nothing is written), each on one thread and on two
//! threads at once sharing one table.
//!
//! Setup: a table of the default capacity (4096) holding 4096 random-looking
//! MACs, half on port 1 and half on port 2. Each iteration is a batch of 64
//! operations over a fixed shuffled order, with the table guard taken once
//! per sample, as a worker takes it once per burst.
//!
//! Reading the numbers: criterion's `time` is per batch of 64; `thrpt` is in
//! operations, so **ns per operation = 1000 / thrpt in Melem/s** (or `time` / 64).
//! `1_thread` and `2_threads` do the same work per thread; in `2_threads`
//! each thread uses its own order (for `learn_known`, its own port's MACs and
//! port) and the reported time is the slower thread's, so the two rates
//! compare directly: the per-thread cost under contention.
//! `2_threads_separate_tables` is the control: the same two threads, each on
//! its own copy of the table, so nothing is shared. What `2_threads` loses
//! beyond it is the shared table's cost; what the control itself loses against
//! `1_thread` is the machine's (SMT siblings, shared caches, a noisy VM).
//! `fdb/lookup_known_baseline/std_hashmap_1_thread` is std's `HashMap` doing
//! the same lookups in the same run: quote the table's speed as a ratio to it.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapyard_bench::{batches, run_pair, Fixture, NOW, PORT_A, PORT_B};
use tapyard_switch::port::PortId;
use tapyard_switch::table::{Fdb, Learned, Table};
use tapyard_switch::wire::MacAddr;

/// Operations per criterion iteration.
const BATCH: usize = 64;

/// One thread's work: `iters` batches of `op`, cycling through `order`.
fn run(fdb: &Fdb, order: &[Vec<MacAddr>], port: PortId, iters: u64, op: &(impl Fn(&Table, MacAddr, PortId) + Sync)) {
    let t = fdb.table();
    for batch in order.iter().cycle().take(iters as usize) {
        for &m in batch {
            op(&t, m, port);
        }
    }
}

/// One thread's operations and the port it works as.
struct Side {
    order: Vec<Vec<MacAddr>>,
    port: PortId,
}

/// Benchmarks `op` as group `fdb/<name>`: `a` alone, then `a` and `b` at
/// once on `fdb`, then `a` on `fdb` and `b` on `twin` (a separate copy).
fn bench_op(
    c: &mut Criterion,
    fdb: &Fdb,
    twin: &Fdb,
    name: &str,
    a: &Side,
    b: &Side,
    op: impl Fn(&Table, MacAddr, PortId) + Sync,
) {
    let mut g = c.benchmark_group(format!("fdb/{name}"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("1_thread", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            run(fdb, &a.order, a.port, iters, &op);
            t.elapsed()
        })
    });
    g.bench_function("2_threads", |bench| {
        bench.iter_custom(|iters| {
            run_pair(|| run(fdb, &a.order, a.port, iters, &op), || run(fdb, &b.order, b.port, iters, &op))
        })
    });
    g.bench_function("2_threads_separate_tables", |bench| {
        bench.iter_custom(|iters| {
            run_pair(|| run(fdb, &a.order, a.port, iters, &op), || run(twin, &b.order, b.port, iters, &op))
        })
    });
    g.finish();
}

fn fdb_benches(c: &mut Criterion) {
    let fx = Fixture::new();
    let twin = Fixture::new();
    let known: Vec<MacAddr> = fx.macs_a.iter().chain(&fx.macs_b).copied().collect();
    let side = |macs: &[MacAddr], port, seed| Side { order: batches(macs, BATCH, seed), port };

    // Sanity: the paths measured are the paths named.
    {
        let t = fx.fdb.table();
        assert!(fx.macs_a.iter().all(|&m| t.lookup(m) == Some(PORT_A)));
        assert!(fx.unknown.iter().all(|&m| t.lookup(m).is_none()));
        assert!(fx.macs_b.iter().all(|&m| t.learn(m, PORT_B, NOW) == Learned::Known));
    }

    bench_op(c, &fx.fdb, &twin.fdb, "lookup_known", &side(&known, PORT_A, 1), &side(&known, PORT_B, 2), |t, m, _| {
        black_box(t.lookup(m));
    });
    // Baseline in the same run: std's HashMap (SipHash-1-3, keyed like ours),
    // same MACs, same order, same batches; one thread, no concurrency at all.
    let map: std::collections::HashMap<u64, PortId> =
        fx.macs_a.iter().map(|m| (m.to_u64(), PORT_A)).chain(fx.macs_b.iter().map(|m| (m.to_u64(), PORT_B))).collect();
    let order = side(&known, PORT_A, 1).order;
    let mut g = c.benchmark_group("fdb/lookup_known_baseline");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("std_hashmap_1_thread", |bench| {
        bench.iter_custom(|iters| {
            let t = Instant::now();
            for batch in order.iter().cycle().take(iters as usize) {
                for m in batch {
                    black_box(map.get(&m.to_u64()));
                }
            }
            t.elapsed()
        })
    });
    g.finish();
    bench_op(
        c,
        &fx.fdb,
        &twin.fdb,
        "lookup_miss",
        &side(&fx.unknown, PORT_A, 3),
        &side(&fx.unknown, PORT_B, 4),
        |t, m, _| {
            black_box(t.lookup(m));
        },
    );
    bench_op(
        c,
        &fx.fdb,
        &twin.fdb,
        "learn_known",
        &side(&fx.macs_a, PORT_A, 5),
        &side(&fx.macs_b, PORT_B, 6),
        |t, m, p| {
            black_box(t.learn(m, p, NOW));
        },
    );
}

criterion_group! {
    name = benches;
    config = tapyard_bench::criterion_config();
    targets = fdb_benches
}
criterion_main!(benches);
