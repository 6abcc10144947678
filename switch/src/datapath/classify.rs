//! Stage two of the pipeline: what happens to one received frame, and why.
//!
//! [`classify`] reads the frame (never writes it), learns its source in the
//! network's forwarding table, and returns a [`Verdict`]. Order:
//! 1. A GSO super-frame is checked against the MTU by the frames it becomes.
//! 2. Port security ([`guard::admit`](super::guard::admit)), on ports that
//!    have it: a frame from a source the port does not own is dropped
//!    before it teaches the table anything.
//! 3. The L2 step ([`decide`](super::decide())): runts, oversize frames and
//!    bad source MACs are dropped; the source is learned (sharing a full
//!    table fairly between ports); the destination is looked up.
//! 4. On a network with a gateway: a frame to the gateway's MAC is the
//!    gateway's (`Local`) or, on a routed network, routed
//!    ([`route::decide`](super::route::decide())); a broadcast the gateway
//!    answers (ARP for its address, DHCP to port 67) is flooded with a copy
//!    for it.
//! 5. Otherwise the L2 decision stands: `Forward` to the learned port if it
//!    is on this network, else `Flood`.
//! 6. Storm control: a frame to be flooded counts against its port's limit
//!    for this second, and is dropped over it.

#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use super::offload::segment_frame_len;
use super::{decide, guard, route, Decision, Learned, Table};
use crate::packet::{NetId, PortId};
use crate::punt::PuntReason;
use crate::snapshot::{GatewayView, NetworkView, PortView, Snapshot};
use crate::stats::DropReason;
use crate::wire::arp;
use crate::wire::ipv4::{self, Ipv4};
use crate::wire::vnet::VnetHdr;
use crate::wire::{dst_mac, ethertype, is_tagged, l3_payload, EthAddrs, MacAddr};

/// Where a routed frame goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The network it leaves on.
    pub egress: NetId,
    /// The next hop's MAC (the destination's, or a static route's gateway's).
    pub dst: MacAddr,
    /// The egress network's gateway MAC: the new source.
    pub src: MacAddr,
}

/// What happens to a frame, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Known unicast on the ingress network: to this one port.
    Forward(PortId),
    /// A group or unknown destination: to every other port of the network;
    /// with `local`, the gateway gets a copy too (ARP for its address, DHCP).
    Flood {
        local: bool,
    },
    /// Routed: rewritten for `NextHop` and delivered on its network.
    Route(NextHop),
    /// For the gateway itself (ARP, ICMP echo, DHCP to its MAC).
    Local,
    /// The router cannot forward it; the gateway acts on the reason
    /// (an ICMP error, or ARP for the next hop).
    Punt(PuntReason),
    Drop(DropReason),
}

/// A [`Verdict`] and what learning could not do, for the burst's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified {
    pub verdict: Verdict,
    /// The source could not be learned: the table is full and this port
    /// holds at least its fair share (the frame is forwarded all the same).
    pub learn_full: bool,
}

/// Classifies `frame` (with its virtio-net header `hdr`), received on
/// `ingress`, with the ingress network's forwarding table `table`, at second `now`.
#[inline]
pub fn classify(
    frame: &[u8],
    hdr: &VnetHdr,
    ingress: &PortView,
    snap: &Snapshot,
    table: &Table,
    now: u32,
) -> Classified {
    let net = &*ingress.network;
    let dropped = |r| Classified { verdict: Verdict::Drop(r), learn_full: false };
    let (max_frame, on_wire) = if hdr.is_gso() {
        match segment_frame_len(hdr, frame) {
            Ok(n) if n <= net.max_frame => (usize::MAX, n),
            Ok(_) => return dropped(DropReason::Oversize),
            Err(_) => return dropped(DropReason::BadOffload),
        }
    } else {
        (net.max_frame, frame.len())
    };
    if let Some(sec) = &ingress.security {
        if let Err(r) = guard::admit(frame, sec) {
            return dropped(r);
        }
    }
    let l2 = decide(frame, ingress.id, table, max_frame, now);
    let learn_full = l2.learned == Some(Learned::Full) && !share_fairly(table, snap, ingress, frame, now);
    let verdict = match l2.decision {
        Decision::Drop(r) => Verdict::Drop(r),
        d => match net.gateway.as_ref().and_then(|gw| for_gateway(frame, on_wire, gw, net, snap)) {
            Some(v) => v,
            None => match d {
                Decision::Unicast(out) if snap.port(out).is_some_and(|p| p.on(net.id)) => Verdict::Forward(out),
                // The entry may name a port that left or changed networks
                // since it was learned: flood then, as for an unknown MAC.
                _ => Verdict::Flood { local: false },
            },
        },
    };
    let verdict = match (&verdict, &ingress.storm) {
        (Verdict::Flood { .. }, Some(s)) if !s.meter.admit(now, s.limit) => Verdict::Drop(DropReason::Storm),
        _ => verdict,
    };
    Classified { verdict, learn_full }
}

/// What the gateway `gw` of `net` wants of a frame: `None` if it is not for
/// the gateway. A frame to the gateway's MAC is routed or the gateway's own;
/// a broadcast the gateway answers is flooded with a copy for it.
#[inline]
fn for_gateway(frame: &[u8], on_wire: usize, gw: &GatewayView, net: &NetworkView, snap: &Snapshot) -> Option<Verdict> {
    let dst = dst_mac(frame)?;
    if dst == gw.mac {
        if is_tagged(frame) {
            return Some(Verdict::Drop(DropReason::VlanTagged));
        }
        return Some(match &net.router {
            Some(router) => route::decide(frame, on_wire, gw.ip, router, snap),
            None => Verdict::Local,
        });
    }
    (dst == MacAddr::BROADCAST && answers_broadcast(frame, gw)).then_some(Verdict::Flood { local: true })
}

/// A broadcast the gateway answers: an ARP request for its address (RFC
/// 826), or IPv4/UDP to the DHCP server port 67 (RFC 2131 §4.1).
#[inline]
fn answers_broadcast(frame: &[u8], gw: &GatewayView) -> bool {
    if let Some(target) = arp::target_ip_field(frame) {
        return target == gw.ip;
    }
    let Some(ip) = l3_payload(frame, ethertype::IPV4).and_then(|p| Ipv4::new_checked(p).ok()) else {
        return false;
    };
    let udp = ip.payload();
    ip.protocol() == ipv4::protocol::UDP
        && udp.get(ipv4::udp::DST_PORT).is_some_and(|p| p == ipv4::udp::DHCP_SERVER_PORT.to_be_bytes())
}

/// Called when the table is full and the source of `frame` (on `view`'s port)
/// was not learned. If that port holds less than its fair share of the table
/// (capacity / ports of the network), evict one entry of the port holding the
/// most, if that one holds more than its share, and learn again. Returns
/// whether the source is now learned. Bounded work, no allocation; taken only
/// by a port under its share, so a port flooding made-up MACs never gets here.
fn share_fairly(table: &Table, snap: &Snapshot, view: &PortView, frame: &[u8], now: u32) -> bool {
    let net = &view.network;
    let fair = table.capacity() as u64 / net.ports.len().max(1) as u64;
    if view.stats.fdb_entries.load(Ordering::Relaxed) >= fair {
        return false;
    }
    let victim = net
        .ports
        .iter()
        .filter(|&&p| p != view.id)
        .filter_map(|&p| snap.port(p))
        .max_by_key(|p| p.stats.fdb_entries.load(Ordering::Relaxed));
    let Some(victim) = victim.filter(|v| v.stats.fdb_entries.load(Ordering::Relaxed) > fair) else {
        return false;
    };
    let Ok(eth) = EthAddrs::parse(frame) else { return false };
    // Start the scan at a place that varies with the MAC, so evictions spread.
    if !table.evict_one(victim.id, eth.src.to_u64() as usize) {
        return false;
    }
    victim.stats.learn_evicted.fetch_add(1, Ordering::Relaxed);
    let _ = victim.stats.fdb_entries.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    // Count ourselves at once, so the share check tightens before the next refresh.
    view.stats.fdb_entries.fetch_add(1, Ordering::Relaxed);
    table.learn(eth.src, view.id, now) == Learned::New
}
