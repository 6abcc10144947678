//! The gateway responder: one thread that answers, for every network with a
//! subnet, ARP for the gateway address and ICMP echo to it (through a
//! smoltcp `Interface` per network) and DHCP (through `tapyard_ipam`'s
//! server), and acts for the router on the packets it could not forward. It
//! runs off the per-frame path: workers hand it frames through the bounded
//! punt queue, each with the reason the worker found ([`PuntReason`]), and
//! it writes its replies to the ports as if they came from a port of the
//! network (`datapath::egress::targets`: unicast by the forwarding table,
//! else flooded).
//!
//! By reason: `Local` frames are the gateway's own (DHCP, ARP, ICMP echo);
//! `TtlExpired`, `NoRoute` and `FragNeeded` draw the ICMP error of that name
//! (rate-limited, RFC 1812 §4.3.2.8); `Unresolved` packets are held while
//! the egress gateway ARPs for the next hop, forwarded when the answer
//! comes, and turned into Host Unreachable after [`ARP_TIMEOUT`]. Nothing
//! here routes again: the held packet's egress and next hop came with it.
//!
//! It reaches the control plane only through [`Control`].
//!
//! Durability: the DHCP records of a whole batch of punted frames are made
//! durable with one journal commit (one fsync), and only then are the ACKs of
//! that batch sent (RFC 2131 leaves persistence to the server; we promise an
//! ACK never outlives a crash).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol,
    Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use tapyard_ipam::dhcp::{Destination, DhcpDrop, Reply};
use tapyard_ipam::lease::Record;
use tapyard_ipam::store::Store;

use super::unix_now;
use crate::datapath::egress::{dst_or_broadcast, targets};
use crate::datapath::route::{icmp_error, rewrite, IcmpError};
use crate::datapath::NextHop;
use crate::packet::NetId;
use crate::punt::{PuntReason, Punted};
use crate::snapshot::{NetworkView, Snapshot};
use crate::stats::GatewayStats;
use crate::wire::arp::{self, Arp};
use crate::wire::ipv4::udp::{self, DHCP_CLIENT_PORT, DHCP_SERVER_PORT};
use crate::wire::ipv4::Ipv4;
use crate::wire::vnet::VNET_HDR_LEN;
use crate::wire::{EthAddrs, MacAddr, ETH_HEADER_LEN};

/// What the gateway needs of the control plane, and nothing more: the
/// published snapshot, the punt queue, the lease store, the neighbour table
/// it fills from ARP, and a way to publish what it learned.
pub trait Control {
    fn snapshot(&self) -> Arc<Snapshot>;
    fn stopping(&self) -> bool;
    fn next_punted(&self) -> Option<Punted>;
    fn recycle(&self, buf: Box<[u8]>);
    /// The lease store (locked while the guard lives).
    fn leases(&self) -> MutexGuard<'_, Store>;
    /// Records that `ip` on network `net` is at `mac`; true if that is new or changed.
    fn learn_neighbor(&self, net: &str, ip: Ipv4Addr, mac: MacAddr) -> bool;
    /// Publishes a new snapshot (new neighbours to route to).
    fn republish(&self);
    /// Whether any of `leases`, each a client `mac` (any client: `None`)
    /// on a network, must be in the snapshot before its ACK leaves: a port
    /// of that MAC has port security (the lease is an address it may send
    /// from) or publishes host ports (waiting for its address). One call
    /// per batch, however many leases it bound. Called without the lease
    /// store locked (the daemon takes its own lock).
    fn lease_guarded(&self, leases: &[(&str, Option<[u8; 6]>)]) -> bool;
}

/// Neighbours learned from leases wait at most this long to be published
/// while the gateway is busy (at once when it is idle).
const REPUBLISH_DEFER: Duration = Duration::from_millis(50);

/// Punted frames handled per pass at most. A pass takes everything waiting
/// (up to this), so that one fsync covers every lease it changed: group
/// commit, the fsync's cost spread over as many handshakes as arrived while
/// the last one ran. 64 per pass capped DHCP near 4,000 handshakes a second.
const BATCH: usize = 4096;

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
    mac: MacAddr,
    ip: Ipv4Addr,
    /// The router's other gateway addresses, answered here too (as /32s).
    others: Vec<Ipv4Addr>,
    iface: Interface,
    dev: QueueDevice,
}

impl NetGateway {
    fn new(mac: MacAddr, ip: Ipv4Addr, prefix: u8, others: Vec<Ipv4Addr>) -> NetGateway {
        let mut dev = QueueDevice::default();
        let cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac.0)));
        let mut iface = Interface::new(cfg, &mut dev, SmolInstant::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), prefix));
            // At most 8 addresses per interface (smoltcp's iface-max-addr-count-8).
            for o in &others {
                let _ = a.push(IpCidr::new(IpAddress::Ipv4(*o), 32));
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
        return match Arp::parse(frame) {
            Some(_) => Kind::Other,
            None => Kind::BadArp,
        };
    }
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Kind::Other;
    }
    let payload = &frame[ETH_HEADER_LEN..];
    let Ok(ip) = Ipv4Packet::new_checked(payload) else { return Kind::Other };
    if ip.next_header() != IpProtocol::Udp {
        return Kind::Other;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let hl = usize::from(ip.header_len());
    let total = usize::from(ip.total_len()).min(payload.len());
    let Ok(udp) = UdpPacket::new_checked(&payload[hl.min(total)..total]) else { return Kind::BadDhcp };
    if udp.dst_port() != DHCP_SERVER_PORT {
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

/// The client hardware address of a DHCP message when it is an Ethernet
/// one (RFC 2131 §2: `htype` 1, `hlen` 6, `chaddr` at offset 28).
fn chaddr(msg: &[u8]) -> Option<[u8; 6]> {
    if msg.get(1..3)? != [1, 6] {
        return None;
    }
    msg.get(28..34)?.try_into().ok()
}

/// Builds the Ethernet/IPv4/UDP frame of a DHCP reply, addressed per RFC 2131 §4.1.
/// `from` is the request's source MAC.
fn dhcp_frame(gw_mac: MacAddr, gw_ip: Ipv4Addr, from: [u8; 6], r: &Reply) -> Vec<u8> {
    let (dst_mac, dst_ip, dst_port) = match r.dst {
        Destination::Broadcast => ([0xff; 6], Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
        Destination::Unicast { mac, ip } => (mac, ip, DHCP_CLIENT_PORT),
        // To the relay agent's server port (§4.1), at the MAC the request
        // came from: the relay's own interface on this segment (or a
        // tapyard router's, which routes it on to giaddr). Not an Ethernet
        // broadcast: a host following RFC 1122 §3.3.6 drops a unicast
        // datagram that came in a link-layer broadcast.
        Destination::Relay(ip) => (from, ip, DHCP_SERVER_PORT),
    };
    let src_ip = gw_ip;
    let udp = UdpRepr { src_port: DHCP_SERVER_PORT, dst_port };
    let ip = Ipv4Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Udp,
        payload_len: 8 + r.payload.len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(gw_mac.0),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf =
        vec![
            0u8;
            ETH_HEADER_LEN + crate::wire::ipv4::HEADER_LEN + crate::wire::ipv4::udp::HEADER_LEN + r.payload.len()
        ];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    let caps = ChecksumCapabilities::default();
    let udp_at = ETH_HEADER_LEN + crate::wire::ipv4::HEADER_LEN;
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..udp_at]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut buf[udp_at..]),
        &IpAddress::Ipv4(src_ip),
        &IpAddress::Ipv4(dst_ip),
        r.payload.len(),
        |p| p.copy_from_slice(&r.payload),
        &caps,
    );
    buf
}

/// Sends a frame from the gateway into its network (written to queue 0,
/// beside worker 0: a TAP write is one atomic syscall).
fn send(snap: &Snapshot, net: &NetworkView, frame: &[u8]) {
    // Ports take every frame behind a vnet header; the gateway's are plain
    // (all-zero header), so any port takes them as they are.
    let mut wire = vec![0u8; VNET_HDR_LEN + frame.len()];
    wire[VNET_HDR_LEN..].copy_from_slice(frame);
    for v in targets(snap, net, dst_or_broadcast(frame), None) {
        // A cut link (`port set --down`) carries nothing, the gateway's frames
        // included; its other impairments apply to forwarded frames only
        // (docs/impairments.md).
        if v.impair.as_ref().is_some_and(|i| !i.settings.link_up) {
            v.stats.drop_n(crate::stats::DropReason::LinkDownAdmin, 1);
            continue;
        }
        let r = v.port.send_batch(0, &[&wire]);
        crate::datapath::egress::apply_tx(v, &r);
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The counter of a DHCP server drop reason.
fn dhcp_drop(s: &GatewayStats, d: DhcpDrop) -> &AtomicU64 {
    match d {
        DhcpDrop::Truncated => &s.truncated,
        DhcpDrop::BadMagic => &s.bad_magic,
        DhcpDrop::NotEthernet => &s.not_ethernet,
        DhcpDrop::BadMessage => &s.bad_message,
        DhcpDrop::Unexpected => &s.unexpected,
        DhcpDrop::Exhausted => &s.exhausted,
        DhcpDrop::NotForUs => &s.not_for_us,
        DhcpDrop::PerPortCap => &s.per_port_cap,
    }
}

/// The counter of a DHCP reply sent.
fn dhcp_sent(s: &GatewayStats, k: smoltcp::wire::DhcpMessageType) -> &AtomicU64 {
    use smoltcp::wire::DhcpMessageType as T;
    match k {
        T::Offer => &s.dhcp_offer,
        T::Ack => &s.dhcp_ack,
        T::Nak => &s.dhcp_nak,
        _ => &s.dhcp_other,
    }
}

/// The responder loop; returns when the daemon stops.
pub fn run(d: &impl Control) {
    let mut gws: HashMap<NetId, NetGateway> = HashMap::new();
    let mut batch = Vec::with_capacity(256);
    let mut last_exhausted_log: HashMap<NetId, Instant> = HashMap::new();
    let mut icmp = IcmpBudget::default();
    let mut arp = ArpResolver::default();
    // Since when neighbours learned from leases wait to be published.
    let mut deferred: Option<Instant> = None;
    while !d.stopping() {
        while batch.len() < BATCH {
            match d.next_punted() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        if batch.is_empty() {
            if deferred.take().is_some() {
                d.republish();
            }
            std::thread::park_timeout(Duration::from_millis(250));
            arp.expire(d, &mut icmp);
            continue;
        }
        let now = unix_now();
        let snap = d.snapshot();
        let mut replies: Vec<(Arc<NetworkView>, Vec<u8>)> = Vec::new();
        let mut republish = false;
        // Networks and clients whose leases changed in this batch (a set:
        // a pass can bind thousands).
        let mut changed: HashMap<(NetId, Option<[u8; 6]>), Arc<NetworkView>> = HashMap::new();
        {
            let mut store = d.leases();
            for p in batch.iter() {
                let Some(net) = snap.network(p.network) else { continue };
                let Some(gw) = &net.gateway else { continue };
                let frame = p.frame();
                match p.reason {
                    PuntReason::Local => match classify(frame) {
                        Kind::Dhcp(payload) => {
                            let Some(h) = store.handle(&net.name, payload, now) else { continue };
                            if let Some(why) = h.dropped {
                                bump(dhcp_drop(&gw.stats, why));
                                if why == DhcpDrop::Exhausted {
                                    let due = last_exhausted_log
                                        .get(&net.id)
                                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                                    if due {
                                        tracing::warn!(network = %net.name, "DHCP pool exhausted: no address to offer");
                                        last_exhausted_log.insert(net.id, Instant::now());
                                    }
                                }
                            }
                            // A lease bound may matter to the data path (offers change
                            // nothing): which way is decided once the store is unlocked.
                            if !h.records.is_empty() {
                                let only_its_own = h.records.iter().all(|r| matches!(r, Record::Lease(_)));
                                let mac = chaddr(payload).filter(|_| only_its_own);
                                changed.entry((net.id, mac)).or_insert_with(|| net.clone());
                            }
                            if let Some(r) = h.reply {
                                bump(dhcp_sent(&gw.stats, r.kind));
                                let from = EthAddrs::parse(frame).map_or([0xff; 6], |e| e.src.0);
                                let f = dhcp_frame(gw.mac, gw.ip, from, &r);
                                // Only what a reply acknowledges must be on disk before it
                                // leaves: an OFFER promises nothing (RFC 2131 §3.1: the
                                // client's REQUEST is checked again), and a reply that
                                // changed nothing has nothing to wait for. They leave now,
                                // not after the batch's fsync (the OFFER delay was 1.5-2.8 ms).
                                if r.kind == smoltcp::wire::DhcpMessageType::Offer || h.records.is_empty() {
                                    send(&snap, net, &f);
                                } else {
                                    replies.push((net.clone(), f));
                                }
                            }
                        }
                        Kind::BadDhcp => bump(&gw.stats.dhcp_malformed),
                        Kind::BadArp => bump(&gw.stats.arp_malformed),
                        Kind::Other => {
                            if arp.snoop(d, &snap, net, frame) {
                                republish = true;
                            }
                            let others: Vec<Ipv4Addr> = net
                                .router
                                .as_ref()
                                .map(|r| r.gateway_ips.iter().copied().filter(|i| *i != gw.ip).collect())
                                .unwrap_or_default();
                            let g = gws
                                .entry(net.id)
                                .or_insert_with(|| NetGateway::new(gw.mac, gw.ip, gw.prefix, others.clone()));
                            if g.mac != gw.mac || g.ip != gw.ip || g.others != others {
                                *g = NetGateway::new(gw.mac, gw.ip, gw.prefix, others);
                            }
                            g.dev.rx.push_back(frame.to_vec());
                        }
                    },
                    PuntReason::Unresolved { egress, hop } => {
                        // An unknown next hop: ARP for it and hold the packet a moment.
                        if arp.hold(&snap, net.id, egress, hop, frame) {
                            bump(&gw.stats.arp_resolving);
                        } else if let Some(f) = icmp.error(net, IcmpError::HostUnreachable, frame) {
                            replies.push((net.clone(), f));
                        }
                    }
                    reason => {
                        if let Some(f) = IcmpError::for_reason(reason).and_then(|k| icmp.error(net, k, frame)) {
                            replies.push((net.clone(), f));
                        }
                    }
                }
            }
            // One fsync for the whole batch; no ACK leaves before it.
            let committed = store.commit();
            if let Some(e) = store.compaction_failed() {
                tracing::warn!(error = %e, "lease journal compaction failed; the leases are durable, the journal grows until one succeeds");
            }
            if let Err(e) = committed {
                tracing::error!(error = %e, "cannot make leases durable; withholding this batch's DHCP replies");
                replies.retain(|(net, f)| {
                    let dhcp = is_dhcp_reply(f);
                    if let (true, Some(g)) = (dhcp, &net.gateway) {
                        bump(&g.stats.journal_error);
                    }
                    !dhcp
                });
            }
        }
        // A lease is an address port security lets its port send from, and
        // may be the one a published port waits for: publish it before the
        // ACK leaves, so the client's first packets from its new address
        // (RFC 5227 announcements) pass. On a routed network it is also a
        // neighbour to route to; that can wait a moment (the gateway
        // resolves an unknown next hop by ARP meanwhile), so such
        // republishes are gathered: rebuilding the snapshot reads every
        // lease, ~10 ms at 60,000 of them, and once per batch it was most
        // of the gateway's time under perfdhcp. Networks with no router
        // never route to their neighbours: nothing to publish for them.
        let leases: Vec<(&str, Option<[u8; 6]>)> =
            changed.iter().map(|((_, mac), net)| (net.name.as_str(), *mac)).collect();
        if !leases.is_empty() && d.lease_guarded(&leases) {
            republish = true;
        } else if changed.values().any(|net| net.router.is_some()) {
            deferred.get_or_insert_with(Instant::now);
        }
        if republish || deferred.is_some_and(|t| t.elapsed() >= REPUBLISH_DEFER) {
            d.republish();
            deferred = None;
        }
        for (net, frame) in &replies {
            send(&snap, net, frame);
        }
        let snap = d.snapshot();
        arp.expire(d, &mut icmp);
        // ARP and ICMP through smoltcp.
        for (id, g) in gws.iter_mut() {
            if g.dev.rx.is_empty() {
                continue;
            }
            let mut sockets = SocketSet::new(vec![]);
            g.iface.poll(SmolInstant::now(), &mut g.dev, &mut sockets);
            if let Some(net) = snap.network(*id) {
                for f in g.dev.tx.drain(..) {
                    if let Some(gw) = &net.gateway {
                        bump(&gw.stats.arp_icmp_sent);
                    }
                    send(&snap, net, &f);
                }
            }
            g.dev.tx.clear();
        }
        gws.retain(|id, _| snap.network(*id).is_some());
        for p in batch.drain(..) {
            d.recycle(p.buf);
        }
    }
}

/// Whether `frame` is one of the gateway's DHCP replies (UDP from port 67).
fn is_dhcp_reply(frame: &[u8]) -> bool {
    crate::wire::l3_payload(frame, crate::wire::ethertype::IPV4).and_then(|p| Ipv4::new_checked(p).ok()).is_some_and(
        |ip| {
            // From the server port (RFC 2131 §4.1), as every reply we build is.
            ip.protocol() == crate::wire::ipv4::protocol::UDP
                && udp::ports(ip.payload()).is_some_and(|(src, _)| src == DHCP_SERVER_PORT)
        },
    )
}

/// Packets held for a next hop being resolved, at most.
const ARP_HOLD_MAX: usize = 64;
/// How long a next hop may take to answer ARP before Host Unreachable.
pub const ARP_TIMEOUT: Duration = Duration::from_secs(3);

struct Held {
    ingress: NetId,
    egress: NetId,
    hop: Ipv4Addr,
    frame: Vec<u8>,
    deadline: Instant,
}

/// Neighbour resolution for routed packets whose next hop is not known:
/// the egress gateway ARPs for it while a small bounded queue holds the
/// packets; the answer (seen by `snoop`) releases them, a timeout turns them
/// into Host Unreachable. What ARP teaches goes to the control plane's
/// neighbour table and is published to the workers.
#[derive(Default)]
struct ArpResolver {
    held: Vec<Held>,
    /// Last ARP request per (egress network, IP), to ask at most once a second.
    asked: HashMap<(NetId, Ipv4Addr), Instant>,
}

impl ArpResolver {
    /// Holds a packet the worker routed to `egress` whose next hop `hop` has
    /// no known MAC, and ARPs for the hop. False when the queue is full (the
    /// caller sends Host Unreachable).
    fn hold(&mut self, snap: &Snapshot, ingress: NetId, egress: NetId, hop: Ipv4Addr, frame: &[u8]) -> bool {
        if self.held.len() >= ARP_HOLD_MAX {
            return false;
        }
        self.held.push(Held { ingress, egress, hop, frame: frame.to_vec(), deadline: Instant::now() + ARP_TIMEOUT });
        let due = self.asked.get(&(egress, hop)).is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if let (true, Some(out)) = (due, snap.network(egress)) {
            if let Some(g) = &out.gateway {
                self.asked.insert((egress, hop), Instant::now());
                send(snap, out, &arp::request(g.mac, g.ip, hop));
            }
        }
        true
    }

    /// Learns the sender of an ARP frame seen on `net`, and forwards what
    /// waited for it; true if the station is new or moved.
    fn snoop(&mut self, d: &impl Control, snap: &Snapshot, net: &NetworkView, frame: &[u8]) -> bool {
        if net.router.is_none() {
            return false;
        }
        let Some(a) = Arp::parse(frame) else { return false };
        let in_subnet = net.gateway.as_ref().is_some_and(|g| {
            let mask = if g.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(g.prefix)) };
            u32::from(a.sender_ip) & mask == u32::from(g.ip) & mask
        });
        if !in_subnet || a.sender_mac.is_multicast() || a.sender_mac.is_zero() || a.sender_ip.is_unspecified() {
            return false; // RFC 5227 probes (sender 0.0.0.0) teach nothing
        }
        let changed = d.learn_neighbor(&net.name, a.sender_ip, a.sender_mac);
        // Release what waited for this station.
        let (ready, waiting): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.hop == a.sender_ip && h.egress == net.id);
        self.held = waiting;
        let Some(src) = net.gateway.as_ref().map(|g| g.mac) else { return changed };
        for mut h in ready {
            let hop = NextHop { egress: net.id, dst: a.sender_mac, src };
            if rewrite(&mut h.frame, &hop) {
                if let Some(r) = snap.network(h.ingress).and_then(|n| n.router.as_ref()) {
                    bump(&r.stats.routed);
                }
                send(snap, net, &h.frame);
            }
        }
        changed
    }

    /// Turns packets that waited too long into Host Unreachable.
    fn expire(&mut self, d: &impl Control, icmp: &mut IcmpBudget) {
        let now = Instant::now();
        if self.held.iter().all(|h| h.deadline > now) {
            return;
        }
        let (late, keep): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.deadline <= now);
        self.held = keep;
        let snap = d.snapshot();
        for h in late {
            if let Some(net) = snap.network(h.ingress) {
                if let Some(f) = icmp.error(net, IcmpError::HostUnreachable, &h.frame) {
                    send(&snap, net, &f);
                }
            }
        }
        self.asked.retain(|_, t| t.elapsed() < Duration::from_secs(10));
    }
}

/// ICMP errors per network per second at most (RFC 1812 §4.3.2.8 asks routers to rate-limit them).
const ICMP_PER_SEC: u32 = 100;

/// The per-network rate limit of ICMP errors.
#[derive(Default)]
struct IcmpBudget {
    per_net: HashMap<NetId, (Instant, u32)>,
}

impl IcmpBudget {
    /// The ICMP error `kind` from the gateway of `net` about `frame`, a packet
    /// the router could not forward (RFC 1812 §5.2.7), addressed back to its
    /// sender; counted. None when rate limited or when the packet may not
    /// draw an error (`route::icmp_error`).
    fn error(&mut self, net: &NetworkView, kind: IcmpError, frame: &[u8]) -> Option<Vec<u8>> {
        let gw = net.gateway.as_ref()?;
        let (since, n) = self.per_net.entry(net.id).or_insert((Instant::now(), 0));
        if since.elapsed() >= Duration::from_secs(1) {
            *since = Instant::now();
            *n = 0;
        }
        if *n >= ICMP_PER_SEC {
            return None;
        }
        *n += 1;
        let sender = crate::wire::EthAddrs::parse(frame).ok()?.src;
        let packet = icmp_error(kind, gw.ip, frame.get(ETH_HEADER_LEN..)?)?;
        if let Some(r) = &net.router {
            bump(&r.stats.icmp_sent);
        }
        bump(&net.route_stats.icmp_sent);
        bump(&gw.stats.icmp_error_sent);
        let mut out = vec![0u8; ETH_HEADER_LEN + packet.len()];
        crate::wire::emit_eth_header(&mut out, sender, gw.mac, crate::wire::ethertype::IPV4);
        out[ETH_HEADER_LEN..].copy_from_slice(&packet);
        Some(out)
    }
}
