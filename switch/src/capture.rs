//! What the data path hands to packet capture, the flight recorder and
//! mirror ports (docs/capture.md). This module owns the structures workers
//! write into; the control plane (`control::capture`) makes them, puts them
//! in the snapshot ([`PortTaps`], by port id) and drains them.
//!
//! - [`CaptureRing`]: one per running `tapyard capture`. A bounded pool of
//!   preallocated records moves between two lock-free queues (`free` →
//!   filled by a worker → `full` → written out by the control plane →
//!   `free`). A worker that finds no free record counts the frame as
//!   dropped and goes on: a slow reader loses capture frames, it never
//!   slows forwarding. Nothing is allocated per frame: records keep their
//!   buffers.
//! - [`Recorder`]: the flight recorder of one port, always on. One ring of
//!   [`HEAD`]-byte header snapshots per worker (each written by its worker
//!   only, so several workers serving the queues of one port never share a
//!   ring); a slot is a seqlock over atomics, so the control plane reads it
//!   while it is written and skips a slot caught half-written.
//!
//! Timestamps are taken once per burst ([`now_ns`]: monotonic, from one
//! process-wide origin) and turned into wall-clock time only when read
//! ([`wall_ns`]).
//!
//! Imports: `packet` only (scripts/check-layers.sh).

#![forbid(unsafe_code)]

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

use crate::packet::PortId;

/// Bytes of each frame the flight recorder keeps: Ethernet, a VLAN tag,
/// IPv4/IPv6 with options and a TCP header with options fit.
pub const HEAD: usize = 128;
const WORDS: usize = HEAD / 8;

/// Frames each (port, worker) flight-recorder ring holds unless the daemon
/// says otherwise (`daemon --flight-recorder N`).
pub const DEFAULT_RECORDER_DEPTH: usize = 256;

/// Which way a frame crossed the port, as the port sees it: received from
/// the namespace (`In`) or sent to it (`Out`). pcapng's `epb_flags`
/// direction bits (draft-ietf-opsawg-pcapng §4.3.1: 01 inbound, 10 outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Dir {
    In = 1,
    Out = 2,
}

impl Dir {
    pub fn from_u8(b: u8) -> Option<Dir> {
        match b {
            1 => Some(Dir::In),
            2 => Some(Dir::Out),
            _ => None,
        }
    }
}

struct Origin {
    mono: Instant,
    wall_ns: u64,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| Origin {
        mono: Instant::now(),
        wall_ns: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
    })
}

/// Monotonic nanoseconds since the process's capture origin.
#[inline]
pub fn now_ns() -> u64 {
    origin().mono.elapsed().as_nanos() as u64
}

/// Wall-clock nanoseconds since the Unix epoch of a [`now_ns`] reading.
pub fn wall_ns(mono_ns: u64) -> u64 {
    origin().wall_ns.saturating_add(mono_ns)
}

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Record {
    /// The capture's interface number of the port (its pcapng interface id).
    pub iface: u32,
    pub dir: Dir,
    /// [`now_ns`] of the burst that carried the frame.
    pub ts_ns: u64,
    /// The frame's length on the wire (before `snaplen`).
    pub orig_len: u32,
    /// The first `snaplen` bytes of the frame.
    pub data: Vec<u8>,
}

/// The bounded queue of one capture; see the module docs.
pub struct CaptureRing {
    free: ArrayQueue<Record>,
    full: ArrayQueue<Record>,
    snaplen: usize,
    captured: AtomicU64,
    dropped: AtomicU64,
}

impl CaptureRing {
    /// A ring of `slots` records of up to `snaplen` bytes each, all allocated now.
    pub fn new(snaplen: usize, slots: usize) -> CaptureRing {
        let slots = slots.max(1);
        let free = ArrayQueue::new(slots);
        for _ in 0..slots {
            let r = Record { iface: 0, dir: Dir::In, ts_ns: 0, orig_len: 0, data: Vec::with_capacity(snaplen) };
            let _ = free.push(r);
        }
        CaptureRing {
            free,
            full: ArrayQueue::new(slots),
            snaplen,
            captured: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Copies the first `snaplen` bytes of `frame` into a free record and
    /// queues it; with no record free, counts the frame as dropped.
    #[inline]
    pub fn push(&self, iface: u32, dir: Dir, ts_ns: u64, frame: &[u8]) {
        let Some(mut r) = self.free.pop() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        r.iface = iface;
        r.dir = dir;
        r.ts_ns = ts_ns;
        r.orig_len = frame.len().min(u32::MAX as usize) as u32;
        r.data.clear();
        // Within the capacity reserved at start: no allocation.
        r.data.extend_from_slice(&frame[..frame.len().min(self.snaplen)]);
        self.captured.fetch_add(1, Ordering::Relaxed);
        // Records only ever circulate between the two queues, each as large
        // as the pool: this push cannot fail.
        let _ = self.full.push(r);
    }

    /// The oldest queued record; give it back with [`CaptureRing::recycle`].
    pub fn pop(&self) -> Option<Record> {
        self.full.pop()
    }

    pub fn recycle(&self, r: Record) {
        let _ = self.free.push(r);
    }

    pub fn snaplen(&self) -> usize {
        self.snaplen
    }

    /// Frames queued so far.
    pub fn captured(&self) -> u64 {
        self.captured.load(Ordering::Relaxed)
    }

    /// Frames lost because the reader was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One port's tap into a capture: the ring and the port's interface number in it.
#[derive(Clone)]
pub struct Tap {
    pub ring: Arc<CaptureRing>,
    pub iface: u32,
}

/// Cache-line aligned: a record touches three lines, never four.
#[repr(align(64))]
struct Slot {
    /// Even: stable; odd: being written. Bumped twice per write.
    seq: AtomicU64,
    ts_ns: AtomicU64,
    /// Frame length << 8 | direction.
    len_dir: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            seq: AtomicU64::new(0),
            ts_ns: AtomicU64::new(0),
            len_dir: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One worker's ring of a port's flight recorder.
struct RecorderRing {
    /// A power of two of them, so a slot is found with a mask, not a division.
    slots: Box<[Slot]>,
    /// Next slot to write; written by the ring's worker only.
    next: AtomicU64,
}

/// A port's flight recorder: the last frames it received and sent, headers
/// only. See the module docs.
pub struct Recorder {
    rings: Box<[RecorderRing]>,
}

/// A frame read back from a [`Recorder`].
#[derive(Debug, Clone)]
pub struct Recorded {
    pub dir: Dir,
    pub ts_ns: u64,
    pub orig_len: u32,
    /// Up to [`HEAD`] bytes.
    pub head: Vec<u8>,
}

impl Recorder {
    /// A recorder with `depth` frames (rounded up to a power of two) for each of `workers` workers.
    pub fn new(workers: usize, depth: usize) -> Recorder {
        let depth = depth.max(1).next_power_of_two();
        let ring = || RecorderRing { slots: (0..depth).map(|_| Slot::new()).collect(), next: AtomicU64::new(0) };
        Recorder { rings: (0..workers.max(1)).map(|_| ring()).collect() }
    }

    /// Records `frame`, seen by `worker` at `ts_ns`. Only `worker` writes
    /// its ring, so this is a plain seqlock write: no read-modify-write.
    #[inline]
    pub fn record(&self, worker: usize, dir: Dir, ts_ns: u64, frame: &[u8]) {
        let Some(ring) = self.rings.get(worker) else { return };
        let n = ring.next.load(Ordering::Relaxed);
        ring.next.store(n.wrapping_add(1), Ordering::Relaxed);
        let slot = &ring.slots[n as usize & (ring.slots.len() - 1)];
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Readers that see the data below must see the odd sequence first.
        fence(Ordering::Release);
        slot.ts_ns.store(ts_ns, Ordering::Relaxed);
        slot.len_dir.store((frame.len() as u64) << 8 | dir as u64, Ordering::Relaxed);
        let head = &frame[..frame.len().min(HEAD)];
        let mut chunks = head.chunks_exact(8);
        let mut words = slot.words.iter();
        // Chunks first: zip stops on them without taking another word.
        for (c, w) in chunks.by_ref().zip(words.by_ref()) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        // A frame shorter than HEAD: its last bytes, then zeros (read back only up to its length).
        let rest = chunks.remainder();
        if let Some(w) = words.next().filter(|_| !rest.is_empty()) {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            w.store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Everything recorded, oldest first; slots caught being written are left out.
    pub fn read(&self) -> Vec<Recorded> {
        let mut out = Vec::new();
        for ring in self.rings.iter() {
            for slot in ring.slots.iter() {
                let s1 = slot.seq.load(Ordering::Acquire);
                if s1 == 0 || s1 % 2 == 1 {
                    continue;
                }
                let ts_ns = slot.ts_ns.load(Ordering::Relaxed);
                let len_dir = slot.len_dir.load(Ordering::Relaxed);
                let mut head = [0u8; HEAD];
                for (i, w) in slot.words.iter().enumerate() {
                    head[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
                }
                fence(Ordering::Acquire);
                if slot.seq.load(Ordering::Relaxed) != s1 {
                    continue;
                }
                let (Some(dir), len) = (Dir::from_u8(len_dir as u8), (len_dir >> 8) as usize) else {
                    continue;
                };
                out.push(Recorded {
                    dir,
                    ts_ns,
                    orig_len: len.min(u32::MAX as usize) as u32,
                    head: head[..len.min(HEAD)].to_vec(),
                });
            }
        }
        out.sort_by_key(|r| r.ts_ns);
        out
    }
}

/// What the data path does with the frames of one port besides forwarding
/// them; in the snapshot by port id (`Snapshot::taps`).
#[derive(Clone, Default)]
pub struct PortTaps {
    /// The port's flight recorder (none: `--flight-recorder 0`).
    pub recorder: Option<Arc<Recorder>>,
    /// Running captures that include the port.
    pub captures: Vec<Tap>,
    /// The port that gets a copy of every frame this port receives or is sent.
    pub mirror: Option<PortId>,
    /// Copies made for the mirror (sent or not: the mirror port counts its own sends).
    pub mirrored: Arc<AtomicU64>,
}

impl PortTaps {
    /// Whether the data path has anything to do for this port.
    pub fn is_active(&self) -> bool {
        self.recorder.is_some() || !self.captures.is_empty() || self.mirror.is_some()
    }

    /// Records and captures `frame` (no mirror: that needs a port, see
    /// `datapath::egress`), seen by `worker` at `ts_ns` going `dir`.
    #[inline]
    pub fn observe(&self, worker: usize, dir: Dir, ts_ns: u64, frame: &[u8]) {
        if let Some(r) = &self.recorder {
            r.record(worker, dir, ts_ns, frame);
        }
        for t in &self.captures {
            t.ring.push(t.iface, dir, ts_ns, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_when_full_and_recycles() {
        let ring = CaptureRing::new(4, 2);
        ring.push(1, Dir::In, 10, b"abcdef");
        ring.push(2, Dir::Out, 11, b"xy");
        ring.push(3, Dir::In, 12, b"lost");
        assert_eq!((ring.captured(), ring.dropped()), (2, 1));
        let r = ring.pop().unwrap();
        assert_eq!((r.iface, r.dir, r.orig_len, &r.data[..]), (1, Dir::In, 6, &b"abcd"[..]));
        ring.recycle(r);
        ring.push(4, Dir::In, 13, b"again");
        assert_eq!(ring.pop().unwrap().iface, 2);
        assert_eq!(ring.pop().unwrap().iface, 4);
        assert!(ring.pop().is_none());
    }

    #[test]
    fn recorder_keeps_the_last_frames_per_worker() {
        // 3 rounds up to 4 slots per worker.
        let rec = Recorder::new(2, 3);
        for i in 0..6u8 {
            rec.record(0, Dir::In, u64::from(i), &[i; 200]);
        }
        rec.record(1, Dir::Out, 100, &[9; 20]);
        let got = rec.read();
        let ts: Vec<u64> = got.iter().map(|r| r.ts_ns).collect();
        assert_eq!(ts, vec![2, 3, 4, 5, 100]);
        assert_eq!(got[0].head, vec![2; HEAD]);
        assert_eq!(got[0].orig_len, 200);
        // A short frame comes back whole, its last partial word included.
        assert_eq!((got[4].dir, &got[4].head[..]), (Dir::Out, &[9u8; 20][..]));
    }

    #[test]
    fn recorder_reads_consistent_slots_while_written() {
        let rec = Arc::new(Recorder::new(1, 4));
        let w = rec.clone();
        let t = std::thread::spawn(move || {
            for i in 0..200_000u64 {
                let b = (i % 251) as u8;
                w.record(0, Dir::In, i, &[b; 64]);
            }
        });
        while !t.is_finished() {
            for r in rec.read() {
                let b = (r.ts_ns % 251) as u8;
                assert!(r.head.iter().all(|&x| x == b), "torn slot read");
            }
        }
        t.join().unwrap();
    }
}
