//! The immutable view of networks and ports that workers forward with.
//!
//! The control plane owns the mutable configuration; after every change it
//! builds a new [`Snapshot`], publishes it through an `ArcSwap` and wakes the
//! workers, which adopt it at the top of their loop (STYLE §8). A worker never
//! sees a half-applied change, and never takes a lock to read one. The
//! forwarding tables are not part of the snapshot's immutability: each
//! network's [`Fdb`] is shared, written by workers, and carried over from one
//! snapshot to the next.
//!
//! Imports: `table`, `punt`, `port`, `stats`, `capture`, `packet`, `impair`, `security` — never `datapath`,
//! which reads the snapshot (scripts/check-layers.sh).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use std::net::Ipv4Addr;

use crate::capture::PortTaps;
use crate::impair::PortImpair;
use crate::packet::NetId;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
use crate::security::{Security, Storm};
use crate::stats::{GatewayStats, PortStats, RouterStats};
use crate::table::{Fdb, RouteTable};
use crate::wire::MacAddr;

/// A network's gateway, as the data path needs it to punt frames.
pub struct GatewayView {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub punt: Arc<PuntQueue>,
    /// The gateway responder's counters for this network.
    pub stats: Arc<GatewayStats>,
}

/// A router as the data path sees it: its route table, whose targets are
/// network ids ([`Snapshot::network`]).
pub struct RouterView {
    pub name: String,
    pub table: RouteTable,
    /// The gateway addresses of every attached network: the router's own
    /// addresses, answered (ping) by the gateway a packet arrives at, as a
    /// Linux router answers for any of its addresses.
    pub gateway_ips: Vec<Ipv4Addr>,
    pub stats: Arc<RouterStats>,
}

/// A network as the data path sees it.
pub struct NetworkView {
    pub id: NetId,
    pub name: String,
    /// The router this network is attached to, if any.
    pub router: Option<Arc<RouterView>>,
    /// Routing counters of packets that entered from this network.
    pub route_stats: Arc<RouterStats>,
    /// IPv4 address → MAC of the stations on this network that tapyard knows
    /// (ports' addresses and DHCP leases): where routed packets go.
    pub neighbors: HashMap<Ipv4Addr, MacAddr>,
    /// None for a network without a subnet (`--ipam none`).
    pub gateway: Option<GatewayView>,
    /// Largest frame accepted (from the MTU).
    pub max_frame: usize,
    pub fdb: Arc<Fdb>,
    /// Every port of this network: the flood set.
    pub ports: Vec<PortId>,
}

impl NetworkView {
    /// The IP MTU: the largest frame less the Ethernet header and one VLAN tag.
    #[inline]
    pub fn mtu(&self) -> u16 {
        (self.max_frame - 18).min(usize::from(u16::MAX)) as u16
    }
}

/// A port as the data path sees it.
pub struct PortView {
    pub id: PortId,
    pub port: Arc<dyn Port>,
    pub stats: Arc<PortStats>,
    pub network: Arc<NetworkView>,
    /// The worker that reads this port.
    pub worker: usize,
    /// Its link settings (`port set`) when they are not a plain, connected
    /// link: the one branch an unimpaired port costs (`datapath::impair`).
    pub impair: Option<Arc<PortImpair>>,
    /// Its port security (`connect --port-security`); none: off.
    pub security: Option<Security>,
    /// Its storm-control limit (`--storm-limit`); none: no limit.
    pub storm: Option<Storm>,
}

impl PortView {
    /// Whether this port is on network `net`: the one definition of "same
    /// network" (a forwarding entry may name a port that has since moved).
    #[inline]
    pub fn on(&self, net: NetId) -> bool {
        self.network.id == net
    }

    /// The queue of this port that worker `w` reads, if any: queue `w` of a
    /// multi-queue port (one queue per worker), the only queue of a one-queue
    /// port for its owner worker.
    #[inline]
    pub fn queue_for(&self, w: usize) -> Option<usize> {
        let queues = usize::from(self.port.caps().queues);
        if queues > 1 {
            (w < queues).then_some(w)
        } else {
            (self.worker == w).then_some(0)
        }
    }
}

#[derive(Default)]
pub struct Snapshot {
    /// Increases with every publication.
    pub epoch: u64,
    /// Every network, indexed by [`NetworkView::id`]; `None` for ids not in use.
    pub networks: Vec<Option<Arc<NetworkView>>>,
    /// Indexed by [`PortId`]; `None` for ids not in use.
    pub ports: Vec<Option<Arc<PortView>>>,
    /// Indexed by [`PortId`]: what the data path does with a port's frames
    /// besides forwarding them (flight recorder, captures, mirror); `None`
    /// when nothing. Set by `control::capture` after `control::build`.
    pub taps: Vec<Option<PortTaps>>,
}

impl Snapshot {
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Arc<PortView>> {
        self.ports.get(id.index()).and_then(Option::as_ref)
    }

    /// The taps of port `id`, if it has any (docs/capture.md).
    #[inline]
    pub fn taps(&self, id: PortId) -> Option<&PortTaps> {
        self.taps.get(id.index()).and_then(Option::as_ref)
    }

    /// Network `id` (a route target, a punted frame's network).
    #[inline]
    pub fn network(&self, id: NetId) -> Option<&Arc<NetworkView>> {
        self.networks.get(id.index()).and_then(Option::as_ref)
    }

    /// Every network.
    pub fn all_networks(&self) -> impl Iterator<Item = &Arc<NetworkView>> {
        self.networks.iter().flatten()
    }

    /// The network called `name`.
    pub fn network_named(&self, name: &str) -> Option<&Arc<NetworkView>> {
        self.all_networks().find(|n| n.name == name)
    }

    /// The ports worker `worker` reads (a queue of each multi-queue port, its own one-queue ports).
    pub fn ports_of_worker(&self, worker: usize) -> impl Iterator<Item = &Arc<PortView>> {
        self.ports.iter().flatten().filter(move |p| p.queue_for(worker).is_some())
    }
}
