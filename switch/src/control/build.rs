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

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::persist::{NetworkSpec, RouterSpec};
use crate::datapath::max_frame_len;
use crate::packet::NetId;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
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
    }
}

/// Builds the snapshot of `plan`.
pub fn build(plan: Plan) -> Snapshot {
    let by_name: HashMap<&str, &NetworkIn> = plan.networks.iter().map(|n| (n.spec.name.as_str(), n)).collect();
    let mut routers: HashMap<&str, Arc<RouterView>> = HashMap::new();
    for r in &plan.routers {
        routers.insert(r.spec.name.as_str(), Arc::new(router_view(r, &by_name)));
    }
    let mut networks: Vec<Option<Arc<NetworkView>>> = Vec::new();
    for n in &plan.networks {
        let name = n.spec.name.as_str();
        let router = plan
            .routers
            .iter()
            .find(|r| r.spec.networks.iter().any(|x| x == name))
            .and_then(|r| routers.get(r.spec.name.as_str()).cloned());
        let view = NetworkView {
            id: n.id,
            name: name.to_string(),
            router,
            route_stats: n.route_stats.clone(),
            neighbors: plan.neighbors.get(name).cloned().unwrap_or_default(),
            gateway: n.spec.addressing.map(|a| GatewayView {
                mac: super::gateway_mac(name),
                ip: a.gateway,
                prefix: a.subnet.prefix_len(),
                punt: plan.punt.clone(),
                stats: n.gw_stats.clone(),
            }),
            max_frame: max_frame_len(n.spec.mtu),
            fdb: n.fdb.clone(),
            ports: plan.ports.iter().filter(|p| p.network == name).map(|p| p.id).collect(),
        };
        let i = n.id.index();
        if networks.len() <= i {
            networks.resize(i + 1, None);
        }
        networks[i] = Some(Arc::new(view));
    }
    let by_name: HashMap<&str, &Arc<NetworkView>> = networks.iter().flatten().map(|n| (n.name.as_str(), n)).collect();
    let mut ports: Vec<Option<Arc<PortView>>> = Vec::new();
    for p in &plan.ports {
        let Some(network) = by_name.get(p.network) else { continue };
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
        }));
    }
    Snapshot { epoch: plan.epoch, networks, ports }
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
            ports: vec![
                PortIn { id: PortId(5), network: "a", port: port.clone(), stats: Arc::default(), worker: 1 },
                PortIn { id: PortId(6), network: "nowhere", port, stats: Arc::default(), worker: 0 },
            ],
            neighbors: BTreeMap::from([(
                "b".to_string(),
                HashMap::from([(Ipv4Addr::new(10, 2, 0, 9), MacAddr([2; 6]))]),
            )]),
            punt: Arc::new(PuntQueue::new()),
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
}
