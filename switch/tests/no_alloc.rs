//! The hot path does not allocate: after warm-up, running bursts of frames
//! through `worker::burst` (receive, classify, learn, forward, route, punt,
//! segment, count) makes no heap allocation at all, over in-memory ports and
//! over vhost-user ports driven by in-process VMs. Counted with a wrapping
//! global allocator, on the thread that runs the data path only: the test
//! harness's own threads allocate now and then, and the VMs' threads and the
//! vhost-user protocol threads allocate freely, which says nothing about the
//! data path. The first few data-path allocations are recorded with their
//! backtraces, so a failure names what allocated.
//!
//! Warm-up is left out of the count because the first burst on a thread
//! allocates once: arc-swap gives each thread a node of its debt list on
//! its first `load` (measured: the vhost-user port's first `vrings.load()`;
//! the only data-path allocation of the whole vhost-user warm-up).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::vhost_frontend::{TestVm, ALL_FEATURES};
use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn, RouterIn};
use tapyard_switch::control::gateway_mac;
use tapyard_switch::control::persist::RouterSpec;
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::packet::{Batch, NetId, BATCH};
use tapyard_switch::port::mem::Repeat;
use tapyard_switch::port::vhost::{Mode, VhostConfig, VhostPort, DEFAULT_SOCKET_MODE};
use tapyard_switch::port::{Port, PortId};
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::security::{Security, Storm};
use tapyard_switch::stats::{PortStats, RouterStats};
use tapyard_switch::wire::vnet::VnetHdr;
use tapyard_switch::wire::MacAddr;
use tapyard_switch::worker::{burst, release_impaired, Io};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static OTHER_THREADS: AtomicU64 = AtomicU64::new(0);
/// Backtraces of the first data-path allocations of a window (`TRACED` of them).
static TRACES: Mutex<Vec<Backtrace>> = Mutex::new(Vec::new());
const TRACED: usize = 4;
/// Measured windows take turns: `COUNTING` and `ALLOCS` are global, and a
/// test ending its window must not end another's.
static WINDOW: Mutex<()> = Mutex::new(());

thread_local! {
    /// Set on the thread that runs the data path: allocations on other
    /// threads (the test harness's own) are not the data path's.
    static DATA_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set while `count` records a backtrace, which allocates itself.
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.load(Relaxed) {
        if DATA_PATH.with(|d| d.get()) {
            if TRACING.with(|t| t.replace(true)) {
                return;
            }
            if ALLOCS.fetch_add(1, Relaxed) < TRACED as u64 {
                let trace = Backtrace::force_capture();
                TRACES.lock().unwrap_or_else(|e| e.into_inner()).push(trace);
            }
            TRACING.with(|t| t.set(false));
        } else {
            OTHER_THREADS.fetch_add(1, Relaxed);
        }
    }
}

/// Opens a measured window on this thread: counts from zero, no traces yet.
fn start_window() -> MutexGuard<'static, ()> {
    let guard = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCS.store(0, Relaxed);
    OTHER_THREADS.store(0, Relaxed);
    TRACES.lock().unwrap_or_else(|e| e.into_inner()).clear();
    DATA_PATH.with(|d| d.set(true));
    COUNTING.store(true, Relaxed);
    guard
}

/// Closes the window: the data-path allocations counted, with the first backtraces.
fn end_window() -> (u64, String) {
    COUNTING.store(false, Relaxed);
    DATA_PATH.with(|d| d.set(false));
    // Informational: the other tests' threads count here too.
    eprintln!("allocations on other threads meanwhile: {}", OTHER_THREADS.load(Relaxed));
    let traces = TRACES.lock().unwrap_or_else(|e| e.into_inner());
    let text = traces.iter().enumerate().map(|(i, t)| format!("--- allocation {}:\n{t}\n", i + 1)).collect();
    (ALLOCS.load(Relaxed), text)
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
    let net = |id, spec| NetworkIn::new(NetId(id), spec);
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
                impair: None,
                // Every port checked by port security and storm control (at
                // a limit nothing reaches): the guard allocates nothing either.
                security: Some(Security {
                    mac: MacAddr([2, 0, 0, 0, 0, i as u8 + 1]),
                    ips: vec![Ipv4Addr::new(10, if i == 6 { 1 } else { 0 }, 0, i as u8 + 1)],
                }),
                storm: Some(Storm { limit: u32::MAX, meter: Arc::default() }),
            })
            .collect(),
        neighbors: [("m".to_string(), [("10.1.0.7".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 7]))].into())].into(),
        punt: punt.clone(),
        uplink: None,
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
    let window = start_window();
    for round in 0..1000 {
        step(&mut batch, &mut egress, round / 100);
    }
    let (allocs, traces) = end_window();
    drop(window);
    assert_eq!(allocs, 0, "allocations on the per-frame path; the first ones:\n{traces}");
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

#[test]
fn steady_state_impaired_forwarding_does_not_allocate() {
    // Port 1 sends to port 2 and port 2 to port 1, on network n; port 1's
    // frames are delayed, jittered, lost, duplicated, corrupted and
    // rate-limited on their way in, port 2's on their way out of port 1.
    // A fake clock moves 1 ms a round: frames are held and released every
    // round. Adopting the snapshot (taking the frame memory, sizing the
    // lines) is outside the window, as a worker does it at adoption.
    use tapyard_switch::impair::{Impairment, LinkSettings, PortImpair};
    let ports = [repeat([2, 0, 0, 0, 0, 2], 1), repeat([2, 0, 0, 0, 0, 1], 2)];
    let busy = Impairment {
        delay_us: 2_000,
        jitter_us: 500,
        loss_ppm: 10_000,
        loss_burst: 2.0,
        duplicate_ppm: 10_000,
        corrupt_ppm: 10_000,
        reorder_ppm: 10_000,
        rate_bps: 1_000_000_000,
        ..Default::default()
    };
    let settings = LinkSettings { impair_in: busy, impair_out: busy, link_up: true };
    let impair = Arc::new(PortImpair::new(settings, 1));
    let n = network_spec("n", Some("10.0.0.0/24"));
    let snap = build(Plan {
        epoch: 1,
        networks: vec![NetworkIn::new(NetId(1), &n)],
        routers: vec![],
        ports: ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortIn {
                id: PortId(i as u16 + 1),
                network: "n",
                port: p.clone() as Arc<dyn Port>,
                stats: Arc::default(),
                worker: 0,
                impair: (i == 0).then(|| impair.clone()),
                security: None,
                storm: None,
            })
            .collect(),
        neighbors: Default::default(),
        punt: Arc::new(PuntQueue::new()),
        uplink: None,
    });
    let mut batch = Batch::new();
    let mut egress = Egress::new(0);
    egress.impair.adopt(&snap);
    let mut ms = 0u64;
    let mut step = |batch: &mut Batch, egress: &mut Egress| {
        ms += 1;
        egress.impair.now = ms * 1_000_000;
        for id in 1..=2u16 {
            burst(&mut Io { batch, egress, queue: 0 }, &snap, snap.port(PortId(id)).unwrap(), 0);
        }
        release_impaired(batch, egress, &snap, 0, 0);
    };
    for _ in 0..20 {
        step(&mut batch, &mut egress);
    }
    let window = start_window();
    for _ in 0..2000 {
        step(&mut batch, &mut egress);
    }
    let (allocs, traces) = end_window();
    drop(window);
    assert_eq!(allocs, 0, "allocations on the impaired per-frame path; the first ones:\n{traces}");
    // And it forwarded through the impairments: most frames, not all.
    let (to1, to2) = (ports[0].sent(), ports[1].sent());
    let offered = 2020 * BATCH as u64;
    assert!(to2 > offered * 9 / 10 && to2 < offered * 11 / 10, "port 2 got {to2} of {offered}");
    assert!(to1 > offered * 9 / 10 && to1 < offered * 11 / 10, "port 1 got {to1} of {offered}");
    let drops = snap.port(PortId(1)).unwrap().stats.snapshot().drops;
    assert!(drops["impair_loss"] > 0, "{drops:?}");
}

/// Frames VM1 sends in the threaded phase; every eighth is a broadcast.
const VM_FRAMES: u64 = 60_000;
/// Frames VM2 must have taken before the measured window opens (warm-up).
const VM_WARM: u64 = 5_000;
/// Entries per ring. VM1 keeps at most `IN_FLIGHT` frames ahead of what VM2
/// has taken back, so VM2 (which reposts every buffer it reads) never runs
/// out of receive buffers and VM1 never waits for a transmit descriptor:
/// every frame must arrive, and the count says whether it did.
const QSIZE: u16 = 256;
const IN_FLIGHT: u64 = 128;
const VM1_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const VM2_MAC: [u8; 6] = [2, 0, 0, 0, 1, 2];
const PLAIN: [u8; 12] = [0; 12];

/// A 60-byte frame of a local experimental EtherType (IEEE 802 0x88b5)
/// carrying `seq`, so the receiver can check order and integrity.
fn seq_frame(dst: [u8; 6], src: [u8; 6], seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..22].copy_from_slice(&seq.to_le_bytes());
    f
}

/// VM1's frame `seq`: every eighth a broadcast, the rest unicast to VM2.
fn vm1_frame(seq: u64) -> Vec<u8> {
    let dst = if seq % 8 == 7 { [0xff; 6] } else { VM2_MAC };
    seq_frame(dst, VM1_MAC, seq)
}

/// A private directory for the sockets, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("tapyard-noalloc-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir.join("handler")).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vhost_port(dir: &Path, name: &str, mac: [u8; 6]) -> Arc<VhostPort> {
    let cfg = VhostConfig {
        socket: dir.join(name),
        mode: Mode::Server,
        pairs: 1,
        mac: MacAddr(mac),
        mtu: 1500,
        handler_dir: dir.join("handler"),
        busy: false,
        socket_mode: DEFAULT_SOCKET_MODE,
        socket_gid: None,
    };
    Arc::new(VhostPort::start(cfg, Box::new(|_| {})).unwrap())
}

/// Sets the flag on drop, so the VM threads end when the test fails too.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Release);
    }
}

/// Waits (up to 10 s) for `cond`, running the data path meanwhile.
fn settle(what: &str, mut round: impl FnMut(), mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "warm-up: {what} did not happen within 10 s");
        round();
        std::thread::yield_now();
    }
}

#[test]
fn steady_state_vhost_user_forwarding_does_not_allocate() {
    // Network v (no subnet, so no gateway): vhost-user port 1 (VM1) sends
    // to VM2's MAC and, every eighth frame, broadcasts; port 2 (VM2) takes
    // them; port 3, an in-memory port never polled, takes the broadcasts'
    // copies. This thread is the worker: it polls both vhost-user ports
    // without waiting for kicks, while VM1 and VM2 run on their own threads,
    // posting frames and receive buffers and reaping used entries, as
    // guests would.
    let dir = TempDir::new("vhost");
    let (p1, p2) = (vhost_port(&dir.0, "vm1.sock", VM1_MAC), vhost_port(&dir.0, "vm2.sock", VM2_MAC));
    let mut vm1 = TestVm::connect(&dir.0.join("vm1.sock"), ALL_FEATURES, 1, QSIZE).unwrap();
    let mut vm2 = TestVm::connect(&dir.0.join("vm2.sock"), ALL_FEATURES, 1, QSIZE).unwrap();
    let sink = Arc::new(Repeat::new(VnetHdr::NONE, &seq_frame([0xff; 6], [2, 0, 0, 0, 1, 3], 0)));
    let spec = network_spec("v", None);
    let stats: [Arc<PortStats>; 3] = Default::default();
    let ports: [Arc<dyn Port>; 3] = [p1.clone(), p2.clone(), sink.clone()];
    let snap = build(Plan {
        epoch: 1,
        networks: vec![NetworkIn::new(NetId(1), &spec)],
        routers: vec![],
        ports: ports
            .iter()
            .zip(&stats)
            .enumerate()
            .map(|(i, (p, s))| PortIn {
                id: PortId(i as u16 + 1),
                network: "v",
                port: p.clone(),
                stats: s.clone(),
                worker: 0,
                impair: None,
                security: None,
                storm: None,
            })
            .collect(),
        neighbors: Default::default(),
        punt: Arc::new(PuntQueue::new()),
        uplink: None,
    });
    let (v1, v2) = (snap.port(PortId(1)).unwrap().clone(), snap.port(PortId(2)).unwrap().clone());
    let mut batch = Batch::new();
    let mut egress = Egress::new(0);
    let start = Instant::now();
    let mut round = || {
        let now = start.elapsed().as_secs() as u32;
        for v in [&v1, &v2] {
            burst(&mut Io { batch: &mut batch, egress: &mut egress, queue: 0 }, &snap, v, now);
        }
    };

    // Warm-up, one step at a time so that no frame can meet a ring the
    // port has not been handed yet (that only happens on the first kick):
    // VM2 posts its buffers and broadcasts (port 2 learns VM2's MAC), then
    // VM1 sends frame 0, which VM2 must get.
    settle("both frontends connected", &mut round, || p1.is_connected() && p2.is_connected());
    vm2.post_rx(0, QSIZE, 2048);
    vm2.send(0, &PLAIN, &seq_frame([0xff; 6], VM2_MAC, 0));
    settle("VM2's broadcast received", &mut round, || stats[1].rx_packets.load(Relaxed) == 1);
    vm1.send(0, &PLAIN, &vm1_frame(0));
    let mut first = Vec::new();
    settle("VM1's first frame delivered to VM2", &mut round, || {
        first.extend(vm2.recv(0, 0, Duration::ZERO));
        !first.is_empty()
    });
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, vm1_frame(0), "VM2 got VM1's frame 0 intact");
    vm2.post_rx(0, 1, 2048);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    // Frames VM1 has posted and VM2 has taken, frame 0 included.
    let sent = Arc::new(AtomicU64::new(1));
    let taken = Arc::new(AtomicU64::new(1));
    let vm1_thread = {
        let (stop, sent, taken) = (stop.clone(), sent.clone(), taken.clone());
        std::thread::spawn(move || {
            for seq in 1..=VM_FRAMES {
                while seq - taken.load(Acquire) >= IN_FLIGHT {
                    if stop.load(Acquire) {
                        return vm1;
                    }
                    std::thread::yield_now();
                }
                vm1.send(0, &PLAIN, &vm1_frame(seq));
                sent.store(seq + 1, Release);
            }
            // Stay connected until the data path is done: a disconnect resets the rings.
            while !stop.load(Acquire) {
                std::thread::yield_now();
            }
            vm1
        })
    };
    let vm2_thread = {
        let (stop, taken) = (stop.clone(), taken.clone());
        std::thread::spawn(move || {
            let mut next = 1u64;
            while !stop.load(Acquire) {
                let got = vm2.recv(0, 0, Duration::ZERO);
                if got.is_empty() {
                    std::thread::yield_now();
                    continue;
                }
                for (hdr, f) in &got {
                    assert_eq!(*hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "a plain header, one buffer");
                    assert_eq!(*f, vm1_frame(next), "VM2 gets VM1's frames intact and in order");
                    next += 1;
                }
                vm2.post_rx(0, got.len() as u16, 2048);
                taken.store(next, Release);
            }
            vm2
        })
    };

    // The data path: poll both ports until VM2 has taken every frame,
    // counting allocations once VM2 has taken VM_WARM of them.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut window = None;
    let mut rx_at_start = 0;
    let mut rounds = 0u64;
    let finished = loop {
        let t = taken.load(Acquire);
        if window.is_none() && t >= VM_WARM {
            rx_at_start = stats[0].rx_packets.load(Relaxed);
            window = Some(start_window());
        }
        if t == VM_FRAMES + 1 {
            break true;
        }
        round();
        rounds += 1;
        if rounds.is_multiple_of(1024)
            && (Instant::now() > deadline || vm1_thread.is_finished() || vm2_thread.is_finished())
        {
            break false;
        }
        std::thread::yield_now();
    };
    let (allocs, traces) = end_window();
    let measured = stats[0].rx_packets.load(Relaxed) - rx_at_start;
    drop(window);
    stop.store(true, Release);
    // A VM thread's panic (a frame lost, reordered or damaged) is the failure to report.
    let vm1 = vm1_thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let vm2 = vm2_thread.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let c = p2.counters();
    assert!(
        finished,
        "VM2 took {} of {} frames (VM1 posted {}) within the deadline; port 2 no_rx_buffers {}, port 1 rx {}",
        taken.load(Acquire),
        VM_FRAMES + 1,
        sent.load(Acquire),
        c.no_rx_buffers.load(Relaxed),
        stats[0].rx_packets.load(Relaxed),
    );
    eprintln!("vhost-user: {measured} frames in the measured window, {rounds} rounds");
    assert_eq!(allocs, 0, "allocations on the vhost-user per-frame path; the first ones:\n{traces}");
    assert!(measured >= 50_000, "only {measured} frames went through the measured window");
    // Every frame arrived (the VM2 thread checked each one), nothing was dropped.
    assert_eq!(stats[0].rx_packets.load(Relaxed), VM_FRAMES + 1);
    assert_eq!(stats[1].tx_packets.load(Relaxed), VM_FRAMES + 1);
    assert_eq!(c.no_rx_buffers.load(Relaxed), 0);
    // The broadcasts were flooded to port 3 too (and VM2's own warm-up broadcast).
    assert_eq!(sink.sent(), (VM_FRAMES + 1) / 8 + 1);
    drop((vm1, vm2));
}
