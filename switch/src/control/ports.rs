//! Port lifecycle: connecting TAP and vhost-user ports, the worker that
//! reads each, restoring them after a restart, and removing them (publish,
//! wait for the workers, flush, close). Also which host ports each port
//! publishes (`--publish`, `port publish|unpublish`): their reservations
//! and the DNAT targets the firewall forwards them to. And each port's link
//! settings (`port set`: impairments, link down/up), kept in its spec,
//! carried into the data path as a `PortImpair`, and the carrier the node sees.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapyard_ipam::lease::Lease;
use tapyard_ipam::{check_static, Ipv4Net};

use super::netns::{self, Netns};
use super::networks::network;
use super::persist::{NetworkSpec, PortSpec, VhostSpec, XdpSpec};
use super::proto::*;
use super::publish::{self, Publish, Reservation, ReserveError};
use super::{server, unix_now, Change, Daemon, Inner, PortRec, DEFAULT_IFNAME, VHOST_DIR};
use crate::impair::{LinkSettings, PortImpair};
use crate::port::tap::TapPort;
use crate::port::vhost::{self, VhostConfig, VhostPort};
use crate::port::xdp::XdpPort;
use crate::port::{Port, PortId};
use crate::wire::{MacAddr, ParseMacError};
use crate::worker::PortEvent;

/// What `connect` says about a port's guard (docs/RELIABILITY.md): port
/// security on or off (absent: the default for the port's kind) and its
/// storm-control limit (absent: the daemon's).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Guard {
    pub port_security: Option<bool>,
    pub storm_limit: Option<u32>,
}

impl Daemon {
    /// `port_info` of each port, with the addresses DHCP leased to ports without `--ip`.
    pub(super) fn port_infos<'a>(&self, inner: &Inner, ports: impl Iterator<Item = &'a PortRec>) -> Vec<PortInfo> {
        let now = unix_now();
        let leases = self.ipam().leases(None);
        ports.map(|p| self.guarded(inner, p, port_info(p, leased(inner, &leases, p, now)))).collect()
    }

    /// `port_info` of one port (the reply to a connect).
    fn port_reply(&self, inner: &Inner, p: &PortRec) -> PortInfo {
        let leases = self.ipam().leases(Some(&p.spec.network));
        self.guarded(inner, p, port_info(p, leased(inner, &leases, p, unix_now())))
    }

    /// `info` with what the port's guard is now (its settings or the defaults).
    fn guarded(&self, inner: &Inner, p: &PortRec, info: PortInfo) -> PortInfo {
        PortInfo { port_security: super::port_security_on(inner, p), storm_limit: self.storm_limit(p), ..info }
    }

    /// The ports of one network, or of all.
    pub(super) fn port_ls(&self, filter: Option<&str>) -> Result<Vec<PortInfo>, ApiError> {
        let inner = self.lock();
        if let Some(n) = filter {
            network(&inner, n)?;
        }
        Ok(self.port_infos(&inner, inner.ports.values().filter(|p| filter.is_none_or(|n| p.spec.network == n))))
    }

    /// Connects a namespace through a new TAP (or, `kind` afxdp, a veth
    /// pair read through AF_XDP). `publish`: host ports to publish (Docker's
    /// `-p` specs), all reserved before anything else is made; any failure
    /// leaves nothing behind.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect(
        &self,
        network_name: String,
        ns_spec: String,
        ifname: Option<String>,
        mac: Option<String>,
        ip: Option<String>,
        offload: bool,
        publish: Vec<String>,
        owner: Option<String>,
        guard: Guard,
        kind: PortKind,
    ) -> Result<PortInfo, ApiError> {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        netns::check_ifname(&ifname)?;
        if kind == PortKind::Afxdp && !offload {
            return Err(ApiError::bad_request("offload applies to a TAP port; an AF_XDP port has no offloads"));
        }
        let wanted = parse_specs(&publish)?;
        let mac = match mac {
            Some(m) => parse_unicast_mac(&m)?,
            None => MacAddr::stable_local(format!("{network_name}\0{ns_spec}\0{ifname}").as_bytes()),
        };
        let auto = ip.as_deref() == Some("auto");
        let ip = if auto { None } else { ip.as_deref().map(netns::parse_ip).transpose()? };
        let ns = netns::resolve(&ns_spec)?;
        let mut inner = self.lock();
        let net = network(&inner, &network_name)?;
        if kind == PortKind::Afxdp && net.spec.mtu > crate::port::xdp::MAX_MTU {
            return Err(ApiError::bad_request(format!(
                "network {network_name:?} has MTU {}: an AF_XDP port carries frames of one page (MTU up to {}, \
                 native XDP on veth without multi-buffer); connect a TAP port, or use a network with a smaller MTU",
                net.spec.mtu,
                crate::port::xdp::MAX_MTU
            )));
        }
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
        if !wanted.is_empty() {
            publish_allowed(&net.spec, inner.uplink.is_some())?;
        }
        // The host ports first: a port in use refuses the connect before any
        // address is taken or interface made. Dropped on any error below.
        let held = reserve(&inner, None, &wanted)?;
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
            no_offload: !offload || kind == PortKind::Afxdp,
            vhost: None,
            afxdp: (kind == PortKind::Afxdp).then(|| XdpSpec { switch_ifname: switch_ifname(&network_name, mac) }),
            publish: held.iter().map(Reservation::publish).collect(),
            owner,
            container: None,
            link: Default::default(),
            port_security: guard.port_security,
            storm_limit: guard.storm_limit,
        };
        let id = self.attach(&mut inner, spec, ns).inspect_err(|_| {
            // Nothing was attached: give back the address taken above, or
            // a retry (say with another --ifname, hence another MAC) finds it leased.
            let mut store = self.ipam();
            store.release_port(&network_name, mac.0);
            let _ = self.commit_ipam(&mut store);
        })?;
        if let Some(rec) = inner.ports.get_mut(&id) {
            rec.reservations = held.into_iter().map(|r| (r.publish(), Ok(r))).collect();
            rec.publish_changed();
        }
        self.commit(&mut inner, Change::Added);
        if let Err(e) = self.sync_firewall(&mut inner) {
            // Its ports cannot be forwarded: take the port away again.
            self.remove_ports(&mut inner, &[id]);
            self.persist(&inner);
            return Err(e);
        }
        // The state file records the port now: only from here may its TAP
        // outlive the daemon. A daemon killed before this line leaves no
        // interface behind (the kernel deletes a TAP that is not persistent
        // with its last fd), and one killed after finds it recorded
        // (docs/RELIABILITY.md, "Crash consistency").
        if let Err(e) = inner.ports[&id].port.keep() {
            self.remove_ports(&mut inner, &[id]);
            self.persist(&inner);
            return Err(ApiError::system(format!("cannot make the TAP persistent: {e}")));
        }
        let rec = &inner.ports[&id];
        let published: Vec<String> = rec.spec.publish.iter().map(Publish::to_string).collect();
        tracing::info!(port = %id, network = %rec.spec.network, netns = %rec.spec.netns, ifname = %rec.spec.ifname,
            publish = ?published, afxdp = ?rec.xdp.as_ref().map(|x| x.mode()), "port connected");
        Ok(self.port_reply(&inner, rec))
    }

    /// `port publish`: publishes the host ports of `spec` (one `-p` spec) to
    /// the TAP port `ifname` of `ns_spec` on `network_name`. All or nothing.
    /// A spec the port already publishes, inactive since a restart (its host
    /// port was taken), is reserved again.
    pub(super) fn port_publish(
        &self,
        network_name: &str,
        ns_spec: &str,
        ifname: Option<String>,
        spec: &str,
    ) -> Result<PortInfo, ApiError> {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        let wanted = publish::parse(spec).map_err(ApiError::bad_request)?;
        let ns = netns::resolve(ns_spec).ok();
        let mut inner = self.lock();
        publish_allowed(&network(&inner, network_name)?.spec, inner.uplink.is_some())?;
        let id = find_tap(&inner, network_name, ns_spec, ns.as_ref(), &ifname)?;
        let held = reserve(&inner, Some(id), &wanted)?;
        let rec = inner.ports.get_mut(&id).expect("found above, under the same lock");
        // What each reservation replaces: nothing, or the reason it was inactive.
        let mut before: Vec<(Publish, Option<String>)> = Vec::new();
        for r in held {
            let p = r.publish();
            let old = rec.reservations.insert(p, Ok(r)).and_then(Result::err);
            before.push((p, old));
        }
        rec.publish_changed();
        self.persist(&inner);
        if let Err(e) = self.sync_firewall(&mut inner) {
            let rec = inner.ports.get_mut(&id).expect("still there, under the same lock");
            for (p, old) in before {
                match old {
                    Some(why) => rec.reservations.insert(p, Err(why)),
                    None => rec.reservations.remove(&p),
                };
            }
            rec.publish_changed();
            self.persist(&inner);
            let _ = self.sync_firewall(&mut inner);
            return Err(e);
        }
        let rec = &inner.ports[&id];
        tracing::info!(port = %id, network = %network_name, netns = %ns_spec, ifname = %ifname, spec = %spec,
            "port published");
        Ok(self.port_reply(&inner, rec))
    }

    /// `port unpublish`: stops publishing what `spec` names (a `-p` spec,
    /// where an open host port matches any, or the shown form
    /// `0.0.0.0:8080->80/tcp`). The rules go first, then the host ports are
    /// released. Every port of the spec must be published, or nothing changes.
    pub(super) fn port_unpublish(
        &self,
        network_name: &str,
        ns_spec: &str,
        ifname: Option<String>,
        spec: &str,
    ) -> Result<PortInfo, ApiError> {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        let patterns = publish::parse(&spec.replace("->", ":")).map_err(ApiError::bad_request)?;
        let ns = netns::resolve(ns_spec).ok();
        let mut inner = self.lock();
        network(&inner, network_name)?;
        let id = find_tap(&inner, network_name, ns_spec, ns.as_ref(), &ifname)?;
        let rec = inner.ports.get_mut(&id).expect("found above, under the same lock");
        let mut gone = BTreeSet::new();
        for pat in &patterns {
            let hits: Vec<Publish> = rec.reservations.keys().filter(|p| p.matches(pat)).copied().collect();
            if hits.is_empty() {
                let what = match pat.host_port {
                    0 => format!(
                        "container port {}/{} on {}",
                        pat.container_port,
                        pat.proto,
                        pat.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
                    ),
                    _ => pat.to_string(),
                };
                return Err(ApiError::not_found(format!(
                    "{ifname} in {ns_spec} on network {network_name:?} does not publish {what}; see `tapyard port ls`"
                )));
            }
            gone.extend(hits);
        }
        let released: Vec<_> = gone.iter().filter_map(|p| rec.reservations.remove(p)).collect();
        rec.publish_changed();
        self.persist(&inner);
        let synced = self.sync_firewall(&mut inner);
        // The rules are gone: now the host ports may go to anyone.
        drop(released);
        synced?;
        let shown: Vec<String> = gone.iter().map(Publish::to_string).collect();
        tracing::info!(port = %id, network = %network_name, netns = %ns_spec, ifname = %ifname, unpublished = ?shown,
            "port unpublished");
        Ok(self.port_reply(&inner, &inner.ports[&id]))
    }

    /// What the firewall forwards: every published port that holds its host
    /// port, with its port's address (`--ip`, else its active DHCP lease).
    /// Ports without an address yet are left out (their publishes are
    /// "waiting"), as are inactive publishes.
    pub(super) fn dnat_targets(&self, inner: &Inner) -> Vec<(Publish, Ipv4Addr)> {
        let now = unix_now();
        let leases = self.ipam().leases(None);
        let mut out = Vec::new();
        for p in inner.ports.values() {
            let Some(addr) = container_addr(inner, &leases, p, now) else { continue };
            out.extend(p.reservations.iter().filter(|(_, r)| r.is_ok()).map(|(publish, _)| (*publish, addr)));
        }
        out
    }

    /// Reserves a restored port's published host ports again. One another
    /// program took meanwhile stays in the configuration, inactive (no rule
    /// forwards it), with an error in the log and in `port ls`.
    fn restore_publish(&self, inner: &mut Inner, id: PortId) {
        let Some(rec) = inner.ports.get_mut(&id) else { return };
        for p in std::mem::take(&mut rec.spec.publish) {
            let held = Reservation::take(p).map_err(|e| {
                tracing::error!(port = %id, network = %rec.spec.network, netns = %rec.spec.netns,
                    ifname = %rec.spec.ifname, publish = %p, error = %e,
                    "published port is inactive: its host port cannot be held again (`tapyard port publish` retries)");
                e.to_string()
            });
            // A hand-edited open host port (0) is recorded as the one the kernel chose.
            let key = held.as_ref().map_or(p, Reservation::publish);
            rec.reservations.insert(key, held);
        }
        rec.publish_changed();
    }

    /// The one way a port comes to be, TAP or vhost-user, new or restored:
    /// allocates its id, opens its device with `open` (which gets the id: a
    /// vhost-user port reports link changes by it), picks its worker and
    /// records it, unpublished. On error nothing is recorded and the id stays
    /// free; the caller publishes with [`Daemon::commit`].
    fn add_port(
        &self,
        inner: &mut Inner,
        spec: PortSpec,
        open: impl FnOnce(PortId, &PortSpec) -> Result<Device, ApiError>,
    ) -> Result<PortId, ApiError> {
        let id = free_port_id(inner)?;
        let (port, vhost, netns, xdp): (Arc<dyn Port>, _, _, _) = match open(id, &spec)? {
            Device::Tap(tap, ns) => (Arc::new(tap), None, Some(ns), None),
            Device::Vhost(v) => (v.clone(), Some(v), None, None),
            Device::Xdp(x, ns) => {
                let x = Arc::new(x);
                (x.clone(), None, Some(ns), Some(x))
            }
        };
        let worker = self.pick_worker(inner, &spec.network);
        let reservations = BTreeMap::new();
        if !spec.link.link_up {
            // Restored with its link cut (`port set --down` before a restart).
            if let Err(e) = port.set_carrier(false) {
                tracing::warn!(port = %port.name(), error = %e, "cannot cut the carrier");
            }
        }
        let impair = self.impair_of(&spec.link);
        let stats = Arc::default();
        let storm = Arc::default();
        let rec = PortRec { id, spec, netns, port, vhost, xdp, stats, worker, reservations, impair, storm };
        inner.ports.insert(id, rec);
        Ok(id)
    }

    /// Creates the TAP for `spec` inside `ns`, configured, and records the port
    /// (unpublished). The TAP is not persistent yet (the caller keeps it once
    /// the state file records the port): on error, or if the daemon dies
    /// first, nothing is left behind, since closing the fds deletes the interface.
    fn attach(&self, inner: &mut Inner, spec: PortSpec, ns: Netns) -> Result<PortId, ApiError> {
        let link = TapLink::of(inner, &spec)?;
        let queues = self.workers.len();
        self.add_port(inner, spec, |_, spec| match &spec.afxdp {
            Some(x) => link.create_veth(spec, &x.switch_ifname, ns, queues),
            None => link.create(spec, ns, queues, false),
        })
    }

    /// Brings back a persisted port after a restart: a vhost-user port
    /// serves its socket again; a TAP port whose namespace is still the one
    /// it was connected in takes back the interface a killed daemon left
    /// (persistent TAP), or else gets a new one. Logs what became of it.
    pub(super) fn restore_port(&self, inner: &mut Inner, spec: PortSpec) {
        if let Some(v) = &spec.vhost {
            let (network, socket) = (spec.network.clone(), v.socket.clone());
            match self.attach_vhost(inner, spec) {
                Ok(id) => {
                    tracing::info!(port = %id, network = %network, socket = ?socket, "vhost-user port restored");
                    self.restore_publish(inner, id);
                }
                Err(e) => {
                    tracing::warn!(network = %network, socket = ?socket, error = %e, "cannot restore vhost-user port")
                }
            }
            return;
        }
        let ns = match netns::resolve(&spec.netns) {
            Ok(ns) if ns.dev == spec.netns_dev && ns.ino == spec.netns_ino => ns,
            _ => {
                tracing::warn!(network = %spec.network, netns = %spec.netns, ifname = %spec.ifname,
                    "not reattaching port: its namespace is gone");
                return;
            }
        };
        let (network, netns, ifname) = (spec.network.clone(), spec.netns.clone(), spec.ifname.clone());
        let link = match TapLink::of(inner, &spec) {
            Ok(link) => link,
            Err(e) => {
                tracing::warn!(network = %network, netns = %netns, error = %e, "cannot reattach port");
                return;
            }
        };
        let queues = self.workers.len();
        let mut survived = false;
        let opened = self.add_port(inner, spec, |_, spec| {
            if let Some(x) = &spec.afxdp {
                // A veth outlives the daemon by itself; only the sockets and
                // the redirect program went with the process.
                if netns::own_link_exists(&x.switch_ifname)? {
                    survived = true;
                    return open_xdp(&x.switch_ifname, queues, ns);
                }
                return link.create_veth(spec, &x.switch_ifname, ns, queues);
            }
            // The interface a killed daemon left behind (persistent TAP): take it back as it is.
            match TapPort::attach_in(&ns.path, &spec.ifname, queues, spec.offloads()) {
                Ok(tap) => {
                    survived = true;
                    Ok(Device::Tap(tap, ns))
                }
                // The state file records it: persistent at once.
                Err(_) => link.create(spec, ns, queues, true),
            }
        });
        match opened {
            Ok(id) => {
                if survived {
                    tracing::info!(port = %id, network = %network, netns = %netns, ifname = %ifname,
                        "port reattached to its surviving interface");
                } else {
                    tracing::info!(port = %id, network = %network, netns = %netns, "port reattached");
                }
                self.restore_publish(inner, id);
            }
            Err(e) => tracing::warn!(network = %network, netns = %netns, error = %e, "cannot reattach port"),
        }
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
    pub(super) fn remove_ports(&self, inner: &mut Inner, ids: &[PortId]) -> usize {
        let recs: Vec<PortRec> = ids.iter().filter_map(|id| inner.ports.remove(id)).collect();
        if recs.is_empty() {
            return 0;
        }
        // Their published ports' rules go now; the host ports are released
        // with the records, at the end.
        if let Err(e) = self.sync_firewall(inner) {
            tracing::error!(error = %e, "cannot remove the rules of the published ports of removed ports");
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
            let veth = rec.spec.afxdp.as_ref().map(|x| x.switch_ifname.clone());
            drop(rec);
            // An AF_XDP port's veth does not go with its sockets: delete it
            // (its namespace end goes with it), as a TAP goes with its fds.
            if let Some(name) = veth {
                if let Err(e) = netns::delete_own_link(&name) {
                    tracing::warn!(ifname = %name, error = %e, "cannot delete the veth of a removed AF_XDP port");
                }
            }
        }
        n
    }

    /// `connect --vhost-user`: a vhost-user backend port on `socket`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connect_vhost(
        &self,
        network_name: String,
        socket: String,
        client: bool,
        queues: u16,
        mac: Option<String>,
        owner: SocketOwner,
        guard: Guard,
    ) -> Result<PortInfo, ApiError> {
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
            afxdp: None,
            publish: vec![],
            owner: None,
            container: None,
            link: Default::default(),
            port_security: guard.port_security,
            storm_limit: guard.storm_limit,
        };
        // The state file records the port before its socket exists: a
        // daemon killed in between serves the socket again at its next
        // start, instead of leaving a socket file nobody knows about.
        self.persist_with(&inner, Some(&spec));
        let id = self.attach_vhost(&mut inner, spec).inspect_err(|_| self.persist(&inner))?;
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
        Ok(self.port_reply(&inner, rec))
    }

    /// Starts the vhost-user backend of `spec` and records the port (unpublished).
    fn attach_vhost(&self, inner: &mut Inner, spec: PortSpec) -> Result<PortId, ApiError> {
        let net = network(inner, &spec.network)?;
        let mtu = u16::try_from(net.spec.mtu).unwrap_or(u16::MAX);
        self.add_port(inner, spec, |id, spec| {
            let v = spec.vhost.as_ref().ok_or_else(|| ApiError::system("not a vhost-user port"))?;
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
            let port = VhostPort::start(cfg, on_link).map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::AlreadyExists => {
                    ApiError::bad_request(e.to_string())
                }
                _ => ApiError::system(format!("cannot serve {}: {e}", v.socket.display())),
            })?;
            Ok(Device::Vhost(Arc::new(port)))
        })
    }

    /// `port set`: changes a port's impairments and link state, keeps
    /// them in its spec (persisted), and publishes them to the workers.
    /// The port is named as for `disconnect` (TAP) or `disconnect-vhost`.
    pub(super) fn port_set(&self, req: PortSet) -> Result<PortInfo, ApiError> {
        let mut inner = self.lock();
        network(&inner, &req.network)?;
        let id = match (&req.vhost_user, &req.netns) {
            (Some(socket), None) => {
                let path = PathBuf::from(socket);
                inner
                    .ports
                    .values()
                    .find(|p| p.spec.network == req.network && p.spec.vhost.as_ref().is_some_and(|v| v.socket == path))
                    .map(|p| p.id)
                    .ok_or_else(|| {
                        ApiError::not_found(format!(
                            "no vhost-user port on {socket} in network {:?}; see `tapyard port ls`",
                            req.network
                        ))
                    })?
            }
            (None, Some(ns_spec)) => {
                let ifname = req.ifname.clone().unwrap_or_else(|| DEFAULT_IFNAME.to_string());
                let ns = netns::resolve(ns_spec).ok();
                find_tap(&inner, &req.network, ns_spec, ns.as_ref(), &ifname)?
            }
            _ => return Err(ApiError::bad_request("port set names a port by NETNS (a TAP) or by --vhost-user SOCKET")),
        };
        let Some(rec) = inner.ports.get(&id) else {
            return Err(ApiError::not_found(format!("port {id} is gone")));
        };
        let mut link = rec.spec.link;
        link.set(req.clear, req.direction, &req.impair, req.link_up).map_err(ApiError::bad_request)?;
        if link != rec.spec.link {
            if link.link_up != rec.spec.link.link_up {
                rec.port
                    .set_carrier(link.link_up)
                    .map_err(|e| ApiError::system(format!("cannot set the carrier of {}: {e}", rec.port.name())))?;
            }
            let impair = self.impair_of(&link);
            if let Some(rec) = inner.ports.get_mut(&id) {
                rec.spec.link = link;
                rec.impair = impair;
            }
            let epoch = self.publish(&mut inner);
            self.persist(&inner);
            drop(inner);
            self.wait_adopted(epoch);
            inner = self.lock();
            tracing::info!(port = %id, network = %req.network, link_up = link.link_up, impair_in = %link.impair_in,
                impair_out = %link.impair_out, "port link settings changed");
        }
        let rec = inner.ports.get(&id).ok_or_else(|| ApiError::not_found(format!("port {id} is gone")))?;
        Ok(self.port_reply(&inner, rec))
    }

    /// The data path's share of `link`: none for a plain link, else its
    /// frame memory and shared buckets, allocated here.
    pub(super) fn impair_of(&self, link: &LinkSettings) -> Option<Arc<PortImpair>> {
        (!link.is_plain()).then(|| Arc::new(PortImpair::new(*link, self.workers.len())))
    }

    pub(super) fn disconnect_vhost(&self, network_name: &str, socket: &str) -> Result<Disconnected, ApiError> {
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
        Ok(Disconnected { disconnected: id.0 })
    }

    pub(super) fn disconnect(
        &self,
        network_name: &str,
        ns_spec: &str,
        ifname: Option<String>,
    ) -> Result<Disconnected, ApiError> {
        let ifname = ifname.unwrap_or_else(|| DEFAULT_IFNAME.to_string());
        let ns = netns::resolve(ns_spec).ok();
        let mut inner = self.lock();
        network(&inner, network_name)?;
        let id = find_tap(&inner, network_name, ns_spec, ns.as_ref(), &ifname)?;
        self.remove_ports(&mut inner, &[id]);
        self.persist(&inner);
        tracing::info!(port = %id, network = %network_name, netns = %ns_spec, ifname = %ifname, "port disconnected");
        Ok(Disconnected { disconnected: id.0 })
    }
}

/// A port's device, opened and ready to be recorded by [`Daemon::add_port`].
enum Device {
    /// A TAP, inside its namespace.
    Tap(TapPort, Netns),
    /// AF_XDP sockets on the switch's end of a veth whose other end is in the namespace.
    Xdp(XdpPort, Netns),
    /// A vhost-user backend (the same `Arc` is the port and its vhost-user details).
    Vhost(Arc<VhostPort>),
}

/// The TAP port `ifname` of namespace `ns_spec` (resolved: `ns`, when it
/// still exists; else matched by the name given to `connect`) on `network`.
fn find_tap(inner: &Inner, network: &str, ns_spec: &str, ns: Option<&Netns>, ifname: &str) -> Result<PortId, ApiError> {
    inner
        .ports
        .values()
        .find(|p| {
            p.spec.network == network
                && p.spec.vhost.is_none()
                && p.spec.ifname == ifname
                && match ns {
                    Some(ns) => p.netns.as_ref().is_some_and(|n| n.dev == ns.dev && n.ino == ns.ino),
                    None => p.spec.netns == ns_spec,
                }
        })
        .map(|p| p.id)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no port {ifname} in namespace {ns_spec} on network {network:?}; see `tapyard port ls`"
            ))
        })
}

/// Whether ports of a network may publish host ports: the forwarded
/// traffic goes through the network's egress, so a network without one
/// cannot: the one place that decides.
fn publish_allowed(spec: &NetworkSpec, uplink: bool) -> Result<(), ApiError> {
    let why = if spec.addressing.is_none() {
        "it was created with --ipam none"
    } else if spec.internal {
        "it is --internal"
    } else if !spec.has_egress() {
        "it was created with --egress none"
    } else if !uplink {
        "the daemon runs with --uplink none"
    } else {
        return Ok(());
    };
    Err(ApiError::bad_request(format!("network {:?} has no egress; published ports need one ({why})", spec.name)))
}

/// Every `--publish` spec, parsed; the first bad one is the error.
fn parse_specs(specs: &[String]) -> Result<Vec<Publish>, ApiError> {
    let mut out = Vec::new();
    for s in specs {
        out.extend(publish::parse(s).map_err(ApiError::bad_request)?);
    }
    Ok(out)
}

/// Reserves the host ports of `wanted`, all or none. Refused: a host port
/// a port of this daemon already publishes (held or inactive), except an
/// inactive publish of `own` given again exactly (a retry), and a host
/// port given twice.
fn reserve(inner: &Inner, own: Option<PortId>, wanted: &[Publish]) -> Result<Vec<Reservation>, ApiError> {
    let mut held: Vec<Reservation> = Vec::with_capacity(wanted.len());
    for w in wanted {
        for p in inner.ports.values() {
            let retry = |q: &Publish, r: &Result<Reservation, String>| Some(p.id) == own && q == w && r.is_err();
            if let Some((q, _)) = p.reservations.iter().find(|(q, r)| q.clashes(w) && !retry(q, r)) {
                return Err(ApiError::conflict(format!(
                    "host port {} is already in use: tapyard publishes it ({q} to {})",
                    w.host_side(),
                    port_name(p)
                )));
            }
        }
        if let Some(h) = held.iter().find(|h| h.publish().clashes(w)) {
            return Err(ApiError::conflict(format!(
                "host port {} is given twice ({} and {w})",
                w.host_side(),
                h.publish()
            )));
        }
        held.push(Reservation::take(*w).map_err(reserve_error)?);
    }
    Ok(held)
}

fn reserve_error(e: ReserveError) -> ApiError {
    match e {
        ReserveError::InUse(_) => ApiError::conflict(e.to_string()),
        ReserveError::NotLocal(_) => ApiError::bad_request(e.to_string()),
        ReserveError::Denied(_) | ReserveError::Other(..) => ApiError::system(e.to_string()),
    }
}

/// A port as people name it: `eth0 in c1 on network "blue"`.
fn port_name(p: &PortRec) -> String {
    match &p.spec.vhost {
        Some(v) => format!("vhost-user {} on network {:?}", v.socket.display(), p.spec.network),
        None => format!("{} in {} on network {:?}", p.spec.ifname, p.spec.netns, p.spec.network),
    }
}

/// The address published ports of `p` are forwarded to: `--ip`, else its DHCP lease.
fn container_addr(inner: &Inner, leases: &[(String, Lease)], p: &PortRec, now: u64) -> Option<Ipv4Addr> {
    p.spec.ip.or_else(|| leased(inner, leases, p, now)).map(|n| n.addr())
}

/// The lowest port id not in use (an id is free again once its port is gone).
pub(super) fn free_port_id(inner: &Inner) -> Result<PortId, ApiError> {
    let uplink = inner.uplink.as_ref().map(|u| u.port_id);
    (1..=PortId::MAX)
        .map(PortId)
        .find(|id| !inner.ports.contains_key(id) && Some(*id) != uplink)
        .ok_or_else(|| ApiError::system(format!("no free port ids ({} ports in use)", PortId::MAX)))
}

/// What a TAP's interface is configured with, from its network.
#[derive(Debug, Clone, Copy)]
struct TapLink {
    mtu: u32,
    /// The default route, for a port with an address in the subnet, in a
    /// namespace other than the daemon's own.
    gateway: Option<Ipv4Addr>,
}

impl TapLink {
    fn of(inner: &Inner, spec: &PortSpec) -> Result<TapLink, ApiError> {
        let net = network(inner, &spec.network)?;
        // A port with an address in the subnet routes through the gateway;
        // but never one in the daemon's own namespace (the TAPs of Docker's
        // Join are made there): that is the host's, or dockerd's, whose
        // default route `ip route replace default` would take over, and
        // which then vanishes with the TAP when Docker moves it into the
        // container, leaving that namespace without one (seen with rootless
        // Docker: its slirp4netns route was gone after the first `docker run`).
        let own = netns::resolve(netns::OWN_NETNS).is_ok_and(|n| n.dev == spec.netns_dev && n.ino == spec.netns_ino);
        let gateway = net
            .spec
            .addressing
            .filter(|a| !own && spec.ip.is_some_and(|ip| a.subnet.contains(&ip.addr())))
            .map(|a| a.gateway);
        Ok(TapLink { mtu: net.spec.mtu, gateway })
    }

    /// How `spec`'s interface in its namespace is to look.
    fn config(self, spec: &PortSpec) -> netns::LinkConfig<'_> {
        netns::LinkConfig { ifname: &spec.ifname, mac: spec.mac, mtu: self.mtu, ip: spec.ip, gateway: self.gateway }
    }

    /// Creates the TAP in `ns`, configured; persistent if `keep` (the state
    /// file already records the port).
    fn create(self, spec: &PortSpec, ns: Netns, queues: usize, keep: bool) -> Result<Device, ApiError> {
        let tap = netns::create_tap(&ns, self.config(spec), queues, spec.offloads())?;
        if keep {
            // Configured and recorded: from now on the interface survives the daemon.
            tap.set_persist(true).map_err(|e| ApiError::system(format!("cannot make the TAP persistent: {e}")))?;
        }
        Ok(Device::Tap(tap, ns))
    }

    /// Creates the veth pair of an AF_XDP port (`switch` in the daemon's
    /// namespace, `spec.ifname` in `ns`, configured) and binds its sockets;
    /// on error the pair is deleted again.
    fn create_veth(self, spec: &PortSpec, switch: &str, ns: Netns, queues: usize) -> Result<Device, ApiError> {
        netns::create_veth(&ns, self.config(spec), switch, queues)?;
        open_xdp(switch, queues, ns).inspect_err(|_| {
            let _ = netns::delete_own_link(switch);
        })
    }
}

/// Binds the AF_XDP sockets of a port to the veth end `switch`.
fn open_xdp(switch: &str, queues: usize, ns: Netns) -> Result<Device, ApiError> {
    let x = XdpPort::open(switch, queues).map_err(|e| {
        ApiError::system(format!("cannot attach AF_XDP sockets to {switch}: {e} (needs root: CAP_NET_RAW and CAP_BPF)"))
    })?;
    // veth always has native XDP; generic mode means the MTU is too large
    // for it (checked at connect; this catches a changed kernel), and there
    // the peer keeps TSO and super-frames would not fit a chunk.
    if !x.mode().starts_with("native") {
        return Err(ApiError::system(format!(
            "{switch} took the XDP program only in generic mode (MTU above {}?); an AF_XDP port needs native mode",
            crate::port::xdp::MAX_MTU
        )));
    }
    Ok(Device::Xdp(x, ns))
}

/// The name of an AF_XDP port's veth end in the daemon's namespace: from
/// the port's identity (network and MAC, unique on a network), so that a
/// restart finds it again and one left by a killed daemon is recognised.
fn switch_ifname(network: &str, mac: MacAddr) -> String {
    let seed: Vec<u8> = network.bytes().chain([0]).chain(mac.0).collect();
    // "tyx" + 8 hex digits (the hash's low 32 bits) = 11 bytes, under IFNAMSIZ.
    format!("tyx{:08x}", crate::wire::fnv1a(&seed) as u32)
}

fn parse_unicast_mac(m: &str) -> Result<MacAddr, ApiError> {
    let m: MacAddr = m.parse().map_err(|e: ParseMacError| ApiError::bad_request(e.to_string()))?;
    if m.is_multicast() || m.is_zero() {
        return Err(ApiError::bad_request(format!("MAC {m} is not a unicast address")));
    }
    Ok(m)
}

/// Appends how to get CAP_NET_ADMIN to a system error at `connect` when
/// the daemon lacks it (a bare EPERM from TUNSETIFF says nothing useful).
pub(super) fn with_privilege_hint(e: ApiError) -> ApiError {
    if e.kind != ErrorKind::System || server::has_net_admin() != Some(false) {
        return e;
    }
    ApiError::system(format!("{}; {}", e.message, server::NET_ADMIN_HINT))
}

/// Who may connect to a vhost-user socket tapyard listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SocketOwner {
    pub(super) mode: u32,
    pub(super) gid: Option<u32>,
}

impl SocketOwner {
    /// Reads `--socket-mode` (octal) and `--socket-group` (name or gid);
    /// both only apply to a socket tapyard makes, so not with `--client`.
    pub(super) fn parse(
        client: bool,
        mode: Option<&str>,
        group: Option<&str>,
        socket: &str,
    ) -> Result<SocketOwner, ApiError> {
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

fn xdp_info(switch_ifname: &str, x: &XdpPort) -> XdpInfo {
    XdpInfo { switch_ifname: switch_ifname.to_string(), mode: x.mode().to_string(), counters: xdp_counters(x) }
}

/// An AF_XDP port's own counters (`port ls`'s `afxdp.counters`, `stats`'s
/// `afxdp_counters`, the `tapyard_afxdp_*` metrics).
pub(super) fn xdp_counters(x: &XdpPort) -> BTreeMap<String, u64> {
    let mut counters = BTreeMap::new();
    // The sockets' own drops, before a worker saw the frames; an error
    // (sockets unbound: the veth is going) shows none.
    if let Ok(k) = x.kernel_stats() {
        counters.insert("rx_ring_full".to_string(), k.rx_ring_full);
        counters.insert("rx_fill_ring_empty".to_string(), k.rx_fill_ring_empty);
        counters.insert("rx_dropped".to_string(), k.rx_dropped);
        counters.insert("rx_invalid_descs".to_string(), k.rx_invalid_descs);
        counters.insert("tx_invalid_descs".to_string(), k.tx_invalid_descs);
        counters.insert("tx_ring_empty".to_string(), k.tx_ring_empty);
    }
    counters.insert("port_rx_dropped".to_string(), x.rx_dropped());
    counters
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

/// The address DHCP leased to `p`'s MAC on its network (the newest active
/// lease), with the subnet's prefix; none for a network without a subnet.
fn leased(inner: &Inner, leases: &[(String, Lease)], p: &PortRec, now: u64) -> Option<Ipv4Net> {
    let prefix = inner.networks.get(&p.spec.network)?.spec.addressing?.subnet.prefix_len();
    let (_, l) = leases
        .iter()
        .filter(|(n, l)| *n == p.spec.network && l.mac == p.spec.mac.0 && l.is_active(now))
        .max_by_key(|(_, l)| l.expires)?;
    Ipv4Net::new(l.addr, prefix).ok()
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
        afxdp: p.spec.afxdp.as_ref().zip(p.xdp.as_deref()).map(|(spec, x)| xdp_info(&spec.switch_ifname, x)),
        publish: p
            .reservations
            .iter()
            .map(|(publish, held)| {
                let (state, error) = match held {
                    Err(why) => (PublishState::Inactive, Some(why.clone())),
                    Ok(_) if p.spec.ip.is_some() || leased.is_some() => (PublishState::Active, None),
                    Ok(_) => (PublishState::Waiting, None),
                };
                PublishInfo { publish: *publish, state, error }
            })
            .collect(),
        owner: p.spec.owner.clone(),
        container: p.spec.container.clone(),
        impair_in: (!p.spec.link.impair_in.is_none()).then_some(p.spec.link.impair_in),
        impair_out: (!p.spec.link.impair_out.is_none()).then_some(p.spec.link.impair_out),
        link_up: p.spec.link.link_up,
        // Filled in by `Daemon::guarded`, which knows the defaults.
        port_security: false,
        storm_limit: None,
    }
}
