//! The immutable view of networks and ports that workers forward with.
//!
//! The control plane owns the mutable configuration; after every change it
//! builds a new [`Snapshot`], publishes it through an `ArcSwap` and wakes the
//! workers, which adopt it at the top of their loop (STYLE §8). A worker never
//! sees a half-applied change, and never takes a lock to read one. The
//! forwarding tables are not part of the snapshot's immutability: each
//! network's [`Fdb`] is shared, written by workers, and carried over from one
//! snapshot to the next.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use crate::datapath::route::RouteTable;
use crate::datapath::Fdb;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
use crate::stats::{PortStats, RouterStats};

/// A network's gateway, as the data path needs it to punt frames.
pub struct GatewayView {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub prefix: u8,
    pub punt: Arc<PuntQueue>,
}

/// A router as the data path sees it: its route table, whose targets are
/// indexes into [`Snapshot::networks`].
pub struct RouterView {
    pub name: String,
    pub table: RouteTable,
    /// The gateway addresses of every attached network: the router's own
    /// addresses, answered (ping) by the gateway a packet arrives at, as a
    /// Linux router answers for any of its addresses.
    pub gateway_ips: Vec<[u8; 4]>,
    pub stats: Arc<RouterStats>,
}

/// A network as the data path sees it.
pub struct NetworkView {
    pub name: String,
    /// Position in [`Snapshot::networks`].
    pub index: usize,
    /// The router this network is attached to, if any.
    pub router: Option<Arc<RouterView>>,
    /// Routing counters of packets that entered from this network.
    pub route_stats: Arc<RouterStats>,
    /// IPv4 address → MAC of the stations on this network that tapyard knows
    /// (ports' addresses and DHCP leases): where routed packets go.
    pub neighbors: HashMap<u32, [u8; 6]>,
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
}

impl PortView {
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
    /// Every network, by [`NetworkView::index`].
    pub networks: Vec<Arc<NetworkView>>,
    /// Indexed by [`PortId`]; `None` for ids not in use.
    pub ports: Vec<Option<Arc<PortView>>>,
}

impl Snapshot {
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&Arc<PortView>> {
        self.ports.get(id.index()).and_then(Option::as_ref)
    }

    /// Network number `n` (a route target).
    #[inline]
    pub fn network(&self, n: u16) -> Option<&Arc<NetworkView>> {
        self.networks.get(usize::from(n))
    }

    /// The MAC of `ip` on network `n`, if tapyard knows the station.
    #[inline]
    pub fn neighbor(&self, n: u16, ip: u32) -> Option<[u8; 6]> {
        self.network(n).and_then(|v| v.neighbors.get(&ip).copied())
    }

    /// The gateway MAC of network `n` (none for `--ipam none` networks).
    #[inline]
    pub fn gateway_mac(&self, n: u16) -> Option<[u8; 6]> {
        self.network(n).and_then(|v| v.gateway.as_ref().map(|g| g.mac))
    }

    /// The IP MTU of network `n` (0 for an unknown network: nothing fits).
    #[inline]
    pub fn mtu(&self, n: u16) -> u16 {
        self.network(n).map_or(0, |v| v.mtu())
    }

    /// The ports worker `worker` reads (a queue of each multi-queue port, its own one-queue ports).
    pub fn ports_of_worker(&self, worker: usize) -> impl Iterator<Item = &Arc<PortView>> {
        self.ports.iter().flatten().filter(move |p| p.queue_for(worker).is_some())
    }
}
