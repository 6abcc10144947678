//! The impairment stages of the pipeline (`tapyard port set`): what a port's
//! link does to frames on purpose, per direction — loss (independent or in
//! bursts, the Gilbert model), duplication, corruption, delay with jitter,
//! reordering, and a rate limit — and the cut link (`--down`).
//!
//! This module owns a worker's frame lines ([`Lines`]): for each impaired
//! port and direction, a time-ordered queue (a binary heap of due times over
//! a bounded ring of frame memory) that a frame enters when it is read
//! (direction in, before `classify`) or sent (direction out, at the egress
//! port) and leaves when it is due: direction-in frames then run through
//! the pipeline as a burst of their port, direction-out frames are sent.
//! Nothing here blocks: the worker's poll timeout is the next due time
//! ([`Lines::next_due`]).
//!
//! Memory: the frame memory is allocated by control when a setting is
//! applied (`impair::PortImpair`), one ring per worker and direction, and
//! taken by the worker when it adopts the snapshot; per frame nothing
//! allocates, locks or logs. What does not fit (`limit` frames across all
//! workers, or a full ring) is dropped and counted `impair_limit`; losses
//! are counted `impair_loss`, frames of a cut link `link_down_admin`, each
//! on the impaired port.
//!
//! Sharing: a multi-queue TAP is read by every worker and any worker may
//! send to any port, so each worker keeps its own lines; what must be one
//! per port is shared through atomics in `PortImpair`: the rate limit is one
//! GCRA bucket (ITU-T I.371 virtual scheduling) whose departure times every
//! worker reserves with a compare-and-swap, and `limit` is one count.
//!
//! Semantics follow tc-netem(8) where it has them: loss is decided first,
//! then duplication (the copy is impaired independently), corruption of one
//! random bit past the Ethernet header, then a departure time: now + delay
//! ± jitter (or now, for a frame picked to reorder), no earlier than the
//! rate limit allows. Frames with the same due time leave in arrival order.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::offload::complete_csum;
use crate::impair::{Distribution, Impairment, PortImpair, IN, OUT};
use crate::packet::{Batch, PortId, BATCH, HEADROOM};
use crate::snapshot::{PortView, Snapshot};
use crate::stats::{DropReason, PortStats};
use crate::wire::vnet::VnetHdr;

/// A small, fast pseudo-random generator (wyrand): one per worker, seeded
/// once; no syscall per frame. Statistical quality is ample for link models.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x2d35_8dcc_aa6c_78a5)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// True with probability `ppm` parts per million.
    #[inline]
    pub fn chance(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next_u64() % 1_000_000) < u64::from(ppm)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Reserves a departure for `bytes` bytes arriving at `arrival` (ns) on a
/// rate limit of `rate_bps` with a bucket of `burst` bytes, shared through
/// `tat` (the bucket's theoretical arrival time, GCRA virtual scheduling,
/// ITU-T I.371): the frame leaves at max(arrival, tat − τ) and moves `tat`
/// on by its transmission time. A frame larger than the bucket (a GSO
/// super-frame) still goes, and the frames after it wait its full time, so
/// the long-run rate is exact. Lock-free: workers race with a CAS.
pub fn reserve(tat: &AtomicU64, arrival: u64, bytes: usize, rate_bps: u64, burst: u64) -> u64 {
    let ns =
        |b: u64| (u128::from(b) * 8 * 1_000_000_000 / u128::from(rate_bps.max(1))).min(u128::from(u64::MAX / 4)) as u64;
    let cost = ns(bytes as u64);
    let tau = ns(burst);
    let mut t = tat.load(Relaxed);
    loop {
        let depart = arrival.max(t.saturating_sub(tau));
        let next = t.max(arrival).saturating_add(cost);
        match tat.compare_exchange_weak(t, next, Relaxed, Relaxed) {
            Ok(_) => return depart,
            Err(now) => t = now,
        }
    }
}

/// The bytes a frame (`wire`: vnet header and frame) puts on the link for
/// the rate limit: its length, and for a GSO super-frame the headers of
/// every segment it becomes, as if it had been segmented before the limit
/// (a TCP stream through a 10 Mbit/s limit then carries what it would over
/// a real 10 Mbit/s link).
pub fn rate_bytes(wire: &[u8]) -> usize {
    let frame = &wire[HEADROOM..];
    let h = VnetHdr::of(wire);
    if !h.is_gso() || h.gso_size == 0 {
        return frame.len();
    }
    // The L4 header starts at csum_start (GSO frames always need the checksum).
    let l4 = usize::from(h.csum_start);
    let l4_len =
        if h.gso() == VnetHdr::GSO_UDP_L4 { 8 } else { frame.get(l4 + 12).map_or(20, |b| usize::from(b >> 4) * 4) };
    let headers = l4 + l4_len;
    if headers >= frame.len() {
        return frame.len();
    }
    let segs = (frame.len() - headers).div_ceil(usize::from(h.gso_size));
    frame.len() + (segs - 1) * headers
}

/// Flips one random bit past the Ethernet header of `wire` (tc-netem(8)
/// corrupt). As netem does (skb_checksum_help), a partial checksum is
/// completed first and the header made plain, so the receiver verifies the
/// checksums and sees the damage instead of trusting them; a GSO
/// super-frame (netem segments it first) is left whole.
fn corrupt(wire: &mut [u8], rng: &mut Rng) {
    let (hb, frame) = wire.split_at_mut(HEADROOM);
    let mut h = VnetHdr::of(hb);
    if h.is_gso() || complete_csum(&mut h, frame).is_err() {
        return;
    }
    VnetHdr::NONE.write_to(hb);
    let r = rng.next_u64();
    frame[14 + (r % (frame.len() - 14) as u64) as usize] ^= 1 << ((r >> 32) % 8);
}

/// One frame's place in a line's memory, in arrival order.
#[derive(Clone, Copy)]
struct Slot {
    off: u32,
    len: u32,
    /// Sent (or dropped); its memory is reused once the slots before it are too.
    done: bool,
}

/// What [`Line::admit`] did with a frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// Copies held (0, 1, or 2 with duplication).
    pub held: u32,
    /// Lost on purpose (`impair_loss`).
    pub lost: u32,
    /// Dropped for want of room (`impair_limit`).
    pub full: u32,
}

/// One port's impairments in one direction, on one worker: its settings,
/// loss-model state and the frames it holds until they are due.
pub struct Line {
    cfg: Impairment,
    limit: u32,
    /// Gilbert model: P(good → bad) and P(bad → good) per frame; `bad`: in a loss burst.
    to_bad: f64,
    to_good: f64,
    bad: bool,
    /// Frame memory: a ring, allocated in arrival order; `head` is where the
    /// next frame goes, the oldest live slot's offset is the tail.
    arena: Box<[u8]>,
    head: usize,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]` (every frame gets the next one).
    base: u64,
    /// (due ns, sequence number): the earliest due first, ties in arrival order.
    heap: BinaryHeap<Reverse<(u64, u64)>>,
}

impl Line {
    /// A line for `cfg` holding frames in `arena`. Its bookkeeping is sized
    /// here for `limit` frames, so admitting frames never allocates.
    pub fn new(cfg: Impairment, arena: Box<[u8]>) -> Line {
        let limit = cfg.frame_limit();
        let pi = f64::from(cfg.loss_ppm) / 1e6;
        let (to_bad, to_good) = if cfg.loss_burst > 1.0 && pi < 1.0 {
            // Stationary loss π = p / (p + r), mean burst 1 / r (Gilbert 1960).
            let r = 1.0 / cfg.loss_burst;
            ((pi * r / (1.0 - pi)).min(1.0), r)
        } else {
            (0.0, 0.0)
        };
        Line {
            cfg,
            limit,
            to_bad,
            to_good,
            bad: false,
            arena,
            head: 0,
            slots: VecDeque::with_capacity(limit as usize + 1),
            base: 0,
            heap: BinaryHeap::with_capacity(limit as usize + 1),
        }
    }

    /// Frames held on this line.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// When the next frame is due, if any.
    #[inline]
    pub fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Loss decision for the next frame: independent, or the two-state
    /// Gilbert model when `loss_burst` > 1 (all frames lost in the bad state).
    fn lost(&mut self, rng: &mut Rng) -> bool {
        let c = &self.cfg;
        if c.loss_ppm == 0 {
            return false;
        }
        if c.loss_ppm >= 1_000_000 {
            return true;
        }
        if self.to_good == 0.0 {
            return rng.chance(c.loss_ppm);
        }
        let flip = if self.bad { self.to_good } else { self.to_bad };
        if rng.unit() < flip {
            self.bad = !self.bad;
        }
        self.bad
    }

    /// The delay of one frame in ns: delay ± jitter drawn from the distribution, at least 0.
    fn delay(&self, rng: &mut Rng) -> u64 {
        let d = self.cfg.delay_us as f64 * 1e3;
        let j = self.cfg.jitter_us as f64 * 1e3;
        if j == 0.0 {
            return d as u64;
        }
        let x = match self.cfg.distribution {
            Distribution::Uniform => (2.0 * rng.unit() - 1.0) * j,
            // Irwin–Hall: the sum of 12 uniforms less 6 is close to N(0, 1)
            // (tails cut at ±6σ), without a logarithm per frame.
            Distribution::Normal => ((0..12).map(|_| rng.unit()).sum::<f64>() - 6.0) * j,
            // Pareto with α = 3 (mean 1.5, standard deviation √3 / 2):
            // centred and scaled so that its standard deviation is `jitter`.
            Distribution::Pareto => {
                let p = (1.0 - rng.unit()).powf(-1.0 / 3.0);
                (p - 1.5) / 0.866_025_4 * j
            }
        };
        (d + x).max(0.0) as u64
    }

    /// Takes a frame (`wire`: vnet header and frame) arriving at `now`:
    /// decides its fate and holds the copies that go, each with its due
    /// time. `shared`/`dir`: the port's limit count and rate bucket.
    pub fn admit(&mut self, now: u64, wire: &[u8], shared: &PortImpair, dir: usize, rng: &mut Rng) -> Admitted {
        let mut a = Admitted::default();
        if self.lost(rng) {
            a.lost = 1;
            return a;
        }
        let copies = 1 + u32::from(rng.chance(self.cfg.duplicate_ppm));
        for _ in 0..copies {
            if self.hold(now, wire, shared, dir, rng) {
                a.held += 1;
            } else {
                a.full += 1;
            }
        }
        a
    }

    fn hold(&mut self, now: u64, wire: &[u8], shared: &PortImpair, dir: usize, rng: &mut Rng) -> bool {
        if shared.held[dir].fetch_add(1, Relaxed) >= self.limit {
            shared.held[dir].fetch_sub(1, Relaxed);
            return false;
        }
        let Some(off) = self.alloc(wire.len()) else {
            shared.held[dir].fetch_sub(1, Relaxed);
            return false;
        };
        let copy = &mut self.arena[off..off + wire.len()];
        copy.copy_from_slice(wire);
        if rng.chance(self.cfg.corrupt_ppm) && wire.len() > HEADROOM + 14 {
            corrupt(copy, rng);
        }
        let mut due = if rng.chance(self.cfg.reorder_ppm) { now } else { now + self.delay(rng) };
        if self.cfg.rate_bps > 0 {
            due = reserve(&shared.rate_tat[dir], due, rate_bytes(wire), self.cfg.rate_bps, self.cfg.burst());
        }
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot { off: off as u32, len: wire.len() as u32, done: false });
        self.heap.push(Reverse((due, seq)));
        true
    }

    /// Room for `len` bytes in the ring, or `None`.
    fn alloc(&mut self, len: usize) -> Option<usize> {
        if self.slots.len() >= self.limit as usize {
            return None;
        }
        let Some(tail) = self.slots.front().map(|s| s.off as usize) else {
            // Empty: start over at the front.
            self.head = 0;
            return (len <= self.arena.len()).then(|| {
                self.head = len;
                0
            });
        };
        let off = if self.head >= tail {
            if self.arena.len() - self.head >= len {
                self.head
            } else if len < tail {
                0
            } else {
                return None;
            }
        } else if self.head + len < tail {
            self.head
        } else {
            return None;
        };
        self.head = off + len;
        Some(off)
    }

    /// Hands each frame due by `now` (at most `max`) to `f`, then frees it.
    pub fn release(
        &mut self,
        now: u64,
        max: usize,
        shared: &PortImpair,
        dir: usize,
        mut f: impl FnMut(&mut [u8]),
    ) -> usize {
        let mut n = 0;
        while n < max {
            match self.heap.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => break,
            }
            let Some(Reverse((_, seq))) = self.heap.pop() else { break };
            let i = (seq - self.base) as usize;
            let s = self.slots[i];
            f(&mut self.arena[s.off as usize..(s.off + s.len) as usize]);
            self.slots[i].done = true;
            while self.slots.front().is_some_and(|s| s.done) {
                self.slots.pop_front();
                self.base += 1;
            }
            shared.held[dir].fetch_sub(1, Relaxed);
            n += 1;
        }
        n
    }
}

/// One port's lines on one worker.
struct PortLines {
    shared: Arc<PortImpair>,
    lines: [Option<Line>; 2],
}

/// A worker's impairment lines, by port; see the module doc.
#[derive(Default)]
pub struct Lines {
    worker: usize,
    by_port: Vec<Option<Box<PortLines>>>,
    /// Ports with lines, so that release and timeouts visit only those.
    active: Vec<PortId>,
    rng: Option<Rng>,
    /// The workers' clock (ns) for this turn, set by the worker.
    pub now: u64,
}

impl Lines {
    /// Worker `worker`'s lines (none until [`Lines::adopt`] finds impaired ports).
    pub fn new(worker: usize) -> Lines {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Lines {
            worker,
            by_port: (0..=usize::from(u16::MAX)).map(|_| None).collect(),
            active: Vec::with_capacity(64),
            rng: Some(Rng::new(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            now: 0,
        }
    }

    /// Brings the lines in line with `snap` (at adoption, not per frame):
    /// a port whose settings changed gets new lines (frames the old ones
    /// held are dropped, as replacing a qdisc drops its queue); ports no
    /// longer impaired lose theirs.
    pub fn adopt(&mut self, snap: &Snapshot) {
        if self.by_port.is_empty() {
            return;
        }
        let mut k = 0;
        while k < self.active.len() {
            let id = self.active[k];
            let keep = match (snap.port(id).and_then(|v| v.impair.as_ref()), &self.by_port[id.index()]) {
                (Some(new), Some(old)) => Arc::ptr_eq(new, &old.shared),
                _ => false,
            };
            if keep {
                k += 1;
            } else {
                self.by_port[id.index()] = None;
                self.active.swap_remove(k);
            }
        }
        for view in snap.ports.iter().flatten() {
            let Some(imp) = &view.impair else { continue };
            if self.by_port[view.id.index()].is_some() {
                continue;
            }
            let line = |d: usize| {
                let cfg = *imp.settings.dir(d);
                (!cfg.is_none()).then(|| imp.take_arena(self.worker, d)).flatten().map(|a| Line::new(cfg, a))
            };
            let lines = [line(IN), line(OUT)];
            self.by_port[view.id.index()] = Some(Box::new(PortLines { shared: imp.clone(), lines }));
            self.active.push(view.id);
        }
    }

    /// Direction in, for a burst just read from `view` (impaired: `imp`):
    /// true when the burst was taken (held or dropped), false when it goes
    /// through the pipeline as usual (the link is up and direction in is plain).
    // Out of line and cold: an unimpaired port's path stays as tight as before.
    #[cold]
    #[inline(never)]
    pub fn ingress(&mut self, view: &PortView, imp: &PortImpair, batch: &Batch) -> bool {
        if !imp.settings.link_up {
            view.stats.drop_n(DropReason::LinkDownAdmin, batch.len() as u64);
            return true;
        }
        let now = self.now;
        let Some((line, shared, rng)) = self.line_mut(view.id, IN) else { return false };
        for buf in batch.iter() {
            count(&view.stats, line.admit(now, buf.wire(), shared, IN, rng));
        }
        true
    }

    /// Direction out, for a frame (`wire`) about to be sent to `view`: true
    /// when it was taken (held or dropped), false when it is sent as usual.
    #[cold]
    #[inline(never)]
    pub fn egress(&mut self, view: &PortView, imp: &PortImpair, wire: &[u8]) -> bool {
        if !imp.settings.link_up {
            view.stats.drop_n(DropReason::LinkDownAdmin, 1);
            return true;
        }
        let now = self.now;
        let Some((line, shared, rng)) = self.line_mut(view.id, OUT) else { return false };
        count(&view.stats, line.admit(now, wire, shared, OUT, rng));
        true
    }

    /// The line of `port` in direction `dir` (`IN`, `OUT`), its shared
    /// settings and this worker's random source; none when the port has no
    /// lines on this worker or that direction is plain.
    fn line_mut(&mut self, port: PortId, dir: usize) -> Option<(&mut Line, &PortImpair, &mut Rng)> {
        let pl = self.by_port.get_mut(port.index())?.as_deref_mut()?;
        let rng = self.rng.as_mut()?;
        Some((pl.lines[dir].as_mut()?, &pl.shared, rng))
    }

    /// The earliest due time of any frame this worker holds.
    pub fn next_due(&self) -> Option<u64> {
        self.active
            .iter()
            .filter_map(|id| self.by_port[id.index()].as_deref())
            .flat_map(|pl| pl.lines.iter().flatten().filter_map(Line::next_due))
            .min()
    }

    /// Ports with lines (for the worker's release loop).
    pub fn ports(&self) -> &[PortId] {
        &self.active
    }

    /// Moves up to a batch of `port`'s direction-in frames due now into
    /// `batch` (cleared first); returns how many.
    pub fn due_in(&mut self, port: PortId, batch: &mut Batch) -> usize {
        batch.clear();
        let Some(pl) = self.by_port.get_mut(port.index()).and_then(|p| p.as_deref_mut()) else { return 0 };
        let Some(line) = pl.lines[IN].as_mut() else { return 0 };
        line.release(self.now, BATCH, &pl.shared, IN, |wire| {
            if let Some(buf) = batch.next_free() {
                buf.hdr_space_mut()[..wire.len()].copy_from_slice(wire);
                buf.set_len(wire.len() - HEADROOM);
                batch.commit();
            }
        })
    }

    /// Hands every direction-out frame due now to `send` with its port.
    pub fn due_out(&mut self, mut send: impl FnMut(PortId, &mut [u8])) {
        let now = self.now;
        for &id in &self.active {
            let Some(pl) = self.by_port[id.index()].as_deref_mut() else { continue };
            if let Some(line) = pl.lines[OUT].as_mut() {
                line.release(now, usize::MAX, &pl.shared, OUT, |wire| send(id, wire));
            }
        }
    }
}

#[inline]
fn count(stats: &PortStats, a: Admitted) {
    if a.lost > 0 {
        stats.drop_n(DropReason::ImpairLoss, u64::from(a.lost));
    }
    if a.full > 0 {
        stats.drop_n(DropReason::ImpairLimit, u64::from(a.full));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::LinkSettings;

    fn wire(len: usize, tag: u8) -> Vec<u8> {
        let mut w = vec![0u8; HEADROOM + len];
        w[HEADROOM] = tag;
        w
    }

    fn line(cfg: Impairment) -> (Line, PortImpair) {
        let s = LinkSettings { impair_out: cfg, ..Default::default() };
        let shared = PortImpair::new(s, 1);
        let arena = shared.take_arena(0, OUT).unwrap();
        (Line::new(cfg, arena), shared)
    }

    fn drain(l: &mut Line, now: u64, shared: &PortImpair) -> Vec<u8> {
        let mut out = vec![];
        l.release(now, usize::MAX, shared, OUT, |w| out.push(w[HEADROOM]));
        out
    }

    #[test]
    fn delay_holds_frames_until_due_in_order() {
        let (mut l, sh) = line(Impairment { delay_us: 20_000, ..Default::default() });
        let mut rng = Rng::new(1);
        for t in 0..5u8 {
            assert_eq!(l.admit(u64::from(t) * 1000, &wire(100, t), &sh, OUT, &mut rng).held, 1);
        }
        assert_eq!(l.next_due(), Some(20_000_000));
        assert!(drain(&mut l, 19_999_999, &sh).is_empty());
        assert_eq!(drain(&mut l, 20_002_000, &sh), vec![0, 1, 2]);
        assert_eq!(drain(&mut l, 30_000_000, &sh), vec![3, 4]);
        assert!(l.is_empty());
        assert_eq!(sh.held[OUT].load(Relaxed), 0);
    }

    #[test]
    fn the_limit_bounds_what_is_held_and_memory_is_reused() {
        let (mut l, sh) = line(Impairment { delay_us: 1000, limit: 3, ..Default::default() });
        let mut rng = Rng::new(1);
        let a: Vec<Admitted> = (0..5).map(|t| l.admit(0, &wire(1500, t), &sh, OUT, &mut rng)).collect();
        assert_eq!(a.iter().map(|a| a.held).sum::<u32>(), 3);
        assert_eq!(a.iter().map(|a| a.full).sum::<u32>(), 2);
        // Thousands of rounds through a small ring: the ring wraps and is reused.
        for round in 0..10_000u64 {
            let now = round * 2_000_000;
            assert_eq!(drain(&mut l, now + 1_000_000, &sh).len(), if round == 0 { 3 } else { 2 });
            for t in 0..2 {
                assert_eq!(
                    l.admit(now + 1_000_000, &wire(1000 + (round as usize * 7) % 900, t), &sh, OUT, &mut rng).held,
                    1
                );
            }
        }
    }

    #[test]
    fn a_full_ring_drops_large_frames() {
        let (mut l, sh) = line(Impairment { delay_us: 1000, limit: 10, ..Default::default() });
        let mut rng = Rng::new(1);
        // MIN_ARENA holds four 64 KiB super-frames, not five.
        let held: u32 = (0..5).map(|t| l.admit(0, &wire(65_536, t), &sh, OUT, &mut rng).held).sum();
        assert_eq!(held, 4);
    }

    #[test]
    fn the_token_bucket_keeps_the_rate_over_workers() {
        // 10 Mbit/s, 3028-byte bucket: 1250-byte frames take 1 ms each.
        let tat = AtomicU64::new(0);
        let mut last = 0;
        let start = 1_000_000_000;
        for i in 0..1000u64 {
            last = reserve(&tat, start, 1250, 10_000_000, 3028);
            if i < 2 {
                assert_eq!(last, start, "the bucket's burst goes at once");
            }
        }
        // 1000 frames of 1 ms each, less the burst's head start.
        let span = last - start;
        assert!((996_000_000..=999_000_000).contains(&span), "{span}");
        // An idle link refills: a frame much later goes at once.
        assert_eq!(reserve(&tat, start + 5_000_000_000, 1250, 10_000_000, 3028), start + 5_000_000_000);
        // A super-frame larger than the bucket still goes, and the next waits for it.
        let t = start + 10_000_000_000;
        assert_eq!(reserve(&tat, t, 65_000, 10_000_000, 3028), t);
        let next = reserve(&tat, t, 100, 10_000_000, 3028);
        assert_eq!(next, t + 52_000_000 - 2_422_400, "65,000 bytes at 10 Mbit/s is 52 ms, less the bucket");
    }

    #[test]
    fn rate_through_a_line() {
        let (mut l, sh) = line(Impairment { rate_bps: 8_000_000, burst_bytes: 1000, ..Default::default() });
        let mut rng = Rng::new(1);
        for t in 0..100 {
            assert_eq!(l.admit(0, &wire(1000, t), &sh, OUT, &mut rng).held, 1);
        }
        // 1000 bytes at 8 Mbit/s: 1 ms each; the bucket lets the first two go at 0.
        assert_eq!(drain(&mut l, 0, &sh).len(), 2);
        assert_eq!(drain(&mut l, 49_000_000, &sh).len(), 49);
        assert_eq!(l.len(), 49);
    }

    fn loss_runs(cfg: Impairment, n: usize) -> (f64, f64) {
        let (mut l, _) = line(cfg);
        let mut rng = Rng::new(7);
        let lost: Vec<bool> = (0..n).map(|_| l.lost(&mut rng)).collect();
        let total = lost.iter().filter(|&&x| x).count();
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count().max(1);
        (total as f64 / n as f64, total as f64 / bursts as f64)
    }

    #[test]
    fn independent_loss_has_its_rate() {
        let (rate, burst) = loss_runs(Impairment { loss_ppm: 50_000, ..Default::default() }, 200_000);
        assert!((0.048..0.052).contains(&rate), "{rate}");
        assert!(burst < 1.1, "{burst}");
    }

    #[test]
    fn gilbert_loss_keeps_the_rate_in_bursts() {
        let cfg = Impairment { loss_ppm: 50_000, loss_burst: 4.0, ..Default::default() };
        let (rate, burst) = loss_runs(cfg, 400_000);
        assert!((0.045..0.055).contains(&rate), "{rate}");
        assert!((3.6..4.4).contains(&burst), "{burst}");
    }

    #[test]
    fn duplicate_corrupt_and_reorder() {
        let (mut l, sh) = line(Impairment { duplicate_ppm: 1_000_000, corrupt_ppm: 1_000_000, ..Default::default() });
        let mut rng = Rng::new(3);
        let w = wire(100, 9);
        assert_eq!(l.admit(0, &w, &sh, OUT, &mut rng).held, 2);
        let mut out = vec![];
        l.release(0, usize::MAX, &sh, OUT, |f| out.push(f.to_vec()));
        assert_eq!(out.len(), 2);
        for f in out {
            assert_eq!(f[..HEADROOM + 14], w[..HEADROOM + 14], "the Ethernet header is kept");
            let bits: u32 = f.iter().zip(&w).map(|(a, b)| (a ^ b).count_ones()).sum();
            assert_eq!(bits, 1, "one bit flipped");
        }
        let (mut l, sh) = line(Impairment { delay_us: 10_000, reorder_ppm: 1_000_000, ..Default::default() });
        l.admit(5, &wire(100, 1), &sh, OUT, &mut rng);
        assert_eq!(l.next_due(), Some(5), "a reordered frame skips the delay");
    }

    #[test]
    fn a_super_frame_counts_the_headers_of_its_segments() {
        let mut w = wire(54 + 3 * 1448, 0);
        let h = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: VnetHdr::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        h.write_to(&mut w);
        w[HEADROOM + 34 + 12] = 5 << 4;
        assert_eq!(rate_bytes(&w), 54 + 3 * 1448 + 2 * 54);
        assert_eq!(rate_bytes(&wire(1000, 0)), 1000);
    }

    #[test]
    fn jitter_stays_around_the_delay() {
        for distribution in [Distribution::Uniform, Distribution::Normal, Distribution::Pareto] {
            let (l, _) = line(Impairment { delay_us: 20_000, jitter_us: 5_000, distribution, ..Default::default() });
            let mut rng = Rng::new(11);
            let d: Vec<f64> = (0..100_000).map(|_| l.delay(&mut rng) as f64 / 1e6).collect();
            let mean = d.iter().sum::<f64>() / d.len() as f64;
            let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
            assert!((19.5..20.5).contains(&mean), "{distribution:?} mean {mean}");
            let want = if distribution == Distribution::Uniform { 5.0 / 3f64.sqrt() } else { 5.0 };
            assert!((sd - want).abs() < 0.6, "{distribution:?} sd {sd}, want {want}");
            assert!(d.iter().all(|&x| x >= 0.0));
        }
    }
}
