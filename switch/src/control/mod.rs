//! The control plane: owns the mutable configuration (networks, ports), turns
//! every change into a new [`Snapshot`] for the workers, persists it, and
//! answers the control socket. It may allocate, block and log; the data path
//! never calls into it. It reaches the workers only by publishing snapshots
//! and waking them, and hears from them only through a bounded event queue.
//!
//! Removing a port: the port leaves the configuration, a snapshot without it
//! is published, the control plane waits until every worker has adopted that
//! snapshot (so none still reads or writes the port), flushes the port's
//! forwarding entries, and only then drops the last reference, which closes
//! the TAP fd and makes the kernel delete the interface.

pub mod build;
pub mod gateway;
pub mod netns;
pub mod persist;
pub mod proto;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};
use tapyard_ipam::dhcp::DhcpConfig;
use tapyard_ipam::lease::LeaseState;
use tapyard_ipam::store::Store;
use tapyard_ipam::{check_static, next_subnet, Addressing, DefaultPool, Ipv4Net};

use crate::clock::Clock;
use crate::packet::NetId;
use crate::port::tap::TapPort;
use crate::port::vhost::{self, VhostConfig, VhostPort};
use crate::port::Offloads;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
use crate::snapshot::Snapshot;
use crate::stats::{GatewayStats, PortStats, RouterStats};
use crate::table::fdb::{DEFAULT_AGEING_SECS, DEFAULT_CAPACITY};
use crate::table::Fdb;
use crate::wire::MacAddr;
use crate::worker::{self, PortEvent, WorkerHandle};
use netns::Netns;
use persist::{NetworkSpec, PortSpec, RouterSpec, State, VhostSpec};
use proto::*;

pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_IFNAME: &str = "eth0";
/// Smallest MTU accepted: the IPv4 minimum (RFC 791: every host must take 68 octets).
pub const MIN_MTU: u32 = 68;
/// Largest MTU accepted: what a frame buffer holds (packet::MAX_FRAME).
pub const MAX_MTU: u32 = 65_535;

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub workers: usize,
    /// Busy polling: workers never sleep (`daemon --poll busy`).
    pub busy: bool,
    /// Where networks created without `--subnet` take their subnet.
    pub default_pools: Vec<DefaultPool>,
}

struct Network {
    /// The network's identity in the data path (see [`NetId`]).
    id: NetId,
    spec: NetworkSpec,
    fdb: Arc<Fdb>,
    route_stats: Arc<RouterStats>,
    gw_stats: Arc<GatewayStats>,
}

struct PortRec {
    id: PortId,
    spec: PortSpec,
    /// The namespace of a TAP port; none for a vhost-user port.
    netns: Option<Netns>,
    port: Arc<dyn Port>,
    /// The same port, for its vhost-user details.
    vhost: Option<Arc<VhostPort>>,
    stats: Arc<PortStats>,
    worker: usize,
}

struct RouterRec {
    spec: RouterSpec,
    stats: Arc<RouterStats>,
}

#[derive(Default)]
struct Inner {
    routers: BTreeMap<String, RouterRec>,
    networks: BTreeMap<String, Network>,
    ports: BTreeMap<PortId, PortRec>,
    epoch: u64,
    /// The next network id to hand out (ids are never reused while the daemon runs).
    next_net: u32,
}

impl Inner {
    /// A new network id.
    fn net_id(&mut self) -> NetId {
        self.next_net += 1;
        NetId(self.next_net)
    }
}

/// Under the state directory: the vhost-user handlers' private sockets.
const VHOST_DIR: &str = "vhost";

/// The running daemon's control plane.
pub struct Daemon {
    cfg: Config,
    inner: Mutex<Inner>,
    /// Leases and reservations of every network. Lock order: `inner`, then `ipam`.
    ipam: Mutex<Store>,
    /// Frames from the workers to the gateway responder.
    punt: Arc<PuntQueue>,
    /// Neighbours the gateway learned from ARP (network → IPv4 → MAC, last seen),
    /// for routing to stations tapyard did not address itself.
    arp_learned: Mutex<ArpLearned>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    events: Receiver<PortEvent>,
    /// For ports that report link changes (vhost-user).
    event_tx: Sender<PortEvent>,
    clock: Clock,
}

type ApiResult = Result<Value, ApiError>;

/// What a configuration change did, for [`Daemon::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Something new (a network, port, route, attachment): workers pick it
    /// up at their next turn; nothing old is in the way.
    Added,
    /// Something taken away or cut off (a router, a route, an attachment, a
    /// network): the change is in force on every worker when commit returns.
    Removed,
}

fn to_value<T: serde::Serialize>(v: T) -> ApiResult {
    serde_json::to_value(v).map_err(|e| ApiError::system(format!("encoding the reply: {e}")))
}

impl Daemon {
    /// Starts the workers and restores the persisted networks and ports.
    pub fn start(cfg: Config) -> anyhow::Result<Arc<Daemon>> {
        let state = persist::load(&cfg.state_dir)?;
        let ipam = Store::open(&cfg.state_dir)?;
        if ipam.torn_bytes > 0 {
            tracing::warn!(
                bytes = ipam.torn_bytes,
                "skipped the torn end of the lease journal (a write cut short by a crash, never acknowledged)"
            );
        }
        // The vhost-user handlers' private sockets: whatever a killed daemon
        // left there is stale (the state directory is locked: ours alone).
        let vhost_dir = cfg.state_dir.join(VHOST_DIR);
        let _ = std::fs::remove_dir_all(&vhost_dir);
        std::fs::create_dir(&vhost_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", vhost_dir.display()))?;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = bounded(1024);
        let clock = Clock::new();
        let shared = worker::Shared {
            snapshot: snapshot.clone(),
            stop: stop.clone(),
            events: tx.clone(),
            clock,
            busy: cfg.busy,
        };
        // The cores this process may run on (its cpuset), read once here:
        // from an already-pinned thread it would be one core (DEPENDENCIES §5).
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers.max(1) {
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            workers.push(worker::spawn(i, core, shared.clone())?);
        }
        let d = Arc::new(Daemon {
            cfg,
            inner: Mutex::new(Inner::default()),
            ipam: Mutex::new(ipam),
            punt: Arc::new(PuntQueue::new()),
            arp_learned: Mutex::default(),
            snapshot,
            workers,
            stop,
            events: rx,
            event_tx: tx,
            clock,
        });
        d.restore(state);
        let hk = d.clone();
        std::thread::Builder::new().name("tapyard-hk".into()).spawn(move || hk.housekeeping())?;
        let gw = d.clone();
        let t = std::thread::Builder::new().name("tapyard-gw".into()).spawn(move || gateway::run(&*gw))?;
        d.punt.set_consumer(t.thread().clone());
        Ok(d)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock aborts the process (panic = abort in
        // release), so a poisoned lock only happens in tests: carry on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ipam(&self) -> MutexGuard<'_, Store> {
        self.ipam.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restore(&self, state: State) {
        let mut inner = self.lock();
        for spec in state.networks {
            self.add_to_ipam(&spec);
            let fdb = Arc::new(Fdb::new(spec.fdb_capacity, spec.ageing_secs));
            let id = inner.net_id();
            inner.networks.insert(
                spec.name.clone(),
                Network { id, spec, fdb, route_stats: Arc::default(), gw_stats: Arc::default() },
            );
        }
        for spec in state.routers {
            inner.routers.insert(spec.name.clone(), RouterRec { spec, stats: Arc::default() });
        }
        for spec in state.ports {
            if spec.vhost.is_some() {
                let (network, socket) = (spec.network.clone(), spec.vhost.as_ref().map(|v| v.socket.clone()));
                match self.attach_vhost(&mut inner, spec) {
                    Ok(id) => {
                        tracing::info!(port = %id, network = %network, socket = ?socket, "vhost-user port restored")
                    }
                    Err(e) => {
                        tracing::warn!(network = %network, socket = ?socket, error = %e, "cannot restore vhost-user port")
                    }
                }
                continue;
            }
            let ns = match netns::resolve(&spec.netns) {
                Ok(ns) if ns.dev == spec.netns_dev && ns.ino == spec.netns_ino => ns,
                _ => {
                    tracing::warn!(network = %spec.network, netns = %spec.netns, ifname = %spec.ifname,
                        "not reattaching port: its namespace is gone");
                    continue;
                }
            };
            // The interface a killed daemon left behind (persistent TAP): take it back as it is.
            let offloads = if spec.no_offload { Offloads::NONE } else { Offloads::ALL };
            if let Ok(tap) = TapPort::attach_in(&ns.path, &spec.ifname, self.workers.len(), offloads) {
                let id = (1..=PortId::MAX).map(PortId).find(|id| !inner.ports.contains_key(id));
                if let Some(id) = id {
                    let worker = self.pick_worker(&inner, &spec.network);
                    tracing::info!(port = %id, network = %spec.network, netns = %spec.netns, ifname = %spec.ifname,
                        "port reattached to its surviving interface");
                    let rec = PortRec {
                        id,
                        spec,
                        netns: Some(ns),
                        port: Arc::new(tap),
                        vhost: None,
                        stats: Arc::default(),
                        worker,
                    };
                    inner.ports.insert(id, rec);
                    continue;
                }
            }
            match self.attach(&mut inner, spec.clone(), ns) {
                Ok(id) => {
                    tracing::info!(port = %id, network = %spec.network, netns = %spec.netns, "port reattached")
                }
                Err(e) => {
                    tracing::warn!(network = %spec.network, netns = %spec.netns, error = %e, "cannot reattach port")
                }
            }
        }
        self.commit(&mut inner, Change::Added);
    }

    /// Gives a network with a subnet its DHCP server and leases (replaying
    /// the journal's records for it).
    fn add_to_ipam(&self, spec: &NetworkSpec) {
        let Some(a) = spec.addressing else { return };
        let cfg = DhcpConfig {
            server: a.gateway,
            subnet: a.subnet,
            dns: spec.dns.clone(),
            domain: spec.domain.clone(),
            mtu: u16::try_from(spec.mtu).ok(),
            lease_secs: spec.lease_secs,
            decline_secs: DECLINE_SECS,
        };
        let reserved = std::iter::once(a.gateway).chain(spec.aux_addresses.values().copied());
        let statics = spec.reservations.iter().map(|(m, ip)| (m.0, *ip));
        self.ipam().add_network(&spec.name, cfg, spec.ip_range.unwrap_or(a.subnet), reserved, statics);
    }

    /// Makes queued lease records durable.
    fn commit_ipam(&self, store: &mut Store) -> Result<(), ApiError> {
        store.commit().map_err(|e| {
            tracing::error!(error = %e, "cannot write the lease journal");
            ApiError::system(format!("cannot write the lease journal: {e}"))
        })
    }

    /// Builds and publishes a snapshot of `inner`, wakes the workers, and returns its epoch.
    fn publish(&self, inner: &mut Inner) -> u64 {
        inner.epoch += 1;
        let plan = build::Plan {
            epoch: inner.epoch,
            networks: inner
                .networks
                .values()
                .map(|n| build::NetworkIn {
                    id: n.id,
                    spec: &n.spec,
                    fdb: n.fdb.clone(),
                    route_stats: n.route_stats.clone(),
                    gw_stats: n.gw_stats.clone(),
                })
                .collect(),
            routers: inner
                .routers
                .values()
                .map(|r| build::RouterIn { spec: &r.spec, stats: r.stats.clone() })
                .collect(),
            ports: inner
                .ports
                .values()
                .map(|p| build::PortIn {
                    id: p.id,
                    network: &p.spec.network,
                    port: p.port.clone(),
                    stats: p.stats.clone(),
                    worker: p.worker,
                })
                .collect(),
            neighbors: self.neighbors(inner),
            punt: self.punt.clone(),
        };
        self.snapshot.store(Arc::new(build::build(plan)));
        for w in &self.workers {
            if let Err(e) = w.waker.wake() {
                tracing::error!(error = %e, "cannot wake worker");
            }
        }
        inner.epoch
    }

    /// IPv4 → MAC of every station tapyard knows, per network: port
    /// addresses and bound DHCP leases. Routed packets are sent to these.
    fn neighbors(&self, inner: &Inner) -> BTreeMap<String, std::collections::HashMap<std::net::Ipv4Addr, MacAddr>> {
        let mut m: BTreeMap<String, std::collections::HashMap<std::net::Ipv4Addr, MacAddr>> = BTreeMap::new();
        let now = unix_now();
        for (net, l) in self.ipam().leases(None) {
            if l.is_active(now) {
                m.entry(net).or_default().insert(l.addr, MacAddr(l.mac));
            }
        }
        for p in inner.ports.values() {
            if let Some(ip) = p.spec.ip {
                m.entry(p.spec.network.clone()).or_default().insert(ip.addr(), p.spec.mac);
            }
        }
        // Then what the gateway learned from ARP, for stations that configured
        // their own addresses; entries not seen for the ageing time expire.
        let mut learned = self.arp_learned.lock().unwrap_or_else(|e| e.into_inner());
        for (net, entries) in learned.iter_mut() {
            entries.retain(|_, (_, seen)| seen.elapsed() < Duration::from_secs(u64::from(DEFAULT_AGEING_SECS)));
            let into = m.entry(net.clone()).or_default();
            for (ip, (mac, _)) in entries.iter() {
                into.entry(*ip).or_insert(*mac);
            }
        }
        m
    }

    /// The one way a configuration change reaches the workers and the disk:
    /// publishes the new snapshot, waits for every worker to adopt it when
    /// something was taken away (so nothing forwards with the old one after
    /// this returns), and saves the state.
    fn commit(&self, inner: &mut Inner, change: Change) {
        let epoch = self.publish(inner);
        if change == Change::Removed {
            self.wait_adopted(epoch);
        }
        self.persist(inner);
    }

    /// Publishes a new snapshot after a change outside the control socket
    /// (a DHCP lease bound by the gateway thread: a new neighbour to route to).
    pub(crate) fn republish(&self) {
        let mut inner = self.lock();
        self.publish(&mut inner);
    }

    /// Waits until every worker runs on snapshot `epoch` or later.
    fn wait_adopted(&self, epoch: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.workers.iter().any(|w| w.adopted.load(Ordering::Acquire) < epoch) {
            if Instant::now() > deadline {
                tracing::error!(epoch, "a worker did not adopt the new configuration within 5 s");
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn persist(&self, inner: &Inner) {
        let state = State {
            version: 0,
            networks: inner.networks.values().map(|n| n.spec.clone()).collect(),
            ports: inner.ports.values().map(|p| p.spec.clone()).collect(),
            routers: inner.routers.values().map(|r| r.spec.clone()).collect(),
        };
        if let Err(e) = persist::save(&self.cfg.state_dir, &state) {
            tracing::error!(dir = %self.cfg.state_dir.display(), error = %e, "cannot save state");
        }
    }

    /// Serves one request.
    pub fn handle(&self, req: Request) -> ApiResult {
        match req {
            Request::Ping => to_value(PingInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
                workers: self.workers.len(),
                socket: self.cfg.socket.display().to_string(),
                state_dir: self.cfg.state_dir.display().to_string(),
            }),
            Request::NetworkCreate(args) => self.network_create(args),
            Request::RouterCreate { name } => self.router_create(name),
            Request::RouterAttach { router, network } => self.router_attach(&router, &network, true),
            Request::RouterDetach { router, network } => self.router_attach(&router, &network, false),
            Request::RouterLs => {
                let inner = self.lock();
                to_value(inner.routers.values().map(|r| router_info(&inner, r)).collect::<Vec<_>>())
            }
            Request::RouterInspect { name } => {
                let inner = self.lock();
                to_value(router_info(&inner, router(&inner, &name)?))
            }
            Request::RouterRm { name } => {
                let mut inner = self.lock();
                router(&inner, &name)?;
                inner.routers.remove(&name);
                // Like a detach of every network: no worker routes through it after this returns.
                self.commit(&mut inner, Change::Removed);
                Ok(json!({ "removed": name }))
            }
            Request::RouteAdd { router, prefix, via } => self.route_change(&router, &prefix, Some(&via)),
            Request::RouteDel { router, prefix } => self.route_change(&router, &prefix, None),
            Request::RouteLs { router: filter } => {
                let inner = self.lock();
                if let Some(r) = &filter {
                    router(&inner, r)?;
                }
                let routes: Vec<RouteInfo> = inner
                    .routers
                    .values()
                    .filter(|r| filter.as_ref().is_none_or(|f| f == &r.spec.name))
                    .flat_map(|r| router_info(&inner, r).routes)
                    .collect();
                to_value(routes)
            }
            Request::NetworkReserve { network, mac, ip } => self.network_reserve(&network, &mac, &ip),
            Request::LeaseLs { network: filter } => {
                if let Some(n) = &filter {
                    network(&self.lock(), n)?;
                }
                let now = unix_now();
                let leases = self.ipam().leases(filter.as_deref());
                to_value(leases.into_iter().map(|(n, l)| lease_info(n, l, now)).collect::<Vec<_>>())
            }
            Request::NetworkLs => {
                let inner = self.lock();
                to_value(inner.networks.values().map(|n| self.network_info(&inner, n)).collect::<Vec<_>>())
            }
            Request::NetworkInspect { name } => {
                let inner = self.lock();
                let net = network(&inner, &name)?;
                to_value(self.network_info(&inner, net))
            }
            Request::NetworkRm { name, force } => self.network_rm(&name, force),
            Request::Connect { network, netns, ifname, mac, ip, offload } => {
                self.check_order("connect", &network, &netns)?;
                self.connect(network, netns, ifname, mac, ip, offload.unwrap_or(true)).map_err(with_privilege_hint)
            }
            Request::Disconnect { network, netns, ifname } => {
                self.check_order("disconnect", &network, &netns)?;
                self.disconnect(&network, &netns, ifname)
            }
            Request::ConnectVhost { network, socket, client, queues, mac, socket_mode, socket_group } => {
                let owner = SocketOwner::parse(client, socket_mode.as_deref(), socket_group.as_deref(), &socket)?;
                self.connect_vhost(network, socket, client, queues.unwrap_or(1), mac, owner)
            }
            Request::DisconnectVhost { network, socket } => self.disconnect_vhost(&network, &socket),
            Request::PortLs { network: filter } => {
                let inner = self.lock();
                if let Some(n) = &filter {
                    network(&inner, n)?;
                }
                to_value(self.port_infos(
                    &inner,
                    inner.ports.values().filter(|p| filter.as_ref().is_none_or(|n| &p.spec.network == n)),
                ))
            }
            Request::FdbShow { network: filter } => self.fdb_show(filter),
            Request::FdbFlush { network: filter } => {
                let inner = self.lock();
                if let Some(n) = &filter {
                    network(&inner, n)?;
                }
                let mut flushed = 0;
                for (name, net) in &inner.networks {
                    if filter.as_ref().is_none_or(|n| n == name) {
                        flushed += net.fdb.flush(None);
                    }
                }
                Ok(json!({ "flushed": flushed }))
            }
            Request::Shutdown => Ok(json!({ "stopping": true })),
        }
    }

    /// `connect`/`disconnect` take NETWORK first: when the first argument is
    /// no network, say so, and spot the two arguments given the other way round
    /// (otherwise the user is told to `ip netns add` a network's name).
    fn check_order(&self, verb: &str, network: &str, ns: &str) -> Result<(), ApiError> {
        let inner = self.lock();
        if inner.networks.contains_key(network) {
            return Ok(());
        }
        if inner.networks.contains_key(ns) {
            return Err(ApiError::bad_request(format!(
                "{network:?} is not a network but {ns:?} is: the order is `tapyard {verb} NETWORK NETNS`; \
                 try `tapyard {verb} {ns} {network}`"
            )));
        }
        let is_ns = if netns::resolve(network).is_ok() {
            format!(" ({network:?} is a network namespace)")
        } else {
            String::new()
        };
        Err(ApiError::not_found(format!(
            "no network named {network:?}{is_ns}; the order is `tapyard {verb} NETWORK NETNS`; see `tapyard network ls`"
        )))
    }

    /// `port_info` of each port, with the addresses DHCP leased to ports without `--ip`.
    fn port_infos<'a>(&self, inner: &Inner, ports: impl Iterator<Item = &'a PortRec>) -> Vec<PortInfo> {
        let now = unix_now();
        let leases = self.ipam().leases(None);
        ports
            .map(|p| {
                let prefix =
                    inner.networks.get(&p.spec.network).and_then(|n| n.spec.addressing).map(|a| a.subnet.prefix_len());
                let leased = leases
                    .iter()
                    .filter(|(n, l)| *n == p.spec.network && l.mac == p.spec.mac.0 && l.is_active(now))
                    .max_by_key(|(_, l)| l.expires)
                    .and_then(|(_, l)| Ipv4Net::new(l.addr, prefix?).ok());
                port_info(p, leased)
            })
            .collect()
    }

    fn network_info(&self, inner: &Inner, net: &Network) -> NetworkInfo {
        let s = &net.spec;
        let (pool_used, pool_size) = self.ipam().network(&s.name).map_or((0, 0), |d| d.leases.usage());
        NetworkInfo {
            name: s.name.clone(),
            subnet: s.addressing.map(|a| a.subnet.to_string()),
            gateway: s.addressing.map(|a| a.gateway.to_string()),
            ip_range: s.ip_range.map(|r| r.to_string()),
            aux_addresses: s.aux_addresses.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            reservations: s.reservations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            dns: s.dns.iter().map(|d| d.to_string()).collect(),
            domain: s.domain.clone(),
            lease_secs: s.lease_secs,
            pool_used,
            pool_size,
            gateway_mac: s.addressing.map(|_| gateway_mac(&s.name).to_string()),
            gateway_counters: net.gw_stats.snapshot(),
            mtu: s.mtu,
            internal: s.internal,
            route_counters: net.route_stats.snapshot(),
            neighbors: self
                .snapshot
                .load()
                .network(net.id)
                .map(|v| v.neighbors.iter().map(|(ip, mac)| (ip.to_string(), mac.to_string())).collect())
                .unwrap_or_default(),
            router: inner.routers.values().find(|r| r.spec.networks.contains(&s.name)).map(|r| r.spec.name.clone()),
            ageing_secs: net.fdb.ageing_secs(),
            fdb_capacity: s.fdb_capacity,
            fdb_entries: net.fdb.table().len(),
            ports: self.port_infos(inner, inner.ports.values().filter(|p| p.spec.network == s.name)),
        }
    }

    fn network_create(&self, args: NetworkCreate) -> ApiResult {
        let NetworkCreate {
            name,
            subnet,
            gateway,
            ip_range,
            aux_addresses,
            dns,
            domain,
            lease_secs,
            ipam,
            mtu,
            ageing_secs,
            fdb_capacity,
            internal,
        } = args;
        check_network_name(&name)?;
        let mtu = mtu.unwrap_or(DEFAULT_MTU);
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(ApiError::bad_request(format!("MTU {mtu} is out of range: use {MIN_MTU} to {MAX_MTU}")));
        }
        let fdb_capacity = fdb_capacity.unwrap_or(DEFAULT_CAPACITY);
        if !(1..=1 << 20).contains(&fdb_capacity) {
            return Err(ApiError::bad_request("FDB capacity must be between 1 and 1048576 entries"));
        }
        let ageing_secs = ageing_secs.unwrap_or(DEFAULT_AGEING_SECS);
        if ageing_secs == 0 {
            return Err(ApiError::bad_request("ageing time must be at least 1 second"));
        }
        let lease_secs = lease_secs.unwrap_or_else(persist::default_lease_secs);
        if lease_secs < 60 {
            return Err(ApiError::bad_request("lease time must be at least 60 seconds"));
        }
        let l2_only = match ipam.as_deref() {
            None | Some("default") => false,
            Some("none") => true,
            Some(other) => return Err(ApiError::bad_request(format!("unknown --ipam {other:?}: use default or none"))),
        };
        let parse_ip = |what: &str, v: &str| -> Result<std::net::Ipv4Addr, ApiError> {
            v.parse().map_err(|_| ApiError::bad_request(format!("invalid {what} {v:?}: expected an IPv4 address")))
        };
        let parse_net = |what: &str, v: &str| -> Result<Ipv4Net, ApiError> {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid {what} {v:?}: expected CIDR like 10.10.0.0/24")))
        };
        let gateway = gateway.map(|g| parse_ip("gateway", &g)).transpose()?;
        let subnet = subnet.map(|v| parse_net("subnet", &v)).transpose()?;
        let ip_range = ip_range.map(|v| parse_net("--ip-range", &v)).transpose()?;
        let dns = dns.iter().map(|d| parse_ip("DNS server", d)).collect::<Result<Vec<_>, _>>()?;
        let mut aux = std::collections::BTreeMap::new();
        for a in &aux_addresses {
            let (n, ip) = a
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("invalid --aux-address {a:?}: expected NAME=IP")))?;
            aux.insert(n.to_string(), parse_ip("aux address", ip)?);
        }
        let has_ipam_args =
            subnet.is_some() || gateway.is_some() || ip_range.is_some() || !aux.is_empty() || !dns.is_empty();
        if l2_only && has_ipam_args {
            return Err(ApiError::bad_request(
                "--ipam none takes no --subnet, --gateway, --ip-range, --aux-address or --dns",
            ));
        }
        if subnet.is_none() && (gateway.is_some() || ip_range.is_some()) {
            return Err(ApiError::bad_request("--gateway and --ip-range need --subnet"));
        }
        let mut inner = self.lock();
        if inner.networks.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "network {name:?} already exists; remove it first or pick another name"
            )));
        }
        let taken: Vec<Ipv4Net> = inner.networks.values().filter_map(|n| n.spec.addressing.map(|a| a.subnet)).collect();
        let subnet = match (subnet, l2_only) {
            (Some(s), _) => Some(s),
            (None, true) => None,
            (None, false) => Some(next_subnet(&self.cfg.default_pools, &taken).ok_or_else(|| {
                ApiError::conflict(
                    "every subnet of the default address pools is taken: give --subnet, or start the daemon with more --default-pool",
                )
            })?),
        };
        let addressing = match subnet {
            Some(net) => Some(Addressing::new(net, gateway).map_err(|e| ApiError::bad_request(e.to_string()))?),
            None => None,
        };
        if let Some(a) = &addressing {
            a.check_overlap(
                inner.networks.values().filter_map(|n| n.spec.addressing.map(|x| (n.spec.name.as_str(), x.subnet))),
            )
            .map_err(|e| ApiError::conflict(e.to_string()))?;
            if let Some(r) = ip_range {
                if !a.subnet.contains(&r) {
                    return Err(ApiError::bad_request(format!("--ip-range {r} must lie inside subnet {}", a.subnet)));
                }
            }
            for (n, ip) in &aux {
                if !a.subnet.contains(ip) || *ip == a.gateway {
                    return Err(ApiError::bad_request(format!(
                        "aux address {n}={ip} must be a host of subnet {} other than the gateway",
                        a.subnet
                    )));
                }
            }
        }
        let spec = NetworkSpec {
            name: name.clone(),
            addressing,
            mtu,
            ageing_secs,
            fdb_capacity,
            ip_range,
            aux_addresses: aux,
            reservations: Default::default(),
            dns,
            domain,
            lease_secs,
            internal,
        };
        self.add_to_ipam(&spec);
        let fdb = Arc::new(Fdb::new(fdb_capacity, ageing_secs));
        let id = inner.net_id();
        inner
            .networks
            .insert(name.clone(), Network { id, spec, fdb, route_stats: Arc::default(), gw_stats: Arc::default() });
        self.commit(&mut inner, Change::Added);
        tracing::info!(network = %name, subnet = ?subnet, "network created");
        to_value(self.network_info(&inner, &inner.networks[&name]))
    }

    fn router_create(&self, name: String) -> ApiResult {
        check_network_name(&name)?;
        let mut inner = self.lock();
        if inner.routers.contains_key(&name) {
            return Err(ApiError::conflict(format!("router {name:?} already exists")));
        }
        let spec = RouterSpec { name: name.clone(), networks: vec![], routes: vec![] };
        inner.routers.insert(name.clone(), RouterRec { spec, stats: Arc::default() });
        self.persist(&inner);
        to_value(router_info(&inner, &inner.routers[&name]))
    }

    fn router_attach(&self, rname: &str, net: &str, attach: bool) -> ApiResult {
        let mut inner = self.lock();
        router(&inner, rname)?;
        let n = network(&inner, net)?;
        if attach {
            if n.spec.internal {
                return Err(ApiError::conflict(format!(
                    "network {net:?} is --internal: it is never attached to a router"
                )));
            }
            if n.spec.addressing.is_none() {
                return Err(ApiError::bad_request(format!(
                    "network {net:?} has no subnet (--ipam none): nothing to route"
                )));
            }
            if let Some(r) = inner.routers.values().find(|r| r.spec.networks.iter().any(|x| x == net)) {
                return Err(ApiError::conflict(format!(
                    "network {net:?} is already attached to router {:?}",
                    r.spec.name
                )));
            }
            inner.routers.get_mut(rname).expect("checked").spec.networks.push(net.to_string());
        } else {
            let r = inner.routers.get_mut(rname).expect("checked");
            if !r.spec.networks.iter().any(|x| x == net) {
                return Err(ApiError::not_found(format!("network {net:?} is not attached to router {rname:?}")));
            }
            r.spec.networks.retain(|x| x != net);
        }
        // Detaching cuts the network off at once: no worker routes with the old table after this returns.
        self.commit(&mut inner, if attach { Change::Added } else { Change::Removed });
        to_value(router_info(&inner, &inner.routers[rname]))
    }

    fn route_change(&self, rname: &str, prefix: &str, via: Option<&str>) -> ApiResult {
        let prefix: Ipv4Net = prefix.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid prefix {prefix:?}: expected CIDR like 10.50.0.0/16"))
        })?;
        let prefix = prefix.trunc();
        let mut inner = self.lock();
        router(&inner, rname)?;
        match via {
            Some(v) => {
                let via: std::net::Ipv4Addr =
                    v.parse().map_err(|_| ApiError::bad_request(format!("invalid next hop {v:?}: expected IPv4")))?;
                let r = &inner.routers[rname];
                let ok = r.spec.networks.iter().any(|n| {
                    inner.networks.get(n).and_then(|x| x.spec.addressing).is_some_and(|a| a.subnet.contains(&via))
                });
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "next hop {via} is in none of router {rname:?}'s networks; attach its network first"
                    )));
                }
                let r = inner.routers.get_mut(rname).expect("checked");
                r.spec.routes.retain(|(p, _)| *p != prefix);
                r.spec.routes.push((prefix, via));
            }
            None => {
                let r = inner.routers.get_mut(rname).expect("checked");
                let before = r.spec.routes.len();
                r.spec.routes.retain(|(p, _)| *p != prefix);
                if r.spec.routes.len() == before {
                    return Err(ApiError::not_found(format!("router {rname:?} has no static route to {prefix}")));
                }
            }
        }
        // A route taken away (or replaced) is gone from every worker when this returns.
        self.commit(&mut inner, Change::Removed);
        to_value(router_info(&inner, &inner.routers[rname]))
    }

    fn network_reserve(&self, name: &str, mac: &str, ip: &str) -> ApiResult {
        let mac: MacAddr = mac.parse().map_err(|e: crate::wire::ParseMacError| ApiError::bad_request(e.to_string()))?;
        let (addr, _) = netns::parse_ip(ip)?;
        let mut inner = self.lock();
        let net = network(&inner, name)?;
        let a = net.spec.addressing.ok_or_else(|| {
            ApiError::bad_request(format!("network {name:?} has no subnet (it was created with --ipam none)"))
        })?;
        check_static(addr, None, Some(&a), net.spec.aux_addresses.values().copied())
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        {
            let mut store = self.ipam();
            let leases = &mut store.network_mut(name).expect("networks with a subnet are in IPAM").leases;
            if leases.iter().any(|l| l.addr == addr && l.mac != mac.0) {
                return Err(ApiError::conflict(format!("{addr} is leased to another client; pick another address")));
            }
            leases.add_static(mac.0, addr).map_err(|e| ApiError::conflict(e.to_string()))?;
        }
        let net = inner.networks.get_mut(name).expect("checked above");
        net.spec.reservations.insert(mac, addr);
        self.persist(&inner);
        Ok(json!({ "network": name, "mac": mac.to_string(), "ip": addr.to_string() }))
    }

    fn network_rm(&self, name: &str, force: bool) -> ApiResult {
        let mut inner = self.lock();
        network(&inner, name)?;
        let router =
            inner.routers.values().find(|r| r.spec.networks.iter().any(|n| n == name)).map(|r| r.spec.name.clone());
        if let (Some(r), false) = (&router, force) {
            return Err(ApiError::new(
                ErrorKind::Busy,
                format!(
                    "network {name:?} is attached to router {r:?}; detach it first with \
                     `tapyard router detach {r} {name}`, or use --force"
                ),
            ));
        }
        let ids: Vec<PortId> = inner.ports.values().filter(|p| p.spec.network == name).map(|p| p.id).collect();
        if !ids.is_empty() && !force {
            return Err(ApiError::new(
                ErrorKind::Busy,
                format!(
                    "network {name:?} has {} attached; disconnect {} or use --force",
                    plural(ids.len(), "port"),
                    if ids.len() == 1 { "it" } else { "them" }
                ),
            ));
        }
        if let Some(r) = &router {
            // --force: detach from the router first; remove_ports below
            // publishes and waits, so no worker routes into it afterwards.
            if let Some(rec) = inner.routers.get_mut(r) {
                rec.spec.networks.retain(|n| n != name);
            }
            tracing::info!(network = %name, router = %r, "network detached from its router for removal");
        }
        let removed = self.remove_ports(&mut inner, &ids);
        inner.networks.remove(name);
        {
            let mut store = self.ipam();
            store.remove_network(name);
            let _ = self.commit_ipam(&mut store);
        }
        // A network cut from its router is cut off at once, as `router detach` does.
        self.commit(&mut inner, Change::Removed);
        tracing::info!(network = %name, ports = removed, "network removed");
        Ok(json!({ "removed": name, "ports_removed": removed, "detached_from": router }))
    }

    fn connect(
        &self,
        network_name: String,
        ns_spec: String,
        ifname: Option<String>,
        mac: Option<String>,
        ip: Option<String>,
        offload: bool,
    ) -> ApiResult {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        netns::check_ifname(&ifname)?;
        let mac = match mac {
            Some(m) => parse_unicast_mac(&m)?,
            None => MacAddr::stable_local(format!("{network_name}\0{ns_spec}\0{ifname}").as_bytes()),
        };
        let auto = ip.as_deref() == Some("auto");
        let ip = if auto { None } else { ip.as_deref().map(netns::parse_ip).transpose()? };
        let ns = netns::resolve(&ns_spec)?;
        let mut inner = self.lock();
        let net = network(&inner, &network_name)?;
        if let Some(p) = inner
            .ports
            .values()
            .find(|p| p.netns.as_ref().is_some_and(|n| n.dev == ns.dev && n.ino == ns.ino) && p.spec.ifname == ifname)
        {
            return Err(ApiError::conflict(format!(
                "namespace {ns_spec} already has {ifname} attached to network {:?}; use another --ifname",
                p.spec.network
            )));
        }
        let peers = || inner.ports.values().filter(|p| p.spec.network == network_name);
        if let Some(p) = peers().find(|p| p.spec.mac == mac) {
            return Err(ApiError::conflict(format!(
                "MAC {mac} is already used by {} in {} on network {network_name:?}",
                p.spec.ifname, p.spec.netns
            )));
        }
        let addressing = net.spec.addressing;
        let reserved_aux = net.spec.aux_addresses.values().any(|a| ip.is_some_and(|(x, _)| x == *a));
        let ip = match ip {
            Some((addr, _)) if reserved_aux => {
                return Err(ApiError::conflict(format!("{addr} is an aux address of network {network_name:?}")))
            }
            Some((addr, prefix)) => Some(
                check_static(addr, prefix, addressing.as_ref(), peers().filter_map(|p| p.spec.ip.map(|i| i.addr())))
                    .map_err(|e| ApiError::conflict(e.to_string()))?,
            ),
            None => None,
        };
        if auto && addressing.is_none() {
            return Err(ApiError::bad_request(format!(
                "--ip auto needs a network with a subnet; {network_name:?} was created with --ipam none"
            )));
        }
        // IPAM: --ip auto takes an address; --ip claims it so DHCP never hands it out.
        let ip = if let Some(a) = addressing {
            let mut store = self.ipam();
            let now = unix_now();
            let got = match ip {
                _ if auto => {
                    let addr = store
                        .allocate_port(&network_name, mac.0, now)
                        .map_err(|_| ApiError::conflict(format!("no free address left on network {network_name:?}")))?;
                    Some(Ipv4Net::new(addr, a.subnet.prefix_len()).expect("prefix of a valid subnet"))
                }
                Some(net) => {
                    store.claim_port(&network_name, mac.0, net.addr(), now).map_err(|_| {
                        ApiError::conflict(format!(
                            "{} is leased to another client on network {network_name:?}",
                            net.addr()
                        ))
                    })?;
                    Some(net)
                }
                None => None,
            };
            self.commit_ipam(&mut store)?;
            got
        } else {
            ip
        };
        let spec = PortSpec {
            network: network_name.clone(),
            netns: ns_spec,
            ifname,
            mac,
            ip,
            netns_dev: ns.dev,
            netns_ino: ns.ino,
            no_offload: !offload,
            vhost: None,
        };
        let id = self.attach(&mut inner, spec, ns).inspect_err(|_| {
            // Nothing was attached: give back the address taken above, or
            // a retry (say with another --ifname, hence another MAC) finds it leased.
            let mut store = self.ipam();
            store.release_port(&network_name, mac.0);
            let _ = self.commit_ipam(&mut store);
        })?;
        self.commit(&mut inner, Change::Added);
        let rec = &inner.ports[&id];
        tracing::info!(port = %id, network = %rec.spec.network, netns = %rec.spec.netns, ifname = %rec.spec.ifname, "port connected");
        to_value(self.port_infos(&inner, std::iter::once(rec)).pop())
    }

    /// Creates the TAP for `spec` inside `ns`, configured, and records the port
    /// (unpublished). On error nothing is left behind: dropping the TAP fd deletes the interface.
    fn attach(&self, inner: &mut Inner, spec: PortSpec, ns: Netns) -> Result<PortId, ApiError> {
        let net = network(inner, &spec.network)?;
        let mtu = net.spec.mtu;
        // A port with an address in the subnet routes through the gateway.
        let gateway =
            net.spec.addressing.filter(|a| spec.ip.is_some_and(|ip| a.subnet.contains(&ip.addr()))).map(|a| a.gateway);
        let id = (1..=PortId::MAX)
            .map(PortId)
            .find(|id| !inner.ports.contains_key(id))
            .ok_or_else(|| ApiError::system("no free port ids (65534 ports in use)"))?;
        let offloads = if spec.no_offload { Offloads::NONE } else { Offloads::ALL };
        let cfg = netns::LinkConfig { ifname: &spec.ifname, mac: spec.mac, mtu, ip: spec.ip, gateway };
        let tap = netns::create_tap(&ns, cfg, self.workers.len(), offloads)?;
        // Configured: from now on the interface survives a SIGKILL of the daemon.
        tap.set_persist(true).map_err(|e| ApiError::system(format!("cannot make the TAP persistent: {e}")))?;
        let worker = self.pick_worker(inner, &spec.network);
        let rec =
            PortRec { id, spec, netns: Some(ns), port: Arc::new(tap), vhost: None, stats: Arc::default(), worker };
        inner.ports.insert(id, rec);
        Ok(id)
    }

    /// The worker to read a new port of `network`: the worker already serving
    /// that network, else the one with the fewest ports. Keeping a network's
    /// ports on one worker means a request and its reply cross one thread, not
    /// two: on this 2-core machine that halved ping latency (241 → 115 µs
    /// median) and raised single-stream TCP (0.97 → 1.21 Gbit/s) in
    /// scripts/bench-l2.sh. Different networks spread over the workers. Only
    /// one-queue ports use this: a TAP has one queue per worker.
    fn pick_worker(&self, inner: &Inner, network: &str) -> usize {
        if let Some(p) = inner.ports.values().find(|p| p.spec.network == network) {
            return p.worker;
        }
        // Networks routed to each other are one traffic domain: same worker,
        // for the same reason (a routed request and its reply cross one thread).
        let router = inner.routers.values().find(|r| r.spec.networks.iter().any(|n| n == network));
        if let Some(p) = router.and_then(|r| inner.ports.values().find(|p| r.spec.networks.contains(&p.spec.network))) {
            return p.worker;
        }
        (0..self.workers.len()).min_by_key(|w| inner.ports.values().filter(|p| p.worker == *w).count()).unwrap_or(0)
    }

    /// Removes ports: unpublish, wait for the workers, flush their FDB
    /// entries, close their devices. Returns how many were removed.
    fn remove_ports(&self, inner: &mut Inner, ids: &[PortId]) -> usize {
        let recs: Vec<PortRec> = ids.iter().filter_map(|id| inner.ports.remove(id)).collect();
        if recs.is_empty() {
            return 0;
        }
        {
            let mut store = self.ipam();
            for r in &recs {
                store.release_port(&r.spec.network, r.spec.mac.0);
            }
            let _ = self.commit_ipam(&mut store);
        }
        let epoch = self.publish(inner);
        self.wait_adopted(epoch);
        for rec in &recs {
            if let Some(net) = inner.networks.get(&rec.spec.network) {
                net.fdb.flush(Some(rec.id));
            }
        }
        let n = recs.len();
        for rec in recs {
            rec.port.release();
            let deadline = Instant::now() + Duration::from_secs(1);
            while Arc::strong_count(&rec.port) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            drop(rec);
        }
        n
    }

    /// `connect --vhost-user`: a vhost-user backend port on `socket`.
    fn connect_vhost(
        &self,
        network_name: String,
        socket: String,
        client: bool,
        queues: u16,
        mac: Option<String>,
        owner: SocketOwner,
    ) -> ApiResult {
        let path = PathBuf::from(&socket);
        if !path.is_absolute() {
            return Err(ApiError::bad_request(format!("vhost-user socket path {socket:?} must be absolute")));
        }
        if queues == 0 || usize::from(queues) > self.workers.len() {
            return Err(ApiError::bad_request(format!(
                "--queues {queues}: each queue pair is served by one worker and this daemon has {} \
                 (daemon --workers N)",
                self.workers.len()
            )));
        }
        let mac = match mac {
            Some(m) => parse_unicast_mac(&m)?,
            None => MacAddr::stable_local(format!("{network_name}\0vhost-user\0{socket}").as_bytes()),
        };
        let mut inner = self.lock();
        network(&inner, &network_name)?;
        if let Some(p) = inner.ports.values().find(|p| p.spec.vhost.as_ref().is_some_and(|v| v.socket == path)) {
            return Err(ApiError::conflict(format!(
                "{socket} is already vhost-user port {} on network {:?}",
                p.id, p.spec.network
            )));
        }
        if let Some(p) = inner.ports.values().find(|p| p.spec.network == network_name && p.spec.mac == mac) {
            return Err(ApiError::conflict(format!(
                "MAC {mac} is already used by port {} on network {network_name:?}",
                p.id
            )));
        }
        let mode = if client { vhost::Mode::Client } else { vhost::Mode::Server };
        let spec = PortSpec {
            network: network_name,
            netns: String::new(),
            ifname: String::new(),
            mac,
            ip: None,
            netns_dev: 0,
            netns_ino: 0,
            no_offload: false,
            vhost: Some(VhostSpec { socket: path, mode, queues, socket_mode: owner.mode, socket_gid: owner.gid }),
        };
        let id = self.attach_vhost(&mut inner, spec)?;
        self.commit(&mut inner, Change::Added);
        let rec = &inner.ports[&id];
        // No frontend is there yet: say what the port waits for, not "connected".
        match mode {
            vhost::Mode::Server => tracing::info!(port = %id, network = %rec.spec.network, socket = %socket,
                queues, socket_mode = %format!("{:04o}", owner.mode), socket_gid = ?owner.gid,
                "vhost-user port listening for a frontend"),
            vhost::Mode::Client => tracing::info!(port = %id, network = %rec.spec.network, socket = %socket,
                queues, "vhost-user port connecting to its frontend"),
        }
        to_value(self.port_infos(&inner, std::iter::once(rec)).pop())
    }

    /// Starts the vhost-user backend of `spec` and records the port (unpublished).
    fn attach_vhost(&self, inner: &mut Inner, spec: PortSpec) -> Result<PortId, ApiError> {
        let v = spec.vhost.clone().ok_or_else(|| ApiError::system("not a vhost-user port"))?;
        let net = network(inner, &spec.network)?;
        let mtu = u16::try_from(net.spec.mtu).unwrap_or(u16::MAX);
        let id = (1..=PortId::MAX)
            .map(PortId)
            .find(|id| !inner.ports.contains_key(id))
            .ok_or_else(|| ApiError::system("no free port ids (65534 ports in use)"))?;
        let tx = self.event_tx.clone();
        let on_link = Box::new(move |up| {
            let _ = tx.try_send(PortEvent::VhostLink { port: id, up });
        });
        let cfg = VhostConfig {
            socket: v.socket.clone(),
            mode: v.mode,
            pairs: v.queues,
            mac: spec.mac,
            mtu,
            handler_dir: self.cfg.state_dir.join(VHOST_DIR),
            busy: self.cfg.busy,
            socket_mode: v.socket_mode,
            socket_gid: v.socket_gid,
        };
        let port = Arc::new(VhostPort::start(cfg, on_link).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::AlreadyExists => {
                ApiError::bad_request(e.to_string())
            }
            _ => ApiError::system(format!("cannot serve {}: {e}", v.socket.display())),
        })?);
        let worker = self.pick_worker(inner, &spec.network);
        let rec =
            PortRec { id, spec, netns: None, port: port.clone(), vhost: Some(port), stats: Arc::default(), worker };
        inner.ports.insert(id, rec);
        Ok(id)
    }

    fn disconnect_vhost(&self, network_name: &str, socket: &str) -> ApiResult {
        let path = PathBuf::from(socket);
        let mut inner = self.lock();
        network(&inner, network_name)?;
        let id = inner
            .ports
            .values()
            .find(|p| p.spec.network == network_name && p.spec.vhost.as_ref().is_some_and(|v| v.socket == path))
            .map(|p| p.id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no vhost-user port on {socket} in network {network_name:?}; see `tapyard port ls`"
                ))
            })?;
        self.remove_ports(&mut inner, &[id]);
        self.persist(&inner);
        tracing::info!(port = %id, network = %network_name, socket = %socket, "vhost-user port disconnected");
        Ok(json!({ "disconnected": id.0 }))
    }

    fn disconnect(&self, network_name: &str, ns_spec: &str, ifname: Option<String>) -> ApiResult {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        let ns = netns::resolve(ns_spec).ok();
        let mut inner = self.lock();
        network(&inner, network_name)?;
        let id = inner
            .ports
            .values()
            .find(|p| {
                p.spec.network == network_name
                    && p.spec.ifname == ifname
                    && match &ns {
                        Some(ns) => p.netns.as_ref().is_some_and(|n| n.dev == ns.dev && n.ino == ns.ino),
                        None => p.spec.netns == ns_spec,
                    }
            })
            .map(|p| p.id)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no port {ifname} in namespace {ns_spec} on network {network_name:?}; see `tapyard port ls`"
                ))
            })?;
        self.remove_ports(&mut inner, &[id]);
        self.persist(&inner);
        tracing::info!(port = %id, network = %network_name, netns = %ns_spec, ifname = %ifname, "port disconnected");
        Ok(json!({ "disconnected": id.0 }))
    }

    fn fdb_show(&self, filter: Option<String>) -> ApiResult {
        let inner = self.lock();
        if let Some(n) = &filter {
            network(&inner, n)?;
        }
        let now = self.clock.now_secs();
        let mut out = Vec::new();
        for (name, net) in &inner.networks {
            if filter.as_ref().is_some_and(|n| n != name) {
                continue;
            }
            for e in net.fdb.entries(now) {
                // An entry whose port is already gone is about to be flushed: skip it.
                let Some(p) = inner.ports.get(&e.port) else {
                    continue;
                };
                out.push(FdbEntryInfo {
                    mac: e.mac.to_string(),
                    network: name.clone(),
                    port: e.port.0,
                    netns: p.spec.netns.clone(),
                    ifname: p.spec.ifname.clone(),
                    age_secs: e.age_secs,
                });
            }
        }
        to_value(out)
    }

    /// Ages forwarding tables once a second and removes ports whose device vanished.
    fn housekeeping(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.events.recv_timeout(Duration::from_secs(1)) {
                Ok(PortEvent::Gone { port, errno }) => {
                    let mut inner = self.lock();
                    if let Some(p) = inner.ports.get(&port) {
                        tracing::warn!(port = %port, network = %p.spec.network, netns = %p.spec.netns,
                            ifname = %p.spec.ifname, errno, "port's interface vanished (namespace deleted?); removing the port");
                        self.remove_ports(&mut inner, &[port]);
                        self.persist(&inner);
                    }
                }
                Ok(PortEvent::VhostLink { port, up }) => {
                    let inner = self.lock();
                    if let Some((p, net)) =
                        inner.ports.get(&port).and_then(|p| Some((p, inner.networks.get(&p.spec.network)?)))
                    {
                        if up {
                            // The frontend is back: its MAC is ours (VIRTIO_NET_F_MAC), point it here now.
                            net.fdb.table().learn(p.spec.mac, port, self.clock.now_secs());
                        } else {
                            // Gone: flood to the MACs it had, rather than send them into a dead port.
                            net.fdb.flush(Some(port));
                        }
                    }
                }
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => return,
            }
            let now = self.clock.now_secs();
            let inner = self.lock();
            for net in inner.networks.values() {
                net.fdb.age(now);
            }
            // Refresh each port's share of its table, which workers read to
            // share a full table fairly (datapath/fdb.rs, "Bounds and fairness").
            let mut counts: std::collections::HashMap<PortId, u64> = std::collections::HashMap::new();
            for net in inner.networks.values() {
                counts.extend(net.fdb.port_counts());
            }
            for p in inner.ports.values() {
                p.stats.fdb_entries.store(counts.get(&p.id).copied().unwrap_or(0), Ordering::Relaxed);
            }
        }
    }

    /// Stops the workers and closes every port (the kernel deletes the TAP
    /// devices). The persisted state is kept: the next start reattaches the
    /// ports whose namespaces still exist.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.workers {
            let _ = w.waker.wake();
        }
        let mut inner = self.lock();
        let ports = inner.ports.len();
        for p in inner.ports.values() {
            p.port.release();
        }
        inner.ports.clear();
        self.snapshot.store(Arc::new(Snapshot::default()));
        tracing::info!(ports, "stopped; ports closed");
    }
}

/// The gateway's MAC on a network: stable, locally administered, derived from the name.
pub fn gateway_mac(network: &str) -> MacAddr {
    MacAddr::stable_local(format!("gateway\0{network}").as_bytes())
}

/// Per network: IPv4 → (MAC, when last seen), learned by the gateway from ARP.
type ArpLearned = BTreeMap<String, std::collections::HashMap<std::net::Ipv4Addr, (MacAddr, Instant)>>;

/// The gateway's narrow view of the control plane.
impl gateway::Control for Daemon {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn next_punted(&self) -> Option<crate::punt::Punted> {
        self.punt.pop()
    }

    fn recycle(&self, buf: Box<[u8]>) {
        self.punt.recycle(buf);
    }

    fn leases(&self) -> MutexGuard<'_, Store> {
        self.ipam()
    }

    fn learn_neighbor(&self, net: &str, ip: std::net::Ipv4Addr, mac: MacAddr) -> bool {
        let mut learned = self.arp_learned.lock().unwrap_or_else(|e| e.into_inner());
        let old = learned.entry(net.to_string()).or_default().insert(ip, (mac, Instant::now()));
        old.is_none_or(|(m, _)| m != mac)
    }

    fn republish(&self) {
        Daemon::republish(self);
    }
}

/// How long a declined address stays out of use (RFC 2131 §4.3.3 leaves it to the server).
const DECLINE_SECS: u64 = 600;

/// Wall-clock seconds since the Unix epoch: lease expiries outlive the daemon.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lease_info(network: String, l: tapyard_ipam::lease::Lease, now: u64) -> LeaseInfo {
    let (client_id, mac) = match &l.key {
        tapyard_ipam::lease::ClientKey::Id(id) => (Some(id.iter().map(|b| format!("{b:02x}")).collect()), l.mac),
        tapyard_ipam::lease::ClientKey::Mac(m) => (None, *m),
    };
    let state = match l.state {
        LeaseState::Bound if l.expires <= now => "expired",
        LeaseState::Bound => "bound",
        LeaseState::Offered => "offered",
        LeaseState::Released => "released",
    };
    LeaseInfo {
        network,
        mac: MacAddr(mac).to_string(),
        client_id,
        ip: l.addr.to_string(),
        hostname: l.hostname,
        expires: l.expires,
        state: state.to_string(),
    }
}

fn router<'a>(inner: &'a Inner, name: &str) -> Result<&'a RouterRec, ApiError> {
    inner
        .routers
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no router named {name:?}; see `tapyard router ls`")))
}

fn router_info(inner: &Inner, r: &RouterRec) -> RouterInfo {
    let mut routes = Vec::new();
    for n in &r.spec.networks {
        if let Some(a) = inner.networks.get(n).and_then(|x| x.spec.addressing) {
            routes.push(RouteInfo {
                router: r.spec.name.clone(),
                prefix: a.subnet.to_string(),
                via: None,
                network: n.clone(),
            });
        }
    }
    for (p, via) in &r.spec.routes {
        let net = r
            .spec
            .networks
            .iter()
            .find(|n| inner.networks.get(*n).and_then(|x| x.spec.addressing).is_some_and(|a| a.subnet.contains(via)))
            .cloned()
            .unwrap_or_default();
        routes.push(RouteInfo {
            router: r.spec.name.clone(),
            prefix: p.to_string(),
            via: Some(via.to_string()),
            network: net,
        });
    }
    RouterInfo { name: r.spec.name.clone(), networks: r.spec.networks.clone(), routes, counters: r.stats.snapshot() }
}

fn network<'a>(inner: &'a Inner, name: &str) -> Result<&'a Network, ApiError> {
    inner
        .networks
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no network named {name:?}; see `tapyard network ls`")))
}

fn check_network_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid network name {name:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
        )))
    }
}

fn parse_unicast_mac(m: &str) -> Result<MacAddr, ApiError> {
    let m: MacAddr = m.parse().map_err(|e: crate::wire::ParseMacError| ApiError::bad_request(e.to_string()))?;
    if m.is_multicast() || m.is_zero() {
        return Err(ApiError::bad_request(format!("MAC {m} is not a unicast address")));
    }
    Ok(m)
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

/// Appends how to get CAP_NET_ADMIN to a system error at `connect` when
/// the daemon lacks it (a bare EPERM from TUNSETIFF says nothing useful).
fn with_privilege_hint(e: ApiError) -> ApiError {
    if e.kind != ErrorKind::System || server::has_net_admin() != Some(false) {
        return e;
    }
    ApiError::system(format!("{}; {}", e.message, server::NET_ADMIN_HINT))
}

/// Who may connect to a vhost-user socket tapyard listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketOwner {
    mode: u32,
    gid: Option<u32>,
}

impl SocketOwner {
    /// Reads `--socket-mode` (octal) and `--socket-group` (name or gid);
    /// both only apply to a socket tapyard makes, so not with `--client`.
    fn parse(client: bool, mode: Option<&str>, group: Option<&str>, socket: &str) -> Result<SocketOwner, ApiError> {
        if client && (mode.is_some() || group.is_some()) {
            return Err(ApiError::bad_request(format!(
                "--socket-mode and --socket-group apply when tapyard listens on the socket; with --client \
                 the frontend makes {socket} and sets its permissions"
            )));
        }
        let mode = match mode {
            None => vhost::DEFAULT_SOCKET_MODE,
            Some(m) => {
                let digits = m.strip_prefix("0o").unwrap_or(m);
                match u32::from_str_radix(digits, 8) {
                    Ok(v) if v <= 0o777 && !digits.is_empty() => v,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "invalid --socket-mode {m:?}: expected octal permission bits like 0660"
                        )))
                    }
                }
            }
        };
        let gid = match group {
            None => None,
            Some(g) if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) => {
                Some(g.parse().map_err(|_| ApiError::bad_request(format!("invalid --socket-group {g:?}")))?)
            }
            Some(g) => Some(crate::port::sys::group_id(g).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "--socket-group {g:?}: no such group (give a name from /etc/group or a gid)"
                ))
            })?),
        };
        Ok(SocketOwner { mode, gid })
    }
}

fn vhost_info(v: &VhostPort) -> VhostInfo {
    let counters = v.counters().snapshot();
    let acked = v.acked_features();
    let server = v.config().mode == vhost::Mode::Server;
    VhostInfo {
        socket: v.config().socket.display().to_string(),
        mode: if server { "server".into() } else { "client".into() },
        socket_mode: server.then(|| format!("{:04o}", v.config().socket_mode)),
        socket_gid: v.config().socket_gid.filter(|_| server),
        connected: v.is_connected(),
        features: vhost::feature::names(acked).into_iter().map(String::from).collect(),
        features_hex: format!("{acked:#x}"),
        protocol_features: v.protocol_feature_names().into_iter().map(String::from).collect(),
        counters,
    }
}

/// `leased`: the address DHCP gave the port's MAC, for a port without `--ip`.
fn port_info(p: &PortRec, leased: Option<Ipv4Net>) -> PortInfo {
    let queues = p.port.caps().queues;
    let (ip, ip_source) = match (p.spec.ip, leased) {
        (Some(ip), _) => (Some(ip.to_string()), Some("static".to_string())),
        (None, Some(ip)) => (Some(ip.to_string()), Some("dhcp".to_string())),
        (None, None) => (None, None),
    };
    PortInfo {
        id: p.id.0,
        network: p.spec.network.clone(),
        netns: p.spec.netns.clone(),
        ifname: p.spec.ifname.clone(),
        mac: p.spec.mac.to_string(),
        ip,
        ip_source,
        worker: p.worker,
        // As the workers pick their queues (snapshot::PortView::queue_for):
        // queue q of a multi-queue port is worker q's.
        workers: if queues > 1 { (0..usize::from(queues)).collect() } else { vec![p.worker] },
        queues,
        offloads: p.port.caps().offloads.names().into_iter().map(String::from).collect(),
        counters: p.stats.snapshot(),
        vhost: p.vhost.as_deref().map(vhost_info),
    }
}
