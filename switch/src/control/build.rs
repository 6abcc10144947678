//! Snapshot building: a pure function from the configuration (networks,
//! routers, ports, known neighbours) to the [`Snapshot`] the workers forward
//! with. No I/O, no locks, no clock: the control plane calls it after every
//! change, and tests call it with in-memory ports to run the whole pipeline
//! without root (see `worker`'s and `datapath`'s tests).
//!
//! What it decides: each router's route table (its connected networks
//! first, then its static routes, each on the attached network whose subnet
//! holds the next hop; routes whose network is gone are left out), which
//! router each network is on, each network's flood set and gateway.
//!
//! Egress (docs/EGRESS.md): with an uplink, a network with egress routes
//! through a table of its own: its router's routes (or its own subnet
//! alone), then a reject route for every other tapyard subnet (networks
//! reach each other only through a router that attaches both, never
//! through the host), then the default route to the kernel's end of the
//! uplink. The uplink network routes each egress network's subnet back.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::persist::{NetworkSpec, RouterSpec};
use crate::datapath::max_frame_len;
use crate::impair::PortImpair;
use crate::packet::NetId;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
use crate::security::{Security, Storm};
use crate::snapshot::{GatewayView, NetworkView, PortView, RouterView, Snapshot};
use crate::stats::{GatewayStats, PortStats, RouterStats};
use crate::table::{Fdb, Route, RouteTable};
use crate::wire::MacAddr;

/// A network as configured, with the shared state it keeps across snapshots.
pub struct NetworkIn<'a> {
    pub id: NetId,
    pub spec: &'a NetworkSpec,
    pub fdb: Arc<Fdb>,
    pub route_stats: Arc<RouterStats>,
    pub gw_stats: Arc<GatewayStats>,
}

impl<'a> NetworkIn<'a> {
    /// A network as it is first created: an empty forwarding table sized by
    /// its spec, counters at zero.
    pub fn new(id: NetId, spec: &'a NetworkSpec) -> NetworkIn<'a> {
        NetworkIn {
            id,
            spec,
            fdb: Arc::new(Fdb::new(spec.fdb_capacity, spec.ageing_secs)),
            route_stats: Arc::default(),
            gw_stats: Arc::default(),
        }
    }
}

pub struct RouterIn<'a> {
    pub spec: &'a RouterSpec,
    pub stats: Arc<RouterStats>,
}

pub struct PortIn<'a> {
    pub id: PortId,
    pub network: &'a str,
    pub port: Arc<dyn Port>,
    pub stats: Arc<PortStats>,
    pub worker: usize,
    /// Its impairments and link state (`port set`); none: a plain link.
    pub impair: Option<Arc<PortImpair>>,
    /// Its port security, with the addresses it owns now; none: off.
    pub security: Option<Security>,
    /// Its storm-control limit and meter; none: unlimited.
    pub storm: Option<Storm>,
}

/// Everything a snapshot is built from.
pub struct Plan<'a> {
    pub epoch: u64,
    pub networks: Vec<NetworkIn<'a>>,
    pub routers: Vec<RouterIn<'a>>,
    pub ports: Vec<PortIn<'a>>,
    /// IPv4 → MAC of the stations known per network (by name).
    pub neighbors: BTreeMap<String, HashMap<Ipv4Addr, MacAddr>>,
    /// Where every gateway's frames go.
    pub punt: Arc<PuntQueue>,
    /// tapyard's port into the daemon's own namespace, if it has one.
    pub uplink: Option<UplinkIn<'a>>,
}

/// The name of the uplink's network: no user network can have it (names
/// never start with '.').
pub const UPLINK_NETWORK: &str = ".uplink";

/// The uplink: tapyard's port into the daemon's own namespace, on a network
/// of its own (the transit subnet, tapyard's end as its gateway), through
/// which networks with egress reach the host and beyond.
pub struct UplinkIn<'a> {
    /// Named [`UPLINK_NETWORK`]; its gateway is tapyard's end of the transit subnet.
    pub net: NetworkIn<'a>,
    pub port: PortIn<'a>,
    /// The kernel's end of the transit subnet: the next hop of egress.
    pub kernel_ip: Ipv4Addr,
    pub kernel_mac: MacAddr,
    /// Counters of packets routed into and out of the uplink.
    pub stats: Arc<RouterStats>,
}

/// A network called `name` with `subnet` (CIDR; none: `--ipam none`) and
/// otherwise the defaults of `network create`: for tests and benchmarks that
/// build snapshots without a daemon.
pub fn network_spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
    let addressing = subnet.map(|s| {
        let net: tapyard_ipam::Ipv4Net = s.parse().expect("a CIDR subnet");
        tapyard_ipam::Addressing::new(net, None).expect("a subnet with room for a gateway")
    });
    NetworkSpec {
        name: name.into(),
        addressing,
        mtu: super::DEFAULT_MTU,
        ageing_secs: crate::table::fdb::DEFAULT_AGEING_SECS,
        fdb_capacity: crate::table::fdb::DEFAULT_CAPACITY,
        ip_range: None,
        aux_addresses: Default::default(),
        reservations: Default::default(),
        dns: vec![],
        domain: None,
        lease_secs: super::persist::default_lease_secs(),
        internal: false,
        egress: Default::default(),
        port_security: None,
    }
}

/// Builds the snapshot of `plan`.
pub fn build(plan: Plan) -> Snapshot {
    let by_name: HashMap<&str, &NetworkIn> = plan.networks.iter().map(|n| (n.spec.name.as_str(), n)).collect();
    let mut routers: HashMap<&str, (&RouterIn, Arc<RouterView>)> = HashMap::new();
    for r in &plan.routers {
        routers.insert(r.spec.name.as_str(), (r, Arc::new(router_view(r, &by_name))));
    }
    let uplink = plan.uplink.as_ref();
    let mut networks: Vec<Option<Arc<NetworkView>>> = Vec::new();
    let mut ports_of: Vec<(&PortIn, &str)> = plan.ports.iter().map(|p| (p, p.network)).collect();
    if let Some(u) = uplink {
        ports_of.push((&u.port, UPLINK_NETWORK));
    }
    let all = plan.networks.iter().chain(uplink.map(|u| &u.net));
    for n in all {
        let name = n.spec.name.as_str();
        let attached = plan
            .routers
            .iter()
            .find(|r| r.spec.networks.iter().any(|x| x == name))
            .and_then(|r| routers.get(r.spec.name.as_str()));
        let router = match uplink {
            Some(u) if name == UPLINK_NETWORK => Some(Arc::new(uplink_view(u, &plan.networks))),
            Some(u) if n.spec.has_egress() => Some(Arc::new(egress_view(n, attached, u, &plan.networks))),
            _ => attached.map(|(_, v)| v.clone()),
        };
        let mut neighbors = plan.neighbors.get(name).cloned().unwrap_or_default();
        if let Some(u) = uplink.filter(|_| name == UPLINK_NETWORK) {
            neighbors.insert(u.kernel_ip, u.kernel_mac);
        }
        let view = NetworkView {
            id: n.id,
            name: name.to_string(),
            router,
            route_stats: n.route_stats.clone(),
            neighbors,
            gateway: n.spec.addressing.map(|a| GatewayView {
                mac: super::gateway_mac(name),
                ip: a.gateway,
                prefix: a.subnet.prefix_len(),
                punt: plan.punt.clone(),
                stats: n.gw_stats.clone(),
            }),
            max_frame: max_frame_len(n.spec.mtu),
            fdb: n.fdb.clone(),
            ports: ports_of.iter().filter(|(_, net)| *net == name).map(|(p, _)| p.id).collect(),
        };
        let i = n.id.index();
        if networks.len() <= i {
            networks.resize(i + 1, None);
        }
        networks[i] = Some(Arc::new(view));
    }
    let by_name: HashMap<&str, &Arc<NetworkView>> = networks.iter().flatten().map(|n| (n.name.as_str(), n)).collect();
    let mut ports: Vec<Option<Arc<PortView>>> = Vec::new();
    for (p, net) in ports_of {
        let Some(network) = by_name.get(net) else { continue };
        let i = p.id.index();
        if ports.len() <= i {
            ports.resize(i + 1, None);
        }
        ports[i] = Some(Arc::new(PortView {
            id: p.id,
            port: p.port.clone(),
            stats: p.stats.clone(),
            network: (*network).clone(),
            worker: p.worker,
            impair: p.impair.clone(),
            security: p.security.clone(),
            storm: p.storm.clone(),
        }));
    }
    Snapshot { epoch: plan.epoch, networks, ports, taps: Vec::new() }
}

/// The route table of network `n`, which has egress: `attached`'s routes
/// (or `n`'s own subnet), a reject route for every other tapyard subnet,
/// and the default route to the kernel's end of the uplink `u`. A user's
/// own static default route on the router comes first and wins.
fn egress_view(
    n: &NetworkIn,
    attached: Option<&(&RouterIn, Arc<RouterView>)>,
    u: &UplinkIn,
    all: &[NetworkIn],
) -> RouterView {
    let (mut routes, name, gateway_ips, stats) = match attached {
        Some((r, view)) => (view.table.routes().to_vec(), view.name.clone(), view.gateway_ips.clone(), r.stats.clone()),
        None => {
            let a = n.spec.addressing.expect("a network with egress has a subnet");
            let own = Route::new(a.subnet.network(), a.subnet.prefix_len(), n.id, None);
            (vec![own], "egress".to_string(), vec![a.gateway], u.stats.clone())
        }
    };
    for other in all.iter().filter(|o| o.id != n.id) {
        if let Some(a) = other.spec.addressing {
            // After the router's own routes: a connected or static route
            // to the same prefix is kept (RouteTable keeps the first given).
            routes.push(Route::new(a.subnet.network(), a.subnet.prefix_len(), NetId::NONE, None));
        }
    }
    routes.push(Route::new(Ipv4Addr::UNSPECIFIED, 0, u.net.id, Some(u.kernel_ip)));
    RouterView { name, table: RouteTable::new(routes), gateway_ips, stats }
}

/// The uplink network's route table: every network with egress, connected.
fn uplink_view(u: &UplinkIn, all: &[NetworkIn]) -> RouterView {
    let routes = all
        .iter()
        .filter(|n| n.spec.has_egress())
        .filter_map(|n| n.spec.addressing.map(|a| Route::new(a.subnet.network(), a.subnet.prefix_len(), n.id, None)))
        .collect();
    RouterView {
        name: "uplink".to_string(),
        table: RouteTable::new(routes),
        gateway_ips: u.net.spec.addressing.map(|a| a.gateway).into_iter().collect(),
        stats: u.stats.clone(),
    }
}

fn router_view(r: &RouterIn, nets: &HashMap<&str, &NetworkIn>) -> RouterView {
    let attached: Vec<&NetworkIn> = r.spec.networks.iter().filter_map(|n| nets.get(n.as_str()).copied()).collect();
    let mut routes = Vec::new();
    for n in &attached {
        if let Some(a) = n.spec.addressing {
            routes.push(Route::new(a.subnet.network(), a.subnet.prefix_len(), n.id, None));
        }
    }
    for (prefix, via) in &r.spec.routes {
        let egress = attached.iter().find(|n| n.spec.addressing.is_some_and(|a| a.subnet.contains(via)));
        if let Some(n) = egress {
            routes.push(Route::new(prefix.network(), prefix.prefix_len(), n.id, Some(*via)));
        }
    }
    RouterView {
        name: r.spec.name.clone(),
        table: RouteTable::new(routes),
        gateway_ips: attached.iter().filter_map(|n| n.spec.addressing.map(|a| a.gateway)).collect(),
        stats: r.stats.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::mem::MemPort;

    fn spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
        network_spec(name, subnet)
    }

    /// A plain port (no impairment, port security or storm control).
    fn port_in(id: u16, network: &str, port: Arc<dyn Port>, worker: usize) -> PortIn<'_> {
        PortIn {
            id: PortId(id),
            network,
            port,
            stats: Arc::default(),
            worker,
            impair: None,
            security: None,
            storm: None,
        }
    }

    #[test]
    fn routes_follow_network_ids_not_positions() {
        let (a, b, c) = (spec("a", Some("10.1.0.0/24")), spec("b", Some("10.2.0.0/24")), spec("c", None));
        let r = RouterSpec {
            name: "r".into(),
            networks: vec!["a".into(), "b".into(), "gone".into()],
            routes: vec![
                ("10.9.0.0/16".parse().unwrap(), "10.2.0.9".parse().unwrap()),
                // A next hop on no attached network: left out.
                ("10.8.0.0/16".parse().unwrap(), "192.0.2.1".parse().unwrap()),
            ],
        };
        let port: Arc<dyn Port> = Arc::new(MemPort::new("p"));
        let net = |id, spec| NetworkIn::new(NetId(id), spec);
        let snap = build(Plan {
            epoch: 7,
            // Ids are not positions: network "b" is 9 whatever comes before it.
            networks: vec![net(9, &b), net(3, &a), net(4, &c)],
            routers: vec![RouterIn { spec: &r, stats: Arc::default() }],
            ports: vec![port_in(5, "a", port.clone(), 1), port_in(6, "nowhere", port, 0)],
            neighbors: BTreeMap::from([(
                "b".to_string(),
                HashMap::from([(Ipv4Addr::new(10, 2, 0, 9), MacAddr([2; 6]))]),
            )]),
            punt: Arc::new(PuntQueue::new()),
            uplink: None,
        });
        assert_eq!(snap.epoch, 7);
        let a = snap.network(NetId(3)).unwrap();
        assert_eq!(a.name, "a");
        assert_eq!(a.ports, vec![PortId(5)]);
        let router = a.router.as_ref().unwrap();
        let hop = |d: &str| router.table.lookup(d.parse().unwrap()).map(|r| (r.target, r.via));
        assert_eq!(hop("10.1.0.7"), Some((NetId(3), None)));
        assert_eq!(hop("10.2.0.7"), Some((NetId(9), None)));
        assert_eq!(hop("10.9.1.1"), Some((NetId(9), Some("10.2.0.9".parse().unwrap()))));
        assert_eq!(hop("10.8.1.1"), None);
        assert_eq!(router.gateway_ips, vec![Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 2, 0, 1)]);
        let b = snap.network(NetId(9)).unwrap();
        assert_eq!(b.neighbors[&Ipv4Addr::new(10, 2, 0, 9)], MacAddr([2; 6]));
        assert_eq!(b.gateway.as_ref().unwrap().ip, Ipv4Addr::new(10, 2, 0, 1));
        assert!(snap.network(NetId(4)).unwrap().gateway.is_none(), "no subnet, no gateway");
        assert!(snap.network(NetId(4)).unwrap().router.is_none());
        assert!(snap.network(NetId(0)).is_none());
        assert_eq!(snap.port(PortId(5)).unwrap().worker, 1);
        assert!(snap.port(PortId(6)).is_none(), "a port of an unknown network is left out");
    }

    #[test]
    fn egress_routes_out_through_the_uplink_and_never_to_another_network() {
        let (a, b, c) =
            (spec("a", Some("10.1.0.0/24")), spec("b", Some("10.2.0.0/24")), spec("c", Some("10.3.0.0/24")));
        let d = NetworkSpec { egress: super::super::persist::EgressMode::None, ..spec("d", Some("10.4.0.0/24")) };
        let r = RouterSpec { name: "r".into(), networks: vec!["c".into(), "d".into()], routes: vec![] };
        let transit = NetworkSpec {
            addressing: Some(tapyard_ipam::Addressing::new("100.127.255.0/30".parse().unwrap(), None).unwrap()),
            internal: true,
            ..spec(UPLINK_NETWORK, None)
        };
        let port: Arc<dyn Port> = Arc::new(MemPort::new("up"));
        let kernel = Ipv4Addr::new(100, 127, 255, 1);
        let net = |id, spec| NetworkIn::new(NetId(id), spec);
        let snap = build(Plan {
            epoch: 1,
            networks: vec![net(1, &a), net(2, &b), net(3, &c), net(4, &d)],
            routers: vec![RouterIn { spec: &r, stats: Arc::default() }],
            ports: vec![],
            neighbors: BTreeMap::new(),
            punt: Arc::new(PuntQueue::new()),
            uplink: Some(UplinkIn {
                net: net(9, &transit),
                port: port_in(7, UPLINK_NETWORK, port, 0),
                kernel_ip: kernel,
                kernel_mac: MacAddr([4; 6]),
                stats: Arc::default(),
            }),
        });
        let hop = |net: u32, dst: &str| {
            let n = snap.network(NetId(net)).unwrap();
            let r = n.router.as_ref()?.table.lookup(dst.parse().unwrap())?;
            Some((r.target, r.via))
        };
        let out = Some((NetId(9), Some(kernel)));
        // A network with egress and no router: its own subnet, the world
        // through the uplink, and no other tapyard network.
        assert_eq!(hop(1, "10.1.0.9"), Some((NetId(1), None)));
        assert_eq!(hop(1, "198.18.0.2"), out);
        assert_eq!(hop(1, "10.2.0.9"), Some((NetId::NONE, None)), "never to b through the host");
        assert_eq!(hop(2, "10.1.0.9"), Some((NetId::NONE, None)));
        // On a router: its attached networks, not the others, and out.
        assert_eq!(hop(3, "10.4.0.9"), Some((NetId(4), None)));
        assert_eq!(hop(3, "10.1.0.9"), Some((NetId::NONE, None)));
        assert_eq!(hop(3, "198.18.0.2"), out);
        // Without egress: the router's table alone.
        assert_eq!(hop(4, "10.3.0.9"), Some((NetId(3), None)));
        assert_eq!(hop(4, "198.18.0.2"), None);
        // Back from the uplink: to the networks with egress only.
        assert_eq!(hop(9, "10.1.0.9"), Some((NetId(1), None)));
        assert_eq!(hop(9, "10.3.0.9"), Some((NetId(3), None)));
        assert_eq!(hop(9, "10.4.0.9"), None);
        let up = snap.network(NetId(9)).unwrap();
        assert_eq!(up.ports, vec![PortId(7)]);
        assert_eq!(up.neighbors[&kernel], MacAddr([4; 6]));
        assert_eq!(snap.port(PortId(7)).unwrap().network.id, NetId(9));
    }
}
