//! The forwarding pipeline end to end, without root: bursts run through
//! `worker::burst` (receive → classify → egress → send) over in-memory ports,
//! on snapshots built by `control::build` as the daemon builds them. Covers
//! switching, flooding, fair learning, offload finishing per egress, and
//! routing with every punt reason the gateway acts on.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tapyard_switch::control::build::RouterIn;
use tapyard_switch::control::gateway_mac;
use tapyard_switch::control::persist::RouterSpec;
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::packet::Batch;
use tapyard_switch::port::{PortId, RecvState};
use tapyard_switch::punt::PuntReason;
use tapyard_switch::snapshot::Snapshot;
use tapyard_switch::stats::RouterStats;
use tapyard_switch::worker::{burst, Io};

use std::sync::atomic::Ordering;
use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn};
use tapyard_switch::control::persist::NetworkSpec;
use tapyard_switch::packet::NetId;
use tapyard_switch::port::mem::MemPort;
use tapyard_switch::port::Port;
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::stats::{DropReason, PortStats};

/// A snapshot of networks without subnets (pure L2) with 64-entry tables,
/// and the given ports (id, network name).
fn l2_snapshot(nets: &[&str], ports: &[(u16, &str, Arc<dyn Port>)]) -> Snapshot {
    let specs: Vec<NetworkSpec> =
        nets.iter().map(|n| NetworkSpec { fdb_capacity: 64, ..network_spec(n, None) }).collect();
    build(Plan {
        epoch: 1,
        networks: specs.iter().enumerate().map(|(i, spec)| NetworkIn::new(NetId(i as u32 + 1), spec)).collect(),
        routers: vec![],
        ports: ports
            .iter()
            .map(|(id, net, port)| PortIn {
                id: PortId(*id),
                network: net,
                port: port.clone(),
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

const BCAST: [u8; 6] = [0xff; 6];

fn frame(dst: [u8; 6], src: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f.truncate(len);
    f
}

/// Two networks: ports 1, 2, 3 on "a", port 4 on "b".
fn setup() -> (Snapshot, Vec<Arc<MemPort>>) {
    let mems: Vec<Arc<MemPort>> = (0..=4).map(|i| Arc::new(MemPort::new(&format!("m{i}")))).collect();
    let ports: Vec<(u16, &str, Arc<dyn Port>)> =
        (1..=4u16).map(|i| (i, if i == 4 { "b" } else { "a" }, mems[i as usize].clone() as Arc<dyn Port>)).collect();
    (l2_snapshot(&["a", "b"], &ports), mems)
}

fn run(snap: &Snapshot, id: u16) -> RecvState {
    let mut batch = Batch::new();
    let mut egress = Egress::new(0);
    let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
    burst(&mut io, snap, snap.port(PortId(id)).unwrap(), 0)
}

fn stats(snap: &Snapshot, id: u16) -> &PortStats {
    &snap.port(PortId(id)).unwrap().stats
}

#[test]
fn broadcast_floods_its_network_only_and_unicast_follows_learning() {
    let (snap, m) = setup();
    m[1].inject(&frame(BCAST, 1, 60));
    assert_eq!(run(&snap, 1), RecvState::Drained);
    assert_eq!(m[1].take_sent().len(), 0, "never back out the ingress port");
    assert_eq!(m[2].take_sent().len(), 1);
    assert_eq!(m[3].take_sent().len(), 1);
    assert_eq!(m[4].take_sent().len(), 0, "networks are isolated");
    // Port 2 answers port 1: known unicast, one copy, to port 1 only.
    m[2].inject(&frame([2, 0, 0, 0, 0, 1], 2, 60));
    run(&snap, 2);
    assert_eq!(m[1].take_sent().len(), 1);
    assert_eq!(m[3].take_sent().len(), 0);
    assert_eq!(stats(&snap, 1).tx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(stats(&snap, 2).rx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(stats(&snap, 2).rx_bytes.load(Ordering::Relaxed), 60);
}

#[test]
fn a_port_flooding_made_up_macs_cannot_lock_its_neighbours_out() {
    let (snap, m) = setup();
    let net = snap.port(PortId(1)).unwrap().network.clone();
    // Port 1 sends from 200 made-up MACs; the table (64) fills with them.
    for i in 0..200u32 {
        let mut f = frame(BCAST, 0, 60);
        f[8..12].copy_from_slice(&i.to_be_bytes());
        f[6] = 0x02;
        m[1].inject(&f);
        if i % 32 == 31 {
            run(&snap, 1);
        }
    }
    run(&snap, 1);
    assert_eq!(net.fdb.table().len(), 64);
    assert!(stats(&snap, 1).learn_full.load(Ordering::Relaxed) > 0);
    // The control plane's per-second refresh of the gauges.
    for (p, n) in net.fdb.port_counts() {
        stats(&snap, p.0).fdb_entries.store(n, Ordering::Relaxed);
    }
    // Port 2, holding nothing, still gets its MAC learned: one of port 1's goes.
    m[2].inject(&frame(BCAST, 0x77, 60));
    run(&snap, 2);
    let t = net.fdb.table();
    assert_eq!(t.lookup(tapyard_switch::wire::MacAddr([2, 0, 0, 0, 0, 0x77])), Some(PortId(2)));
    assert_eq!(t.len(), 64);
    assert_eq!(stats(&snap, 1).learn_evicted.load(Ordering::Relaxed), 1);
    assert_eq!(stats(&snap, 2).learn_full.load(Ordering::Relaxed), 0);
    // Port 1, far over its share, never evicts anyone to learn more.
    let before = net.fdb.port_counts()[&PortId(1)];
    m[1].inject(&frame(BCAST, 0x99, 60));
    run(&snap, 1);
    assert_eq!(net.fdb.port_counts()[&PortId(1)], before);
}

#[test]
fn an_entry_pointing_into_another_network_is_not_followed() {
    let (snap, m) = setup();
    // A MAC learned on port 4 (network b) must not pull a frame of network a across.
    snap.port(PortId(1)).unwrap().network.fdb.table().learn(
        tapyard_switch::wire::MacAddr([2, 0, 0, 0, 0, 9]),
        PortId(4),
        0,
    );
    m[1].inject(&frame([2, 0, 0, 0, 0, 9], 1, 60));
    run(&snap, 1);
    assert_eq!(m[4].take_sent().len(), 0);
    assert_eq!(m[2].take_sent().len(), 1, "flooded within its own network instead");
}

#[test]
fn bursts_are_bounded_and_drops_are_counted_by_reason() {
    let (snap, m) = setup();
    for _ in 0..(tapyard_switch::packet::BATCH + 5) {
        m[1].inject(&frame(BCAST, 1, 60));
    }
    assert_eq!(run(&snap, 1), RecvState::More, "a full burst leaves the rest for the next turn");
    assert_eq!(run(&snap, 1), RecvState::Drained);
    m[1].inject(&frame(BCAST, 1, 10));
    m[1].inject(&frame(BCAST, 1, 2000));
    m[1].inject(&frame(BCAST, 0xff, 60)); // src 02:..:ff is fine
    let mut mc = frame(BCAST, 1, 60);
    mc[6] = 0x01; // group source address
    m[1].inject(&mc);
    m[3].set_down(true);
    run(&snap, 1);
    let s = stats(&snap, 1);
    assert_eq!(s.drops(DropReason::Runt), 1);
    assert_eq!(s.drops(DropReason::Oversize), 1);
    assert_eq!(s.drops(DropReason::BadSrcMac), 1);
    // Port 3 was down for the one good frame of the last burst.
    assert_eq!(stats(&snap, 3).drops(DropReason::LinkDown), 1);
    assert_eq!(stats(&snap, 2).tx_packets.load(Ordering::Relaxed), tapyard_switch::packet::BATCH as u64 + 5 + 1);
}

/// A TCP super-frame from port 1: to a port with TSO it goes as it is (one
/// write); to a port without offloads it is segmented, each segment complete.
#[test]
fn super_frames_pass_through_or_are_segmented_per_egress() {
    use tapyard_switch::wire::vnet::{Offloads, VnetHdr};
    let mems = [
        Arc::new(MemPort::with_offloads("tso-in", Offloads::ALL)),
        Arc::new(MemPort::with_offloads("tso-out", Offloads::ALL)),
        Arc::new(MemPort::new("plain-out")),
    ];
    let ports: Vec<(u16, &str, Arc<dyn Port>)> =
        mems.iter().enumerate().map(|(i, m)| (i as u16 + 1, "n", m.clone() as Arc<dyn Port>)).collect();
    let snap = l2_snapshot(&["n"], &ports);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1000, 2000, 7, 65535)
        .ack(1)
        .psh()
        .write(&mut frame, &payload)
        .unwrap();
    let hdr = VnetHdr::tcp4_gso(1448);
    mems[0].inject_wire(hdr, &frame);
    run(&snap, 1);
    let passed = mems[1].take_sent_wire();
    assert_eq!(passed, vec![(hdr, frame.clone())], "unchanged, one write, header kept");
    let segs = mems[2].take_sent_wire();
    assert_eq!(segs.len(), 3, "4000 bytes in 1448-byte segments");
    let mut joined = Vec::new();
    for (i, (h, f)) in segs.iter().enumerate() {
        assert!(h.is_plain());
        let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
        let Some(etherparse::TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not TCP") };
        let want = tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap();
        assert_eq!(tcp.checksum(), want, "segment {i} checksum");
        assert_eq!(tcp.sequence_number(), 7 + 1448 * i as u32);
        assert_eq!(tcp.psh(), i == 2, "PSH only on the last segment");
        joined.extend_from_slice(tcp.payload());
    }
    assert_eq!(joined, payload);
    // Counted once as received, and per segment on the plain egress.
    assert_eq!(stats(&snap, 1).rx_packets.load(Ordering::Relaxed), 1);
    assert_eq!(stats(&snap, 3).tx_packets.load(Ordering::Relaxed), 3);
    // A super-frame whose segments would not fit the network's MTU is dropped.
    let big = VnetHdr { gso_size: 3000, ..hdr };
    mems[0].inject_wire(big, &frame);
    run(&snap, 1);
    assert!(mems[1].take_sent().is_empty() && mems[2].take_sent().is_empty());
    assert_eq!(stats(&snap, 1).drops(DropReason::Oversize), 1);
    // A header that cannot be finished (GSO on a non-IP frame) is dropped and counted.
    let mut junk = frame.clone();
    junk[12..14].copy_from_slice(&[0x88, 0xb5]);
    mems[0].inject_wire(hdr, &junk);
    run(&snap, 1);
    assert_eq!(stats(&snap, 1).drops(DropReason::BadOffload), 1);
}

// ---------------------------------------------------------------------------
// Routing and punting

const HOST1: [u8; 6] = [2, 0, 0, 0, 1, 5];
const HOST3: [u8; 6] = [2, 0, 0, 0, 2, 7];

/// Router r between n (10.1.0.0/24: ports 1 and 2) and m (10.2.0.0/24, MTU
/// 1400: port 3, the station 10.2.0.7 known as a neighbour), with a static
/// route 10.9.0.0/16 via 10.2.0.9 (a next hop nobody has resolved yet).
struct Routed {
    snap: Snapshot,
    mems: Vec<Arc<MemPort>>,
    punt: Arc<PuntQueue>,
    router: Arc<RouterStats>,
}

fn routed_lab() -> Routed {
    let mems: Vec<Arc<MemPort>> = (0..=3).map(|i| Arc::new(MemPort::new(&format!("r{i}")))).collect();
    let n = NetworkSpec { fdb_capacity: 64, ..network_spec("n", Some("10.1.0.0/24")) };
    let m = NetworkSpec { fdb_capacity: 64, mtu: 1400, ..network_spec("m", Some("10.2.0.0/24")) };
    let r = RouterSpec {
        name: "r".into(),
        networks: vec!["n".into(), "m".into()],
        routes: vec![("10.9.0.0/16".parse().unwrap(), "10.2.0.9".parse().unwrap())],
    };
    let router: Arc<RouterStats> = Arc::default();
    let punt = Arc::new(PuntQueue::new());
    let net = |id, spec| NetworkIn::new(NetId(id), spec);
    let snap = build(Plan {
        epoch: 1,
        // Ids out of name order: routing follows ids, not positions.
        networks: vec![net(7, &n), net(3, &m)],
        routers: vec![RouterIn { spec: &r, stats: router.clone() }],
        ports: (1..=3u16)
            .map(|i| PortIn {
                id: PortId(i),
                network: if i == 3 { "m" } else { "n" },
                port: mems[i as usize].clone() as Arc<dyn Port>,
                stats: Arc::default(),
                worker: 0,
                impair: None,
                security: None,
                storm: None,
            })
            .collect(),
        neighbors: [("m".to_string(), [(Ipv4Addr::new(10, 2, 0, 7), tapyard_switch::wire::MacAddr(HOST3))].into())]
            .into(),
        punt: punt.clone(),
        uplink: None,
    });
    Routed { snap, mems, punt, router }
}

/// A UDP packet from host 10.1.0.5 (port 1) to `dst` through n's gateway,
/// `len` bytes of payload, with TTL `ttl` and DF as given.
fn to_router(dst: [u8; 4], ttl: u8, len: usize, df: bool) -> Vec<u8> {
    let mut f = Vec::new();
    let mut ip = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, [10, 1, 0, 5], dst).unwrap();
    ip.dont_fragment = df;
    etherparse::PacketBuilder::ethernet2(HOST1, gateway_mac("n").0)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .udp(40000, 7)
        .write(&mut f, &vec![0xab; len])
        .unwrap();
    f
}

fn run_routed(lab: &Routed, id: u16) {
    let mut batch = Batch::new();
    let mut egress = Egress::new(0);
    let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
    burst(&mut io, &lab.snap, lab.snap.port(PortId(id)).unwrap(), 0);
}

#[test]
fn routed_packets_are_rewritten_once_and_counted() {
    let lab = routed_lab();
    let f = to_router([10, 2, 0, 7], 64, 100, true);
    lab.mems[1].inject(&f);
    run_routed(&lab, 1);
    let out = lab.mems[3].take_sent();
    assert_eq!(out.len(), 1, "routed to the one port of m");
    let p = etherparse::SlicedPacket::from_ethernet(&out[0]).unwrap();
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else { panic!("not Ethernet") };
    assert_eq!(eth.destination(), HOST3, "to the neighbour's MAC");
    assert_eq!(eth.source(), gateway_mac("m").0, "from m's gateway");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    assert_eq!(ip.header().ttl(), 63);
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "checksum updated");
    assert_eq!(&out[0][34..], &f[34..], "the payload is untouched");
    assert!(lab.mems[2].take_sent().is_empty(), "nothing switched on n");
    assert!(lab.punt.pop().is_none(), "nothing for the gateway");
    assert_eq!(lab.router.routed.load(Ordering::Relaxed), 1);
    let n = lab.snap.network_named("n").unwrap();
    assert_eq!(n.route_stats.routed.load(Ordering::Relaxed), 1, "counted for the ingress network too");
}

#[test]
fn what_the_router_cannot_forward_is_punted_with_its_reason() {
    let lab = routed_lab();
    let m = lab.snap.network_named("m").unwrap().id;
    let n = lab.snap.network_named("n").unwrap().id;
    let cases: Vec<(Vec<u8>, PuntReason)> = vec![
        (to_router([10, 5, 0, 1], 64, 10, true), PuntReason::NoRoute),
        (to_router([10, 2, 0, 7], 1, 10, true), PuntReason::TtlExpired),
        (to_router([10, 2, 0, 8], 64, 10, true), PuntReason::Unresolved { egress: m, hop: Ipv4Addr::new(10, 2, 0, 8) }),
        (to_router([10, 9, 1, 1], 64, 10, true), PuntReason::Unresolved { egress: m, hop: Ipv4Addr::new(10, 2, 0, 9) }),
        // 1400 bytes of IP is m's MTU; one more with DF set is too big.
        (to_router([10, 2, 0, 7], 64, 1400 - 28 + 1, true), PuntReason::FragNeeded { mtu: 1400 }),
        // To the gateway's own address, and to the router's address on m: the gateway's.
        (to_router([10, 1, 0, 1], 64, 10, true), PuntReason::Local),
        (to_router([10, 2, 0, 1], 64, 10, true), PuntReason::Local),
    ];
    for (f, _) in &cases {
        lab.mems[1].inject(f);
    }
    // Too big without DF: dropped and counted, not punted.
    lab.mems[1].inject(&to_router([10, 2, 0, 7], 64, 1400 - 28 + 1, false));
    // A VLAN-tagged frame to the gateway never reaches L3.
    let mut tagged = to_router([10, 2, 0, 7], 64, 10, true);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    lab.mems[1].inject(&tagged);
    run_routed(&lab, 1);
    for (i, (f, want)) in cases.iter().enumerate() {
        let p = lab.punt.pop().unwrap_or_else(|| panic!("case {i} was not punted"));
        assert_eq!((p.network, p.in_port, p.reason), (n, PortId(1), *want), "case {i}");
        assert_eq!(p.frame(), &f[..], "case {i}: punted as it came, not rewritten");
    }
    assert!(lab.punt.pop().is_none());
    assert!(lab.mems[3].take_sent().is_empty() && lab.mems[2].take_sent().is_empty(), "nothing forwarded");
    let r = &lab.router;
    let got = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            got(&r.routed),
            got(&r.no_route),
            got(&r.ttl_expired),
            got(&r.unresolved),
            got(&r.frag_needed),
            got(&r.too_big)
        ),
        (0, 1, 1, 2, 1, 1)
    );
    let s = &lab.snap.port(PortId(1)).unwrap().stats;
    assert_eq!(s.drops(DropReason::TooBig), 1);
    assert_eq!(s.drops(DropReason::VlanTagged), 1);
}

#[test]
fn broadcasts_the_gateway_answers_are_flooded_and_copied_to_it() {
    let lab = routed_lab();
    // ARP request from 10.1.0.5 for the gateway 10.1.0.1.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&HOST1);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    arp.extend_from_slice(&HOST1);
    arp.extend_from_slice(&[10, 1, 0, 5, 0, 0, 0, 0, 0, 0, 10, 1, 0, 1]);
    arp.resize(60, 0);
    lab.mems[1].inject(&arp);
    // And one for another station: flooded only.
    let mut other = arp.clone();
    other[41] = 9;
    lab.mems[1].inject(&other);
    run_routed(&lab, 1);
    assert_eq!(lab.mems[2].take_sent().len(), 2, "both flooded on n");
    assert!(lab.mems[3].take_sent().is_empty(), "never across the router");
    let p = lab.punt.pop().expect("the request for the gateway reached it");
    assert_eq!((p.reason, p.frame()), (PuntReason::Local, &arp[..]));
    assert!(lab.punt.pop().is_none());
}

/// Network "a" with a subnet and ports 1..=3, each with port security (MAC
/// 02:..:0i, address 10.0.0.i) and a storm limit of `storm` floods a second.
fn guarded(storm: u32) -> (Snapshot, Vec<Arc<MemPort>>) {
    use tapyard_switch::security::{Security, Storm};
    use tapyard_switch::wire::MacAddr;
    let spec = NetworkSpec { fdb_capacity: 64, ..network_spec("a", Some("10.0.0.0/24")) };
    let mems: Vec<Arc<MemPort>> = (0..=3).map(|i| Arc::new(MemPort::new(&format!("g{i}")))).collect();
    let snap = build(Plan {
        epoch: 1,
        networks: vec![NetworkIn::new(NetId(1), &spec)],
        routers: vec![],
        ports: (1..=3u8)
            .map(|i| PortIn {
                id: PortId(u16::from(i)),
                network: "a",
                port: mems[usize::from(i)].clone(),
                stats: Arc::default(),
                worker: 0,
                impair: None,
                security: Some(Security { mac: MacAddr([2, 0, 0, 0, 0, i]), ips: vec![Ipv4Addr::new(10, 0, 0, i)] }),
                storm: Some(Storm { limit: storm, meter: Arc::default() }),
            })
            .collect(),
        neighbors: Default::default(),
        punt: Arc::new(PuntQueue::new()),
        uplink: None,
    });
    (snap, mems)
}

/// A UDP frame from MAC 02:..:`src`, IPv4 `ip`, to `dst`.
fn udp_from(dst: [u8; 6], src: u8, ip: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], dst)
        .ipv4(ip, [10, 0, 0, 255], 64)
        .udp(sport, dport)
        .write(&mut f, &[0u8; 32])
        .unwrap();
    f
}

fn drops(snap: &Snapshot, id: u16, r: DropReason) -> u64 {
    stats(snap, id).drops(r)
}

#[test]
fn port_security_drops_spoofed_sources_before_they_are_learned() {
    let (snap, m) = guarded(1000);
    let table = || snap.port(PortId(1)).unwrap().network.fdb.table();
    // Port 1 sends as itself: flooded to 2 and 3, learned.
    m[1].inject(&udp_from(BCAST, 1, [10, 0, 0, 1], 5000, 53));
    // Port 1 claims port 2's MAC, then port 2's address, then serves DHCP.
    m[1].inject(&udp_from(BCAST, 2, [10, 0, 0, 1], 5000, 53));
    m[1].inject(&udp_from(BCAST, 1, [10, 0, 0, 2], 5000, 53));
    m[1].inject(&udp_from(BCAST, 1, [10, 0, 0, 1], 67, 68));
    run(&snap, 1);
    assert_eq!(m[2].take_sent().len(), 1, "only the honest frame is flooded");
    assert_eq!(m[3].take_sent().len(), 1);
    assert_eq!(drops(&snap, 1, DropReason::SpoofedMac), 1);
    assert_eq!(drops(&snap, 1, DropReason::SpoofedIp), 1);
    assert_eq!(drops(&snap, 1, DropReason::RogueDhcp), 1);
    // The spoofed MAC taught the table nothing: port 2's MAC is unknown, not on port 1.
    assert_eq!(table().lookup(tapyard_switch::wire::MacAddr([2, 0, 0, 0, 0, 2])), None);
    assert_eq!(table().lookup(tapyard_switch::wire::MacAddr([2, 0, 0, 0, 0, 1])), Some(PortId(1)));
}

#[test]
fn storm_control_limits_floods_per_second_and_spares_unicast() {
    let (snap, m) = guarded(40);
    let burst_at = |id: u16, now: u32| {
        let mut batch = Batch::new();
        let mut egress = Egress::new(0);
        let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
        burst(&mut io, &snap, snap.port(PortId(id)).unwrap(), now)
    };
    // Port 2 makes itself known, so unicast to it is not flooded.
    m[2].inject(&udp_from(BCAST, 2, [10, 0, 0, 2], 5000, 53));
    burst_at(2, 0);
    m[1].take_sent();
    m[3].take_sent();
    // Port 1: 100 broadcasts in second 7 (three bursts), then 100 unicasts to port 2.
    for _ in 0..100 {
        m[1].inject(&udp_from(BCAST, 1, [10, 0, 0, 1], 5000, 53));
    }
    while burst_at(1, 7) == RecvState::More {}
    assert_eq!(m[3].take_sent().len(), 40, "the limit floods, the rest is dropped");
    assert_eq!(drops(&snap, 1, DropReason::Storm), 60);
    m[2].take_sent();
    for _ in 0..100 {
        m[1].inject(&udp_from([2, 0, 0, 0, 0, 2], 1, [10, 0, 0, 1], 5000, 53));
    }
    while burst_at(1, 7) == RecvState::More {}
    assert_eq!(m[2].take_sent().len(), 100, "known unicast is never storm-limited");
    // The next second opens a new window.
    m[1].inject(&udp_from(BCAST, 1, [10, 0, 0, 1], 5000, 53));
    burst_at(1, 8);
    assert_eq!(m[3].take_sent().len(), 1);
}
