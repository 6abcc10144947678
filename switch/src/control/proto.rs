//! The control protocol between the CLI (or any program) and the daemon:
//! JSON lines over a UNIX stream socket, one request and one response per
//! line, in order. Documented for other programs in `docs/PROTOCOL.md`.
//!
//! ```text
//! → {"op":"network_create","name":"blue","subnet":"10.10.0.0/24"}
//! ← {"ok":true,"result":{"name":"blue",...}}
//! → {"op":"network_rm","name":"nope"}
//! ← {"ok":false,"error":{"kind":"not_found","message":"no network named \"nope\"; ..."}}
//! ```

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::publish::Publish;
use crate::stats::PortCounters;

/// Protocol version, reported by `ping`; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    NetworkCreate(NetworkCreate),
    NetworkLs,
    NetworkInspect {
        name: String,
    },
    NetworkRm {
        name: String,
        #[serde(default)]
        force: bool,
    },
    Connect {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
        /// false: ask the kernel for no offloads on this port (`--offload off`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offload: Option<bool>,
        /// Host ports to publish, Docker's `-p` syntax each (`--publish`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        publish: Vec<String>,
        /// Who made the port, for programs that clean up by it (the CNI
        /// plugin puts the container id here); kept and shown by `port_ls`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        /// Port security (`--port-security on|off`); absent: on for a port
        /// with an address or on a network with a subnet.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port_security: Option<bool>,
        /// Flooded frames per second (`--storm-limit`, 0: none); absent: the daemon's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storm_limit: Option<u32>,
        /// What the namespace's interface is (`--kind`); absent: a TAP.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<PortKind>,
    },
    /// Publishes host ports to a TAP port's container (`port publish`).
    PortPublish {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        /// One `-p` spec, Docker's syntax (a range publishes several ports).
        spec: String,
    },
    /// Stops publishing host ports (`port unpublish`).
    PortUnpublish {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        /// A `-p` spec as given to publish, or as shown (`0.0.0.0:8080->80/tcp`).
        spec: String,
    },
    /// A vhost-user backend port on `socket` (`connect --vhost-user`).
    ConnectVhost {
        network: String,
        /// Absolute path of the unix socket.
        socket: String,
        /// Connect to a listening frontend instead of listening.
        #[serde(default)]
        client: bool,
        /// Queue pairs (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queues: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        /// Server mode: the socket's permission bits in octal, like "0660"
        /// (the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket_mode: Option<String>,
        /// Server mode: the socket's group, a name or a numeric gid
        /// [default: the group the kernel gives a new file].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        socket_group: Option<String>,
        /// Port security (`--port-security on`); absent: off (the guest picks its MAC).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port_security: Option<bool>,
        /// Flooded frames per second (`--storm-limit`, 0: none); absent: the daemon's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storm_limit: Option<u32>,
    },
    DisconnectVhost {
        network: String,
        socket: String,
    },
    /// Changes a port's link state and impairments (`port set`).
    PortSet(PortSet),
    /// Starts a capture (or reads the flight recorders, `recent`): after
    /// its JSON reply the connection carries binary capture records
    /// ([`CaptureRecord`]) until an end record (docs/PROTOCOL.md).
    Capture(CaptureRequest),
    /// Copies every frame `port` receives or is sent to the port `to`
    /// (`port mirror`); `to` absent: stops mirroring `port`.
    PortMirror {
        port: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    Disconnect {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
    },
    /// A static reservation: `mac` always gets `ip` on `network`.
    NetworkReserve {
        network: String,
        mac: String,
        ip: String,
    },
    RouterCreate {
        name: String,
    },
    RouterAttach {
        router: String,
        network: String,
    },
    RouterDetach {
        router: String,
        network: String,
    },
    RouterLs,
    RouterInspect {
        name: String,
    },
    RouterRm {
        name: String,
    },
    RouteAdd {
        router: String,
        prefix: String,
        via: String,
    },
    RouteDel {
        router: String,
        prefix: String,
    },
    RouteLs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
    LeaseLs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    PortLs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    FdbShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    FdbFlush {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Counters, rates over the last second and queue depths of every port,
    /// network, router and worker (`tapyard stats`; docs/stats.md); with
    /// `network`, that network's ports, the network and its router only.
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Stops the daemon as SIGTERM does: interfaces kept for the next start, socket removed.
    Shutdown,
}

/// Arguments of `network_create`; every field but `name` is optional. The
/// same struct is the CLI's `network create` flags (clap) and the protocol's
/// JSON fields (serde), so the two cannot drift apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    pub name: String,
    /// IPv4 subnet in CIDR notation, like 10.10.0.0/24 [default: the next
    /// free subnet of the daemon's default pools].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Gateway address [default: the subnet's first host address].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Range inside the subnet from which DHCP and --ip auto take addresses.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// NAME=IP: an address of the subnet never handed out (repeatable; like Docker's).
    #[arg(long = "aux-address")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux_addresses: Vec<String>,
    /// DNS server handed out by DHCP, option 6 (repeatable).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Domain name handed out by DHCP (option 15).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// DHCP lease time in seconds [default: 3600].
    #[arg(long = "lease-time")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u32>,
    /// `none` for a pure L2 network: no subnet, gateway or DHCP.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<String>,
    /// MTU of the interfaces attached to this network [default: 1500].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Seconds after which an idle learned MAC is forgotten [default: 300].
    #[arg(long = "ageing")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ageing_secs: Option<u32>,
    /// Most MAC addresses the network's forwarding table holds [default: 4096].
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb_capacity: Option<usize>,
    /// A network that can never be attached to a router.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Take --subnet even if it overlaps a route or address of the daemon's
    /// host (which then cannot reach that part of the network).
    #[arg(long, requires = "subnet")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_subnet: bool,
    /// `nat`: the network reaches the world beyond the host through the
    /// daemon's uplink, its source addresses translated to the host's (as
    /// Docker's bridge networks); `none`: it does not [default: nat; none
    /// with --internal or --ipam none].
    #[arg(long, value_name = "nat|none")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    /// Port security of the network's ports that do not choose with
    /// `connect --port-security`: `off` for a lab network whose nodes
    /// route, bridge or spoof [default: on for ports with an address].
    #[arg(long, value_name = "on|off")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<String>,
}

/// The kind of interface `connect` gives a namespace (`--kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortKind {
    /// A multi-queue TAP made in the namespace (the default; rootless works).
    #[default]
    Tap,
    /// A veth pair: one end in the namespace, the switch's end in the
    /// daemon's, read and written through AF_XDP sockets (root only).
    Afxdp,
}

/// The class of an error, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or an argument is invalid.
    BadRequest,
    /// A named network, namespace or port does not exist.
    NotFound,
    /// The thing already exists, or would clash with something that does.
    Conflict,
    /// The thing is in use (a network with ports attached).
    Busy,
    /// The operating system refused (TAP creation, moving an interface, ...).
    System,
    /// The peer may not use the control socket (its user is neither root,
    /// the daemon's own user, nor in `daemon --socket-group`).
    Forbidden,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn system(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::System, m)
    }
}

/// One response line. The daemon sends `Response<Reply>`; a client reads
/// `Response` (the result as plain JSON) and decodes the type it asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response<T = serde_json::Value> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl<T> Response<T> {
    pub fn from_result(r: Result<T, ApiError>) -> Response<T> {
        match r {
            Ok(v) => Response { ok: true, result: Some(v), error: None },
            Err(e) => Response { ok: false, result: None, error: Some(e) },
        }
    }
}

/// The result of a request, one variant per shape in docs/PROTOCOL.md.
/// Untagged: on the wire a reply is just its object or array, as the
/// request's op already says what comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `ping`.
    Ping(PingInfo),
    /// `network_create`, `network_inspect`.
    Network(Box<NetworkInfo>),
    /// `network_ls`.
    Networks(Vec<NetworkInfo>),
    /// `network_rm`.
    NetworkRemoved(NetworkRemoved),
    /// `network_reserve`.
    Reserved(Reserved),
    /// `connect`, `connect_vhost`, `port_publish`, `port_unpublish`.
    Port(Box<PortInfo>),
    /// `port_ls`.
    Ports(Vec<PortInfo>),
    /// `disconnect`, `disconnect_vhost`.
    Disconnected(Disconnected),
    /// `router_create`, `router_attach`, `router_detach`, `router_inspect`,
    /// `route_add`, `route_del`.
    Router(RouterInfo),
    /// `router_ls`.
    Routers(Vec<RouterInfo>),
    /// `router_rm`.
    Removed(Removed),
    /// `route_ls`.
    Routes(Vec<RouteInfo>),
    /// `lease_ls`.
    Leases(Vec<LeaseInfo>),
    /// `fdb_show`.
    Fdb(Vec<FdbEntryInfo>),
    /// `fdb_flush`.
    Flushed(Flushed),
    /// `stats`.
    Stats(Box<StatsInfo>),
    /// `shutdown`.
    Stopping(Stopping),
    /// `capture` (then the connection carries capture records).
    Capture(CaptureStarted),
    /// `port_mirror`.
    Mirror(MirrorInfo),
}

/// `Reply::from(x)` for each result type, so a method returns its own type
/// and the dispatcher converts (`into` boxes the large ones).
macro_rules! reply_from {
    ($($variant:ident($t:ty)),* $(,)?) => {
        $(impl From<$t> for Reply {
            fn from(x: $t) -> Reply {
                Reply::$variant(x.into())
            }
        })*
    };
}

reply_from! {
    Capture(CaptureStarted),
    Mirror(MirrorInfo),
    Ping(PingInfo),
    Network(NetworkInfo),
    Networks(Vec<NetworkInfo>),
    NetworkRemoved(NetworkRemoved),
    Reserved(Reserved),
    Port(PortInfo),
    Ports(Vec<PortInfo>),
    Disconnected(Disconnected),
    Router(RouterInfo),
    Routers(Vec<RouterInfo>),
    Removed(Removed),
    Routes(Vec<RouteInfo>),
    Leases(Vec<LeaseInfo>),
    Fdb(Vec<FdbEntryInfo>),
    Flushed(Flushed),
    Stats(StatsInfo),
    Stopping(Stopping),
}

/// `network_rm`: `{removed, ports_removed, detached_from}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRemoved {
    pub removed: String,
    /// Ports disconnected with it (`force`).
    pub ports_removed: usize,
    /// The router it was detached from (`force`); null if none.
    pub detached_from: Option<String>,
}

/// `network_reserve`: `{network, mac, ip}`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub network: String,
    pub mac: String,
    pub ip: String,
}

/// `router_rm`: `{removed}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// `disconnect`, `disconnect_vhost`: `{disconnected: port id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    pub disconnected: u16,
}

/// `fdb_flush`: `{flushed: n}`, the entries forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub flushed: usize,
}

/// `shutdown`: `{stopping: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub stopping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInfo {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub workers: usize,
    pub socket: String,
    pub state_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    /// `network create --port-security`: the default of its ports; absent: the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    #[serde(default)]
    pub ip_range: Option<String>,
    #[serde(default)]
    pub aux_addresses: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub reservations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub lease_secs: u32,
    /// Dynamic range usage: addresses in use (leases, reservations inside the range) and size.
    #[serde(default)]
    pub pool_used: u32,
    #[serde(default)]
    pub pool_size: u32,
    /// The MAC the gateway answers ARP, ICMP and DHCP with.
    #[serde(default)]
    pub gateway_mac: Option<String>,
    /// Gateway responder counters: DHCP replies by type, drops by reason.
    #[serde(default)]
    pub gateway_counters: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub internal: bool,
    /// `nat` or `none` (see `network create --egress`).
    #[serde(default)]
    pub egress: String,
    /// Why a network that asked for egress has none now (the daemon runs
    /// without an uplink); absent when it works or was not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_unavailable: Option<String>,
    /// Egress counters: packets routed to and from the uplink by tapyard,
    /// and the kernel's NAT counters (packets and bytes masqueraded).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub egress_counters: std::collections::BTreeMap<String, u64>,
    /// The router this network is attached to.
    #[serde(default)]
    pub router: Option<String>,
    /// Routing counters of packets that entered from this network.
    #[serde(default)]
    pub route_counters: std::collections::BTreeMap<String, u64>,
    /// IPv4 → MAC of the stations routed packets are delivered to, as the
    /// workers see them now (ports' addresses, DHCP leases, ARP-learned).
    #[serde(default)]
    pub neighbors: std::collections::BTreeMap<String, String>,
    pub mtu: u32,
    pub ageing_secs: u32,
    pub fdb_capacity: usize,
    pub fdb_entries: usize,
    pub ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: u16,
    pub network: String,
    /// The namespace as given to `connect`; null for a vhost-user port.
    #[serde(with = "empty_as_null", default)]
    pub netns: String,
    /// Null for a vhost-user port.
    #[serde(with = "empty_as_null", default)]
    pub ifname: String,
    pub mac: String,
    /// The address given with `--ip`, or else the one leased by DHCP to the port's MAC.
    pub ip: Option<String>,
    /// Where `ip` comes from: "static" (`--ip`) or "dhcp" (an active lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_source: Option<String>,
    /// The worker reading a one-queue port (for a multi-queue port, queue q
    /// is read by worker q: see `workers`).
    pub worker: usize,
    /// The worker serving each queue, by queue index.
    #[serde(default)]
    pub workers: Vec<usize>,
    /// Queues of the TAP (one per worker) and the offloads negotiated with the kernel.
    #[serde(default)]
    pub queues: u16,
    #[serde(default)]
    pub offloads: Vec<String>,
    pub counters: PortCounters,
    /// Set for vhost-user ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VhostInfo>,
    /// Set for AF_XDP ports (`connect --kind afxdp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<XdpInfo>,
    /// Its published ports.
    #[serde(default)]
    pub publish: Vec<PublishInfo>,
    /// The `owner` given to `connect` (the CNI plugin: the container id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The container using the port, as its engine names it (Docker ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Impairments of the frames the node sends (`port set --direction in`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair_in: Option<crate::impair::Impairment>,
    /// Impairments of the frames sent to the node (`--direction out`); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impair_out: Option<crate::impair::Impairment>,
    /// False while the link is cut (`port set --down`): the node sees no carrier.
    #[serde(default = "yes")]
    pub link_up: bool,
    /// Port security is on: the port sends only from its MAC and addresses
    /// (`connect --port-security`).
    #[serde(default)]
    pub port_security: bool,
    /// Storm control: flooded frames per second it may send; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_limit: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A container as its engine shows it: `docker ps`'s name and the full id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub id: String,
}

/// `port set`: the port is named as for `disconnect` (a TAP by `netns` and
/// `ifname`, a vhost-user port by `vhost_user`). `clear` removes every
/// impairment first; then `impair` changes the given fields in `direction`;
/// `link_up` false cuts the link (the node sees carrier loss), true restores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSet {
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
    #[serde(default)]
    pub clear: bool,
    #[serde(default)]
    pub direction: crate::impair::Direction,
    #[serde(default, skip_serializing_if = "crate::impair::ImpairPatch::is_empty")]
    pub impair: crate::impair::ImpairPatch,
}

/// A published port of a port (`port ls`): `host_ip` (absent: every
/// address), `host_port`, `container_port`, `proto`, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishInfo {
    #[serde(flatten)]
    pub publish: Publish,
    pub state: PublishState,
    /// Why an inactive publish is inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether a published port is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishState {
    /// The host port is held and forwarded to the port's address.
    Active,
    /// The host port is held; the port has no address yet (no `--ip`, no
    /// DHCP lease): forwarded once it has one.
    Waiting,
    /// The host port could not be held again after a restart (another
    /// program has it): kept, forwarded by no rule; `port publish` of the
    /// same spec tries again.
    Inactive,
}

impl PublishInfo {
    /// As `docker ps` shows it, marked when not forwarded:
    /// `0.0.0.0:8080->80/tcp`, `...(waiting)`, `...(inactive)`.
    pub fn shown(&self) -> String {
        match self.state {
            PublishState::Active => self.publish.to_string(),
            PublishState::Waiting => format!("{}(waiting)", self.publish),
            PublishState::Inactive => format!("{}(inactive)", self.publish),
        }
    }
}

/// The AF_XDP side of a port (`port ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpInfo {
    /// The veth's end in the daemon's namespace, which the sockets are bound to.
    pub switch_ifname: String,
    /// How the redirect program is attached and frames copied: "native, copy"
    /// (veth's own XDP).
    pub mode: String,
    /// The sockets' drops before a worker saw the frames, summed over the
    /// queues (the kernel's `XDP_STATISTICS`: `rx_ring_full`,
    /// `rx_fill_ring_empty`, `rx_dropped`, `rx_invalid_descs`,
    /// `tx_invalid_descs`, `tx_ring_empty`), and `port_rx_dropped`: frames
    /// the port dropped (longer than a buffer, a bad descriptor).
    #[serde(default)]
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The vhost-user side of a port (`port ls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostInfo {
    pub socket: String,
    /// "server" or "client".
    pub mode: String,
    /// Server mode: the socket's permission bits in octal, like "0660".
    #[serde(default)]
    pub socket_mode: Option<String>,
    /// Server mode: the socket's group id, when one was asked for.
    #[serde(default)]
    pub socket_gid: Option<u32>,
    /// A frontend is connected.
    pub connected: bool,
    /// virtio features the frontend acknowledged (empty while down), by name.
    pub features: Vec<String>,
    /// The same, as the 64-bit mask.
    pub features_hex: String,
    /// vhost-user protocol features we offer (the frontend picks a subset).
    pub protocol_features: Vec<String>,
    /// Rejected descriptor chains by reason, frames the guest had no room
    /// for, kicks and calls, connections.
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterInfo {
    pub name: String,
    pub networks: Vec<String>,
    pub routes: Vec<RouteInfo>,
    pub counters: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub router: String,
    pub prefix: String,
    /// The next hop, for a static route; none for a connected network.
    pub via: Option<String>,
    /// The network the route leaves through.
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub network: String,
    pub mac: String,
    /// Option 61 as hex, when the client sent one.
    pub client_id: Option<String>,
    pub ip: String,
    pub hostname: Option<String>,
    /// Unix seconds.
    pub expires: u64,
    /// `offered`, `bound`, `released`, or `expired`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryInfo {
    pub mac: String,
    pub network: String,
    pub port: u16,
    /// Null for a vhost-user port, as in `PortInfo`.
    #[serde(with = "empty_as_null", default)]
    pub netns: String,
    #[serde(with = "empty_as_null", default)]
    pub ifname: String,
    pub age_secs: u32,
}

/// `stats`: one snapshot of the daemon's counters (docs/stats.md says what
/// each field means). Counters count since the daemon started (a port's,
/// since it was connected); rates are over the last full sample interval
/// of the housekeeping thread (about one second), integers per second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsInfo {
    /// Length of the interval the rates are over, in milliseconds (about
    /// 1000); 0 until the daemon has taken two samples, and then every rate is 0.
    pub interval_ms: u64,
    /// Milliseconds since the newest sample was taken (rates are that old).
    pub sample_age_ms: u64,
    pub ports: Vec<PortStatsInfo>,
    pub networks: Vec<NetworkStatsInfo>,
    pub routers: Vec<RouterStatsInfo>,
    pub workers: Vec<WorkerStatsInfo>,
    /// The queue of frames from the workers to the gateway thread (ARP,
    /// DHCP, ICMP, routed packets needing the slow path).
    pub punt_queue: QueueDepthInfo,
    /// The control socket: connections now, requests served, and every
    /// connection it refused or closed, by reason (docs/PROTOCOL.md).
    #[serde(default)]
    pub control_socket: ControlSocketInfo,
}

/// The control socket's counters (`stats`, `control_socket`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlSocketInfo {
    /// Connections open now (capture streams included).
    pub connections: u64,
    /// The most connections held at once; at that many, a new one closes
    /// the longest-idle one (`evicted`) or, if none is idle, is refused (`busy`).
    pub max_connections: u64,
    /// Capture streams running now (each has a thread of its own).
    pub streams: u64,
    /// Bytes of unfinished request lines the daemon holds now.
    pub buffered_bytes: u64,
    /// Connections accepted since the daemon started (refused ones included).
    pub accepted: u64,
    /// Requests answered (errors included).
    pub requests: u64,
    pub refused: ControlRefusals,
}

/// Connections the control socket refused or closed, and requests it
/// rejected, by reason; every reason is always present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlRefusals {
    /// The peer's user may not use the socket (closed at once).
    pub forbidden: u64,
    /// Every connection was busy: a new one was refused.
    pub busy: u64,
    /// Idle connections closed to make room for a new one.
    pub evicted: u64,
    /// No complete request line within the request deadline (closed).
    pub request_timeout: u64,
    /// Nothing sent for the idle timeout after a reply (closed).
    pub idle_timeout: u64,
    /// The peer did not read its reply within the write timeout (closed).
    pub write_timeout: u64,
    /// A request line longer than the limit (answered, then closed).
    pub too_large: u64,
    /// A line that is not a valid request (answered; the connection goes on).
    pub malformed: u64,
}

impl ControlRefusals {
    /// Every reason with its count, in a fixed order (metrics, tests).
    pub fn by_reason(&self) -> [(&'static str, u64); 8] {
        [
            ("forbidden", self.forbidden),
            ("busy", self.busy),
            ("evicted", self.evicted),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("write_timeout", self.write_timeout),
            ("too_large", self.too_large),
            ("malformed", self.malformed),
        ]
    }
}

/// Packets, bits and drops per second over the last sample interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatesInfo {
    pub rx_pps: u64,
    /// Bits per second of frames received (Ethernet header and payload, no FCS).
    pub rx_bps: u64,
    pub tx_pps: u64,
    pub tx_bps: u64,
    /// Frames dropped per second, every reason.
    pub drops_ps: u64,
}

/// A bounded queue: what it holds now and the most it can.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepthInfo {
    pub depth: u64,
    pub capacity: u64,
}

/// `stats`: one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatsInfo {
    pub id: u16,
    pub network: String,
    /// Null for a vhost-user port (as in the port object).
    #[serde(with = "empty_as_null", default)]
    pub netns: String,
    #[serde(with = "empty_as_null", default)]
    pub ifname: String,
    /// The socket of a vhost-user port; absent for a TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    /// The uplink port (tapyard's TAP into the daemon's namespace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uplink: bool,
    /// The workers reading it, by queue.
    pub workers: Vec<usize>,
    pub counters: PortCounters,
    pub rates: RatesInfo,
    /// A vhost-user port's own counters (as `vhost.counters` in the port
    /// object: rejected chains, `no_rx_buffers` when the guest's receive
    /// ring was empty, kicks, calls); absent for a TAP.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vhost_counters: std::collections::BTreeMap<String, u64>,
    /// An AF_XDP port's sockets' drops (as `afxdp.counters` in the port
    /// object); absent for other ports.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub afxdp_counters: std::collections::BTreeMap<String, u64>,
}

/// `stats`: one network, its ports' counters summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatsInfo {
    pub name: String,
    pub ports: usize,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason over its ports, every reason listed.
    pub drops: std::collections::BTreeMap<String, u64>,
    pub rates: RatesInfo,
    /// Live entries of its forwarding table, and the most it holds (`--fdb-capacity`).
    pub fdb_entries: u64,
    pub fdb_capacity: u64,
    /// Sum of its ports' `learn_full`: source MACs not learned because the table was full.
    pub learn_full: u64,
    /// Active DHCP leases and static addresses of ports (leases that have
    /// not expired); 0 for a network without a subnet.
    pub leases: u64,
    /// The router it is attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
    /// What routing did with packets that entered from it (as in the network object).
    pub route_counters: std::collections::BTreeMap<String, u64>,
    /// The gateway's DHCP, ARP and ICMP counters (as in the network object).
    pub gateway_counters: std::collections::BTreeMap<String, u64>,
}

/// `stats`: one router.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatsInfo {
    pub name: String,
    pub networks: Vec<String>,
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Packets routed per second over the last sample interval.
    pub routed_pps: u64,
}

/// `stats`: one worker thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatsInfo {
    pub index: usize,
    /// Ports (or queues of multi-queue ports) it reads.
    pub ports: usize,
    /// Loop turns (one `poll` and the bursts after it), those that found
    /// frames, bursts, frames, and nanoseconds spent on turns with frames.
    pub turns: u64,
    pub busy_turns: u64,
    pub bursts: u64,
    pub frames: u64,
    pub busy_ns: u64,
    /// Frames per second over the last sample interval.
    pub frames_ps: u64,
    /// Busy time per second over the last sample interval, in millionths
    /// (1,000,000 = always busy). With `--poll busy` the idle spinning is not busy.
    pub busy_ppm: u64,
    /// Ports on its pending list after its last turn: ports with frames
    /// left over from a full burst, served next turn without waiting.
    pub pending: u64,
}

/// A string field that is absent for some ports (a vhost-user port has no
/// namespace): JSON null rather than "", like the other absent fields. The
/// Rust side keeps a plain `String`, empty when absent.
mod empty_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &str, ser: S) -> Result<S::Ok, S::Error> {
        if s.is_empty() {
            ser.serialize_none()
        } else {
            ser.serialize_some(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(de)?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_json_with_an_op() {
        let r = Request::NetworkCreate(NetworkCreate {
            name: "a".into(),
            subnet: Some("10.0.0.0/24".into()),
            ..Default::default()
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"network_create","name":"a","subnet":"10.0.0.0/24"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"ping"}"#).unwrap(), Request::Ping);
        // force_subnet: absent means false; sent only when true.
        let forced = Request::NetworkCreate(NetworkCreate {
            name: "a".into(),
            subnet: Some("10.0.0.0/24".into()),
            force_subnet: true,
            ..Default::default()
        });
        let s = serde_json::to_string(&forced).unwrap();
        assert!(s.ends_with(r#""force_subnet":true}"#), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), forced);
    }

    #[test]
    fn absent_namespace_and_interface_are_null_not_empty() {
        let p = PortInfo {
            id: 1,
            network: "n".into(),
            netns: String::new(),
            ifname: String::new(),
            mac: "02:00:00:00:00:01".into(),
            ip: None,
            ip_source: None,
            worker: 0,
            workers: vec![0],
            queues: 1,
            offloads: vec![],
            counters: Default::default(),
            vhost: None,
            afxdp: None,
            publish: vec![],
            owner: None,
            container: None,
            impair_in: None,
            impair_out: None,
            link_up: true,
            port_security: false,
            storm_limit: None,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["netns"], serde_json::Value::Null);
        assert_eq!(v["ifname"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<PortInfo>(v).unwrap(), p);
        let tap = PortInfo { netns: "blue".into(), ifname: "eth0".into(), ..p };
        let v = serde_json::to_value(&tap).unwrap();
        assert_eq!((v["netns"].as_str(), v["ifname"].as_str()), (Some("blue"), Some("eth0")));
    }

    #[test]
    fn connect_takes_publish_and_old_clients_need_not_send_it() {
        let old = r#"{"op":"connect","network":"n","netns":"c1"}"#;
        let r: Request = serde_json::from_str(old).unwrap();
        let Request::Connect { publish, .. } = &r else { panic!("{r:?}") };
        assert!(publish.is_empty());
        assert_eq!(serde_json::to_string(&r).unwrap(), old, "no publish: not sent");
        let new = r#"{"op":"connect","network":"n","netns":"c1","publish":["8080:80","53:53/udp"]}"#;
        let r: Request = serde_json::from_str(new).unwrap();
        let Request::Connect { publish, .. } = &r else { panic!("{r:?}") };
        assert_eq!(publish, &["8080:80", "53:53/udp"]);
        assert_eq!(serde_json::to_string(&r).unwrap(), new);
        for op in ["port_publish", "port_unpublish"] {
            let s = format!(r#"{{"op":"{op}","network":"n","netns":"c1","spec":"8080:80"}}"#);
            let r: Request = serde_json::from_str(&s).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), s);
            let s = format!(r#"{{"op":"{op}","network":"n","netns":"c1","ifname":"eth1","spec":"80"}}"#);
            assert_eq!(serde_json::to_string(&serde_json::from_str::<Request>(&s).unwrap()).unwrap(), s);
            let missing = format!(r#"{{"op":"{op}","network":"n","netns":"c1"}}"#);
            assert!(serde_json::from_str::<Request>(&missing).is_err(), "{op} needs a spec");
        }
    }

    #[test]
    fn published_ports_show_their_state() {
        let publish = crate::control::publish::parse("127.0.0.1:8080:80").unwrap()[0];
        let info = PublishInfo { publish, state: PublishState::Waiting, error: None };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"host_ip": "127.0.0.1", "host_port": 8080, "container_port": 80,
                               "proto": "tcp", "state": "waiting"})
        );
        assert_eq!(serde_json::from_value::<PublishInfo>(v).unwrap(), info);
        assert_eq!(info.shown(), "127.0.0.1:8080->80/tcp(waiting)");
        let on = PublishInfo { state: PublishState::Active, ..info.clone() };
        assert_eq!(on.shown(), "127.0.0.1:8080->80/tcp");
        let off = PublishInfo { state: PublishState::Inactive, error: Some("in use".into()), ..info };
        assert_eq!(serde_json::to_value(&off).unwrap()["error"], "in use");
        assert_eq!(off.shown(), "127.0.0.1:8080->80/tcp(inactive)");
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"network_rm","name":"a","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"name":"a"}"#).is_err());
    }

    /// The wire form of a reply: what the server writes after `"result":`.
    fn wire(r: impl Into<Reply>) -> String {
        serde_json::to_string(&Response::from_result(Ok::<Reply, ApiError>(r.into()))).unwrap()
    }

    #[test]
    fn small_replies_keep_their_documented_shapes() {
        // docs/PROTOCOL.md, "Requests": the result column.
        let rm = NetworkRemoved { removed: "blue".into(), ports_removed: 2, detached_from: None };
        assert_eq!(wire(rm), r#"{"ok":true,"result":{"removed":"blue","ports_removed":2,"detached_from":null}}"#);
        let rm = NetworkRemoved { removed: "blue".into(), ports_removed: 0, detached_from: Some("r1".into()) };
        assert_eq!(wire(rm), r#"{"ok":true,"result":{"removed":"blue","ports_removed":0,"detached_from":"r1"}}"#);
        assert_eq!(wire(Removed { removed: "r1".into() }), r#"{"ok":true,"result":{"removed":"r1"}}"#);
        assert_eq!(wire(Disconnected { disconnected: 7 }), r#"{"ok":true,"result":{"disconnected":7}}"#);
        assert_eq!(wire(Flushed { flushed: 0 }), r#"{"ok":true,"result":{"flushed":0}}"#);
        assert_eq!(wire(Stopping { stopping: true }), r#"{"ok":true,"result":{"stopping":true}}"#);
        let res = Reserved { network: "blue".into(), mac: "02:00:00:00:00:01".into(), ip: "10.0.0.9".into() };
        assert_eq!(wire(res), r#"{"ok":true,"result":{"network":"blue","mac":"02:00:00:00:00:01","ip":"10.0.0.9"}}"#);
    }

    #[test]
    fn list_replies_are_bare_arrays_and_objects_are_not_wrapped() {
        // Untagged: no variant name on the wire, an empty list is `[]`.
        assert_eq!(wire(Vec::<RouteInfo>::new()), r#"{"ok":true,"result":[]}"#);
        let route = RouteInfo { router: "r".into(), prefix: "10.0.0.0/24".into(), via: None, network: "a".into() };
        assert_eq!(
            wire(vec![route.clone()]),
            r#"{"ok":true,"result":[{"router":"r","prefix":"10.0.0.0/24","via":null,"network":"a"}]}"#
        );
        let router = RouterInfo {
            name: "r".into(),
            networks: vec!["a".into()],
            routes: vec![route],
            counters: Default::default(),
        };
        let v: serde_json::Value = serde_json::from_str(&wire(router.clone())).unwrap();
        assert_eq!(serde_json::from_value::<RouterInfo>(v["result"].clone()).unwrap(), router);
    }

    #[test]
    fn an_error_reply_has_no_result() {
        let e = ApiError::not_found("no network named \"x\"");
        let s = serde_json::to_string(&Response::<Reply>::from_result(Err(e))).unwrap();
        assert_eq!(s, r#"{"ok":false,"error":{"kind":"not_found","message":"no network named \"x\""}}"#);
        // And a client reads it back as plain JSON.
        let r: Response = serde_json::from_str(&s).unwrap();
        assert_eq!((r.ok, r.result, r.error.map(|e| e.kind)), (false, None, Some(ErrorKind::NotFound)));
    }
}

/// `capture`: what to capture, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// `NETWORK`, `NETWORK/NETNS`, `NETWORK/NETNS/IFNAME`, `NETNS/IFNAME` or
    /// a port id (docs/capture.md).
    pub target: String,
    /// Bytes kept of each frame (default [`DEFAULT_SNAPLEN`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
    /// Stop after this many frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Send the flight recorders' frames (those already seen) instead of new ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recent: bool,
}

/// tcpdump's default snapshot length.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

/// The reply to `capture`, before the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStarted {
    /// The ports captured; a record's `interface` indexes this list (and is
    /// its pcapng interface id).
    pub interfaces: Vec<CaptureInterface>,
    pub snaplen: u32,
    pub recent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureInterface {
    /// The port id (`port ls`).
    pub port: u16,
    /// `NETWORK/NETNS/IFNAME`, or `NETWORK/vhost:SOCKET` for a vhost-user port.
    pub name: String,
    pub network: String,
    pub mac: String,
}

/// The reply to `port_mirror`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorInfo {
    pub port: u16,
    pub name: String,
    /// The port that gets the copies (its name); none when mirroring was turned off.
    pub to: Option<String>,
}

/// One binary record of a capture stream (docs/PROTOCOL.md): a 24-byte
/// little-endian header, then `cap_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureRecord {
    pub kind: RecordKind,
    /// 1: received by the port, 2: sent to it (pcapng `epb_flags` direction).
    pub dir: u8,
    pub interface: u32,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub orig_len: u32,
    pub cap_len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A frame: `cap_len` bytes of it follow.
    Frame = 1,
    /// The last record: 16 bytes follow, frames captured and frames dropped
    /// (the reader was behind), each a little-endian u64.
    End = 2,
}

impl CaptureRecord {
    pub const LEN: usize = 24;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.kind as u8;
        b[1] = self.dir;
        b[4..8].copy_from_slice(&self.interface.to_le_bytes());
        b[8..16].copy_from_slice(&self.ts_ns.to_le_bytes());
        b[16..20].copy_from_slice(&self.orig_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.cap_len.to_le_bytes());
        b
    }

    /// None for an unknown kind.
    pub fn decode(b: &[u8; Self::LEN]) -> Option<CaptureRecord> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let kind = match b[0] {
            1 => RecordKind::Frame,
            2 => RecordKind::End,
            _ => return None,
        };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[8..16]);
        Some(CaptureRecord {
            kind,
            dir: b[1],
            interface: u32_at(4),
            ts_ns: u64::from_le_bytes(ts),
            orig_len: u32_at(16),
            cap_len: u32_at(20),
        })
    }
}
