//! tapyard's fuzz harnesses: one function per parser that sees bytes from a
//! container, a VM or a client, each taking the fuzzer's bytes and driving
//! the real code with them. The same functions run under AFL++ (the
//! binaries in `targets/`, built with `cargo afl build --features afl`) and
//! in a plain `cargo test` (tests/regressions.rs replays every kept input
//! under `regressions/<target>/` and the seeds under `seeds/<target>/`).
//!
//! A harness panics only where the code under test broke a rule: a panic in
//! tapyard itself, or an oracle below (a reply that does not parse, a port
//! sent an offload it does not take, a recovery that cannot be reopened).
//! docs/RELIABILITY.md ("Fuzzing") says what each covers and how to run them.

#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tapyard_ipam::dhcp::{DhcpConfig, DhcpServer};
use tapyard_ipam::lease::Leases;
use tapyard_ipam::store::Store;
use tapyard_ipam::Ipv4Net;
use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn, RouterIn};
use tapyard_switch::control::gateway_mac;
use tapyard_switch::control::persist::{NetworkSpec, RouterSpec};
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::packet::{Batch, NetId, BATCH, HEADROOM};
use tapyard_switch::port::mem::MemPort;
use tapyard_switch::port::{Port, PortId, RecvState};
use tapyard_switch::punt::{PuntQueue, PuntReason, Punted, PUNT_FRAME};
use tapyard_switch::security::{Security, Storm};
use tapyard_switch::snapshot::Snapshot;
use tapyard_switch::wire::vnet::{Offloads, VnetHdr};
use tapyard_switch::wire::MacAddr;
use tapyard_switch::worker::{burst, Io};

/// Reads the fuzzer's bytes as a stream of small fields; past the end every
/// read gives zeros (or an empty slice), so any input is a valid program.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        let (b, rest) = self.data.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.data = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }

    /// A length-prefixed (u16) piece.
    pub fn piece(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ---------------------------------------------------------------------------
// A lab for the frame path and the gateway

/// Router r between n (10.1.0.0/24: port 1 with every offload, port 2
/// without) and m (10.2.0.0/24, MTU 1400: port 3 without offloads, port 4
/// with checksum offload only; the station 10.2.0.7 known), a static route
/// 10.9.0.0/16 via the unresolved 10.2.0.9; and l, a network without a
/// subnet (ports 5 with every offload, 6 without). Ports 2 and 4 have port
/// security (MAC 02:..:0i, address 10.1.0.2 and 10.2.0.4) and a storm
/// limit of 50 floods a second. Networks n, m, l have
/// ids 7, 3, 9. The tables are small (16 entries) so fuzzed sources fill them.
pub struct Lab {
    pub snap: Arc<Snapshot>,
    pub mems: Vec<Arc<MemPort>>,
    pub punt: Arc<PuntQueue>,
}

pub const PORTS: u16 = 6;
pub const NET_N: NetId = NetId(7);
pub const NET_M: NetId = NetId(3);
pub const NET_L: NetId = NetId(9);

impl Lab {
    pub fn new(punt: Arc<PuntQueue>) -> Lab {
        let offloads = [Offloads::ALL, Offloads::NONE, Offloads::NONE, Offloads(Offloads::CSUM), Offloads::ALL];
        let mut mems = vec![Arc::new(MemPort::new("unused"))];
        for (i, o) in offloads.iter().chain([Offloads::NONE].iter()).enumerate() {
            mems.push(Arc::new(MemPort::with_offloads(&format!("p{}", i + 1), *o)));
        }
        let n = NetworkSpec { fdb_capacity: 16, ..network_spec("n", Some("10.1.0.0/24")) };
        let m = NetworkSpec { fdb_capacity: 16, mtu: 1400, ..network_spec("m", Some("10.2.0.0/24")) };
        let l = NetworkSpec { fdb_capacity: 16, ..network_spec("l", None) };
        let r = RouterSpec {
            name: "r".into(),
            networks: vec!["n".into(), "m".into()],
            routes: vec![("10.9.0.0/16".parse().expect("prefix"), Ipv4Addr::new(10, 2, 0, 9))],
        };
        let net_of = |i: u16| match i {
            1 | 2 => "n",
            3 | 4 => "m",
            _ => "l",
        };
        let snap = build(Plan {
            epoch: 1,
            networks: vec![NetworkIn::new(NET_N, &n), NetworkIn::new(NET_M, &m), NetworkIn::new(NET_L, &l)],
            routers: vec![RouterIn { spec: &r, stats: Arc::default() }],
            ports: (1..=PORTS)
                .map(|i| PortIn {
                    id: PortId(i),
                    network: net_of(i),
                    port: mems[usize::from(i)].clone() as Arc<dyn Port>,
                    stats: Arc::default(),
                    worker: 0,
                    impair: None,
                    // Port security and storm control on ports 2 and 4.
                    security: (i % 2 == 0 && i < 5).then(|| Security {
                        mac: MacAddr([2, 0, 0, 0, 0, i as u8]),
                        ips: vec![Ipv4Addr::new(10, if i == 2 { 1 } else { 2 }, 0, i as u8)],
                    }),
                    storm: (i % 2 == 0 && i < 5).then(|| Storm { limit: 50, meter: Arc::default() }),
                })
                .collect(),
            neighbors: [("m".to_string(), [(Ipv4Addr::new(10, 2, 0, 7), MacAddr([2, 0, 0, 0, 2, 7]))].into())].into(),
            punt: punt.clone(),
            uplink: None,
        });
        Lab { snap: Arc::new(snap), mems, punt }
    }

    /// Runs bursts on every port until each is drained (bounded), as a worker would.
    /// A worker's batch and egress state are made once per thread (2 MiB of
    /// buffers), as a worker makes them once.
    pub fn run_all(&self, now: u32) {
        thread_local! {
            static WORKER: std::cell::RefCell<(Batch, Egress)> = std::cell::RefCell::new((Batch::new(), Egress::new(0)));
        }
        WORKER.with(|w| {
            let (batch, egress) = &mut *w.borrow_mut();
            for _ in 0..8 {
                let mut more = false;
                for id in 1..=PORTS {
                    let mut io = Io { batch: &mut *batch, egress: &mut *egress, queue: 0 };
                    let view = self.snap.port(PortId(id)).expect("lab port");
                    more |= burst(&mut io, &self.snap, view, now) == RecvState::More;
                }
                if !more {
                    break;
                }
            }
        });
    }
}

/// The punt queue of a thread's labs: allocated once (it preallocates
/// 512 buffers), drained after every run.
fn punt_queue() -> Arc<PuntQueue> {
    thread_local! {
        static PUNT: Arc<PuntQueue> = Arc::new(PuntQueue::new());
    }
    PUNT.with(|p| p.clone())
}

/// A virtio-net header from 10 bytes (flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset), as a TAP or a guest may hand it to us.
fn vnet_hdr(r: &mut Reader) -> VnetHdr {
    VnetHdr {
        flags: r.u8(),
        gso_type: r.u8(),
        hdr_len: r.u16(),
        gso_size: r.u16(),
        csum_start: r.u16(),
        csum_offset: r.u16(),
        num_buffers: 0,
    }
}

/// **The frame path**: frames (each: a selector byte choosing the ingress
/// port, whether a virtio-net header follows and whether the frame goes to
/// the gateway's MAC, the header, a u16 length
/// and the frame) received on the lab's ports, then bursts through classify,
/// L2 decisions and learning, routing, punting, and egress with offload
/// finishing per egress port. `MemPort` asserts that no port is ever sent an
/// offload it did not accept.
pub fn frame_path(data: &[u8]) {
    let punt = punt_queue();
    let lab = Lab::new(punt.clone());
    let mut r = Reader::new(data);
    let now = u32::from(r.u8());
    let mut n = 0;
    while !r.is_empty() && n < 3 * BATCH {
        let sel = r.u8();
        let port = usize::from((sel & 0x3f) % PORTS as u8) + 1;
        let hdr = if sel & 0x80 != 0 { vnet_hdr(&mut r) } else { VnetHdr::NONE };
        let mut frame = r.piece().to_vec();
        if sel & 0x40 != 0 && frame.len() >= 6 {
            // To the ingress network's gateway (its MAC is a hash the fuzzer cannot guess).
            frame[..6].copy_from_slice(&gateway_mac(["n", "m", "l"][(port - 1) / 2]).0);
        }
        lab.mems[port].inject_wire(hdr, &frame);
        n += 1;
    }
    lab.run_all(now);
    while let Some(p) = punt.pop() {
        assert!(p.len <= PUNT_FRAME);
        punt.recycle(p.buf);
    }
    for m in &lab.mems {
        drop(m.take_sent_wire());
    }
}

// ---------------------------------------------------------------------------
// DHCP

fn dhcp_config(server: Ipv4Addr, subnet: Ipv4Net) -> DhcpConfig {
    DhcpConfig {
        server,
        subnet,
        dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
        domain: Some("lab.test".into()),
        mtu: Some(1400),
        lease_secs: 3600,
        decline_secs: 600,
        per_mac_cap: 4,
    }
}

/// Checks a reply the DHCP server emitted: a whole BOOTREPLY with the
/// magic cookie, options well formed up to END with a message type
/// (RFC 2131 §3, RFC 2132 §2), its address in the subnet and not the
/// server's own. (Not smoltcp's `DhcpRepr::parse`: it refuses client
/// identifiers of 7 bytes whose type is not Ethernet, which RFC 2132 §9.14
/// allows and RFC 6842 has us echo.)
fn check_reply(subnet: Ipv4Net, server: Ipv4Addr, payload: &[u8]) {
    use smoltcp::wire::DhcpPacket;
    let p = DhcpPacket::new_checked(payload).expect("a reply is a whole DHCP packet");
    assert_eq!(payload[0], 2, "a reply is a BOOTREPLY");
    assert_eq!(p.magic_number(), 0x6382_5363, "a reply has the magic cookie");
    let mut opts = &payload[240..];
    let mut kind = false;
    loop {
        match opts.first().copied() {
            Some(255) => break,
            Some(0) => opts = &opts[1..],
            Some(code) => {
                let len = usize::from(*opts.get(1).expect("an option has a length"));
                assert!(opts.len() >= 2 + len, "option {code} runs past the packet");
                kind |= code == 53 && len == 1;
                opts = &opts[2 + len..];
            }
            None => panic!("the options do not end with END"),
        }
    }
    assert!(kind, "a reply has a message type");
    let y = p.your_ip();
    if !y.is_unspecified() {
        assert!(subnet.contains(&y), "offered {y} outside {subnet}");
        assert_ne!(y, server, "offered the server's own address");
    }
}

/// **The DHCP server**: a sequence of client messages (each: a time step
/// byte, then a u16-length-prefixed UDP payload) handled by one server of a
/// small subnet (10.0.0.0/28: 13 addresses to lease, so the pool runs out),
/// with a static reservation; every reply is parsed back and checked.
pub fn dhcp(data: &[u8]) {
    let subnet: Ipv4Net = "10.0.0.0/28".parse().expect("subnet");
    let server = Ipv4Addr::new(10, 0, 0, 1);
    let mut leases = Leases::new(subnet, subnet, [server]);
    let _ = leases.add_static([2, 0, 0, 0, 0, 0x11], Ipv4Addr::new(10, 0, 0, 5));
    let mut s = DhcpServer::new(dhcp_config(server, subnet), leases);
    let mut r = Reader::new(data);
    let mut now = 1_700_000_000u64;
    let mut n = 0;
    while !r.is_empty() && n < 64 {
        let step = r.u8();
        now += u64::from(step) * 60;
        if step == 0xff {
            s.leases.expire(now);
        }
        let h = s.handle(r.piece(), now);
        if let Some(reply) = &h.reply {
            check_reply(subnet, server, &reply.payload);
        }
        for rec in h.records {
            // What the journal would replay: applying a record twice is harmless.
            s.leases.apply(rec);
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------
// The gateway

/// A directory for a harness's files: under $TAPYARD_FUZZ_DIR, else
/// /dev/shm (tmpfs: no disk writes), else the temp dir; one per process,
/// emptied at first use. Directories of processes that are gone are removed.
pub fn scratch_dir(what: &str) -> PathBuf {
    let base = std::env::var_os("TAPYARD_FUZZ_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.join("tapyard-fuzz")
        } else {
            std::env::temp_dir().join("tapyard-fuzz")
        }
    });
    let _ = std::fs::create_dir_all(&base);
    // Remove what dead processes left (AFL restarts its target every few thousand runs).
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = base.join(format!("{what}{}-{}", SEQ.fetch_add(1, Ordering::Relaxed), std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// What the gateway needs of the control plane ([`tapyard_switch::control::gateway::Control`]),
/// over the lab: the punted frames of one run, then stop.
struct GatewayCtl {
    snap: Arc<Snapshot>,
    punted: Mutex<VecDeque<Punted>>,
    store: &'static Mutex<Store>,
    neighbors: Mutex<HashMap<(String, Ipv4Addr), MacAddr>>,
    polls: AtomicU32,
}

impl tapyard_switch::control::gateway::Control for GatewayCtl {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snap.clone()
    }

    fn stopping(&self) -> bool {
        // One turn of the responder loop.
        self.polls.fetch_add(1, Ordering::Relaxed) > 0
    }

    fn next_punted(&self) -> Option<Punted> {
        self.punted.lock().expect("lock").pop_front()
    }

    fn recycle(&self, _buf: Box<[u8]>) {}

    fn leases(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn learn_neighbor(&self, net: &str, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.neighbors.lock().expect("lock").insert((net.to_string(), ip), mac) != Some(mac)
    }

    fn republish(&self) {}

    fn lease_guarded(&self, leases: &[(&str, Option<[u8; 6]>)]) -> bool {
        // Some clients guarded, some not: both of the gateway's ways taken.
        leases.iter().any(|(_, mac)| mac.is_none_or(|m| m[5] & 1 == 0))
    }
}

/// Gives `store` the DHCP servers of the lab's networks n (10.1.0.0/24)
/// and m (10.2.0.0/28), replacing their leases by the store's records.
fn add_lab_networks(store: &mut Store) {
    for (net, subnet, gw) in [("n", "10.1.0.0/24", [10, 1, 0, 1]), ("m", "10.2.0.0/28", [10, 2, 0, 1])] {
        let subnet: Ipv4Net = subnet.parse().expect("subnet");
        let gw = Ipv4Addr::from(gw);
        store.add_network(net, dhcp_config(gw, subnet), subnet, [gw], []);
    }
}

/// The lease store of a thread's gateway runs, on a scratch directory.
fn gateway_store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(Store::open(&scratch_dir("gateway")).expect("a lease store")))
}

/// **The gateway** (ARP, ICMP echo and errors, DHCP, ARP resolution for
/// held packets): punted frames (each: a reason byte, the network, for
/// `Unresolved` the egress network and next hop, for `FragNeeded` the MTU,
/// then the u16-length-prefixed frame) given to one turn of the real
/// responder loop (`control::gateway::run`) over the lab; its replies go to
/// the lab's ports.
pub fn gateway(data: &[u8]) {
    let lab = Lab::new(punt_queue());
    let store = gateway_store();
    {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        // Fresh leases each run, as a daemon start would give them.
        add_lab_networks(&mut s);
    }
    let nets = [NET_N, NET_M, NET_L, NetId(42)];
    let mut r = Reader::new(data);
    let mut punted = VecDeque::new();
    while !r.is_empty() && punted.len() < 64 {
        let sel = r.u8();
        let network = nets[usize::from(sel >> 4) % nets.len()];
        let reason = match sel % 5 {
            0 => PuntReason::Local,
            1 => PuntReason::TtlExpired,
            2 => PuntReason::NoRoute,
            3 => {
                PuntReason::Unresolved { egress: nets[usize::from(r.u8()) % nets.len()], hop: Ipv4Addr::from(r.u32()) }
            }
            _ => PuntReason::FragNeeded { mtu: r.u16() },
        };
        let frame = r.piece();
        let len = frame.len().min(PUNT_FRAME);
        let mut buf = vec![0u8; PUNT_FRAME].into_boxed_slice();
        buf[..len].copy_from_slice(&frame[..len]);
        if sel & 0x04 != 0 && len >= 6 {
            // Sent to the network's gateway MAC, as punted unicast frames are.
            let name = lab.snap.network(network).map(|n| n.name.clone()).unwrap_or_default();
            buf[..6].copy_from_slice(&gateway_mac(&name).0);
        }
        punted.push_back(Punted { network, in_port: PortId(1 + u16::from(sel & 1)), reason, len, buf });
    }
    if punted.is_empty() {
        return; // the loop would sleep waiting for frames
    }
    let ctl = GatewayCtl {
        snap: lab.snap.clone(),
        punted: Mutex::new(punted),
        store,
        neighbors: Mutex::default(),
        polls: AtomicU32::new(0),
    };
    tapyard_switch::control::gateway::run(&ctl);
    for m in &lab.mems {
        for (_, f) in m.take_sent_wire() {
            assert!(f.len() >= 14, "the gateway sent a runt of {} bytes", f.len());
        }
    }
}

// ---------------------------------------------------------------------------
// vhost-user

/// Guest memory of the vhost harness: 16 KiB at 0 and 4 KiB at 0x20000
/// (a hole between them), refilled from the input on every run.
const GUEST_LO: u64 = 0x4000;
const GUEST_HI: (u64, u64) = (0x20000, 0x1000);

fn guest_memory() -> vm_memory::GuestMemoryMmap {
    use vm_memory::GuestAddress;
    vm_memory::GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), GUEST_LO as usize),
        (GuestAddress(GUEST_HI.0), GUEST_HI.1 as usize),
    ])
    .expect("anonymous guest memory")
}

/// A split virtqueue as a frontend would configure it: size from `size`,
/// rings at the addresses given (by the layout below unless the input
/// chooses its own, as a hostile frontend may).
fn virtqueue(
    mem: &vm_memory::GuestMemoryMmap,
    size: u16,
    rings: [u64; 3],
    event_idx: bool,
) -> Option<virtio_queue::Queue> {
    use virtio_queue::QueueT;
    let mut q = virtio_queue::Queue::new(1024).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(rings[0] as u32), Some((rings[0] >> 32) as u32));
    q.set_avail_ring_address(Some(rings[1] as u32), Some((rings[1] >> 32) as u32));
    q.set_used_ring_address(Some(rings[2] as u32), Some((rings[2] >> 32) as u32));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    // vhost-user-backend checks nothing more before the worker uses the ring.
    let _ = mem;
    Some(q)
}

/// **vhost-user descriptor chains**: guest memory filled from the input
/// (16 KiB and 4 KiB regions; descriptor table at 0, avail ring at 0x1000,
/// used ring at 0x1800, data after, unless the first bytes choose other ring addresses), a virtqueue
/// of a size and features the input picks; then receive bursts from the
/// guest's transmit ring and frames written into its receive ring, through
/// the port's own ring code (`port::vhost::rings`, the body of
/// `recv_batch`/`send_batch`).
pub fn vhost_chains(data: &[u8]) {
    use tapyard_switch::port::vhost::{feature, rings};
    use vm_memory::{Bytes, GuestAddress};
    thread_local! {
        static MEM: vm_memory::GuestMemoryMmap = guest_memory();
        static BIG: Vec<u8> = vec![0u8; HEADROOM + 65535];
        // 32 frame buffers, 2 MiB: allocated and zeroed once, not per run
        // (per run it was most of the target's time).
        static BATCH_BUF: std::cell::RefCell<Batch> = std::cell::RefCell::new(Batch::new());
    }
    let mut r = Reader::new(data);
    let size = 1u16 << (r.u8() % 9); // 1 ..= 256
    let flags = r.u8();
    let mut acked = 0u64;
    for (i, b) in [feature::F_VERSION_1, feature::NET_F_MRG_RXBUF, feature::RING_F_EVENT_IDX].into_iter().enumerate() {
        if flags & (1 << i) != 0 {
            acked |= feature::bit(b);
        }
    }
    let event_idx = acked & feature::bit(feature::RING_F_EVENT_IDX) != 0;
    let mut tx_rings = [0, 0x1000, 0x1800];
    if flags & 0x08 != 0 {
        for a in tx_rings.iter_mut() {
            *a = u64::from(r.u16()) | (u64::from(r.u8() & 3) << 16);
        }
    }
    let rx_sizes: Vec<u16> = (0..4).map(|_| r.u16()).collect();
    let image = r.rest();
    MEM.with(|mem| {
        let zero = [0u8; GUEST_LO as usize];
        mem.write_slice(&zero, GuestAddress(0)).expect("memory");
        mem.write_slice(&zero[..GUEST_HI.1 as usize], GuestAddress(GUEST_HI.0)).expect("memory");
        let n = image.len().min(GUEST_LO as usize);
        mem.write_slice(&image[..n], GuestAddress(0)).expect("memory");
        if image.len() > n {
            let m = (image.len() - n).min(GUEST_HI.1 as usize);
            mem.write_slice(&image[n..n + m], GuestAddress(GUEST_HI.0)).expect("memory");
        }
        // The guest's transmit ring: what recv_batch reads.
        if let Some(mut q) = virtqueue(mem, size, tx_rings, event_idx) {
            BATCH_BUF.with_borrow_mut(|batch| {
                for _ in 0..4 {
                    batch.clear();
                    let (frames, _) = rings::guest_tx(&mut q, mem, acked, batch);
                    assert!(frames <= BATCH);
                    for b in batch.iter() {
                        assert!(b.len() >= 14, "a frame shorter than an Ethernet header came through");
                    }
                }
            });
        }
        // The guest's receive ring, on the same rings (a hostile guest may share them).
        if let Some(mut q) = virtqueue(mem, size, tx_rings, event_idx) {
            BIG.with(|big| {
                let frames: Vec<&[u8]> = rx_sizes.iter().map(|&s| &big[..HEADROOM + usize::from(s)]).collect();
                let (sent, _) = rings::guest_rx(&mut q, mem, acked, &frames);
                assert!(sent.sent as usize + sent.queue_full as usize <= frames.len());
            });
        }
    });
}

/// **vhost-user protocol messages through the relay**: the input as the
/// byte stream a frontend sends (at most 32 KiB, so that it and the relay's
/// own replies fit the socket buffers and one thread suffices), relayed by
/// `port::vhost_relay::relay` to a backend socket until the frontend's end
/// of the stream. Covers the relay's framing, holding and replies; the
/// protocol handler behind it is rust-vmm's vhost-user-backend.
pub fn vhost_relay(data: &[u8]) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let data = &data[..data.len().min(32 * 1024)];
    let (mut frontend, fe) = UnixStream::pair().expect("socketpair");
    let (be, mut backend) = UnixStream::pair().expect("socketpair");
    frontend.write_all(data).expect("fits the socket buffer");
    frontend.shutdown(std::net::Shutdown::Write).expect("shutdown");
    tapyard_switch::port::vhost_relay::relay(fe, be);
    let mut out = Vec::new();
    let _ = backend.read_to_end(&mut out);
    assert!(out.len() <= data.len(), "the relay made up {} bytes for the backend", out.len() - data.len());
}

// ---------------------------------------------------------------------------
// Control requests, the lease journal, topology files

/// **Control protocol requests**: the input as a request line the control
/// server reads (UTF-8, up to the first newline), decoded as
/// `control::proto::Request`; a request that decodes must encode and decode
/// back to itself.
pub fn control_json(data: &[u8]) {
    use tapyard_switch::control::proto::Request;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let line = text.split_inclusive('\n').next().unwrap_or("");
    if let Ok(req) = serde_json::from_str::<Request>(line) {
        let again = serde_json::to_string(&req).expect("a request encodes");
        let back: Request = serde_json::from_str(&again).expect("an encoded request decodes");
        assert_eq!(back, req, "the request changed on a round trip through {again}");
    }
}

/// Every lease of `store`, in an order that does not depend on hash maps
/// (`Store::leases` sorts by network and address only).
fn leases_shown(store: &Store) -> Vec<String> {
    let mut v: Vec<String> = store.leases(None).iter().map(|l| format!("{l:?}")).collect();
    v.sort();
    v
}

/// **Lease journal recovery**: the input as the lease store's files after a
/// crash (a selector byte: bit 0, whether a snapshot file comes first, as a
/// u16-length-prefixed piece; bit 1, whether a background compaction's
/// `leases.journal.next` follows, likewise; the rest is the journal), opened as the
/// daemon opens them (`Store::open`, then each network's records replayed).
/// A recovery that succeeds must leave files that open again, with no torn
/// tail and the same records.
pub fn journal(data: &[u8]) {
    thread_local! {
        static DIR: PathBuf = scratch_dir("journal");
    }
    DIR.with(|dir| {
        let mut r = Reader::new(data);
        let sel = r.u8();
        let snapshot = if sel & 1 != 0 { r.piece() } else { &[] };
        // A background compaction's journal, as a crash leaves it.
        let next = if sel & 2 != 0 { Some(r.piece()) } else { None };
        let journal = r.rest();
        std::fs::write(dir.join("leases.snapshot"), snapshot).expect("write");
        std::fs::write(dir.join("leases.journal"), journal).expect("write");
        match next {
            Some(n) => std::fs::write(dir.join("leases.journal.next"), n).expect("write"),
            None => {
                let _ = std::fs::remove_file(dir.join("leases.journal.next"));
            }
        }
        let Ok(mut store) = Store::open(dir) else { return };
        add_lab_networks(&mut store);
        let before = leases_shown(&store);
        drop(store);
        let mut again = Store::open(dir).expect("a recovered journal opens again");
        assert_eq!(again.torn_bytes, 0, "the torn tail was cut at the first open");
        add_lab_networks(&mut again);
        assert_eq!(leases_shown(&again), before, "a second recovery gave other leases");
    });
}

/// **Topology files**: the input as a lab's TOML file, parsed and checked
/// (`cli::lab::topology::parse`), also under another lab name.
pub fn topology(data: &[u8]) {
    use tapyard_switch::cli::lab::topology;
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = topology::parse(text, "fuzz.toml", "fuzz", None) {
        let _ = topology::summary(&t);
        let _ = topology::parse(text, "fuzz.toml", "fuzz", Some("renamed"));
    }
}

/// A harness: the fuzzer's bytes in, a panic on a broken rule.
pub type Harness = fn(&[u8]);

/// Every target by name (the name of its binary and of its corpus directories).
pub const TARGETS: &[(&str, Harness)] = &[
    ("frame_path", frame_path),
    ("dhcp", dhcp),
    ("gateway", gateway),
    ("vhost_chains", vhost_chains),
    ("vhost_relay", vhost_relay),
    ("control_json", control_json),
    ("journal", journal),
    ("topology", topology),
];
