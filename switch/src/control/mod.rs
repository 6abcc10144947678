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
//!
//! The files, by job:
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the [`Daemon`] and its state (`Inner`), start and shutdown, the locks (order: `inner`, then `ipam`), publishing a snapshot and `commit` (publish, wait for the workers when something was removed, persist) |
//! | `dispatch.rs` | [`Daemon::handle`]: a request in, its typed [`proto::Reply`] or an [`proto::ApiError`] out |
//! | `networks.rs` | networks (create, remove, reserve, describe), their leases and forwarding tables |
//! | `ports.rs` | port lifecycle: one allocator for TAP and vhost-user ports, new or restored; the worker each goes to; removal; which host ports each publishes, and where the firewall forwards them |
//! | `publish.rs` | published ports: Docker's `-p` syntax, and the sockets that hold host ports |
//! | `routers.rs` | routers, attachments and static routes |
//! | `housekeeping.rs` | the once-a-second thread: FDB ageing, per-port FDB shares, the workers' port events, the statistics sample |
//! | `stats.rs` | the `stats` request: every counter in one typed snapshot, and the once-a-second samples its rates come from |
//! | `metrics.rs` | `daemon --metrics`: the counters in Prometheus' text format over a small HTTP server |
//! | `build.rs` | configuration → [`Snapshot`], pure |
//! | `gateway.rs` | the slow path for punted frames, behind [`gateway::Control`] |
//! | `proto.rs`, `server.rs`, `socket.rs` | the control protocol's types; the daemon process (the socket file, its lock, signals, the stop); the socket's connections (who may connect, the event loop, limits and deadlines, its counters) |
//! | `persist.rs`, `netns.rs` | `state.json`; namespaces and interfaces over netlink |
//! | `uplink.rs` | the uplink: tapyard's TAP into the daemon's namespace for egress, the kernel's routes back to the networks, when the firewall is brought in line; the host's resolvers |
//! | `docker.rs` | Docker's network-driver and IPAM plugin protocol (`daemon --docker-plugin`) and its Docker ↔ tapyard maps |
//! | `firewall.rs` | the kernel's nftables table for egress and published ports, our accepts in iptables' `FORWARD`, and the host settings tapyard changes (`ip_forward`), recorded and restored |

pub mod build;
pub mod capture;
mod dispatch;
pub mod docker;
pub mod firewall;
pub mod gateway;
mod housekeeping;
pub mod metrics;
pub mod netns;
mod networks;
pub mod persist;
mod ports;
pub mod proto;
pub mod publish;
mod routers;
pub mod server;
pub mod socket;
mod stats;
#[cfg(test)]
mod tests;
pub mod uplink;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{bounded, Receiver, Sender};
use tapyard_ipam::dhcp::DhcpConfig;
use tapyard_ipam::lease::Lease;
use tapyard_ipam::store::Store;
use tapyard_ipam::DefaultPool;

use crate::clock::Clock;
use crate::packet::NetId;
use crate::port::vhost::VhostPort;
use crate::port::{Port, PortId};
use crate::punt::PuntQueue;
use crate::security::{Security, Storm};
use crate::snapshot::Snapshot;
use crate::stats::{GatewayStats, PortStats, RouterStats};
use crate::table::fdb::DEFAULT_AGEING_SECS;
use crate::table::Fdb;
use crate::wire::MacAddr;
use crate::worker::{self, PortEvent, WorkerHandle};
use netns::Netns;
use persist::{NetworkSpec, PortSpec, RouterSpec, State};
use proto::ApiError;

pub const DEFAULT_MTU: u32 = 1500;
pub const DEFAULT_IFNAME: &str = "eth0";
/// Whether port `p` has port security: its `--port-security`, else its
/// network's (`network create --port-security`), else on for
/// a TAP port with an address or on a network with a subnet (DHCP may lease
/// it one), off for a vhost-user port (its guest, not tapyard, picks the MAC).
fn port_security_on(inner: &Inner, p: &PortRec) -> bool {
    let net = inner.networks.get(&p.spec.network).map(|n| &n.spec);
    let subnet = net.is_some_and(|n| n.addressing.is_some());
    let default = p.spec.vhost.is_none() && (p.spec.ip.is_some() || subnet);
    p.spec.port_security.or(net.and_then(|n| n.port_security)).unwrap_or(default)
}

/// Addresses DHCP holds for one client hardware address (one port with port
/// security) unless `daemon --dhcp-leases-per-port` says otherwise: a few
/// for a container restarting its client with new identifiers, far below a pool.
pub const DEFAULT_LEASES_PER_PORT: u32 = 4;
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
    /// The uplink for egress; none: no network reaches beyond tapyard (`--uplink none`).
    pub uplink: Option<uplink::UplinkConfig>,
    /// Serve Docker's plugin protocol on this socket (`--docker-plugin`).
    pub docker_plugin: Option<PathBuf>,
    /// dockerd's API socket, asked for the names of containers on tapyard
    /// networks (`--docker-host`); none: ports show the sandbox only.
    pub docker_api: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (`--metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Frames each (port, worker) flight-recorder ring keeps; 0: none
    /// (`daemon --flight-recorder`, docs/capture.md).
    pub flight_recorder: usize,
    /// Members of this group may use the control socket too, which is then
    /// mode 0660 and owned by the group (`daemon --socket-group`).
    pub socket_group: Option<u32>,
    /// Flooded frames a port may send per second, unless its own
    /// `--storm-limit` says otherwise; 0: no limit (`daemon --storm-limit`).
    pub storm_limit: u32,
    /// Addresses DHCP holds (offered or leased) for one client hardware
    /// address at a time, hence for one port with port security; 0: no
    /// cap (`daemon --dhcp-leases-per-port`).
    pub dhcp_leases_per_port: u32,
    /// Frames the punt queue between the workers and the gateway holds
    /// (`daemon --punt-depth`); beyond, punted frames are dropped and
    /// counted as `gateway_full`.
    pub punt_depth: usize,
    /// Which queue of a TAP a frame the node sends goes to
    /// (`daemon --tap-steering`, port/tap.rs).
    pub tap_steering: crate::port::tap::Steering,
}

impl Config {
    /// A daemon on `socket` with `state_dir`: one worker, the default pools,
    /// no uplink and nothing optional (tests start from it).
    pub fn new(socket: PathBuf, state_dir: PathBuf) -> Config {
        Config {
            socket,
            state_dir,
            workers: 1,
            busy: false,
            default_pools: tapyard_ipam::default_pools(),
            uplink: None,
            docker_plugin: None,
            docker_api: None,
            metrics: None,
            flight_recorder: crate::capture::DEFAULT_RECORDER_DEPTH,
            socket_group: None,
            storm_limit: crate::security::DEFAULT_STORM_LIMIT,
            dhcp_leases_per_port: DEFAULT_LEASES_PER_PORT,
            punt_depth: crate::punt::PUNT_DEPTH,
            tap_steering: crate::port::tap::Steering::Flow,
        }
    }
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
    /// The same port, for its AF_XDP details (mode, the kernel's counters).
    xdp: Option<Arc<crate::port::xdp::XdpPort>>,
    stats: Arc<PortStats>,
    worker: usize,
    /// Its published ports, one per entry of `spec.publish` (kept equal by
    /// [`PortRec::publish_changed`]): the socket holding the host port, or
    /// why it could not be held again at a restart (then the publish is
    /// inactive: kept, but forwarded by no rule). Dropping one releases its port.
    reservations: BTreeMap<publish::Publish, Result<publish::Reservation, String>>,
    /// What `spec.link` carries into the data path (frame memory, shared
    /// rate buckets), made when the setting is applied; none for a plain link.
    impair: Option<Arc<crate::impair::PortImpair>>,
    /// The storm-control meter its workers share, kept across snapshots.
    storm: Arc<crate::security::StormMeter>,
}

impl PortRec {
    /// Makes `spec.publish` (what is persisted) say what `reservations` holds.
    fn publish_changed(&mut self) {
        self.spec.publish = self.reservations.keys().copied().collect();
    }
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
    /// tapyard's port into the daemon's own namespace, for egress.
    uplink: Option<uplink::Uplink>,
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
    /// The two newest statistics samples, for rates (stats.rs).
    sampler: Mutex<stats::Sampler>,
    /// Captures, flight recorders and mirrors: the snapshot's taps. Lock order: `inner`, then this.
    captures: capture::Registry,
    /// The control socket's counters (socket.rs; `stats`).
    socket_counters: socket::Counters,
    /// How many times a change waited for the workers (tests check which do).
    #[cfg(test)]
    adoption_waits: std::sync::atomic::AtomicUsize,
}

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
        // Before any TAP is opened (restored ports, the uplink).
        crate::port::tap::set_steering(cfg.tap_steering);
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers.max(1) {
            let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
            workers.push(worker::spawn(i, core, shared.clone())?);
        }
        let captures = capture::Registry::new(cfg.workers.max(1), cfg.flight_recorder);
        let punt = Arc::new(PuntQueue::with_depth(cfg.punt_depth));
        let d = Arc::new(Daemon {
            captures,
            cfg,
            inner: Mutex::new(Inner::default()),
            ipam: Mutex::new(ipam),
            punt,
            arp_learned: Mutex::default(),
            snapshot,
            workers,
            stop,
            events: rx,
            event_tx: tx,
            clock,
            sampler: Mutex::default(),
            socket_counters: Default::default(),
            #[cfg(test)]
            adoption_waits: Default::default(),
        });
        if let Some(u) = d.cfg.uplink.clone() {
            let mut inner = d.lock();
            if let Err(e) = d.start_uplink(&mut inner, &u) {
                drop(inner);
                d.stop_workers();
                return Err(e);
            }
        }
        d.restore(state);
        if let Some(addr) = d.cfg.metrics {
            // Bound here, before anything depends on the daemon: a taken
            // address stops the start with a clear error.
            if let Err(e) = metrics::spawn(d.clone(), addr) {
                d.stop_workers();
                return Err(e);
            }
        }
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
            self.restore_port(&mut inner, spec);
        }
        self.reconcile_leases(&inner);
        self.commit(&mut inner, Change::Added);
        if let Err(e) = self.sync_firewall(&mut inner) {
            tracing::error!(error = %e, "cannot install the rules of the published ports");
        }
    }

    /// Makes the lease journal agree with the restored ports (a daemon killed
    /// between the journal's commit and the state file's leaves them apart,
    /// and so does a port not restored because its namespace is gone): every
    /// restored port with an address in its subnet holds it as a port
    /// address, no other MAC holds a port address, and records of networks
    /// the state file no longer has are dropped for good.
    fn reconcile_leases(&self, inner: &Inner) {
        let mut store = self.ipam();
        let now = unix_now();
        for (name, net) in &inner.networks {
            let Some(a) = net.spec.addressing else { continue };
            let ports: BTreeMap<[u8; 6], std::net::Ipv4Addr> = inner
                .ports
                .values()
                .filter(|p| p.spec.network == *name)
                .filter_map(|p| Some((p.spec.mac.0, p.spec.ip?.addr())))
                .filter(|(_, ip)| a.subnet.contains(ip))
                .collect();
            for (_, l) in store.leases(Some(name)) {
                if l.expires > tapyard_ipam::store::STATIC_LEASE_SECS && ports.get(&l.mac) != Some(&l.addr) {
                    tracing::warn!(network = %name, mac = %MacAddr(l.mac), ip = %l.addr,
                        "releasing a port address no port holds (left by a daemon killed mid-change)");
                    store.release_port(name, l.mac);
                }
            }
            for (mac, ip) in ports {
                let held = store.leases(Some(name)).iter().any(|(_, l)| l.mac == mac && l.addr == ip);
                if !held {
                    tracing::warn!(network = %name, mac = %MacAddr(mac), ip = %ip,
                        "claiming a port's address again (released by a daemon killed mid-change)");
                    if let Err(e) = store.claim_port(name, mac, ip, now) {
                        tracing::error!(network = %name, mac = %MacAddr(mac), ip = %ip, error = %e,
                            "a restored port's address is leased to another client");
                    }
                }
            }
        }
        if let Err(e) = store.drop_unknown() {
            tracing::error!(error = %e, "cannot drop the lease records of removed networks");
        }
        let _ = self.commit_ipam(&mut store);
    }

    /// Brings the kernel's routes and rules in line with the configuration
    /// (egress networks, published ports: [`Daemon::dnat_targets`]);
    /// `commit` calls it after every change, and the port code again where
    /// a failure must undo the change. Nothing to do when nothing changed.
    fn sync_firewall(&self, inner: &mut Inner) -> Result<(), ApiError> {
        self.sync_uplink(inner)
    }

    /// Gives a network with a subnet its DHCP server and leases (replaying
    /// the journal's records for it).
    fn add_to_ipam(&self, spec: &NetworkSpec) {
        let Some(a) = spec.addressing else { return };
        let cfg = DhcpConfig {
            server: a.gateway,
            subnet: a.subnet,
            dns: self.dhcp_dns(spec),
            domain: spec.domain.clone(),
            mtu: u16::try_from(spec.mtu).ok(),
            lease_secs: spec.lease_secs,
            decline_secs: DECLINE_SECS,
            per_mac_cap: self.cfg.dhcp_leases_per_port,
        };
        let reserved = std::iter::once(a.gateway).chain(spec.aux_addresses.values().copied());
        let statics = spec.reservations.iter().map(|(m, ip)| (m.0, *ip));
        self.ipam().add_network(&spec.name, cfg, spec.ip_range.unwrap_or(a.subnet), reserved, statics);
    }

    /// The resolvers DHCP offers on a network: its `--dns`; with none given
    /// and egress, the host's (`uplink::host_resolvers`).
    fn dhcp_dns(&self, spec: &NetworkSpec) -> Vec<std::net::Ipv4Addr> {
        if let Some(u) = self.cfg.uplink.as_ref().filter(|_| spec.dns.is_empty() && spec.has_egress()) {
            uplink::host_resolvers(u.resolv_conf.as_deref())
        } else {
            spec.dns.clone()
        }
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
        let now = unix_now();
        let leases = self.ipam().leases(None);
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
                    impair: p.impair.clone(),
                    security: self.security_of(inner, p, &leases, now),
                    storm: self.storm_of(p),
                })
                .collect(),
            neighbors: self.neighbors(inner, &leases, now),
            punt: self.punt.clone(),
            uplink: inner.uplink.as_ref().map(|u| build::UplinkIn {
                net: u.network_in(),
                port: build::PortIn {
                    id: u.port_id,
                    network: build::UPLINK_NETWORK,
                    port: u.port.clone(),
                    stats: u.port_stats.clone(),
                    worker: 0,
                    impair: None,
                    // tapyard's own port into the host: trusted, unlimited.
                    security: None,
                    storm: None,
                },
                kernel_ip: u.kernel_ip,
                kernel_mac: u.kernel_mac,
                stats: u.stats.clone(),
            }),
        };
        let mut snap = build::build(plan);
        self.captures.attach(&mut snap);
        self.snapshot.store(Arc::new(snap));
        for w in &self.workers {
            if let Err(e) = w.waker.wake() {
                tracing::error!(error = %e, "cannot wake worker");
            }
        }
        inner.epoch
    }

    /// IPv4 → MAC of every station tapyard knows, per network: port
    /// addresses and bound DHCP leases. Routed packets are sent to these.
    fn neighbors(
        &self,
        inner: &Inner,
        leases: &[(String, Lease)],
        now: u64,
    ) -> BTreeMap<String, std::collections::HashMap<std::net::Ipv4Addr, MacAddr>> {
        let mut m: BTreeMap<String, std::collections::HashMap<std::net::Ipv4Addr, MacAddr>> = BTreeMap::new();
        for (net, l) in leases {
            if l.is_active(now) {
                m.entry(net.clone()).or_default().insert(l.addr, MacAddr(l.mac));
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

    /// Port `p`'s port security as the data path checks it, or none when it
    /// is off: its MAC, and its address (`--ip`, `--ip auto`) with every
    /// address leased to its MAC on its network now. On by default for TAP
    /// ports with an address or on a network with a subnet (DHCP may lease
    /// one); vhost-user ports default to off, since the guest, not tapyard,
    /// picks the MAC it sends from (docs/RELIABILITY.md).
    fn security_of(&self, inner: &Inner, p: &PortRec, leases: &[(String, Lease)], now: u64) -> Option<Security> {
        if !port_security_on(inner, p) {
            return None;
        }
        let leased = leases
            .iter()
            .filter(|(net, l)| *net == p.spec.network && l.mac == p.spec.mac.0 && l.is_active(now))
            .map(|(_, l)| l.addr);
        let mut ips: Vec<std::net::Ipv4Addr> = p.spec.ip.map(|i| i.addr()).into_iter().chain(leased).collect();
        ips.sort_unstable();
        ips.dedup();
        Some(Security { mac: p.spec.mac, ips })
    }

    /// Port `p`'s storm-control limit: its own `--storm-limit`, else the
    /// daemon's; none when that is 0 (no limit).
    fn storm_of(&self, p: &PortRec) -> Option<Storm> {
        let limit = self.storm_limit(p)?;
        Some(Storm { limit, meter: p.storm.clone() })
    }

    /// Port `p`'s storm-control limit in frames per second; none: no limit.
    fn storm_limit(&self, p: &PortRec) -> Option<u32> {
        Some(p.spec.storm_limit.unwrap_or(self.cfg.storm_limit)).filter(|&l| l > 0)
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
        if let Err(e) = self.sync_firewall(inner) {
            tracing::error!(error = %e, "cannot bring the uplink's routes and rules in line");
        }
        self.persist(inner);
    }

    /// Publishes a new snapshot after a change outside the control socket
    /// (a DHCP lease bound by the gateway thread: a new neighbour to route to).
    pub(crate) fn republish(&self) {
        let mut inner = self.lock();
        self.publish(&mut inner);
        // A bound lease may be the address a published port waits for.
        if let Err(e) = self.sync_firewall(&mut inner) {
            tracing::error!(error = %e, "cannot update the rules of the published ports");
        }
    }

    /// Waits until every worker runs on snapshot `epoch` or later.
    fn wait_adopted(&self, epoch: u64) {
        #[cfg(test)]
        self.adoption_waits.fetch_add(1, Ordering::Relaxed);
        let adopted = self.workers.iter().map(|w| &*w.adopted);
        if !wait_for_epoch(adopted, epoch, ADOPT_TIMEOUT) {
            tracing::error!(epoch, "a worker did not adopt the new configuration within 5 s");
        }
    }

    fn persist(&self, inner: &Inner) {
        self.persist_with(inner, None);
    }

    /// Saves the state with one more port, `extra`, not made yet: what is
    /// about to exist outside the daemon (a vhost-user socket file) is
    /// recorded first, so a daemon killed while making it finds it at its
    /// next start and makes it again, and nothing is left unrecorded.
    fn persist_with(&self, inner: &Inner, extra: Option<&PortSpec>) {
        let state = State {
            version: 0,
            networks: inner.networks.values().map(|n| n.spec.clone()).collect(),
            ports: inner.ports.values().map(|p| p.spec.clone()).chain(extra.cloned()).collect(),
            routers: inner.routers.values().map(|r| r.spec.clone()).collect(),
        };
        if let Err(e) = persist::save(&self.cfg.state_dir, &state) {
            tracing::error!(dir = %self.cfg.state_dir.display(), error = %e, "cannot save state");
        }
    }

    /// Stops the workers and closes every port's descriptors. A TAP stays
    /// in its namespace as it is (persistent: interface, MAC, addresses and
    /// routes unchanged, no carrier while no daemon runs), and the next start
    /// takes it back, as after a SIGKILL: a restart (an upgrade, `systemctl
    /// restart`) changes nothing the container sees. Only removing the port
    /// (disconnect, `network rm`) deletes its interface. A vhost-user port
    /// stops listening (its socket file goes; the next start serves it
    /// again). The persisted state is kept.
    pub fn shutdown(&self) {
        self.stop_workers();
        let mut inner = self.lock();
        let ports = inner.ports.len();
        for p in inner.ports.values().filter(|p| p.vhost.is_some()) {
            p.port.release();
        }
        inner.ports.clear();
        self.stop_uplink(&mut inner);
        self.snapshot.store(Arc::new(Snapshot::default()));
        tracing::info!(ports, "stopped; interfaces kept for the next start");
    }
}

impl Daemon {
    fn stop_workers(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in &self.workers {
            let _ = w.waker.wake();
        }
    }
}

/// How long a change waits for the workers before saying one is stuck.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until every `adopted` epoch reaches `epoch` (the workers store it,
/// Release, after adopting a snapshot); false if `timeout` passed first.
fn wait_for_epoch<'a>(adopted: impl Iterator<Item = &'a AtomicU64> + Clone, epoch: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while adopted.clone().any(|a| a.load(Ordering::Acquire) < epoch) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
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

    fn lease_guarded(&self, leases: &[(&str, Option<[u8; 6]>)]) -> bool {
        let inner = self.lock();
        // The guarded ports, once per batch: (network, MAC).
        let guarded: std::collections::HashSet<(&str, [u8; 6])> = inner
            .ports
            .values()
            .filter(|p| port_security_on(&inner, p) || !p.spec.publish.is_empty())
            .map(|p| (p.spec.network.as_str(), p.spec.mac.0))
            .collect();
        if guarded.is_empty() {
            return false;
        }
        leases.iter().any(|(net, mac)| match mac {
            Some(m) => guarded.contains(&(*net, *m)),
            None => guarded.iter().any(|(n, _)| n == net),
        })
    }
}

/// How long a declined address stays out of use (RFC 2131 §4.3.3 leaves it to the server).
const DECLINE_SECS: u64 = 600;

/// Wall-clock seconds since the Unix epoch: lease expiries outlive the daemon.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `n thing` or `n things`.
fn plural(n: usize, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}
