//! Benchmark support for tapyard; the benchmarks themselves live in `benches/`.
//!
//! Shared fixtures: a forwarding table filled to its default capacity with
//! random-looking MACs, fixed pseudo-random access orders, and a runner that
//! times the same work on two threads at once.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use tapyard_switch::port::PortId;
use tapyard_switch::table::{Fdb, Learned};
use tapyard_switch::wire::MacAddr;

/// Entries in the benchmark table: the default capacity, filled to the bound.
pub const TABLE_MACS: usize = 4096;

/// The second every benchmark runs at. Entries are learned at this second, so
/// learning them again is the steady-state refresh path (no write).
pub const NOW: u32 = 1_000;

/// The two ingress ports. Half the table is learned on each.
pub const PORT_A: PortId = PortId(1);
pub const PORT_B: PortId = PortId(2);

/// A deterministic xorshift64* generator, so every run uses the same MACs and order.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// `n` distinct locally administered unicast MACs with random low 46 bits, as
/// containers with generated addresses have (not sequential, which would
/// flatter the hash).
pub fn random_macs(n: usize, seed: u64) -> Vec<MacAddr> {
    let mut rng = Rng::new(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut m = MacAddr::from_u64(rng.next_u64());
        m.0[0] = (m.0[0] & 0xfc) | 0x02;
        if !m.is_zero() && seen.insert(m) {
            out.push(m);
        }
    }
    out
}

/// A table at its default capacity holding [`TABLE_MACS`] entries, and the
/// MACs on each port.
pub struct Fixture {
    pub fdb: Fdb,
    /// Learned on [`PORT_A`].
    pub macs_a: Vec<MacAddr>,
    /// Learned on [`PORT_B`].
    pub macs_b: Vec<MacAddr>,
    /// Never learned.
    pub unknown: Vec<MacAddr>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let all = random_macs(TABLE_MACS * 2, 0x7a9_a5d);
        let (known, unknown) = all.split_at(TABLE_MACS);
        let (a, b) = known.split_at(TABLE_MACS / 2);
        let fdb = Fdb::new(TABLE_MACS, 300);
        {
            let t = fdb.table();
            for (macs, port) in [(a, PORT_A), (b, PORT_B)] {
                for &m in macs {
                    assert_eq!(t.learn(m, port, NOW), Learned::New, "fixture MAC {m} not learned");
                }
            }
            assert_eq!(t.len(), TABLE_MACS);
        }
        Fixture { fdb, macs_a: a.to_vec(), macs_b: b.to_vec(), unknown: unknown.to_vec() }
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// `macs` in a shuffled order, cut into `batch`-sized chunks (any remainder is dropped).
pub fn batches<T: Copy>(items: &[T], batch: usize, seed: u64) -> Vec<Vec<T>> {
    let mut v = items.to_vec();
    Rng::new(seed).shuffle(&mut v);
    v.chunks_exact(batch).map(<[T]>::to_vec).collect()
}

/// Runs `a` on this thread and `b` on a second one, released together by a
/// barrier, and returns the slower thread's time. Both do the same amount of
/// work, so that is the time per thread while both run at once.
pub fn run_pair(a: impl FnOnce() + Send, b: impl FnOnce() + Send) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            barrier.wait();
            let t = Instant::now();
            b();
            t.elapsed()
        });
        barrier.wait();
        let t = Instant::now();
        a();
        let mine = t.elapsed();
        let theirs = other.join().expect("second benchmark thread panicked");
        mine.max(theirs)
    })
}

/// The criterion settings every benchmark here uses: short runs (the whole
/// `cargo bench` stays around two minutes), no plots.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}
