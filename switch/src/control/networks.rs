//! Networks: create, remove, reserve an address, describe; and the
//! network's forwarding table and leases as the control socket shows them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tapyard_ipam::lease::{ClientKey, Lease, LeaseState};
use tapyard_ipam::{check_static, next_subnet, Addressing, Ipv4Net};

use super::persist::{self, EgressMode, NetworkSpec};
use super::proto::*;
use super::{gateway_mac, netns, plural, unix_now, Change, Daemon, Inner, Network};
use super::{DEFAULT_MTU, MAX_MTU, MIN_MTU};
use crate::port::PortId;
use crate::table::fdb::{DEFAULT_AGEING_SECS, DEFAULT_CAPACITY};
use crate::table::Fdb;
use crate::wire::{MacAddr, ParseMacError};

impl Daemon {
    pub(super) fn network_ls(&self) -> Vec<NetworkInfo> {
        let inner = self.lock();
        inner.networks.values().map(|n| self.network_info(&inner, n)).collect()
    }

    pub(super) fn network_inspect(&self, name: &str) -> Result<NetworkInfo, ApiError> {
        let inner = self.lock();
        Ok(self.network_info(&inner, network(&inner, name)?))
    }

    /// The leases of one network, or of all.
    pub(super) fn lease_ls(&self, filter: Option<&str>) -> Result<Vec<LeaseInfo>, ApiError> {
        if let Some(n) = filter {
            network(&self.lock(), n)?;
        }
        let now = unix_now();
        let leases = self.ipam().leases(filter);
        Ok(leases.into_iter().map(|(n, l)| lease_info(n, l, now)).collect())
    }

    /// Forgets the learned MACs of one network, or of all; returns how many.
    pub(super) fn fdb_flush(&self, filter: Option<&str>) -> Result<Flushed, ApiError> {
        let inner = self.lock();
        if let Some(n) = filter {
            network(&inner, n)?;
        }
        let flushed = inner
            .networks
            .iter()
            .filter(|(name, _)| filter.is_none_or(|n| n == name.as_str()))
            .map(|(_, net)| net.fdb.flush(None))
            .sum();
        Ok(Flushed { flushed })
    }

    pub(super) fn network_info(&self, inner: &Inner, net: &Network) -> NetworkInfo {
        let s = &net.spec;
        let (pool_used, pool_size) = self.ipam().network(&s.name).map_or((0, 0), |d| d.leases.usage());
        NetworkInfo {
            name: s.name.clone(),
            port_security: s.port_security,
            subnet: s.addressing.map(|a| a.subnet.to_string()),
            gateway: s.addressing.map(|a| a.gateway.to_string()),
            ip_range: s.ip_range.map(|r| r.to_string()),
            aux_addresses: s.aux_addresses.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            reservations: s.reservations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            dns: self.dhcp_dns(s).iter().map(|d| d.to_string()).collect(),
            domain: s.domain.clone(),
            lease_secs: s.lease_secs,
            pool_used,
            pool_size,
            gateway_mac: s.addressing.map(|_| gateway_mac(&s.name).to_string()),
            gateway_counters: net.gw_stats.snapshot(),
            mtu: s.mtu,
            internal: s.internal,
            egress: s.egress.to_string(),
            egress_unavailable: self.egress_unavailable(s),
            egress_counters: self.egress_counters(inner, net),
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

    pub(super) fn network_create(&self, args: NetworkCreate) -> Result<NetworkInfo, ApiError> {
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
            force_subnet,
            egress,
            port_security,
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
        let parse_ip = |what: &str, v: &str| -> Result<Ipv4Addr, ApiError> {
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
        let mut aux = BTreeMap::new();
        for a in &aux_addresses {
            let (n, ip) = a
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("invalid --aux-address {a:?}: expected NAME=IP")))?;
            aux.insert(n.to_string(), parse_ip("aux address", ip)?);
        }
        let egress = match (egress.as_deref(), internal || l2_only) {
            (None, true) | (Some("none"), _) => EgressMode::None,
            (None | Some("nat"), false) => EgressMode::Nat,
            (Some("nat"), true) => {
                return Err(ApiError::bad_request("--egress nat needs a subnet and a network that is not --internal"))
            }
            (Some(other), _) => {
                return Err(ApiError::bad_request(format!("unknown --egress {other:?}: use nat or none")))
            }
        };
        let port_security = match port_security.as_deref() {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(other) => {
                return Err(ApiError::bad_request(format!("unknown --port-security {other:?}: use on or off")))
            }
        };
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
        // What the daemon's namespace already routes: a subnet overlapping it
        // would shadow those destinations for the host once the network
        // reaches the host. Read before taking the lock (one netlink dump).
        let host = if l2_only || (subnet.is_some() && force_subnet) {
            Vec::new()
        } else {
            netns::host_prefixes(self.uplink_ifname())?
        };
        if let Some(net) = &subnet {
            if let Some(h) = netns::overlapping(net, &host) {
                return Err(ApiError::conflict(format!(
                    "subnet {net} overlaps {} of the daemon's host; pick another --subnet, or add --force-subnet to take it anyway",
                    h.what
                )));
            }
        }
        let mut inner = self.lock();
        if inner.networks.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "network {name:?} already exists; remove it first or pick another name"
            )));
        }
        // Default pools skip tapyard's own subnets and the host's, as Docker's do.
        let taken: Vec<Ipv4Net> = inner
            .networks
            .values()
            .filter_map(|n| n.spec.addressing.map(|a| a.subnet))
            .chain(host.iter().map(|h| h.net))
            .collect();
        let subnet = match (subnet, l2_only) {
            (Some(s), _) => Some(s),
            (None, true) => None,
            (None, false) => Some(next_subnet(&self.cfg.default_pools, &taken).ok_or_else(|| {
                ApiError::conflict(
                    "every subnet of the default address pools is taken (by networks or by the host's routes): give --subnet, or start the daemon with more --default-pool",
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
            egress,
            port_security,
        };
        self.add_to_ipam(&spec);
        let fdb = Arc::new(Fdb::new(fdb_capacity, ageing_secs));
        let id = inner.net_id();
        inner
            .networks
            .insert(name.clone(), Network { id, spec, fdb, route_stats: Arc::default(), gw_stats: Arc::default() });
        self.commit(&mut inner, Change::Added);
        tracing::info!(network = %name, subnet = ?subnet, "network created");
        Ok(self.network_info(&inner, &inner.networks[&name]))
    }

    pub(super) fn network_reserve(&self, name: &str, mac: &str, ip: &str) -> Result<Reserved, ApiError> {
        let mac: MacAddr = mac.parse().map_err(|e: ParseMacError| ApiError::bad_request(e.to_string()))?;
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
        Ok(Reserved { network: name.to_string(), mac: mac.to_string(), ip: addr.to_string() })
    }

    pub(super) fn network_rm(&self, name: &str, force: bool) -> Result<NetworkRemoved, ApiError> {
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
        // A network cut from its router is cut off at once, as `router detach` does.
        self.commit(&mut inner, Change::Removed);
        // Its leases go only once the state file no longer has the network:
        // a daemon killed in between drops them at its next start
        // (`Store::drop_unknown`), never restores the network without them.
        {
            let mut store = self.ipam();
            store.remove_network(name);
            let _ = self.commit_ipam(&mut store);
        }
        tracing::info!(network = %name, ports = removed, "network removed");
        Ok(NetworkRemoved { removed: name.to_string(), ports_removed: removed, detached_from: router })
    }

    pub(super) fn fdb_show(&self, filter: Option<&str>) -> Result<Vec<FdbEntryInfo>, ApiError> {
        let inner = self.lock();
        if let Some(n) = filter {
            network(&inner, n)?;
        }
        let now = self.clock.now_secs();
        let mut out = Vec::new();
        for (name, net) in &inner.networks {
            if filter.is_some_and(|n| n != name) {
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
        Ok(out)
    }
}

pub(super) fn lease_info(network: String, l: Lease, now: u64) -> LeaseInfo {
    let (client_id, mac) = match &l.key {
        ClientKey::Id(id) => (Some(id.iter().map(|b| format!("{b:02x}")).collect()), l.mac),
        ClientKey::Mac(m) => (None, *m),
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

pub(super) fn network<'a>(inner: &'a Inner, name: &str) -> Result<&'a Network, ApiError> {
    inner
        .networks
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no network named {name:?}; see `tapyard network ls`")))
}

pub(super) fn check_network_name(name: &str) -> Result<(), ApiError> {
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
