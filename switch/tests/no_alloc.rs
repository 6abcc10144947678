//! The hot path does not allocate: after warm-up, running bursts of frames
//! through `worker::burst` (receive, decide, learn, forward, count) makes no
//! heap allocation at all. Counted with a wrapping global allocator, on the
//! thread that runs the data path only: the test harness's own threads
//! allocate now and then (4 allocations in about one run in five, measured),
//! which says nothing about the data path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tapyard_switch::datapath::Fdb;
use tapyard_switch::packet::{Batch, BATCH};
use tapyard_switch::port::{Port, PortCaps, PortId, RecvReport, RecvState, SendReport};
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::snapshot::{GatewayView, NetworkView, PortView, Snapshot};
use tapyard_switch::wire::vnet::VnetHdr;
use tapyard_switch::worker::{burst, new_scratch, Io, TxAcc};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static OTHER_THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread that runs the data path: allocations on other
    /// threads (the test harness's own) are not the data path's.
    static DATA_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.load(Relaxed) {
        if DATA_PATH.with(|d| d.get()) {
            ALLOCS.fetch_add(1, Relaxed);
        } else {
            OTHER_THREADS.fetch_add(1, Relaxed);
        }
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

/// A port that yields a full batch of one fixed frame (with its vnet header)
/// on every receive and swallows every send, without allocating.
struct Repeat {
    hdr: VnetHdr,
    frame: Vec<u8>,
    sent: AtomicU64,
}

impl Port for Repeat {
    fn recv_batch(&self, _queue: usize, batch: &mut Batch) -> RecvReport {
        let mut n = 0;
        while batch.push_wire(&self.hdr, &self.frame) {
            n += 1;
        }
        RecvReport { frames: n, state: RecvState::More }
    }
    fn send_batch(&self, _queue: usize, frames: &[&[u8]]) -> SendReport {
        self.sent.fetch_add(frames.len() as u64, Relaxed);
        SendReport {
            sent: frames.len() as u64,
            bytes: frames.iter().map(|f| f.len() as u64).sum(),
            ..Default::default()
        }
    }
    fn caps(&self) -> PortCaps {
        PortCaps { queues: 1, offloads: Default::default(), gather: false }
    }
    fn raw_fd(&self, _queue: usize) -> Option<RawFd> {
        None
    }
    fn name(&self) -> &str {
        "repeat"
    }
}

fn repeat(dst: [u8; 6], src: u8) -> Arc<Repeat> {
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    Arc::new(Repeat { hdr: VnetHdr::NONE, frame: frame.to_vec(), sent: AtomicU64::new(0) })
}

/// A port sending 8-segment TCP super-frames (TSO, partial checksum) from `src` to `dst`.
fn repeat_tso(dst: [u8; 6], src: u8) -> Arc<Repeat> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], dst)
        .ipv4([10, 0, 0, src], [10, 0, 0, 1], 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .write(&mut frame, &[0x5a; 8 * 1448])
        .unwrap();
    let hdr = VnetHdr::tcp4_gso(1448);
    Arc::new(Repeat { hdr, frame, sent: AtomicU64::new(0) })
}

#[test]
fn steady_state_forwarding_does_not_allocate() {
    // Port 1 sends unicast to port 2's MAC, port 2 broadcasts (flood to 1
    // and 3), port 3 sends to port 1, port 4 to the gateway's MAC (punted);
    // port 5 sends TCP super-frames to port 6, which takes no offloads, so
    // every one is segmented in software; port 6 answers port 5.
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 0xee];
    let ports = [
        repeat([2, 0, 0, 0, 0, 2], 1),
        repeat([0xff; 6], 2),
        repeat([2, 0, 0, 0, 0, 1], 3),
        repeat(GW, 4),
        repeat_tso([2, 0, 0, 0, 0, 6], 5),
        repeat([2, 0, 0, 0, 0, 5], 6),
    ];
    let punt = Arc::new(PuntQueue::new());
    let net = Arc::new(NetworkView {
        index: 0,
        router: None,
        route_stats: Default::default(),
        neighbors: Default::default(),
        gateway: Some(GatewayView { mac: GW, ip: [10, 0, 0, 1], prefix: 24, punt: punt.clone() }),
        name: "n".into(),
        max_frame: 1518,
        fdb: Arc::new(Fdb::new(4096, 300)),
        ports: (1..=6).map(PortId).collect(),
    });
    let mut views = vec![None];
    for (i, p) in ports.iter().enumerate() {
        let port: Arc<dyn Port> = p.clone();
        views.push(Some(Arc::new(PortView {
            id: PortId(i as u16 + 1),
            port,
            stats: Arc::default(),
            network: net.clone(),
            worker: 0,
        })));
    }
    let snap = Snapshot { epoch: 1, networks: vec![net.clone()], ports: views };
    let mut batch = Batch::new();
    let mut tx = TxAcc::new();
    let mut scratch = new_scratch();
    let mut punted = 0u64;
    let mut step = |batch: &mut Batch, tx: &mut TxAcc, now: u32| {
        for id in 1..=6 {
            let mut io = Io { batch, tx, scratch: &mut scratch, queue: 0, worker: 0 };
            burst(&mut io, &snap, snap.port(PortId(id)).unwrap(), now);
        }
        // Play the gateway thread: take the punted frames, return the buffers.
        while let Some(p) = punt.pop() {
            punted += 1;
            punt.recycle(p.buf);
        }
    };
    // Warm-up: learns every MAC (learning a new MAC allocates nothing either,
    // but keep the measured window to the steady state).
    step(&mut batch, &mut tx, 0);
    DATA_PATH.with(|d| d.set(true));
    COUNTING.store(true, Relaxed);
    for round in 0..1000 {
        step(&mut batch, &mut tx, round / 100);
    }
    COUNTING.store(false, Relaxed);
    eprintln!("allocations on other threads meanwhile: {}", OTHER_THREADS.load(Relaxed));
    assert_eq!(ALLOCS.load(Relaxed), 0, "allocations on the per-frame path");
    assert_eq!(punted, 1001 * BATCH as u64, "every frame to the gateway was punted");
    // And it really forwarded: port 2 got port 1's unicast, ports 1 and 3 got port 2's floods.
    let per_round = BATCH as u64;
    // (Plus, in the warm-up round, port 5's super-frames flooded as 8
    // segments each before port 6's MAC was learned.)
    assert_eq!(ports[1].sent.load(Relaxed), 1001 * per_round + 8 * per_round);
    assert!(ports[0].sent.load(Relaxed) >= 1000 * per_round);
    assert!(ports[2].sent.load(Relaxed) >= 1000 * per_round);
    // Port 6 got every super-frame as 8 segments (plus port 2's floods).
    assert!(ports[5].sent.load(Relaxed) >= 1000 * per_round * 8);
}
