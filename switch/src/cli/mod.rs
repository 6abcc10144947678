//! The `tapyard` command line: one subcommand per control-socket request,
//! plus `daemon` (run the switch) and `lab` (the embedded demo and smoke test).
//! Verbs, flags and `--json` outputs are a contract scripts rely on: add,
//! never rename.

pub mod bench;
pub mod capture;
pub mod client;
pub mod lab;
pub mod labkit;
pub mod rootless;
mod stats;
mod table;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::control::proto::*;
use client::ClientError;

#[derive(Parser, Debug)]
#[command(name = "tapyard", version, about = "A userspace virtual switch for containers and VMs")]
pub struct Cli {
    /// Control socket of the daemon [default: /run/tapyard/tapyard.sock as root;
    /// as another user $XDG_RUNTIME_DIR/tapyard/tapyard.sock, or
    /// $TMPDIR/tapyard-UID/tapyard.sock when XDG_RUNTIME_DIR is unset, except
    /// for a rootless `daemon`, which then needs --socket]
    #[arg(long, global = true, env = "TAPYARD_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the switch daemon (data path and control socket) in the foreground.
    Daemon(DaemonArgs),
    /// Create, list, inspect and remove networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Attach a network namespace to a network through a new TAP interface,
    /// or (with --vhost-user) a VM's virtio-net device through a vhost-user socket.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["netns", "vhost_user"])))]
    #[command(override_usage = "tapyard connect [OPTIONS] <NETWORK> <NETNS>\n       \
        tapyard connect [OPTIONS] <NETWORK> --vhost-user <SOCKET>")]
    Connect {
        /// The network to attach to.
        network: String,
        /// A name under /run/netns, a path to a namespace file, or pid:N.
        netns: Option<String>,
        /// Attach a vhost-user frontend (QEMU `-netdev vhost-user`, DPDK
        /// virtio-user, cloud-hypervisor) through this unix socket; tapyard
        /// is the backend.
        #[arg(long, value_name = "SOCKET")]
        vhost_user: Option<PathBuf>,
        /// With --vhost-user: listen on SOCKET (the default).
        #[arg(long, conflicts_with = "client")]
        server: bool,
        /// With --vhost-user: connect to a frontend listening on SOCKET
        /// (QEMU `server=on`), retrying every second until it is there.
        #[arg(long)]
        client: bool,
        /// With --vhost-user: virtio-net queue pairs (VIRTIO_NET_F_MQ); pair
        /// q is served by worker q, so at most one per worker.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        queues: u16,
        /// With --vhost-user (server): permission bits of the socket, in
        /// octal. A frontend needs write permission to connect, so 0660 lets
        /// the socket's group in [default: 0660].
        #[arg(long, value_name = "MODE")]
        socket_mode: Option<String>,
        /// With --vhost-user (server): the socket's group, a name or a gid,
        /// e.g. the group QEMU runs as [default: the group the kernel gives a
        /// new file: the daemon's, or the directory's if it is setgid].
        #[arg(long, value_name = "GROUP")]
        socket_group: Option<String>,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// MAC address [default: a stable locally administered address].
        #[arg(long)]
        mac: Option<String>,
        /// Address to assign inside the namespace, like 10.0.0.2/24.
        #[arg(long)]
        ip: Option<String>,
        /// TAP offloads (checksum, TSO, USO): `on` moves 64 KiB super-frames
        /// per read and write; `off` makes the kernel segment and checksum
        /// every frame (and tapyard segments frames sent to this port).
        #[arg(long, value_enum, default_value_t = OnOff::On)]
        offload: OnOff,
        /// Publish a host port to the namespace, as docker run -p
        /// (repeatable): [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp],
        /// HOST_IP::CONTAINER_PORT or CONTAINER_PORT (host port chosen by the
        /// kernel); ranges like 8000-8010:8000-8010; IPv4 only. The network
        /// needs egress. A host port in use refuses the connect.
        #[arg(long, short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
        /// Port security: the port sends only from its MAC and (once it has
        /// one) its address, and serves no DHCP. `off` for nodes that route,
        /// bridge or spoof on purpose [default: on for a TAP port with an
        /// address or on a network with a subnet; off for vhost-user ports].
        #[arg(long, value_enum, value_name = "on|off")]
        port_security: Option<OnOff>,
        /// Storm control for this port: flooded frames per second (0: no
        /// limit) [default: the daemon's --storm-limit].
        #[arg(long, value_name = "PPS")]
        storm_limit: Option<u32>,
        /// The namespace's interface: `tap` (a multi-queue TAP, rootless
        /// too) or `afxdp` (as root: a veth pair whose switch end tapyard
        /// reads and writes through AF_XDP rings, a batch per system call;
        /// no TCP offloads, see docs/PERFORMANCE.md).
        #[arg(long, value_enum, default_value_t = KindArg::Tap)]
        kind: KindArg,
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Detach a namespace from a network (its interface disappears), or a
    /// vhost-user port (--vhost-user SOCKET; the socket is closed).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["netns", "vhost_user"])))]
    #[command(override_usage = "tapyard disconnect [OPTIONS] <NETWORK> <NETNS>\n       \
        tapyard disconnect <NETWORK> --vhost-user <SOCKET>")]
    Disconnect {
        network: String,
        /// The namespace as given to `connect` (name, path or pid:N).
        netns: Option<String>,
        #[arg(long, value_name = "SOCKET", conflicts_with = "ifname")]
        vhost_user: Option<PathBuf>,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// List ports; publish host ports to them (as docker run -p).
    #[command(subcommand)]
    Port(PortCmd),
    /// Routers: connect networks to each other through their gateways.
    #[command(subcommand)]
    Router(RouterCmd),
    /// Static routes of a router.
    #[command(subcommand)]
    Route(RouteCmd),
    /// List DHCP leases and addresses given to ports.
    #[command(subcommand)]
    Lease(LeaseCmd),
    /// Show or flush the forwarding database (learned MAC addresses).
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Statistics: per port, network, router and worker: packets, bytes,
    /// drops by reason, rates over the last second, queue depths, FDB
    /// occupancy (docs/stats.md).
    Stats(stats::StatsArgs),
    /// Network labs from topology files (docs/labs.md), or the embedded
    /// default lab: two networks, four namespaces, a connectivity matrix.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// Named network namespaces for containers: `ip netns` as root; for a
    /// rootless daemon, inside its user and mount namespaces (docs/ROOTLESS.md).
    #[command(subcommand)]
    Netns(NetnsCmd),
    /// Run a command in a named network namespace (as `ip netns exec`); for
    /// a rootless daemon, as uid 0 of its user namespace. Working directory
    /// and environment are kept.
    #[command(override_usage = "tapyard exec <NETNS> -- <CMD>...")]
    Exec {
        /// A name (`tapyard netns ls`), a path to a namespace file, or pid:N.
        netns: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        cmd: Vec<std::ffi::OsString>,
    },
    /// Benchmark tapyard against the Linux bridge, vde_switch and Open vSwitch: throughput,
    /// small-frame rate and loss, latency, CPU per GB (as root; see docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// Capture a network's or a port's frames as pcapng (-w FILE, -w - for
    /// stdout) or as one line per frame; --recent writes what the ports saw
    /// before now (the flight recorder). See docs/capture.md.
    Capture(capture::CaptureArgs),
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// State directory [default: with --socket or TAPYARD_SOCKET, SOCKET's
    /// path with the extension .state (so two daemons on two sockets never
    /// share one); else /var/lib/tapyard as root, $XDG_STATE_HOME/tapyard
    /// (or ~/.local/state/tapyard) otherwise].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Worker threads [default: one per available core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Default address pool as CIDR/PREFIX (repeatable), like 10.200.0.0/16/24:
    /// networks created without --subnet take the next free /PREFIX of it
    /// [default: 172.17.0.0/12/16, then 192.168.0.0/16/20].
    #[arg(long = "default-pool", value_name = "CIDR/PREFIX")]
    pub default_pools: Vec<String>,
    /// How workers wait for frames: `event` sleeps in epoll until a port is
    /// ready (no CPU when idle); `busy` never sleeps, like OVS PMD threads:
    /// lower latency, but each worker keeps a core 100 % busy. See docs/PERFORMANCE.md.
    #[arg(long, value_enum, default_value_t = PollMode::Event)]
    pub poll: PollMode,
    /// Frames the flight recorder keeps per port and worker (headers only,
    /// always on; `capture --recent` reads them); 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = crate::capture::DEFAULT_RECORDER_DEPTH as u64,
          value_parser = clap::value_parser!(u64).range(0..=16384))]
    pub flight_recorder: u64,
    /// Storm control: broadcast, multicast and unknown-unicast frames a
    /// port may flood per second (one-second windows; the excess is dropped
    /// and counted as `storm`); a port's own `connect --storm-limit` wins; 0: no limit.
    #[arg(long, value_name = "PPS", default_value_t = crate::security::DEFAULT_STORM_LIMIT)]
    pub storm_limit: u32,
    /// DHCP starvation guard: addresses (offers and leases) one client
    /// hardware address, so one port with port security, may hold at once,
    /// however many client identifiers it cycles through; 0: no cap.
    #[arg(long, value_name = "N", default_value_t = crate::control::DEFAULT_LEASES_PER_PORT)]
    pub dhcp_leases_per_port: u32,
    /// Frames the queue from the workers to the gateway (DHCP, ARP, ICMP
    /// for the gateway, routing's misses) holds; beyond, punted frames are
    /// dropped and counted as `gateway_full`. 2 KiB each, allocated at start.
    #[arg(long, value_name = "N", default_value_t = crate::punt::PUNT_DEPTH as u32,
          value_parser = clap::value_parser!(u32).range(crate::punt::PUNT_DEPTH_MIN as i64..=1 << 20))]
    pub punt_depth: u32,
    /// Which TAP queue (so which worker) gets a frame a container sends:
    /// `flow`, the kernel's flow hashing; `cpu`, the queue of the CPU the
    /// sender runs on (an eBPF steering program; workers are pinned, so the
    /// wake-up stays on that core): lower request/response latency, lower
    /// bulk TCP (docs/PERFORMANCE.md). Needs BPF (root); else `flow`.
    #[arg(long, value_enum, default_value_t = TapSteering::Flow)]
    pub tap_steering: TapSteering,
    /// `tap`: a TAP port into the daemon's own namespace (the host's, as
    /// root) through which networks with egress reach the world, NATed by
    /// the kernel (docs/EGRESS.md); `none`: no network reaches beyond
    /// tapyard. Needs nftables (`nft`).
    #[arg(long, value_enum, default_value_t = UplinkMode::Tap)]
    pub uplink: UplinkMode,
    /// The uplink's transit subnet (a /30 or wider): the kernel's end takes
    /// its first host address, tapyard's the second. Must not overlap a
    /// route or address of the host.
    #[arg(long, value_name = "CIDR", default_value = crate::control::uplink::DEFAULT_SUBNET)]
    pub uplink_subnet: String,
    /// The uplink's interface name in the daemon's namespace.
    #[arg(long, value_name = "NAME", default_value = crate::control::uplink::DEFAULT_IFNAME)]
    pub uplink_ifname: String,
    /// Where to read the host's DNS resolvers, which DHCP offers on networks
    /// with egress and no --dns [default: /etc/resolv.conf without its
    /// loopback resolvers; if none is left, systemd-resolved's upstream
    /// servers in /run/systemd/resolve/resolv.conf].
    #[arg(long, value_name = "PATH")]
    pub resolv_conf: Option<PathBuf>,
    /// Started by a user other than root, outside any user namespace, the
    /// daemon makes its own user, network and mount namespaces and this
    /// uplink to the host: `pasta` (egress and published ports), `slirp4netns`
    /// (egress only), `none`. Ignored as root (see docs/ROOTLESS.md)
    /// [default: pasta].
    #[arg(long, value_enum)]
    pub rootless_uplink: Option<rootless::Uplink>,
    /// Serve Docker's network-driver and IPAM plugin protocol, so that
    /// `docker network create -d tapyard --ipam-driver tapyard` makes tapyard
    /// networks (docs/docker.md).
    #[arg(long)]
    pub docker_plugin: bool,
    /// The plugin's socket; dockerd finds the plugin by the file's name
    /// [default: /run/docker/plugins/tapyard.sock].
    #[arg(long, value_name = "PATH", requires = "docker_plugin")]
    pub docker_plugin_socket: Option<PathBuf>,
    /// dockerd's API socket, which the plugin asks for the names of the
    /// containers on its networks (shown by `port ls`) [default: DOCKER_HOST
    /// when it is unix://PATH, else /var/run/docker.sock].
    #[arg(long, value_name = "PATH", requires = "docker_plugin")]
    pub docker_host: Option<PathBuf>,
    /// Serve the counters in Prometheus' text format at http://ADDR:PORT/metrics,
    /// like 127.0.0.1:9464 (opt-in; no authentication: keep it on loopback
    /// or a management network; docs/stats.md).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Let the members of this group (a name or a numeric gid) use the
    /// control socket too: the socket becomes mode 0660 and owned by it.
    /// Without it only root and the daemon's own user may (the socket is
    /// 0600); the daemon checks every peer's credentials either way
    /// (docs/PROTOCOL.md).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkMode {
    Tap,
    None,
}

#[derive(Subcommand, Debug)]
pub enum NetnsCmd {
    /// Make a network namespace called NAME.
    Add { name: String },
    /// Delete the namespace called NAME (its processes keep it until they exit).
    Del { name: String },
    /// List named namespaces.
    Ls {
        /// Print JSON (a list of names).
        #[arg(long)]
        json: bool,
    },
}

/// `daemon --tap-steering`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapSteering {
    Flow,
    Cpu,
}

/// `connect --kind`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindArg {
    Tap,
    Afxdp,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    Event,
    Busy,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network.
    Create {
        #[command(flatten)]
        args: Box<NetworkCreate>,
        /// Print JSON (the full data) instead of the name.
        #[arg(long)]
        json: bool,
    },
    /// List networks.
    Ls {
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one network as JSON (always JSON; --json is accepted for uniformity).
    Inspect {
        name: String,
        /// Accepted for uniformity: inspect always prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reserve an address for a MAC: DHCP always gives it that address, and nobody else.
    Reserve { network: String, mac: String, ip: String },
    /// Remove a network (refused while ports are attached or it is attached
    /// to a router, unless --force).
    Rm {
        name: String,
        /// Disconnect its ports and detach it from its router first.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PortCmd {
    /// List ports with their counters and published ports.
    Ls {
        network: Option<String>,
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish a host port to a connected namespace's port (SPEC as
    /// `connect --publish`; a spec left inactive by a restart is retried).
    Publish {
        network: String,
        /// The namespace as given to `connect`.
        netns: String,
        /// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], HOST_IP::CONTAINER_PORT or CONTAINER_PORT.
        spec: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Print JSON (the port) instead of what was published.
        #[arg(long)]
        json: bool,
    },
    /// Copy every frame SRC_PORT receives or is sent to another port (a SPAN
    /// port): --to names it; --off stops. Ports are named
    /// NETWORK/NETNS[/IFNAME], NETNS/IFNAME or by id (`port ls`).
    #[command(group(clap::ArgGroup::new("mirror_to").required(true).args(["to", "off"])))]
    Mirror {
        src_port: String,
        /// The port that gets the copies: NETNS/IFNAME, NETWORK/NETNS[/IFNAME] or an id.
        #[arg(long, value_name = "PORT")]
        to: Option<String>,
        /// Stop mirroring SRC_PORT.
        #[arg(long)]
        off: bool,
    },
    /// Stop publishing (SPEC as given to publish, or as `port ls` shows it:
    /// 0.0.0.0:8080->80/tcp; a spec without a host port stops all of that
    /// container port); the host port is released.
    Unpublish {
        network: String,
        netns: String,
        spec: String,
        #[arg(long, default_value = "eth0")]
        ifname: String,
    },
    /// Impair a port's link (delay, jitter, loss, duplication, reordering,
    /// corruption, a rate limit; tc-netem(8) units), cut it (--down: the
    /// node sees carrier loss) or restore it (--up), or --clear the
    /// impairments; prints the port's resulting settings (docs/impairments.md).
    #[command(override_usage = "tapyard port set NETWORK NETNS [--ifname IF] [SETTINGS]\n       \
                                tapyard port set NETWORK --vhost-user SOCKET [SETTINGS]")]
    Set(PortSetArgs),
}

/// `port set`'s arguments: which port, then what to change.
#[derive(Args, Debug)]
pub struct PortSetArgs {
    network: String,
    /// The namespace as given to `connect` (a TAP port).
    #[arg(required_unless_present = "vhost_user")]
    netns: Option<String>,
    #[arg(long, conflicts_with = "vhost_user")]
    ifname: Option<String>,
    /// A vhost-user port, by its socket.
    #[arg(long, value_name = "SOCKET", conflicts_with = "netns")]
    vhost_user: Option<PathBuf>,
    /// Fixed delay: 20ms, 500us, 1s.
    #[arg(long, value_parser = crate::impair::parse_duration, value_name = "TIME")]
    delay: Option<u64>,
    /// Variation around the delay (frames may then be reordered, as with tc-netem).
    #[arg(long, value_parser = crate::impair::parse_duration, value_name = "TIME")]
    jitter: Option<u64>,
    /// How jitter is drawn: uniform (delay ± jitter), normal (σ = jitter), pareto (heavy tail, σ = jitter).
    #[arg(long, value_parser = parse_distribution, value_name = "uniform|normal|pareto")]
    distribution: Option<crate::impair::Distribution>,
    /// Random loss: 1%, 0.5%.
    #[arg(long, value_parser = crate::impair::parse_percent, value_name = "PERCENT")]
    loss: Option<u32>,
    /// Mean length of a loss burst in frames (Gilbert model); the loss rate stays --loss.
    #[arg(long, value_name = "N")]
    loss_burst: Option<f64>,
    /// Frames sent twice.
    #[arg(long, value_parser = crate::impair::parse_percent, value_name = "PERCENT")]
    duplicate: Option<u32>,
    /// Frames that skip the delay and overtake those before them (needs --delay).
    #[arg(long, value_parser = crate::impair::parse_percent, value_name = "PERCENT")]
    reorder: Option<u32>,
    /// Frames with one random bit flipped past the Ethernet header.
    #[arg(long, value_parser = crate::impair::parse_percent, value_name = "PERCENT")]
    corrupt: Option<u32>,
    /// Rate limit (token bucket): 10mbit, 1gbit, 500kbit; 1mbps is bytes/s. 0: none.
    #[arg(long, value_parser = crate::impair::parse_rate, value_name = "RATE")]
    rate: Option<u64>,
    /// The token bucket's depth: 32kb, 1500b [default: max(2 frames, 1 ms of rate)].
    #[arg(long, value_parser = crate::impair::parse_size, value_name = "SIZE")]
    burst: Option<u64>,
    /// Frames held at most per direction (delayed or waiting for the rate); beyond it dropped [default: 1000].
    #[arg(long, value_name = "FRAMES")]
    limit: Option<u32>,
    /// Which frames: in (sent by the node), out (sent to the node), or both.
    #[arg(long, value_parser = parse_direction, default_value = "both", value_name = "in|out|both")]
    direction: crate::impair::Direction,
    /// Cut the link: the node sees carrier loss, frames to and from it are dropped.
    #[arg(long, conflicts_with = "up")]
    down: bool,
    /// Restore a cut link.
    #[arg(long)]
    up: bool,
    /// Remove every impairment (both directions) before applying the others given.
    #[arg(long)]
    clear: bool,
    /// Print JSON (the port) instead of its settings.
    #[arg(long)]
    json: bool,
}

fn parse_distribution(s: &str) -> Result<crate::impair::Distribution, String> {
    use crate::impair::Distribution::*;
    match s {
        "uniform" => Ok(Uniform),
        "normal" => Ok(Normal),
        "pareto" => Ok(Pareto),
        _ => Err(format!("{s:?} is not a distribution: uniform, normal or pareto")),
    }
}

fn parse_direction(s: &str) -> Result<crate::impair::Direction, String> {
    use crate::impair::Direction::*;
    match s {
        "in" => Ok(In),
        "out" => Ok(Out),
        "both" => Ok(Both),
        _ => Err(format!("{s:?} is not a direction: in, out or both")),
    }
}

impl PortSetArgs {
    fn request(self) -> anyhow::Result<(PortSet, bool)> {
        let impair = crate::impair::ImpairPatch {
            delay_us: self.delay,
            jitter_us: self.jitter,
            distribution: self.distribution,
            loss_ppm: self.loss,
            loss_burst: self.loss_burst,
            duplicate_ppm: self.duplicate,
            reorder_ppm: self.reorder,
            corrupt_ppm: self.corrupt,
            rate_bps: self.rate,
            burst_bytes: self.burst,
            limit: self.limit,
        };
        // Checked here too, so a bad value is named before the daemon is asked.
        impair.apply(&mut crate::impair::Impairment::default()).or_else(|e| {
            // A patch may rely on the port's current settings (--reorder
            // with a delay set before): only values bad on their own fail here.
            if e.contains("reorder needs a delay") {
                Ok(())
            } else {
                Err(BadArgs(e))
            }
        })?;
        let link_up = match (self.down, self.up) {
            (true, _) => Some(false),
            (_, true) => Some(true),
            _ => None,
        };
        let vhost_user = self.vhost_user.as_deref().map(absolute).transpose()?;
        let req = PortSet {
            network: self.network,
            netns: self.netns,
            ifname: self.ifname,
            vhost_user,
            link_up,
            clear: self.clear,
            direction: self.direction,
            impair,
        };
        Ok((req, self.json))
    }
}

#[derive(Subcommand, Debug)]
pub enum RouterCmd {
    /// Create a router.
    Create { name: String },
    /// Attach a network: it is routed to the router's other networks through its gateway.
    Attach { router: String, network: String },
    /// Detach a network: it is cut off from the others at once.
    Detach { router: String, network: String },
    /// List routers.
    Ls {
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one router as JSON: networks, routes, counters.
    Inspect {
        name: String,
        /// Accepted for uniformity: inspect always prints JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a router (its networks are no longer routed).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// Add a static route: PREFIX via IP, where IP lies in an attached network.
    #[command(override_usage = ROUTE_ADD_USAGE)]
    Add {
        router: String,
        prefix: String,
        /// The literal word `via` (checked after parsing, so that a missing
        /// or misspelt one is reported with the usage, not as `<VIA_KW>`).
        #[arg(value_name = "via")]
        via_kw: Option<String>,
        /// The next hop.
        #[arg(value_name = "IP")]
        via: Option<String>,
    },
    /// Delete a static route.
    Del { router: String, prefix: String },
    /// List routes (connected networks and static routes).
    Ls {
        router: Option<String>,
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// List leases: network, MAC, client id, address, hostname, expiry, state.
    Ls {
        network: Option<String>,
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum FdbCmd {
    /// List learned MAC addresses: MAC, network, port, age.
    Show {
        network: Option<String>,
        /// Print JSON (the full data) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget learned MAC addresses.
    Flush { network: Option<String> },
}

const ROUTE_ADD_USAGE: &str = "tapyard route add <ROUTER> <PREFIX> via <IP>";

/// An argument the daemon was never asked about is wrong: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadArgs(String);

/// The command line definition, with the defaults that depend on who runs
/// it spelt out in `--help`.
fn command() -> clap::Command {
    let here = |h: Option<&clap::builder::StyledStr>, v: PathBuf| {
        format!("{} [here: {}]", h.map(|h| h.to_string()).unwrap_or_default(), v.display())
    };
    let mut cmd = Cli::command();
    let socket_help = cmd.get_arguments().find(|a| a.get_id() == "socket").and_then(|a| a.get_help()).cloned();
    cmd = cmd.mut_arg("socket", |a| a.help(here(socket_help.as_ref(), default_socket())));
    cmd.mut_subcommand("daemon", |d| {
        let h = d.get_arguments().find(|a| a.get_id() == "state_dir").and_then(|a| a.get_help()).cloned();
        d.mut_arg("state_dir", |a| a.help(here(h.as_ref(), default_state_dir())))
    })
}

/// Exits with clap's usage error (status 2) for `path` (a subcommand path, like ["route", "add"]).
fn usage_error(path: &[&str], msg: String) -> ! {
    let mut cmd = command();
    cmd.build();
    let mut sub = &mut cmd;
    for p in path {
        sub = sub.find_subcommand_mut(p).expect("a subcommand of this CLI");
    }
    let mut sub = sub.clone();
    clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, msg).format(&mut sub).exit()
}

/// Options given on the command line that do not apply to the kind of port
/// asked for: refused rather than ignored (`connect NET NS --queues 2` would
/// otherwise make a TAP and say nothing). Checked here rather than with
/// clap's `requires`/`conflicts_with`, which skip options with defaults and
/// name no reason.
fn check_applicable(m: &clap::ArgMatches) {
    let Some(("connect", c)) = m.subcommand() else { return };
    let given = |id: &str| c.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let vhost = given("vhost_user");
    let (wrong, why): (&[&str], &str) = if vhost {
        (
            &["ifname", "ip", "offload", "publish", "kind"],
            "apply to a TAP port (connect NETWORK NETNS), not to --vhost-user",
        )
    } else {
        (&["server", "client", "queues", "socket_mode", "socket_group"], "apply only with --vhost-user SOCKET")
    };
    let bad: Vec<String> =
        wrong.iter().filter(|id| given(id)).map(|id| format!("--{}", id.replace('_', "-"))).collect();
    if !bad.is_empty() {
        let verb = if bad.len() == 1 { "applies" } else { "apply" };
        let why = why.strip_prefix("apply").map(|w| format!("{verb}{w}")).unwrap_or_default();
        usage_error(&["connect"], format!("{} {why}", bad.join(", ")));
    }
    if given("offload") && c.get_one::<KindArg>("kind") == Some(&KindArg::Afxdp) {
        usage_error(&["connect"], "--offload applies to a TAP port; an AF_XDP port has no offloads".into());
    }
    if given("client") && (given("socket_mode") || given("socket_group")) {
        usage_error(
            &["connect"],
            "--socket-mode and --socket-group apply to a socket tapyard listens on; with --client the frontend makes it"
                .into(),
        );
    }
}

fn euid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Whether the system-wide paths apply: root, but not a rootless daemon,
/// which is uid 0 only inside the user namespace it made.
fn system_paths() -> bool {
    euid() == Some(0) && !rootless::is_child()
}

/// `/run/tapyard` as root; the user's runtime directory otherwise.
pub fn default_runtime_dir() -> PathBuf {
    if system_paths() {
        return PathBuf::from("/run/tapyard");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("tapyard"),
        _ => std::env::temp_dir().join(format!("tapyard-{}", euid().unwrap_or(0))),
    }
}

pub fn default_socket() -> PathBuf {
    default_runtime_dir().join("tapyard.sock")
}

pub fn default_state_dir() -> PathBuf {
    if system_paths() {
        return PathBuf::from("/var/lib/tapyard");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tapyard");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/tapyard"),
        None => default_runtime_dir().join("state"),
    }
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    let matches = command().get_matches();
    check_applicable(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let socket_given = cli.socket.is_some();
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAPYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: daemon logs usually go to files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    match run(cli.cmd, socket, socket_given) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tapyard: {e:#}");
            exit_code(&e)
        }
    }
}

/// The exit status for an error (README, "Exit status"): 2 bad arguments
/// (the daemon's `bad_request` included, so that socket clients and the CLI
/// agree on what is the caller's mistake), 3 not found, 4 no daemon, 1 the rest.
fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<BadArgs>().is_some() {
        return 2;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Api(a)) => match a.kind {
            ErrorKind::BadRequest => 2,
            ErrorKind::NotFound => 3,
            _ => 1,
        },
        Some(ClientError::Connect { .. }) => 4,
        _ => 1,
    }
}

/// The daemon's state directory when none is given: beside an explicit
/// socket (its path with the extension `.state`), else the default one. A
/// daemon started on a socket of its own thus never takes over, or locks
/// out, the state of the daemon on the default socket.
fn state_dir_for(socket: &std::path::Path, socket_given: bool) -> PathBuf {
    if socket_given && socket != default_socket() {
        socket.with_extension("state")
    } else {
        default_state_dir()
    }
}

/// Runs a listing request and prints the result as JSON or as a table.
fn list<T: serde::Serialize + serde::de::DeserializeOwned>(
    socket: &std::path::Path,
    req: &Request,
    json: bool,
    table: fn(&[T]),
) -> anyhow::Result<()> {
    let items: Vec<T> = client::call(socket, req)?;
    if json {
        print_json(&items);
    } else {
        table(&items);
    }
    Ok(())
}

/// Socket paths go to the daemon absolute: it runs in another directory.
fn absolute(p: &std::path::Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(p).map_err(|e| anyhow::anyhow!("bad socket path {}: {e}", p.display()))?;
    abs.into_os_string().into_string().map_err(|p| anyhow::anyhow!("socket path {p:?} is not UTF-8"))
}

fn print_json<T: serde::Serialize>(v: &T) {
    out(&serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Writes a line to stdout. A reader that went away (`tapyard port ls | head`)
/// ends the command quietly, as for other Unix tools, instead of the panic
/// `println!` gives on EPIPE (Rust ignores SIGPIPE).
pub(crate) fn out(line: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{line}").and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("tapyard: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `daemon --socket-group`: a numeric gid, or a group name looked up in the
/// system's group database.
fn socket_group(g: &str) -> Result<u32, BadArgs> {
    if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) {
        return g.parse().map_err(|_| BadArgs(format!("invalid --socket-group {g:?}")));
    }
    crate::port::sys::group_id(g)
        .ok_or_else(|| BadArgs(format!("--socket-group {g:?}: no such group (give a name from /etc/group or a gid)")))
}

fn run(cmd: Cmd, socket: PathBuf, socket_given: bool) -> anyhow::Result<i32> {
    let call_v =
        |req: Request| -> anyhow::Result<serde_json::Value> { Ok(client::Client::connect(&socket)?.call_value(&req)?) };
    match cmd {
        Cmd::Daemon(a) => {
            // First, while single-threaded: a rootless start makes its namespaces here.
            match rootless::daemon_start(a.rootless_uplink, &socket, socket_given)? {
                rootless::Start::Supervised(code) => return Ok(code),
                rootless::Start::Plain | rootless::Start::Child => {}
            }
            let workers = a.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if workers == 0 || workers > 256 {
                return Err(BadArgs("--workers must be between 1 and 256".into()).into());
            }
            let default_pools = if a.default_pools.is_empty() {
                tapyard_ipam::default_pools()
            } else {
                a.default_pools.iter().map(|p| p.parse()).collect::<Result<Vec<_>, String>>().map_err(BadArgs)?
            };
            let state_dir = match a.state_dir {
                Some(d) => d,
                None => {
                    let d = state_dir_for(&socket, socket_given);
                    tracing::info!(state_dir = %d.display(), "no --state-dir: using this one (see `tapyard daemon --help`)");
                    d
                }
            };
            // A rootless daemon without a way out (`--rootless-uplink none`)
            // has nothing for an uplink of its own to lead to.
            let closed = rootless::is_child() && a.rootless_uplink == Some(rootless::Uplink::None);
            let uplink = match a.uplink {
                UplinkMode::None => None,
                UplinkMode::Tap if closed => None,
                UplinkMode::Tap => {
                    let subnet = a.uplink_subnet.parse().map_err(|_| {
                        BadArgs(format!(
                            "invalid --uplink-subnet {:?}: expected CIDR like 100.127.255.0/30",
                            a.uplink_subnet
                        ))
                    })?;
                    crate::control::netns::check_ifname(&a.uplink_ifname).map_err(|e| BadArgs(e.to_string()))?;
                    let u = crate::control::uplink::UplinkConfig {
                        ifname: a.uplink_ifname,
                        subnet,
                        resolv_conf: a.resolv_conf,
                    };
                    u.ends().map_err(BadArgs)?;
                    Some(u)
                }
            };
            let cfg = crate::control::Config {
                socket: socket.clone(),
                state_dir,
                workers,
                busy: a.poll == PollMode::Busy,
                flight_recorder: a.flight_recorder as usize,
                storm_limit: a.storm_limit,
                dhcp_leases_per_port: a.dhcp_leases_per_port,
                punt_depth: a.punt_depth as usize,
                tap_steering: match a.tap_steering {
                    TapSteering::Flow => crate::port::tap::Steering::Flow,
                    TapSteering::Cpu => crate::port::tap::Steering::Cpu,
                },
                default_pools,
                uplink,
                docker_plugin: a
                    .docker_plugin
                    .then(|| crate::control::docker::socket_path(a.docker_plugin_socket.as_deref())),
                docker_api: a.docker_plugin.then(|| crate::control::docker::api_path(a.docker_host.as_deref())),
                metrics: a.metrics,
                socket_group: a.socket_group.as_deref().map(socket_group).transpose()?,
            };
            crate::control::server::run(cfg)?;
        }
        Cmd::Network(NetworkCmd::Create { args, json }) => {
            let info: NetworkInfo = client::call(&socket, &Request::NetworkCreate(*args))?;
            if json {
                print_json(&info);
            } else {
                println!("{}", info.name);
            }
        }
        Cmd::Network(NetworkCmd::Ls { json }) => {
            list::<NetworkInfo>(&socket, &Request::NetworkLs, json, table::networks)?;
        }
        Cmd::Network(NetworkCmd::Inspect { name, json: _ }) => print_json(&call_v(Request::NetworkInspect { name })?),
        Cmd::Network(NetworkCmd::Reserve { network, mac, ip }) => {
            call_v(Request::NetworkReserve { network, mac, ip })?;
        }
        Cmd::Router(RouterCmd::Create { name }) => {
            call_v(Request::RouterCreate { name: name.clone() })?;
            println!("{name}");
        }
        Cmd::Router(RouterCmd::Attach { router, network }) => {
            call_v(Request::RouterAttach { router, network })?;
        }
        Cmd::Router(RouterCmd::Detach { router, network }) => {
            call_v(Request::RouterDetach { router, network })?;
        }
        Cmd::Router(RouterCmd::Ls { json }) => {
            list::<RouterInfo>(&socket, &Request::RouterLs, json, table::routers)?;
        }
        Cmd::Router(RouterCmd::Inspect { name, json: _ }) => print_json(&call_v(Request::RouterInspect { name })?),
        Cmd::Router(RouterCmd::Rm { name }) => {
            call_v(Request::RouterRm { name })?;
        }
        Cmd::Route(RouteCmd::Add { router, prefix, via_kw, via }) => {
            let via = match (via_kw.as_deref(), via) {
                (Some("via"), Some(via)) => via,
                (Some("via"), None) => usage_error(&["route", "add"], "the next hop is missing after `via`".into()),
                (None, _) => {
                    usage_error(&["route", "add"], "`via IP` is missing: a static route needs a next hop".into())
                }
                (Some(w), _) => {
                    usage_error(&["route", "add"], format!("expected the word `via` after the prefix, found {w:?}"))
                }
            };
            call_v(Request::RouteAdd { router, prefix, via })?;
        }
        Cmd::Route(RouteCmd::Del { router, prefix }) => {
            call_v(Request::RouteDel { router, prefix })?;
        }
        Cmd::Route(RouteCmd::Ls { router, json }) => {
            list::<RouteInfo>(&socket, &Request::RouteLs { router }, json, table::routes)?;
        }
        Cmd::Lease(LeaseCmd::Ls { network, json }) => {
            list::<LeaseInfo>(&socket, &Request::LeaseLs { network }, json, table::leases)?;
        }
        Cmd::Network(NetworkCmd::Rm { name, force }) => {
            call_v(Request::NetworkRm { name: name.clone(), force })?;
            println!("{name}");
        }
        Cmd::Connect {
            network,
            vhost_user: Some(sock),
            client,
            queues,
            mac,
            json,
            socket_mode,
            socket_group,
            port_security,
            storm_limit,
            ..
        } => {
            let socket_path = absolute(&sock)?;
            let p: PortInfo = client::call(
                &socket,
                &Request::ConnectVhost {
                    network,
                    socket: socket_path,
                    client,
                    queues: Some(queues),
                    mac,
                    socket_mode,
                    socket_group,
                    port_security: port_security.map(|p| p == OnOff::On),
                    storm_limit,
                },
            )?;
            if json {
                print_json(&p);
            } else {
                let v = p.vhost.as_ref();
                println!(
                    "port {}: vhost-user {} ({}) on {} (mac {}, {} queue pair{})",
                    p.id,
                    v.map(|v| v.socket.as_str()).unwrap_or(""),
                    v.map(|v| v.mode.as_str()).unwrap_or(""),
                    p.network,
                    p.mac,
                    p.queues,
                    if p.queues == 1 { "" } else { "s" }
                );
            }
        }
        Cmd::Connect {
            network,
            netns,
            ifname,
            mac,
            ip,
            offload,
            publish,
            port_security,
            storm_limit,
            kind,
            json,
            ..
        } => {
            let netns = netns.unwrap_or_default();
            let offload = Some(offload == OnOff::On);
            let port_security = port_security.map(|p| p == OnOff::On);
            let req = Request::Connect {
                network,
                netns,
                ifname: Some(ifname),
                mac,
                ip,
                offload,
                publish,
                owner: None,
                port_security,
                storm_limit,
                kind: match kind {
                    KindArg::Tap => None,
                    KindArg::Afxdp => Some(crate::control::proto::PortKind::Afxdp),
                },
            };
            let p: PortInfo = client::call(&socket, &req)?;
            if json {
                print_json(&p);
            } else {
                let shown: Vec<String> = p.publish.iter().map(PublishInfo::shown).collect();
                println!(
                    "port {}: {} in {} on {} (mac {}{}{})",
                    p.id,
                    p.ifname,
                    p.netns,
                    p.network,
                    p.mac,
                    p.ip.map(|i| format!(", ip {i}")).unwrap_or_default(),
                    if shown.is_empty() { String::new() } else { format!(", publish {}", shown.join(",")) }
                );
            }
        }
        Cmd::Port(PortCmd::Publish { network, netns, spec, ifname, json }) => {
            let patterns = crate::control::publish::parse(&spec).map_err(BadArgs)?;
            let p: PortInfo =
                client::call(&socket, &Request::PortPublish { network, netns, ifname: Some(ifname), spec })?;
            if json {
                print_json(&p);
            } else {
                // What this spec published, with the host ports the kernel chose.
                for i in p.publish.iter().filter(|i| patterns.iter().any(|pat| i.publish.matches(pat))) {
                    println!("{}", i.shown());
                }
            }
        }
        Cmd::Port(PortCmd::Unpublish { network, netns, spec, ifname }) => {
            call_v(Request::PortUnpublish { network, netns, ifname: Some(ifname), spec })?;
        }
        Cmd::Disconnect { network, vhost_user: Some(sock), .. } => {
            call_v(Request::DisconnectVhost { network, socket: absolute(&sock)? })?;
        }
        Cmd::Disconnect { network, netns, ifname, .. } => {
            let netns = netns.unwrap_or_default();
            call_v(Request::Disconnect { network, netns, ifname: Some(ifname) })?;
        }
        Cmd::Port(PortCmd::Set(args)) => {
            let (req, json) = args.request()?;
            let p: PortInfo = client::call(&socket, &Request::PortSet(req))?;
            if json {
                print_json(&p);
            } else {
                print!("{}", table::link_settings(&p));
            }
        }
        Cmd::Port(PortCmd::Mirror { src_port, to, off: _ }) => {
            let info: MirrorInfo = client::call(&socket, &Request::PortMirror { port: src_port, to })?;
            match info.to {
                Some(to) => out(&format!("{} mirrored to {to}", info.name)),
                None => out(&format!("{} no longer mirrored", info.name)),
            }
        }
        Cmd::Capture(a) => return capture::run(&socket, a),
        Cmd::Port(PortCmd::Ls { network, json }) => {
            list::<PortInfo>(&socket, &Request::PortLs { network }, json, table::ports)?;
        }
        Cmd::Fdb(FdbCmd::Show { network, json }) => {
            list::<FdbEntryInfo>(&socket, &Request::FdbShow { network }, json, table::fdb)?;
        }
        Cmd::Fdb(FdbCmd::Flush { network }) => {
            let v = call_v(Request::FdbFlush { network })?;
            let n = v["flushed"].as_u64().unwrap_or(0);
            println!("flushed {n} {}", if n == 1 { "entry" } else { "entries" });
        }
        Cmd::Netns(NetnsCmd::Add { name }) => return rootless::netns_add(&socket, &name),
        Cmd::Netns(NetnsCmd::Del { name }) => return rootless::netns_del(&socket, &name),
        Cmd::Netns(NetnsCmd::Ls { json }) => {
            let names = rootless::netns_ls(&socket)?;
            if json {
                print_json(&names);
            } else {
                for n in names {
                    out(&n);
                }
            }
        }
        Cmd::Exec { netns, cmd } => return rootless::exec(&socket, &netns, &cmd),
        Cmd::Lab(cmd) => return lab::run(cmd, &socket),
        Cmd::Stats(args) => return stats::run(args, &socket),
        Cmd::Bench(args) => return bench::run(args),
    }
    Ok(0)
}
