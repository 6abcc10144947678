//! The hot path does not allocate: after warm-up, running bursts of frames
//! through `worker::burst` (receive, classify, learn, forward, route, punt,
//! segment, count) makes no heap allocation at all. Counted with a wrapping global allocator, on the
//! thread that runs the data path only: the test harness's own threads
//! allocate now and then (4 allocations in about one run in five, measured),
//! which says nothing about the data path.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn, RouterIn};
use tapyard_switch::control::gateway_mac;
use tapyard_switch::control::persist::RouterSpec;
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::datapath::Fdb;
use tapyard_switch::packet::{Batch, NetId, BATCH};
use tapyard_switch::port::mem::Repeat;
use tapyard_switch::port::{Port, PortId};
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::stats::RouterStats;
use tapyard_switch::wire::vnet::VnetHdr;
use tapyard_switch::worker::{burst, Io};

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

fn repeat(dst: [u8; 6], src: u8) -> Arc<Repeat> {
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    Arc::new(Repeat::new(VnetHdr::NONE, &frame))
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
    Arc::new(Repeat::new(VnetHdr::tcp4_gso(1448), &frame))
}

/// A port sending UDP packets from `src` on network n through the gateway
/// of n to `dst_ip` (routed).
fn repeat_routed(src: u8, dst_ip: [u8; 4]) -> Arc<Repeat> {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], gateway_mac("n").0)
        .ipv4([10, 0, 0, src], dst_ip, 64)
        .udp(40000, 5201)
        .write(&mut frame, &[0x5a; 18])
        .unwrap();
    Arc::new(Repeat::new(VnetHdr::NONE, &frame))
}

#[test]
fn steady_state_forwarding_does_not_allocate() {
    // On network n (10.0.0.0/24): port 1 sends unicast to port 2's MAC,
    // port 2 broadcasts (flood to 1, 3 and the rest), port 3 sends to port
    // 1, port 4 to the gateway's MAC (not IPv4: punted to the gateway);
    // port 5 sends TCP super-frames to port 6, which takes no offloads, so
    // every one is segmented in software; port 6 answers port 5. Port 8
    // sends UDP to 10.1.0.7 on network m, through router r: routed to
    // port 7 (which broadcasts on m, so its MAC is learned).
    let gw = gateway_mac("n").0;
    let ports = [
        repeat([2, 0, 0, 0, 0, 2], 1),
        repeat([0xff; 6], 2),
        repeat([2, 0, 0, 0, 0, 1], 3),
        repeat(gw, 4),
        repeat_tso([2, 0, 0, 0, 0, 6], 5),
        repeat([2, 0, 0, 0, 0, 5], 6),
        repeat([0xff; 6], 7),
        repeat_routed(8, [10, 1, 0, 7]),
    ];
    let punt = Arc::new(PuntQueue::new());
    let (n, m) = (network_spec("n", Some("10.0.0.0/24")), network_spec("m", Some("10.1.0.0/24")));
    let r = RouterSpec { name: "r".into(), networks: vec!["n".into(), "m".into()], routes: vec![] };
    let router_stats = Arc::new(RouterStats::default());
    let net = |id, spec| NetworkIn {
        id: NetId(id),
        spec,
        fdb: Arc::new(Fdb::new(4096, 300)),
        route_stats: Arc::default(),
        gw_stats: Arc::default(),
    };
    let snap = build(Plan {
        epoch: 1,
        networks: vec![net(1, &n), net(2, &m)],
        routers: vec![RouterIn { spec: &r, stats: router_stats.clone() }],
        ports: ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortIn {
                id: PortId(i as u16 + 1),
                network: if i == 6 { "m" } else { "n" },
                port: p.clone() as Arc<dyn Port>,
                stats: Arc::default(),
                worker: 0,
            })
            .collect(),
        neighbors: [(
            "m".to_string(),
            [("10.1.0.7".parse().unwrap(), tapyard_switch::wire::MacAddr([2, 0, 0, 0, 0, 7]))].into(),
        )]
        .into(),
        punt: punt.clone(),
    });
    let mut batch = Batch::new();
    let mut egress = Egress::new(0);
    let mut punted = 0u64;
    let mut step = |batch: &mut Batch, egress: &mut Egress, now: u32| {
        for id in 1..=ports.len() as u16 {
            let mut io = Io { batch, egress, queue: 0 };
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
    step(&mut batch, &mut egress, 0);
    DATA_PATH.with(|d| d.set(true));
    COUNTING.store(true, Relaxed);
    for round in 0..1000 {
        step(&mut batch, &mut egress, round / 100);
    }
    COUNTING.store(false, Relaxed);
    eprintln!("allocations on other threads meanwhile: {}", OTHER_THREADS.load(Relaxed));
    assert_eq!(ALLOCS.load(Relaxed), 0, "allocations on the per-frame path");
    assert_eq!(punted, 1001 * BATCH as u64, "every frame to the gateway was punted");
    // And it really forwarded: port 2 got port 1's unicast, ports 1 and 3 got port 2's floods.
    let per_round = BATCH as u64;
    // (Plus, in the warm-up round, port 5's super-frames flooded as 8
    // segments each before port 6's MAC was learned.)
    assert_eq!(ports[1].sent(), 1001 * per_round + 8 * per_round);
    assert!(ports[0].sent() >= 1000 * per_round);
    assert!(ports[2].sent() >= 1000 * per_round);
    // Port 6 got every super-frame as 8 segments (plus port 2's floods).
    assert!(ports[5].sent() >= 1000 * per_round * 8);
    // Every packet of port 8 was routed to port 7, and only there.
    assert_eq!(router_stats.routed.load(Relaxed), 1001 * per_round);
    assert_eq!(ports[6].sent(), 1001 * per_round);
}
