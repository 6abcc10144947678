//! The forwarding database: which port each MAC address was last seen on,
//! one table per network, shared by every worker.
//!
//! # Layout
//! An open-addressing hash table with linear probing. Each slot is one
//! `AtomicU64` holding `mac << 16 | port`, so an entry is read with a single
//! load and can never be seen torn. A parallel `AtomicU32` array holds the
//! second each entry was last refreshed. (Interleaving the two in 16-byte
//! slots, so a refresh touches one cache line, measured no better: it doubles
//! the array every lookup walks.)
//!
//! ```text
//!   slot value:  63            16 15        0
//!               [   MAC (48 bits)  | port id ]     0          = empty
//!                                               port 0xffff = tombstone (aged/flushed; keeps its MAC)
//! ```
//!
//! # Who writes what, and the ordering argument
//! - Workers (many): `lookup` is one `Acquire` load per probe, no lock, no
//!   write. `learn` writes only when a MAC is new, moved, or its last-seen
//!   second is older than [`REFRESH_SECS`], so a steady flow costs no shared
//!   cache-line write per frame. New and moved entries are published with a
//!   compare-and-swap (`AcqRel`); two workers learning the same MAC race on
//!   the same slot, one wins, the other sees the winner's value and retries
//!   on that slot, so a MAC occupies at most one slot.
//! - That invariant holds because a slot, once it holds a MAC, keeps that MAC
//!   for the life of the table: ageing and flushing turn it into a tombstone
//!   with the same MAC bits, and learning the MAC again revives that slot.
//!   A slot never returns to empty in place.
//! - The control plane (one thread) ages entries out, flushes, and removes a
//!   port's entries with CAS to tombstones. A worker refreshing the last-seen
//!   second does not touch the entry word, so ageing re-reads that second
//!   after tombstoning and puts the entry back if it was refreshed meanwhile.
//!   A new or moved entry's second is written just before its CAS (so a sweep
//!   never sees a live entry with a stale second); when that CAS loses, the
//!   winner's second has been overwritten with the same second, give or take one.
//! - When tombstones pile up, the control plane builds a fresh table from the live entries and swaps it in (read-copy-update
//!   through `ArcSwap`). A worker still holding the old table for the rest of
//!   its burst may learn into it; that learning is lost and redone by the
//!   MAC's next frame, which is flooded meanwhile. Nothing is torn or duplicated.
//!
//! # Bounds and fairness
//! At most `capacity` live entries (default 4096). A MAC that does not fit is
//! not learned and is counted by the caller (`learn_full`); its frames are
//! flooded. So that one port sending from thousands of made-up MACs cannot
//! lock its neighbours out (STYLE §9, as Open vSwitch does), a port holding
//! fewer than its fair share (capacity / ports of the network) may evict one
//! entry of the port holding the most ([`Table::evict_one`]); the per-port
//! counts it decides with are recomputed by the control plane every second
//! ([`Fdb::port_counts`]). Probing is bounded by the slot
//! count, and the slot array is kept at most 7/8 used, so every probe ends.
//! The hash is keyed per table: a random XOR key and two random odd
//! multipliers with a fold between them. A sender who does not know the keys
//! cannot choose MACs that collide. With a fixed multiplier it could (MACs
//! that differ only in chosen bits keep their relative positions for every
//! XOR key; measured: 420–870 ns per lookup or learn instead of 5–13 ns), and
//! a single keyed multiply still left one table in ten with long probe runs
//! for such MACs (`chosen_macs_do_not_collide`). The keys cost about 1 ns per lookup.

#![forbid(unsafe_code)]

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::packet::PortId;
use crate::wire::MacAddr;

/// The port value of a tombstone slot (never a real [`PortId`]).
const TOMB: u64 = 0xffff;
const PORT_MASK: u64 = 0xffff;

/// A known entry's last-seen second is rewritten at most this often.
pub const REFRESH_SECS: u32 = 1;

pub const DEFAULT_CAPACITY: usize = 4096;
pub const DEFAULT_AGEING_SECS: u32 = 300;

/// What [`Table::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port (its age may have been refreshed).
    Known,
    /// A new entry.
    New,
    /// The MAC moved here from another port.
    Moved { from: PortId },
    /// The table is at capacity; not learned.
    Full,
}

/// One generation of a network's table. Workers hold it for one burst.
pub struct Table {
    slots: Box<[AtomicU64]>,
    seen: Box<[AtomicU32]>,
    /// Live entries; reserved before a new slot is claimed so the bound is exact.
    live: AtomicUsize,
    /// Non-empty slots (live plus tombstones).
    used: AtomicUsize,
    capacity: usize,
    mask: usize,
    shift: u32,
    /// Hash keys: XOR key and two odd multipliers, random per table.
    keys: [u64; 3],
}

impl Table {
    fn new(capacity: usize) -> Table {
        let capacity = capacity.max(1);
        let n = (capacity * 2).next_power_of_two().max(16);
        let random = std::collections::hash_map::RandomState::new();
        let key = |i: u64| {
            let mut h = random.build_hasher();
            h.write_u64(i);
            h.finish()
        };
        Table {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..n).map(|_| AtomicU32::new(0)).collect(),
            live: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            capacity,
            mask: n - 1,
            shift: 64 - n.trailing_zeros(),
            keys: [key(0), key(1) | 1, key(2) | 1],
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Keyed multiply-shift with a fold: the top bits of the product index the table.
        let [k0, k1, k2] = self.keys;
        let mut x = (key ^ k0).wrapping_mul(k1);
        x ^= x >> 32;
        (x.wrapping_mul(k2) >> self.shift) as usize
    }

    /// Slots in use may not exceed 7/8 of the array, so a probe always meets an empty slot.
    #[inline]
    fn used_limit(&self) -> usize {
        self.slots.len() - self.slots.len() / 8
    }

    /// The port `mac` was learned on, if any. One atomic load per probe.
    #[inline]
    pub fn lookup(&self, mac: MacAddr) -> Option<PortId> {
        let key = mac.to_u64();
        let mut i = self.home(key);
        for _ in 0..self.slots.len() {
            let v = self.slots[i].load(Acquire);
            if v == 0 {
                return None;
            }
            if v >> 16 == key {
                let p = v & PORT_MASK;
                return if p == TOMB { None } else { Some(PortId(p as u16)) };
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Records that `mac` was seen on `port` at second `now`.
    #[inline]
    pub fn learn(&self, mac: MacAddr, port: PortId, now: u32) -> Learned {
        let key = mac.to_u64();
        let want = key << 16 | u64::from(port.0);
        let mut i = self.home(key);
        let mut probes = 0;
        while probes < self.slots.len() {
            let v = self.slots[i].load(Acquire);
            if v == 0 {
                if self.live.fetch_add(1, Relaxed) >= self.capacity {
                    self.live.fetch_sub(1, Relaxed);
                    return Learned::Full;
                }
                if self.used.fetch_add(1, Relaxed) >= self.used_limit() {
                    self.used.fetch_sub(1, Relaxed);
                    self.live.fetch_sub(1, Relaxed);
                    return Learned::Full;
                }
                self.seen[i].store(now, Relaxed);
                match self.slots[i].compare_exchange(0, want, AcqRel, Acquire) {
                    Ok(_) => return Learned::New,
                    Err(_) => {
                        // Another worker claimed this slot first: undo our
                        // reservation and look at what it wrote (same slot).
                        self.used.fetch_sub(1, Relaxed);
                        self.live.fetch_sub(1, Relaxed);
                        continue;
                    }
                }
            }
            if v >> 16 == key {
                let p = v & PORT_MASK;
                if p == u64::from(port.0) {
                    let seen = &self.seen[i];
                    if now.wrapping_sub(seen.load(Relaxed)) >= REFRESH_SECS {
                        seen.store(now, Relaxed);
                    }
                    return Learned::Known;
                }
                if p == TOMB && self.live.fetch_add(1, Relaxed) >= self.capacity {
                    self.live.fetch_sub(1, Relaxed);
                    return Learned::Full;
                }
                self.seen[i].store(now, Relaxed);
                match self.slots[i].compare_exchange(v, want, AcqRel, Acquire) {
                    Ok(_) if p == TOMB => return Learned::New,
                    Ok(_) => return Learned::Moved { from: PortId(p as u16) },
                    Err(_) => {
                        if p == TOMB {
                            self.live.fetch_sub(1, Relaxed);
                        }
                        continue;
                    }
                }
            }
            i = (i + 1) & self.mask;
            probes += 1;
        }
        Learned::Full
    }

    /// Slots a lookup of `mac` visits (tests of the hash's spread).
    #[cfg(test)]
    fn probes(&self, mac: MacAddr) -> usize {
        let key = mac.to_u64();
        let mut i = self.home(key);
        for n in 1..=self.slots.len() {
            let v = self.slots[i].load(Acquire);
            if v == 0 || v >> 16 == key {
                return n;
            }
            i = (i + 1) & self.mask;
        }
        self.slots.len()
    }

    /// Tombstones one live entry learned on `port`, scanning from slot
    /// `start` (any number; callers spread it). Returns whether one was found.
    /// Bounded by the slot count; used only when the table is full.
    pub fn evict_one(&self, port: PortId, start: usize) -> bool {
        let want = u64::from(port.0);
        for k in 0..self.slots.len() {
            let entry = &self.slots[(start + k) & self.mask];
            let v = entry.load(Acquire);
            if v != 0
                && v & PORT_MASK == want
                && entry.compare_exchange(v, (v & !PORT_MASK) | TOMB, AcqRel, Relaxed).is_ok()
            {
                self.live.fetch_sub(1, Relaxed);
                return true;
            }
        }
        false
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.live.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Tombstones every live entry for which `dead(port, last_seen)` holds;
    /// returns how many. Control plane only.
    fn retire(&self, dead: impl Fn(PortId, u32) -> bool) -> usize {
        let mut n = 0;
        for (entry, seen) in self.slots.iter().zip(self.seen.iter()) {
            let v = entry.load(Acquire);
            let p = v & PORT_MASK;
            if v == 0 || p == TOMB || !dead(PortId(p as u16), seen.load(Relaxed)) {
                continue;
            }
            let tomb = (v & !PORT_MASK) | TOMB;
            // A failed CAS means a worker just moved the entry: leave it.
            if entry.compare_exchange(v, tomb, AcqRel, Relaxed).is_err() {
                continue;
            }
            self.live.fetch_sub(1, Relaxed);
            // Refreshed between our read and the CAS? Put it back (unless a
            // worker has already revived or moved it).
            if !dead(PortId(p as u16), seen.load(Relaxed)) && entry.compare_exchange(tomb, v, AcqRel, Relaxed).is_ok() {
                self.live.fetch_add(1, Relaxed);
                continue;
            }
            n += 1;
        }
        n
    }

    fn live_entries(&self) -> impl Iterator<Item = (MacAddr, PortId, u32)> + '_ {
        self.slots.iter().zip(self.seen.iter()).filter_map(|(s, seen)| {
            let v = s.load(Acquire);
            let p = v & PORT_MASK;
            (v != 0 && p != TOMB).then(|| (MacAddr::from_u64(v >> 16), PortId(p as u16), seen.load(Relaxed)))
        })
    }
}

/// One entry as `fdb show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: MacAddr,
    pub port: PortId,
    pub age_secs: u32,
}

/// A network's forwarding table: the current [`Table`] generation plus its settings.
pub struct Fdb {
    table: ArcSwap<Table>,
    ageing_secs: AtomicU32,
}

impl Fdb {
    pub fn new(capacity: usize, ageing_secs: u32) -> Fdb {
        Fdb { table: ArcSwap::from_pointee(Table::new(capacity)), ageing_secs: AtomicU32::new(ageing_secs) }
    }

    /// The current table; a worker takes it once per burst.
    #[inline]
    pub fn table(&self) -> Guard<Arc<Table>> {
        self.table.load()
    }

    pub fn ageing_secs(&self) -> u32 {
        self.ageing_secs.load(Relaxed)
    }

    pub fn set_ageing_secs(&self, secs: u32) {
        self.ageing_secs.store(secs, Relaxed)
    }

    /// Ages out entries not seen for longer than the ageing time, and
    /// compacts the table when tombstones fill it. Returns entries removed.
    /// Call about once a second from the control plane.
    pub fn age(&self, now: u32) -> usize {
        let ageing = self.ageing_secs();
        let t = self.table.load();
        let n = t.retire(|_, seen| now.wrapping_sub(seen) > ageing);
        self.compact_if_needed(&t);
        n
    }

    /// Removes every entry (all ports, or one port's). Returns how many.
    pub fn flush(&self, port: Option<PortId>) -> usize {
        let t = self.table.load();
        let n = t.retire(|p, _| port.is_none_or(|q| q == p));
        self.compact_if_needed(&t);
        n
    }

    fn compact_if_needed(&self, t: &Table) {
        // Rebuild once tombstones take more than a quarter of the slots.
        let used = t.used.load(Relaxed);
        if used - t.len().min(used) <= t.slots.len() / 4 {
            return;
        }
        let fresh = Table::new(t.capacity);
        for (mac, port, seen) in t.live_entries() {
            fresh.learn(mac, port, seen);
        }
        self.table.store(Arc::new(fresh));
    }

    /// Live entries per port. Control plane only (allocates).
    pub fn port_counts(&self) -> std::collections::HashMap<PortId, u64> {
        let mut m = std::collections::HashMap::new();
        for (_, port, _) in self.table.load().live_entries() {
            *m.entry(port).or_insert(0) += 1;
        }
        m
    }

    /// Live entries with their age at `now`, sorted by MAC.
    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut v: Vec<FdbEntry> = self
            .table
            .load()
            .live_entries()
            .map(|(mac, port, seen)| FdbEntry { mac, port, age_secs: now.saturating_sub(seen) })
            .collect();
        v.sort_by_key(|e| e.mac);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u32) -> MacAddr {
        let b = i.to_be_bytes();
        MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_then_lookup() {
        let f = Fdb::new(16, 300);
        let t = f.table();
        assert_eq!(t.lookup(mac(1)), None);
        assert_eq!(t.learn(mac(1), PortId(3), 10), Learned::New);
        assert_eq!(t.lookup(mac(1)), Some(PortId(3)));
        assert_eq!(t.learn(mac(1), PortId(3), 11), Learned::Known);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(mac(2)), None);
    }

    #[test]
    fn move_updates_port_in_place() {
        let f = Fdb::new(16, 300);
        let t = f.table();
        t.learn(mac(1), PortId(3), 0);
        assert_eq!(t.learn(mac(1), PortId(4), 1), Learned::Moved { from: PortId(3) });
        assert_eq!(t.lookup(mac(1)), Some(PortId(4)));
        assert_eq!(t.len(), 1);
        assert_eq!(f.entries(1).len(), 1);
    }

    #[test]
    fn refresh_writes_at_most_once_a_second() {
        let f = Fdb::new(16, 300);
        let t = f.table();
        t.learn(mac(1), PortId(1), 100);
        t.learn(mac(1), PortId(1), 100);
        assert_eq!(f.entries(105)[0].age_secs, 5);
        t.learn(mac(1), PortId(1), 104);
        assert_eq!(f.entries(105)[0].age_secs, 1);
    }

    #[test]
    fn ageing_removes_stale_entries_only() {
        let f = Fdb::new(16, 300);
        {
            let t = f.table();
            t.learn(mac(1), PortId(1), 0);
            t.learn(mac(2), PortId(2), 250);
        }
        assert_eq!(f.age(300), 0);
        assert_eq!(f.age(301), 1);
        let t = f.table();
        assert_eq!(t.lookup(mac(1)), None);
        assert_eq!(t.lookup(mac(2)), Some(PortId(2)));
        // An aged MAC comes back when it is seen again.
        assert_eq!(t.learn(mac(1), PortId(5), 302), Learned::New);
        assert_eq!(t.lookup(mac(1)), Some(PortId(5)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn ageing_time_is_configurable() {
        let f = Fdb::new(16, 300);
        f.table().learn(mac(1), PortId(1), 0);
        f.set_ageing_secs(10);
        assert_eq!(f.age(11), 1);
        assert!(f.table().is_empty());
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let f = Fdb::new(100, 300);
        let t = f.table();
        let mut full = 0;
        for i in 1..=1000 {
            if t.learn(mac(i), PortId(1), 0) == Learned::Full {
                full += 1;
            }
        }
        assert_eq!(t.len(), 100);
        assert_eq!(full, 900);
        // Known entries are still found and refreshed at capacity.
        assert_eq!(t.learn(mac(1), PortId(1), 5), Learned::Known);
        assert_eq!(t.lookup(mac(100)), Some(PortId(1)));
        assert_eq!(t.lookup(mac(101)), None);
        // A move at capacity is still a move.
        assert_eq!(t.learn(mac(2), PortId(2), 5), Learned::Moved { from: PortId(1) });
    }

    #[test]
    fn evict_one_takes_an_entry_of_that_port_only() {
        let f = Fdb::new(4, 300);
        let t = f.table();
        for i in 1..=3 {
            t.learn(mac(i), PortId(1), 0);
        }
        t.learn(mac(4), PortId(2), 0);
        assert_eq!(t.learn(mac(5), PortId(3), 0), Learned::Full);
        assert!(!t.evict_one(PortId(3), 7), "port 3 has nothing to evict");
        assert!(t.evict_one(PortId(1), 12345));
        assert_eq!(f.port_counts()[&PortId(1)], 2);
        assert_eq!(f.port_counts()[&PortId(2)], 1);
        assert_eq!(t.learn(mac(5), PortId(3), 0), Learned::New);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn flush_by_port_and_all() {
        let f = Fdb::new(64, 300);
        for i in 1..=10 {
            f.table().learn(mac(i), PortId((i % 2 + 1) as u16), 0);
        }
        assert_eq!(f.flush(Some(PortId(1))), 5);
        assert!(f.entries(0).iter().all(|e| e.port == PortId(2)));
        assert_eq!(f.flush(None), 5);
        assert!(f.entries(0).is_empty());
    }

    #[test]
    fn churn_compacts_and_never_loses_live_entries() {
        // Learn and flush many generations: tombstones force rebuilds, and
        // the table must keep working and keep the bound.
        let f = Fdb::new(64, 300);
        for round in 0..200u32 {
            for i in 0..64 {
                let t = f.table();
                let r = t.learn(mac(round * 64 + i + 1), PortId(1), round);
                assert_ne!(r, Learned::Full, "round {round} entry {i}");
            }
            assert_eq!(f.table().len(), 64);
            assert_eq!(f.flush(None), 64);
        }
    }

    #[test]
    fn chosen_macs_do_not_collide() {
        // 4096 MACs that differ only in 12 chosen bit positions: with a fixed
        // multiplier these cluster for every XOR key, and probes run into the
        // hundreds. With keyed multipliers they spread like any other MACs.
        let bits = [33, 34, 35, 36, 17, 3, 13, 37, 18, 26, 7, 4];
        let base = 0x0200_0000_0000u64;
        let macs: Vec<MacAddr> = (0..4096u64)
            .map(|i| {
                let mut v = base;
                for (j, b) in bits.iter().enumerate() {
                    if i >> j & 1 == 1 {
                        v |= 1 << b;
                    }
                }
                MacAddr::from_u64(v)
            })
            .collect();
        for _ in 0..3 {
            let f = Fdb::new(4096, 300);
            let t = f.table();
            for m in &macs {
                assert_eq!(t.learn(*m, PortId(1), 0), Learned::New);
            }
            let mean = macs.iter().map(|m| t.probes(*m)).sum::<usize>() as f64 / macs.len() as f64;
            // Linear probing at load 1/2 expects about 1.5 probes per hit.
            assert!(mean < 3.0, "mean probe length {mean}");
        }
    }

    #[test]
    fn an_entry_refreshed_during_the_sweep_survives() {
        let f = Fdb::new(16, 10);
        let t = f.table();
        t.learn(mac(1), PortId(1), 0);
        // The sweep decides at second 11 that the entry is stale; the entry is
        // refreshed (second 11) before the re-check, as a worker would.
        let n = t.retire(|_, seen| {
            let dead = seen == 0;
            if dead {
                t.learn(mac(1), PortId(1), 11);
            }
            dead
        });
        assert_eq!(n, 0);
        assert_eq!(t.lookup(mac(1)), Some(PortId(1)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn two_threads_learn_and_read_without_loss_or_tearing() {
        use std::sync::Barrier;
        let f = Arc::new(Fdb::new(4096, 300));
        let barrier = Arc::new(Barrier::new(2));
        // Each thread learns its own 1500 MACs on its own port and, in the
        // same loop, reads the other thread's MACs: any entry found must carry
        // the writer's port (never torn, never the wrong MAC's port).
        let worker = |me: u32, other: u32| {
            let f = f.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let t = f.table();
                for round in 0..20 {
                    for i in 0..1500 {
                        let r = t.learn(mac(me * 100_000 + i), PortId(me as u16), round);
                        assert_ne!(r, Learned::Full);
                        if let Some(p) = t.lookup(mac(other * 100_000 + i)) {
                            assert_eq!(p, PortId(other as u16));
                        }
                    }
                }
            })
        };
        let a = worker(1, 2);
        let b = worker(2, 1);
        a.join().unwrap();
        b.join().unwrap();
        let t = f.table();
        assert_eq!(t.len(), 3000);
        for i in 0..1500 {
            assert_eq!(t.lookup(mac(100_000 + i)), Some(PortId(1)));
            assert_eq!(t.lookup(mac(200_000 + i)), Some(PortId(2)));
        }
    }

    #[test]
    fn two_threads_race_on_the_same_macs_leave_one_entry_each() {
        let f = Arc::new(Fdb::new(4096, 300));
        let handles: Vec<_> = (1..=2u16)
            .map(|p| {
                let f = f.clone();
                std::thread::spawn(move || {
                    let t = f.table();
                    for round in 0..50 {
                        for i in 1..=1000 {
                            t.learn(mac(i), PortId(p), round);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let entries = f.entries(50);
        assert_eq!(entries.len(), 1000, "a MAC must occupy exactly one slot");
        assert_eq!(f.table().len(), 1000);
        assert!(entries.iter().all(|e| e.port == PortId(1) || e.port == PortId(2)));
    }
}
