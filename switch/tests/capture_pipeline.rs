//! Taps on the data path without root (docs/capture.md): bursts through
//! `worker::burst` over in-memory ports with a flight recorder, a capture and
//! a mirror on a port record and capture each frame once per direction,
//! send the mirror its copies, lose capture frames (counted) when nobody
//! drains the capture, and allocate nothing per frame (a counting global
//! allocator, on this test's data-path thread only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tapyard_switch::capture::{CaptureRing, Dir, PortTaps, Recorder, Tap};
use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn};
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::packet::{Batch, NetId, BATCH};
use tapyard_switch::port::mem::Repeat;
use tapyard_switch::port::{Port, PortId};
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::snapshot::Snapshot;
use tapyard_switch::wire::vnet::VnetHdr;
use tapyard_switch::worker::{burst, Io};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static DATA_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.load(Relaxed) && DATA_PATH.with(|d| d.get()) {
        ALLOCS.fetch_add(1, Relaxed);
    }
}

// SAFETY: delegates every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn repeat(dst: u8, src: u8) -> Arc<Repeat> {
    let mut frame = [0u8; 200];
    frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    Arc::new(Repeat::new(VnetHdr::NONE, &frame))
}

/// Ports 1 and 2 send to each other on network n; port 3 (network m) is the mirror.
fn snapshot(ports: &[Arc<Repeat>; 3]) -> Snapshot {
    let (n, m) = (network_spec("n", None), network_spec("m", None));
    build(Plan {
        epoch: 1,
        networks: vec![NetworkIn::new(NetId(1), &n), NetworkIn::new(NetId(2), &m)],
        routers: vec![],
        ports: ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortIn {
                id: PortId(i as u16 + 1),
                network: if i == 2 { "m" } else { "n" },
                port: p.clone() as Arc<dyn Port>,
                stats: Arc::default(),
                worker: 0,
                impair: None,
                security: None,
                storm: None,
            })
            .collect(),
        neighbors: Default::default(),
        punt: Arc::new(PuntQueue::new()),
        uplink: None,
    })
}

#[test]
fn taps_record_capture_and_mirror_each_frame_once_per_direction_without_allocating() {
    let ports = [repeat(2, 1), repeat(1, 2), repeat(9, 3)];
    let mut snap = snapshot(&ports);
    let recorder = Arc::new(Recorder::new(1, 16));
    let ring = Arc::new(CaptureRing::new(64, 4 * BATCH));
    let mirrored = Arc::new(AtomicU64::new(0));
    let taps = PortTaps {
        recorder: Some(recorder.clone()),
        captures: vec![Tap { ring: ring.clone(), iface: 0 }],
        mirror: Some(PortId(3)),
        mirrored: mirrored.clone(),
    };
    snap.taps = vec![None, Some(taps), None, None];
    let (mut batch, mut egress) = (Batch::new(), Egress::new(0));
    let step = |batch: &mut Batch, egress: &mut Egress| {
        for id in [1u16, 2] {
            let mut io = Io { batch, egress, queue: 0 };
            burst(&mut io, &snap, snap.port(PortId(id)).unwrap(), 0);
        }
    };
    // Warm-up: learns both MACs (the first burst floods).
    step(&mut batch, &mut egress);
    while let Some(r) = ring.pop() {
        ring.recycle(r);
    }
    let m0 = (mirrored.load(Relaxed), ports[2].sent());

    // One round: port 1 receives a burst (in) and is sent port 2's burst (out).
    step(&mut batch, &mut egress);
    let mut got = Vec::new();
    while let Some(r) = ring.pop() {
        got.push((r.dir, r.orig_len, r.data.len(), r.data[11]));
        ring.recycle(r);
    }
    let ins = got.iter().filter(|g| *g == &(Dir::In, 200, 64, 1)).count();
    let outs = got.iter().filter(|g| *g == &(Dir::Out, 200, 64, 2)).count();
    assert_eq!((ins, outs, got.len()), (BATCH, BATCH, 2 * BATCH), "{got:?}");
    assert_eq!(mirrored.load(Relaxed) - m0.0, 2 * BATCH as u64);
    assert_eq!(ports[2].sent() - m0.1, 2 * BATCH as u64, "the mirror port got both directions");
    let rec = recorder.read();
    assert_eq!(rec.len(), 16, "the recorder keeps its last 16 frames");
    assert!(rec.iter().all(|r| r.orig_len == 200 && r.head.len() == 128));

    // Steady state with nobody draining the capture: it fills, then loses
    // frames (counted); forwarding and mirroring go on; nothing allocates.
    let sent_before = ports[1].sent();
    DATA_PATH.with(|d| d.set(true));
    ALLOCS.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    for _ in 0..200 {
        step(&mut batch, &mut egress);
    }
    COUNTING.store(false, Relaxed);
    DATA_PATH.with(|d| d.set(false));
    assert_eq!(ALLOCS.load(Relaxed), 0, "allocations on the per-frame path with taps");
    assert_eq!(ports[1].sent() - sent_before, 200 * BATCH as u64, "forwarding lost frames to a full capture");
    assert_eq!(ring.captured(), 2 * BATCH as u64 + 4 * BATCH as u64 + 2 * BATCH as u64);
    assert_eq!(ring.dropped(), 200 * 2 * BATCH as u64 - 4 * BATCH as u64);
}

/// The flight recorder's cost per frame on the pipeline alone (in-memory
/// ports: no syscalls, so this is the worst case, relative to real ports).
/// Timing, not a check: `cargo test --release --test capture_pipeline -- --ignored --nocapture`.
#[test]
#[ignore]
fn recorder_cost_per_frame() {
    let ports = [repeat(2, 1), repeat(1, 2), repeat(9, 3)];
    let plain = snapshot(&ports);
    let mut recorded = snapshot(&ports);
    let tap = |_| Some(PortTaps { recorder: Some(Arc::new(Recorder::new(1, 256))), ..Default::default() });
    recorded.taps = vec![None, tap(1), tap(2), None];
    let (mut batch, mut egress) = (Batch::new(), Egress::new(0));
    let rounds = 50_000u32;
    let mut time = |snap: &Snapshot| {
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for id in [1u16, 2] {
                let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
                burst(&mut io, snap, snap.port(PortId(id)).unwrap(), 0);
            }
        }
        t.elapsed().as_nanos() as f64 / f64::from(rounds * 2 * BATCH as u32)
    };
    time(&plain);
    let mut ratios = Vec::new();
    for run in 1..=7 {
        let (on, off) = (time(&recorded), time(&plain));
        ratios.push(on / off);
        eprintln!("run {run}: recorder on {on:.1} ns/frame, off {off:.1} ns/frame, on/off {:.3}", on / off);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!("median on/off {:.3} (min {:.3}, max {:.3})", ratios[3], ratios[0], ratios[6]);
}
