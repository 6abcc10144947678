//! The gateway responder: one thread that answers, for every network with a
//! subnet, ARP for the gateway address and ICMP echo to it (through a
//! smoltcp `Interface` per network) and DHCP (through `tapyard_ipam`'s
//! server). It runs off the per-frame path: workers hand it frames through
//! the bounded punt queue, and it writes its replies to the ports as if they
//! came from a port of the network (unicast by the forwarding table, else
//! flooded).
//!
//! Durability: the DHCP records of a whole batch of punted frames are made
//! durable with one journal commit (one fsync), and only then are the ACKs of
//! that batch sent (RFC 2131 leaves persistence to the server; we promise an
//! ACK never outlives a crash).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use tapyard_ipam::dhcp::{Destination, Reply};

use super::{unix_now, Daemon};
use crate::datapath::route::{route_frame, Routed};
use crate::snapshot::NetworkView;

const BATCH: usize = 64;

/// A smoltcp device backed by queues: frames in from the punt queue, frames
/// out to the ports.
#[derive(Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.push(buf);
        r
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// The smoltcp side of one network's gateway.
struct NetGateway {
    mac: [u8; 6],
    ip: [u8; 4],
    /// The router's other gateway addresses, answered here too (as /32s).
    others: Vec<[u8; 4]>,
    iface: Interface,
    dev: QueueDevice,
}

impl NetGateway {
    fn new(mac: [u8; 6], ip: [u8; 4], prefix: u8, others: Vec<[u8; 4]>) -> NetGateway {
        let mut dev = QueueDevice::default();
        let cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(cfg, &mut dev, SmolInstant::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Addr::from(ip)), prefix));
            // At most 8 addresses per interface (smoltcp's iface-max-addr-count-8).
            for o in &others {
                let _ = a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Addr::from(*o)), 32));
            }
        });
        NetGateway { mac, ip, others, iface, dev }
    }
}

/// What a punted frame is, for the gateway.
enum Kind<'a> {
    Dhcp(&'a [u8]),
    /// IPv4/UDP to port 67 whose headers do not check out.
    BadDhcp,
    /// ARP that is truncated or not Ethernet/IPv4 (hardware length 6, protocol length 4).
    BadArp,
    Other,
}

fn classify(frame: &[u8]) -> Kind<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Kind::Other };
    if eth.ethertype() == EthernetProtocol::Arp {
        // RFC 826 over Ethernet: hardware type 1, lengths 6 and 4.
        return match ArpPacket::new_checked(&frame[14..]) {
            Ok(a) if a.hardware_len() == 6 && a.protocol_len() == 4 => Kind::Other,
            _ => Kind::BadArp,
        };
    }
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Kind::Other;
    }
    let payload = &frame[14..];
    let Ok(ip) = Ipv4Packet::new_checked(payload) else { return Kind::Other };
    if ip.next_header() != IpProtocol::Udp {
        return Kind::Other;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len()).min(payload.len());
    let Ok(udp) = UdpPacket::new_checked(&payload[hl.min(total)..total]) else { return Kind::BadDhcp };
    if udp.dst_port() != 67 {
        return Kind::Other;
    }
    if !ip.verify_checksum() || ip.more_frags() || ip.frag_offset() != 0 {
        return Kind::BadDhcp;
    }
    // A UDP checksum of 0 means "none" in IPv4 (RFC 768), and is accepted.
    if udp.checksum() != 0 && !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
        return Kind::BadDhcp;
    }
    let len = usize::from(udp.len()).saturating_sub(8);
    let data = &payload[hl.min(total)..total];
    match data.get(8..8 + len) {
        Some(p) => Kind::Dhcp(p),
        None => Kind::BadDhcp,
    }
}

/// Builds the Ethernet/IPv4/UDP frame of a DHCP reply, addressed per RFC 2131 §4.1.
fn dhcp_frame(gw_mac: [u8; 6], gw_ip: [u8; 4], r: &Reply) -> Vec<u8> {
    let (dst_mac, dst_ip, dst_port) = match r.dst {
        Destination::Broadcast => ([0xff; 6], Ipv4Addr::BROADCAST, 68),
        Destination::Unicast { mac, ip } => (mac, ip, 68),
        // The relay's MAC is not known here: broadcast at L2, unicast at L3.
        Destination::Relay(ip) => ([0xff; 6], ip, 67),
    };
    let src_ip = Ipv4Addr::from(gw_ip);
    let udp = UdpRepr { src_port: 67, dst_port };
    let ip = Ipv4Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: 8 + r.payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(gw_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; 14 + 20 + 8 + r.payload.len()];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[14..34]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut buf[34..]),
        &IpAddress::Ipv4(src_ip),
        &IpAddress::Ipv4(dst_ip),
        r.payload.len(),
        |p| p.copy_from_slice(&r.payload),
        &caps,
    );
    buf
}

/// Sends a frame from the gateway into its network: to the learned port of
/// the destination MAC, else to every port of the network.
fn send(d: &Daemon, net: &NetworkView, frame: &[u8]) {
    let snap = d.snapshot.load();
    let dst = crate::wire::MacAddr(frame[..6].try_into().expect("an Ethernet frame"));
    let one = (!dst.is_multicast())
        .then(|| net.fdb.table().lookup(dst))
        .flatten()
        .and_then(|p| snap.port(p))
        .filter(|v| v.network.name == net.name);
    // Ports take every frame behind a vnet header; the gateway's are plain
    // (all-zero header), so any port takes them as they are. Written to
    // queue 0, beside worker 0: a TAP write is one atomic syscall.
    let mut wire = vec![0u8; crate::wire::vnet::VNET_HDR_LEN + frame.len()];
    wire[crate::wire::vnet::VNET_HDR_LEN..].copy_from_slice(frame);
    let out = |v: &crate::snapshot::PortView| {
        let r = v.port.send_batch(0, &[&wire]);
        v.stats.tx_packets.fetch_add(r.sent, Ordering::Relaxed);
        v.stats.tx_bytes.fetch_add(r.bytes, Ordering::Relaxed);
    };
    match one {
        Some(v) => out(v),
        None => snap.ports.iter().flatten().filter(|v| v.network.name == net.name).for_each(|v| out(v)),
    }
}

/// The responder loop; returns when the daemon stops.
pub fn run(d: &Daemon) {
    let mut gws: HashMap<String, NetGateway> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_exhausted_log: HashMap<String, Instant> = HashMap::new();
    let mut icmp_budget: HashMap<String, (Instant, u32)> = HashMap::new();
    let mut arp = ArpResolver::default();
    while !d.stop.load(Ordering::Relaxed) {
        while batch.len() < BATCH {
            match d.punt.pop() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() {
            std::thread::park_timeout(Duration::from_millis(250));
            arp.flush(d, &mut icmp_budget);
            continue;
        }
        let now = unix_now();
        let mut replies = Vec::new();
        let mut icmp_out = Vec::new();
        let mut republish = false;
        let mut counts: Vec<(String, &'static str)> = Vec::new();
        {
            let mut store = d.ipam();
            for p in batch.iter() {
                let net = &p.network;
                let Some(gw) = &net.gateway else { continue };
                match classify(p.frame()) {
                    Kind::Dhcp(payload) => {
                        let Some(h) = store.handle(&net.name, payload, now) else { continue };
                        if let Some(why) = h.dropped {
                            counts.push((net.name.clone(), why.name()));
                            if why == tapyard_ipam::dhcp::DhcpDrop::Exhausted {
                                let due = last_exhausted_log
                                    .get(&net.name)
                                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                                if due {
                                    tracing::warn!(network = %net.name, "DHCP pool exhausted: no address to offer");
                                    last_exhausted_log.insert(net.name.clone(), Instant::now());
                                }
                            }
                        }
                        // A lease bound on a routed network is a new neighbour (offers are not).
                        if net.router.is_some() && !h.records.is_empty() {
                            republish = true;
                        }
                        if let Some(r) = h.reply {
                            counts.push((net.name.clone(), dhcp_name(r.kind)));
                            replies.push((net.clone(), dhcp_frame(gw.mac, gw.ip, &r)));
                        }
                    }
                    Kind::Other if is_routed_error(net, p.frame(), gw.mac, gw.ip) => {
                        // An unknown next hop: ARP for it and hold the packet a moment.
                        if arp.hold(d, net, gw.ip, p.frame()) {
                            counts.push((net.name.clone(), "arp_resolving"));
                        } else if let Some(f) = icmp_for(d, net, gw.mac, gw.ip, p.frame(), &mut icmp_budget) {
                            counts.push((net.name.clone(), "icmp_error_sent"));
                            icmp_out.push((net.clone(), f));
                        }
                    }
                    Kind::BadDhcp => counts.push((net.name.clone(), "dhcp_malformed")),
                    Kind::BadArp => counts.push((net.name.clone(), "arp_malformed")),
                    Kind::Other => {
                        if arp.snoop(d, net, p.frame()) {
                            republish = true;
                        }
                        let others: Vec<[u8; 4]> = net
                            .router
                            .as_ref()
                            .map(|r| r.gateway_ips.iter().copied().filter(|i| *i != gw.ip).collect())
                            .unwrap_or_default();
                        let g = gws
                            .entry(net.name.clone())
                            .or_insert_with(|| NetGateway::new(gw.mac, gw.ip, gw.prefix, others.clone()));
                        if g.mac != gw.mac || g.ip != gw.ip || g.others != others {
                            *g = NetGateway::new(gw.mac, gw.ip, gw.prefix, others);
                        }
                        g.dev.rx.push_back(p.frame().to_vec());
                    }
                }
            }
            // One fsync for the whole batch; no ACK leaves before it.
            if let Err(e) = store.commit() {
                tracing::error!(error = %e, "cannot make leases durable; withholding this batch's DHCP replies");
                replies.clear();
                counts.push(("*".into(), "journal_error"));
            }
        }
        for (net, frame) in replies.iter().chain(icmp_out.iter()) {
            send(d, net, frame);
        }
        // A bound lease or a station learned from ARP is a new neighbour to route to: publish it.
        if republish {
            d.republish();
        }
        arp.flush(d, &mut icmp_budget);
        // ARP and ICMP through smoltcp.
        let nets: HashMap<String, std::sync::Arc<NetworkView>> =
            batch.iter().map(|p| (p.network.name.clone(), p.network.clone())).collect();
        for (name, g) in gws.iter_mut() {
            if g.dev.rx.is_empty() {
                continue;
            }
            let mut sockets = SocketSet::new(vec![]);
            g.iface.poll(SmolInstant::now(), &mut g.dev, &mut sockets);
            if let Some(net) = nets.get(name) {
                for f in g.dev.tx.drain(..) {
                    counts.push((name.clone(), "arp_icmp_sent"));
                    send(d, net, &f);
                }
            }
            g.dev.tx.clear();
        }
        if !counts.is_empty() {
            let mut st = d.gw_stats.lock().unwrap_or_else(|e| e.into_inner());
            for (n, what) in counts {
                *st.entry(n).or_default().entry(what.to_string()).or_insert(0) += 1;
            }
        }
        for p in batch.drain(..) {
            d.punt.recycle(p.buf);
        }
    }
}

/// Packets held for a next hop being resolved, at most.
const ARP_HOLD_MAX: usize = 64;
/// How long a next hop may take to answer ARP before Host Unreachable.
const ARP_TIMEOUT: Duration = Duration::from_secs(3);

struct Held {
    ingress: std::sync::Arc<NetworkView>,
    egress: u16,
    hop: u32,
    frame: Vec<u8>,
    deadline: Instant,
}

/// Neighbour resolution for routed packets whose next hop is not known:
/// the egress gateway ARPs for it while a small bounded queue holds the
/// packets; the answer (seen by `snoop`) releases them, a timeout turns them
/// into Host Unreachable. What ARP teaches is kept in the daemon's
/// `arp_learned` and published to the workers.
#[derive(Default)]
struct ArpResolver {
    held: Vec<Held>,
    /// Last ARP request per (egress network, IP), to ask at most once a second.
    asked: HashMap<(u16, u32), Instant>,
}

impl ArpResolver {
    /// Holds a routed packet whose only problem is an unknown next hop, and
    /// ARPs for it. False if the packet has another problem (the caller sends
    /// the ICMP error) or the queue is full.
    fn hold(&mut self, d: &Daemon, net: &std::sync::Arc<NetworkView>, gw_ip: [u8; 4], frame: &[u8]) -> bool {
        let Some(router) = &net.router else { return false };
        let snap = d.snapshot.load();
        let mut probe = frame.to_vec();
        // Would it route if the neighbour were known? Then resolution is the only problem.
        let known = |_: u16, _: u32| Some([0u8; 6]);
        let on_wire = probe.len();
        let routed =
            route_frame(&mut probe, on_wire, gw_ip, &router.table, known, |n| snap.gateway_mac(n), |n| snap.mtu(n));
        if !matches!(routed, Routed::Forward { .. }) {
            return false;
        }
        let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        let Some(r) = router.table.lookup(dst) else { return false };
        let hop = r.via.map_or(u32::from(dst), u32::from);
        if self.held.len() >= ARP_HOLD_MAX {
            return false;
        }
        self.held.push(Held {
            ingress: net.clone(),
            egress: r.target,
            hop,
            frame: frame.to_vec(),
            deadline: Instant::now() + ARP_TIMEOUT,
        });
        let due = self.asked.get(&(r.target, hop)).is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if let (true, Some(out)) = (due, snap.network(r.target)) {
            if let Some(g) = &out.gateway {
                self.asked.insert((r.target, hop), Instant::now());
                send(d, out, &arp_request(g.mac, g.ip, hop));
            }
        }
        true
    }

    /// Learns the sender of an ARP frame seen on `net`; true if it is new or moved.
    fn snoop(&mut self, d: &Daemon, net: &NetworkView, frame: &[u8]) -> bool {
        if net.router.is_none() || frame.len() < 42 || frame[12..14] != [0x08, 0x06] {
            return false;
        }
        let Ok(a) = ArpPacket::new_checked(&frame[14..]) else { return false };
        if a.hardware_len() != 6 || a.protocol_len() != 4 {
            return false;
        }
        let mac: [u8; 6] = a.source_hardware_addr().try_into().unwrap_or([0; 6]);
        let ip: [u8; 4] = a.source_protocol_addr().try_into().unwrap_or([0; 4]);
        let in_subnet = net.gateway.as_ref().is_some_and(|g| {
            let mask = if g.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(g.prefix)) };
            u32::from_be_bytes(ip) & mask == u32::from_be_bytes(g.ip) & mask
        });
        if !in_subnet || mac[0] & 1 != 0 || mac == [0; 6] || ip == [0; 4] {
            return false; // RFC 5227 probes (sender 0.0.0.0) teach nothing
        }
        let key = u32::from_be_bytes(ip);
        let mut learned = d.arp_learned.lock().unwrap_or_else(|e| e.into_inner());
        let old = learned.entry(net.name.clone()).or_default().insert(key, (mac, Instant::now()));
        drop(learned);
        // Release what waited for this station.
        let snap = d.snapshot.load();
        let (ready, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.hop == key && snap.network(h.egress).is_some_and(|n| n.name == net.name));
        self.held = waiting;
        for mut h in ready {
            let Some(router) = &h.ingress.router else { continue };
            let Some(gw) = &h.ingress.gateway else { continue };
            let found = |_: u16, _: u32| Some(mac);
            let on_wire = h.frame.len();
            let routed = route_frame(
                &mut h.frame,
                on_wire,
                gw.ip,
                &router.table,
                found,
                |n| snap.gateway_mac(n),
                |n| snap.mtu(n),
            );
            if let Routed::Forward { egress } = routed {
                if let Some(out) = snap.network(egress) {
                    router.stats.routed.fetch_add(1, Ordering::Relaxed);
                    send(d, out, &h.frame);
                }
            }
        }
        old.is_none_or(|(m, _)| m != mac)
    }

    /// Turns packets that waited too long into Host Unreachable.
    fn flush(&mut self, d: &Daemon, budget: &mut HashMap<String, (Instant, u32)>) {
        let now = Instant::now();
        if self.held.iter().all(|h| h.deadline > now) {
            return;
        }
        let (late, keep): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.deadline <= now);
        self.held = keep;
        for h in late {
            if let Some(gw) = &h.ingress.gateway {
                if let Some(f) = icmp_for(d, &h.ingress, gw.mac, gw.ip, &h.frame, budget) {
                    send(d, &h.ingress, &f);
                }
            }
        }
        self.asked.retain(|_, t| t.elapsed() < Duration::from_secs(10));
    }
}

/// An ARP request (RFC 826) from the gateway `mac`/`ip` for `target`.
fn arp_request(mac: [u8; 6], ip: [u8; 4], target: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.to_be_bytes());
    f.resize(60, 0);
    f
}

/// A frame the router could not forward: IPv4, to the gateway's MAC, not to
/// one of the router's own addresses (the workers punt these after counting why).
fn is_routed_error(net: &NetworkView, frame: &[u8], gw_mac: [u8; 6], gw_ip: [u8; 4]) -> bool {
    let own = |ip: &[u8]| ip == gw_ip || net.router.as_ref().is_some_and(|r| r.gateway_ips.iter().any(|g| ip == g));
    frame.len() >= 34 && frame[..6] == gw_mac && frame[12..14] == [0x08, 0x00] && !own(&frame[30..34])
}

/// ICMP errors per network per second at most (RFC 1812 §4.3.2.8 asks routers to rate-limit them).
const ICMP_PER_SEC: u32 = 100;

/// The ICMP error for a packet the router could not forward (RFC 1812
/// §5.2.7): Time Exceeded when its TTL ran out, Network Unreachable without
/// a route, Host Unreachable when the next hop is unknown. None when rate
/// limited, not routed at all, or not allowed an error (route::icmp_error).
fn icmp_for(
    d: &Daemon,
    net: &NetworkView,
    gw_mac: [u8; 6],
    gw_ip: [u8; 4],
    frame: &[u8],
    budget: &mut HashMap<String, (Instant, u32)>,
) -> Option<Vec<u8>> {
    use crate::datapath::route::{icmp_error, IcmpError};
    let router = net.router.as_ref()?;
    let ip = &frame[14..];
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    // The same order of checks as the worker's route_frame.
    let snap = d.snapshot.load();
    let kind = match router.table.lookup(dst) {
        None => IcmpError::NetUnreachable,
        Some(r) => {
            let mtu = snap.network(r.target).map_or(u16::MAX, |v| v.mtu());
            if ip.len() > usize::from(mtu) && ip[6] & 0x40 != 0 {
                IcmpError::FragNeeded { mtu }
            } else if ip[8] <= 1 {
                IcmpError::TtlExceeded
            } else {
                IcmpError::HostUnreachable
            }
        }
    };
    let (since, n) = budget.entry(net.name.clone()).or_insert((Instant::now(), 0));
    if since.elapsed() >= Duration::from_secs(1) {
        *since = Instant::now();
        *n = 0;
    }
    if *n >= ICMP_PER_SEC {
        return None;
    }
    *n += 1;
    let packet = icmp_error(kind, Ipv4Addr::from(gw_ip), ip)?;
    router.stats.icmp_sent.fetch_add(1, Ordering::Relaxed);
    net.route_stats.icmp_sent.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::with_capacity(14 + packet.len());
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&gw_mac);
    out.extend_from_slice(&[0x08, 0x00]);
    out.extend_from_slice(&packet);
    Some(out)
}

fn dhcp_name(k: smoltcp::wire::DhcpMessageType) -> &'static str {
    use smoltcp::wire::DhcpMessageType as T;
    match k {
        T::Offer => "dhcp_offer",
        T::Ack => "dhcp_ack",
        T::Nak => "dhcp_nak",
        _ => "dhcp_other",
    }
}
