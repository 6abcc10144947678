//! The uplink: tapyard's port into the daemon's own network namespace (the
//! host's, as root; the daemon's user namespace's, rootless), through which
//! networks with egress reach the world beyond the host (docs/EGRESS.md).
//!
//! The uplink is a multi-queue TAP, `tapyard0` by default, on a transit
//! subnet of its own (`daemon --uplink-subnet`, 100.127.255.0/30 by
//! default): the kernel's end has the first host address, tapyard's the
//! second. tapyard routes egress packets to the kernel's end in the
//! workers, as it routes between networks (`build::egress_view`); the
//! kernel routes each egress network's subnet back through tapyard's end
//! and does the NAT, steered by `firewall`'s rules. This module owns the
//! TAP, the kernel's routes to the networks, and when the firewall is
//! brought in line with the configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use tapyard_ipam::{Addressing, Ipv4Net};

use super::build::{self, UPLINK_NETWORK};
use super::firewall::{self, Dnat, EgressCount, EgressNet, Firewall, FirewallError, FirewallSpec};
use super::netns::{self, LinkConfig};
use super::persist::{EgressMode, NetworkSpec};
use super::proto::ApiError;
use super::{Daemon, Inner};
use crate::packet::NetId;
use crate::port::{Offloads, Port, PortId};
use crate::stats::{GatewayStats, PortStats, RouterStats};
use crate::table::Fdb;
use crate::wire::MacAddr;

/// The uplink's interface name in the daemon's namespace.
pub const DEFAULT_IFNAME: &str = "tapyard0";
/// The default transit subnet: from the shared address space (RFC 6598),
/// which hosts rarely route, and checked against the host's routes at start.
pub const DEFAULT_SUBNET: &str = "100.127.255.0/30";
/// The uplink's MTU: as large as a TAP takes (and as pasta's), so that no
/// network's frames are too big for it; the kernel fragments or sends
/// Fragmentation Needed (RFC 1191) on its way out, as for any router.
pub const UPLINK_MTU: u32 = 65_520;

/// How the daemon reaches the world beyond its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    pub ifname: String,
    pub subnet: Ipv4Net,
    /// Where the host's resolvers are read from (`daemon --resolv-conf`);
    /// none: /etc/resolv.conf, then systemd-resolved's upstream list.
    pub resolv_conf: Option<std::path::PathBuf>,
}

impl UplinkConfig {
    /// The kernel's end and tapyard's end of the transit subnet (its
    /// first and second host addresses), or why the subnet cannot be one.
    pub fn ends(&self) -> Result<(Ipv4Addr, Ipv4Addr), String> {
        let net = self.subnet.trunc();
        if net.prefix_len() > 30 {
            return Err(format!("--uplink-subnet {net} is too small: it needs two host addresses (a /30 or wider)"));
        }
        let first = u32::from(net.network());
        Ok((Ipv4Addr::from(first + 1), Ipv4Addr::from(first + 2)))
    }
}

/// The running uplink.
pub(super) struct Uplink {
    pub cfg: UplinkConfig,
    pub net_id: NetId,
    /// The transit network, tapyard's end as its gateway.
    pub spec: NetworkSpec,
    pub fdb: Arc<Fdb>,
    pub route_stats: Arc<RouterStats>,
    pub gw_stats: Arc<GatewayStats>,
    /// Packets routed to and from the uplink by networks without a router.
    pub stats: Arc<RouterStats>,
    pub port_id: PortId,
    pub port: Arc<dyn Port>,
    pub port_stats: Arc<PortStats>,
    pub kernel_ip: Ipv4Addr,
    pub kernel_mac: MacAddr,
    pub tapyard_ip: Ipv4Addr,
    /// The kernel's routes to egress networks that this daemon added.
    pub routes: BTreeSet<Ipv4Net>,
    pub firewall: Firewall,
    /// The rules last applied (applied again only when they change).
    pub applied: Option<FirewallSpec>,
    /// tapyard turned IPv4 forwarding on: the firewall forwards nothing else.
    pub guard: bool,
    /// Egress counters of tables this daemon replaced: applying the rules
    /// anew starts the kernel's counters from zero, so what they held is
    /// carried here and added to what the table counts now.
    pub carried: BTreeMap<String, EgressCount>,
}

impl Uplink {
    pub fn network_in(&self) -> build::NetworkIn<'_> {
        build::NetworkIn {
            id: self.net_id,
            spec: &self.spec,
            fdb: self.fdb.clone(),
            route_stats: self.route_stats.clone(),
            gw_stats: self.gw_stats.clone(),
        }
    }
}

impl Daemon {
    /// Creates the uplink at start, before any network is restored: checks
    /// the transit subnet against the host's routes and nftables, makes the
    /// TAP in the daemon's namespace, turns forwarding on (recording what it
    /// was) and installs the firewall's table. A daemon killed before left
    /// no interface (the TAP goes with its fds) and its table is replaced,
    /// not added to.
    pub(super) fn start_uplink(&self, inner: &mut Inner, cfg: &UplinkConfig) -> anyhow::Result<()> {
        let (kernel_ip, tapyard_ip) = cfg.ends().map_err(anyhow::Error::msg)?;
        let firewall = Firewall::new();
        firewall.check().map_err(|e| anyhow::anyhow!("{e}; or start the daemon with --uplink none (no egress)"))?;
        let host = netns::host_prefixes(Some(&cfg.ifname)).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(h) = host.iter().find(|h| h.net.contains(&cfg.subnet) || cfg.subnet.contains(&h.net)) {
            anyhow::bail!(
                "the uplink's transit subnet {} overlaps {} of this host; pick another with --uplink-subnet",
                cfg.subnet,
                h.what
            );
        }
        let kernel_mac = MacAddr::stable_local(format!("uplink\0{}", cfg.ifname).as_bytes());
        let own = netns::resolve("/proc/self/ns/net").map_err(|e| anyhow::anyhow!("{e}"))?;
        let link = LinkConfig {
            ifname: &cfg.ifname,
            mac: kernel_mac,
            mtu: UPLINK_MTU,
            ip: Some(Ipv4Net::new(kernel_ip, cfg.subnet.prefix_len())?),
            gateway: None,
        };
        let tap = netns::create_tap(&own, link, self.workers.len(), Offloads::ALL).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the uplink {}: {e} (another tapyard daemon in this namespace? give this one --uplink none)",
                cfg.ifname
            )
        })?;
        let guard = firewall::enable_forwarding(&self.cfg.state_dir, &cfg.ifname)
            .map_err(|e| anyhow::anyhow!("cannot turn on IPv4 forwarding for the uplink: {e}"))?;
        // The table now, empty of networks: a kernel or nft that refuses our
        // rules stops the start here, with forwarding set back, instead of
        // leaving a daemon whose egress silently does not work.
        let empty = FirewallSpec { uplink: cfg.ifname.clone(), guard, ..FirewallSpec::default() };
        if let Err(e) = firewall.apply(&empty) {
            let _ = firewall::restore_forwarding(&self.cfg.state_dir);
            anyhow::bail!("cannot install the uplink's nftables rules: {e}");
        }
        let addressing = Addressing::new(cfg.subnet.trunc(), Some(tapyard_ip))?;
        let spec = NetworkSpec {
            addressing: Some(addressing),
            mtu: UPLINK_MTU,
            internal: true,
            egress: EgressMode::None,
            ..build::network_spec(UPLINK_NETWORK, None)
        };
        let port_id = super::ports::free_port_id(inner).map_err(|e| anyhow::anyhow!("{e}"))?;
        inner.uplink = Some(Uplink {
            cfg: cfg.clone(),
            net_id: inner.net_id(),
            fdb: Arc::new(Fdb::new(spec.fdb_capacity, spec.ageing_secs)),
            spec,
            route_stats: Arc::default(),
            gw_stats: Arc::default(),
            stats: Arc::default(),
            port_id,
            port: Arc::new(tap),
            port_stats: Arc::default(),
            kernel_ip,
            kernel_mac,
            tapyard_ip,
            routes: BTreeSet::new(),
            firewall,
            applied: Some(empty),
            guard,
            carried: BTreeMap::new(),
        });
        if firewall::legacy_iptables_filter() {
            tracing::warn!(
                "legacy iptables (x_tables) is loaded here: if its FORWARD policy is DROP, egress is dropped there; \
                 accept the uplink yourself: iptables-legacy -I FORWARD -i {0} -j ACCEPT; iptables-legacy -I FORWARD -o {0} -j ACCEPT",
                cfg.ifname
            );
        }
        tracing::info!(ifname = %cfg.ifname, subnet = %cfg.subnet, kernel = %kernel_ip, tapyard = %tapyard_ip, "uplink up");
        Ok(())
    }

    /// The uplink's interface name, if the daemon has an uplink.
    pub(super) fn uplink_ifname(&self) -> Option<&str> {
        self.cfg.uplink.as_ref().map(|u| u.ifname.as_str())
    }

    /// Brings the kernel's routes and the firewall in line with the
    /// configuration: a route to every network with egress through
    /// tapyard's end of the uplink, and the NAT, forwarding and published
    /// port rules. Does nothing that is already so (the rules are applied
    /// again only when they change), so it is cheap on every commit.
    pub(super) fn sync_uplink(&self, inner: &mut Inner) -> Result<(), ApiError> {
        let dnat = self.dnat_targets(inner);
        let Some(u) = inner.uplink.as_mut() else { return Ok(()) };
        let egress: Vec<EgressNet> = inner
            .networks
            .values()
            .filter(|n| n.spec.has_egress())
            .filter_map(|n| n.spec.addressing.map(|a| EgressNet { name: n.spec.name.clone(), subnet: a.subnet }))
            .collect();
        let want: BTreeSet<Ipv4Net> = egress.iter().map(|e| e.subnet).collect();
        for gone in u.routes.difference(&want).copied().collect::<Vec<_>>() {
            netns::set_route(gone, u.tapyard_ip, &u.cfg.ifname, false)?;
            u.routes.remove(&gone);
        }
        for new in want.difference(&u.routes).copied().collect::<Vec<_>>() {
            netns::set_route(new, u.tapyard_ip, &u.cfg.ifname, true)?;
            u.routes.insert(new);
        }
        let spec = FirewallSpec {
            uplink: u.cfg.ifname.clone(),
            egress,
            published: dnat.into_iter().map(|(publish, container)| Dnat { publish, container }).collect(),
            guard: u.guard,
        };
        if u.applied.as_ref() != Some(&spec) {
            if u.applied.is_some() {
                if let Ok(now) = u.firewall.counters() {
                    for (net, c) in now.egress {
                        add(u.carried.entry(net).or_default(), &c);
                    }
                }
            }
            u.firewall.apply(&spec).map_err(|e| ApiError::system(format!("cannot apply the firewall rules: {e}")))?;
            u.applied = Some(spec);
        }
        Ok(())
    }

    /// Puts the rules back if someone took them away since: a flushed
    /// ruleset (`nft flush ruleset`, a firewall manager's restart), or an
    /// iptables `FORWARD` chain made after ours were applied (Docker
    /// started after tapyard, with its policy DROP) that lacks our two
    /// accepts. Called by the housekeeping thread every few seconds: two
    /// `nft` listings, no change when all is in place.
    pub(super) fn recheck_uplink(&self) {
        // Looked at without the lock (two nft runs); put back under it.
        let Some((fw, applied)) = self.lock().uplink.as_ref().map(|u| (u.firewall.clone(), u.applied.clone())) else {
            return;
        };
        if applied.is_none() {
            return;
        }
        let missing = match (fw.counters(), fw.compat()) {
            (Err(FirewallError::NoTable), _) => "tapyard's nftables table is gone",
            (_, Ok(c)) if c.forward_chain && c.stale.len() < 2 => "iptables' FORWARD chain lacks tapyard's accepts",
            _ => return,
        };
        let inner = self.lock();
        let Some((u, spec)) = inner.uplink.as_ref().and_then(|u| Some((u, u.applied.as_ref()?))) else { return };
        tracing::warn!(why = missing, "putting the uplink's rules back");
        if let Err(e) = u.firewall.apply(spec) {
            tracing::error!(error = %e, "cannot put the uplink's rules back");
        }
    }

    /// At a clean stop: the firewall's table and rules go, forwarding is
    /// set back to what it was. The TAP (and with it the kernel's routes
    /// through it) goes when the port is released.
    pub(super) fn stop_uplink(&self, inner: &mut Inner) {
        let Some(u) = inner.uplink.take() else { return };
        if let Err(e) = u.firewall.remove() {
            tracing::error!(error = %e, "cannot remove the firewall rules");
        }
        if let Err(e) = firewall::restore_forwarding(&self.cfg.state_dir) {
            tracing::error!(error = %e, "cannot restore IPv4 forwarding");
        }
        u.port.release();
    }

    /// Network `net`'s egress counters: what tapyard routed to and from the
    /// uplink is in its route counters; these are the kernel's, since the
    /// daemon started: packets and bytes forwarded out and back, and
    /// connections masqueraded. Empty without an uplink or egress.
    pub(super) fn egress_counters(&self, inner: &Inner, net: &super::Network) -> BTreeMap<String, u64> {
        let Some(u) = inner.uplink.as_ref().filter(|_| net.spec.has_egress()) else { return BTreeMap::new() };
        let mut c = u.carried.get(&net.spec.name).copied().unwrap_or_default();
        match u.firewall.counters() {
            Ok(now) => add(&mut c, &now.egress.get(&net.spec.name).copied().unwrap_or_default()),
            Err(e) => tracing::warn!(error = %e, "cannot read the firewall's counters"),
        }
        BTreeMap::from([
            ("out_packets".to_string(), c.out.packets),
            ("out_bytes".to_string(), c.out.bytes),
            ("in_packets".to_string(), c.back.packets),
            ("in_bytes".to_string(), c.back.bytes),
            ("connections".to_string(), c.connections),
        ])
    }

    /// Why network `s` asked for egress and has none: the daemon has no uplink.
    pub(super) fn egress_unavailable(&self, s: &NetworkSpec) -> Option<String> {
        (s.has_egress() && self.cfg.uplink.is_none()).then(|| "the daemon runs with --uplink none".to_string())
    }
}

fn add(to: &mut EgressCount, c: &EgressCount) {
    to.out.packets += c.out.packets;
    to.out.bytes += c.out.bytes;
    to.back.packets += c.back.packets;
    to.back.bytes += c.back.bytes;
    to.connections += c.connections;
}

/// The IPv4 resolvers the host uses, for networks with egress and no
/// `--dns`: the `nameserver` lines of /etc/resolv.conf, without loopback
/// ones (a container's loopback is its own), as Docker does; when that
/// leaves none and systemd-resolved's stub is in use, the upstream servers
/// it lists in /run/systemd/resolve/resolv.conf.
/// With `path` (`daemon --resolv-conf`), that file alone.
pub fn host_resolvers(path: Option<&std::path::Path>) -> Vec<Ipv4Addr> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    if let Some(p) = path {
        return nameservers(&read(p));
    }
    let found = nameservers(&read("/etc/resolv.conf".as_ref()));
    if found.is_empty() {
        return nameservers(&read("/run/systemd/resolve/resolv.conf".as_ref()));
    }
    found
}

/// The non-loopback IPv4 `nameserver` addresses of a resolv.conf (resolv.conf(5)).
fn nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_skip_loopback_ipv6_and_comments() {
        let text = "# generated\nsearch example.test\nnameserver 127.0.0.53\nnameserver 198.18.0.53\n\
                    nameserver ::1\nnameserver 2001:db8::1\n;nameserver 198.18.9.9\nnameserver\n  nameserver 198.18.0.54 # second\n";
        assert_eq!(nameservers(text), vec![Ipv4Addr::new(198, 18, 0, 53), Ipv4Addr::new(198, 18, 0, 54)]);
        assert!(nameservers("nameserver 127.0.0.1\n").is_empty());
    }

    #[test]
    fn transit_ends() {
        let cfg = |s: &str| UplinkConfig { ifname: "u".into(), subnet: s.parse().unwrap(), resolv_conf: None };
        assert_eq!(
            cfg("100.127.255.0/30").ends(),
            Ok((Ipv4Addr::new(100, 127, 255, 1), Ipv4Addr::new(100, 127, 255, 2)))
        );
        assert_eq!(cfg("10.9.0.5/24").ends(), Ok((Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2))));
        assert!(cfg("10.9.0.4/31").ends().unwrap_err().contains("too small"));
    }
}
