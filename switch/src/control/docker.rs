//! Docker's plugin protocol (`daemon --docker-plugin`): tapyard as a Docker
//! network driver and IPAM driver, served by the daemon itself on a UNIX
//! socket that dockerd discovers under /run/docker/plugins by its name.
//!
//! The protocol (moby `libnetwork/docs/remote.md` and `docs/ipam.md`,
//! `docs/extend/plugin_api.md`): HTTP/1.1 POST of a JSON object to
//! `/Plugin.Activate`, `/NetworkDriver.*` and `/IpamDriver.*`, a JSON object
//! back with content type `application/vnd.docker.plugins.v1.2+json`. A
//! failure is HTTP 500 with `{"Err": why}` (what dockerd's plugin client
//! reads on any status but 200); IPAM replies carry the same text in
//! `Error` too, the field IPAM's 200 replies use. An unknown method is a
//! 404, which dockerd takes as "not implemented".
//!
//! This module owns the Docker ↔ tapyard maps, persisted in
//! `STATE_DIR/docker.json` (dockerd never replays RequestPool or
//! CreateNetwork to a restarted plugin): IPAM pools (id = the subnet) and
//! the addresses handed out from each, Docker network ids → tapyard network
//! names, and endpoints (address, MAC, TAP name, published ports). The
//! networks and ports themselves are made through the daemon's own methods
//! (`network_create`, `connect`, `remove_ports`, `port_publish`), so they are
//! ordinary tapyard networks and ports, seen by `network ls` and `port ls`.
//!
//! Join makes the endpoint's TAP in the daemon's own namespace (dockerd's),
//! named `SrcName`; dockerd moves it into the container (Join's
//! `SandboxKey`) and renames it, later and without telling the plugin, so a
//! thread looks for it there (`Plugin::follow_pending`) and the port
//! record follows it (namespace and name). The port is found again by
//! network and MAC (which Docker keeps), never by namespace and name. At the
//! start, endpoints of containers removed while the daemon was down are
//! forgotten (`Plugin::forget_gone`). The protocol never names the
//! container; the same thread asks dockerd's API for it (`api.rs`,
//! `Plugin::name_containers`) so that `port ls` shows it.
//!
//! The HTTP reader is hand-written (`read_request`, about a hundred lines,
//! unit-tested): dockerd sends only small POSTs with a Content-Length (a
//! chunked body is read too) on a local socket. tiny_http 0.12 could serve
//! a UNIX socket (`Server::http_unix`), but it binds the path itself
//! (tapyard's sockets are bound by `server::bind_socket`, which locks them
//! and replaces stale ones), and it would bring four crates and a request
//! queue of its own for what is four header lines here; no HTTP server is
//! in the dependency tree already.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tapyard_ipam::{next_subnet, Ipv4Net};

use super::netns::{self, OWN_NETNS};
use super::proto::{ApiError, NetworkCreate, PortKind};
use super::{persist, Daemon};
use crate::wire::MacAddr;

/// Where dockerd looks for plugin sockets (`/run/docker/plugins/NAME.sock`).
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/tapyard.sock";

/// The plugin API's content type (docs/extend/plugin_api.md).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The maps' file under the state directory.
pub const STATE_FILE: &str = "docker.json";

/// RequestAddress option naming the gateway request (libnetwork netlabel).
const GATEWAY_REQUEST: &str = "com.docker.network.gateway";
/// Network options: `-o k=v` of `docker network create`, and `--internal`.
const GENERIC: &str = "com.docker.network.generic";
const INTERNAL: &str = "com.docker.network.internal";
/// Join/ProgramExternalConnectivity option: the container's `-p` bindings.
const PORTMAP: &str = "com.docker.network.portmap";

/// Largest request body accepted (dockerd's are a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Connections served at once (a thread each).
const MAX_CONNECTIONS: usize = 32;

/// An IPAM pool: a subnet, its optional sub-pool (`--ip-range`), and what is handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pool {
    subnet: Ipv4Net,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_range: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    addresses: BTreeSet<Ipv4Addr>,
}

/// A Docker endpoint: one container on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Endpoint {
    network_id: String,
    /// The tapyard network.
    network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<Ipv4Net>,
    mac: MacAddr,
    /// The TAP's name when made (Join's SrcName).
    ifname: String,
    /// Whether the TAP exists (made at Join, removed at DeleteEndpoint).
    #[serde(default)]
    joined: bool,
    /// The container's namespace as Join named it (`SandboxKey`): where
    /// Docker moves the TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sandbox: Option<String>,
    /// What ProgramExternalConnectivity published (`-p` specs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    publish: Vec<String>,
    /// The container, as dockerd's API names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<super::proto::Container>,
}

/// Everything persisted in `docker.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Maps {
    #[serde(default)]
    pools: BTreeMap<String, Pool>,
    /// Docker network id → tapyard network name.
    #[serde(default)]
    networks: BTreeMap<String, String>,
    #[serde(default)]
    endpoints: BTreeMap<String, Endpoint>,
}

/// A failed call: the message for dockerd.
#[derive(Debug)]
struct Failure(String);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure(e.message)
    }
}

fn fail<T>(m: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(m.into()))
}

/// The plugin: the daemon it drives and the Docker maps.
pub struct Plugin {
    daemon: Arc<Daemon>,
    maps: Mutex<Maps>,
    path: PathBuf,
    naming: Mutex<Naming>,
}

/// One plugin reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Plugin {
    /// The plugin for `daemon`, with the maps saved in its state directory.
    pub fn open(daemon: Arc<Daemon>) -> anyhow::Result<Plugin> {
        use anyhow::Context;
        let path = daemon.cfg.state_dir.join(STATE_FILE);
        let maps = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("corrupt {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Maps::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let plugin = Plugin { daemon, maps: Mutex::new(maps), path, naming: Mutex::new(Naming::default()) };
        plugin.forget_gone();
        Ok(plugin)
    }

    /// At the start: forgets the endpoints of containers removed while the
    /// daemon was down. Docker's DeleteEndpoint and ReleaseAddress failed
    /// then and are not retried, so nobody else will: a joined endpoint
    /// whose port the daemon did not restore because its container's
    /// namespace is gone gives back its pool address and its lease.
    fn forget_gone(&self) {
        let own_dev = netns::resolve(OWN_NETNS).map(|n| n.dev).ok();
        // A namespace file is on nsfs, the device of every namespace file;
        // a removed container's is gone, or an empty file once unmounted.
        let gone = |k: &str| netns::resolve(k).map_or(true, |n| Some(n.dev) != own_dev);
        let mut maps = self.lock();
        let ids: Vec<String> = maps
            .endpoints
            .iter()
            .filter(|(_, e)| e.joined && e.sandbox.as_deref().is_some_and(gone) && self.port_where(e).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            let Some(e) = maps.endpoints.remove(id) else { continue };
            if let Some(a) = e.address {
                for p in maps.pools.values_mut().filter(|p| p.subnet.contains(&a.addr())) {
                    p.addresses.remove(&a.addr());
                }
            }
            let mut store = self.daemon.ipam();
            store.release_port(&e.network, e.mac.0);
            let _ = self.daemon.commit_ipam(&mut store);
            tracing::info!(endpoint = %id, network = %e.network, address = ?e.address,
                "docker: forgot the endpoint of a container removed while the daemon was down");
        }
        if !ids.is_empty() {
            if let Err(Failure(m)) = self.save(&maps) {
                tracing::error!(error = %m, "docker: cannot save the maps");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, maps: &Maps) -> Result<(), Failure> {
        let bytes = serde_json::to_vec_pretty(maps).map_err(|e| Failure(e.to_string()))?;
        persist::write_atomic(&self.path, &bytes)
            .map_err(|e| Failure(format!("cannot save {}: {e}", self.path.display())))
    }

    /// Serves one call: `path` as dockerd posts it (`/NetworkDriver.Join`), and its body.
    pub fn handle(&self, path: &str, body: &[u8]) -> Answer {
        let method = path.strip_prefix('/').unwrap_or(path);
        let ipam = method.starts_with("IpamDriver.");
        let result = self.call(method, body);
        match result {
            Some(Ok(v)) => Answer { status: 200, body: v },
            Some(Err(Failure(m))) => {
                tracing::warn!(method, error = %m, "docker plugin call failed");
                let body = if ipam { json!({ "Err": m, "Error": m }) } else { json!({ "Err": m }) };
                Answer { status: 500, body }
            }
            None => Answer { status: 404, body: json!({ "Err": format!("tapyard does not implement {method}") }) },
        }
    }

    /// The method's answer; none for an unknown method.
    fn call(&self, method: &str, body: &[u8]) -> Option<Result<Value, Failure>> {
        let r = match method {
            "Plugin.Activate" => Ok(json!({ "Implements": ["NetworkDriver", "IpamDriver"] })),
            "NetworkDriver.GetCapabilities" => Ok(json!({ "Scope": "local", "ConnectivityScope": "local" })),
            "NetworkDriver.CreateNetwork" => parse(body).and_then(|r| self.create_network(r)),
            "NetworkDriver.DeleteNetwork" => parse(body).and_then(|r| self.delete_network(r)),
            "NetworkDriver.CreateEndpoint" => parse(body).and_then(|r| self.create_endpoint(r)),
            "NetworkDriver.EndpointOperInfo" => parse(body).and_then(|r| self.endpoint_info(r)),
            "NetworkDriver.DeleteEndpoint" => parse(body).and_then(|r| self.delete_endpoint(r)),
            "NetworkDriver.Join" => parse(body).and_then(|r| self.join(r)),
            "NetworkDriver.Leave" => parse(body).and_then(|r| self.leave(r)),
            "NetworkDriver.ProgramExternalConnectivity" => parse(body).and_then(|r| self.program(r)),
            "NetworkDriver.RevokeExternalConnectivity" => parse(body).and_then(|r| self.revoke(r)),
            // Discovery events are for drivers of global (swarm) scope: nothing to do.
            "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => parse::<Discovery>(body).map(|_| json!({})),
            // Swarm managers' network allocation: a local-scope driver has none.
            "NetworkDriver.AllocateNetwork" => parse::<NetRef>(body).map(|_| json!({ "Options": {} })),
            "NetworkDriver.FreeNetwork" => parse::<NetRef>(body).map(|_| json!({})),
            "IpamDriver.GetCapabilities" => Ok(json!({ "RequiresMACAddress": false, "RequiresRequestReplay": false })),
            "IpamDriver.GetDefaultAddressSpaces" => Ok(json!({
                "LocalDefaultAddressSpace": "tapyard-local",
                "GlobalDefaultAddressSpace": "tapyard-global",
            })),
            "IpamDriver.RequestPool" => parse(body).and_then(|r| self.request_pool(r)),
            "IpamDriver.ReleasePool" => parse(body).and_then(|r| self.release_pool(r)),
            "IpamDriver.RequestAddress" => parse(body).and_then(|r| self.request_address(r)),
            "IpamDriver.ReleaseAddress" => parse(body).and_then(|r| self.release_address(r)),
            _ => return None,
        };
        Some(r)
    }

    // ---- IPAM ----

    fn request_pool(&self, r: PoolRequest) -> Result<Value, Failure> {
        if r.v6 {
            return fail("tapyard's IPAM hands out IPv4 only; create the network without --ipv6");
        }
        let sub = parse_net("SubPool (--ip-range)", &r.sub_pool)?;
        let mut maps = self.lock();
        let subnet = match parse_net("Pool (--subnet)", &r.pool)? {
            Some(s) => {
                if s.trunc() != s {
                    return fail(format!("subnet {s} has host bits set; did you mean {}?", s.trunc()));
                }
                if s.prefix_len() > 30 {
                    return fail(format!("subnet {s} is too small: at most /30"));
                }
                if let Some((_, p)) = maps.pools.iter().find(|(_, p)| overlaps(&p.subnet, &s)) {
                    return fail(format!("subnet {s} overlaps pool {} of another Docker network", p.subnet));
                }
                s
            }
            None => {
                // As `tapyard network create` without --subnet: the next
                // free subnet of the default pools, skipping tapyard's
                // networks, pools already given, and the host's routes.
                let host = netns::host_prefixes(self.daemon.uplink_ifname())?;
                let taken: Vec<Ipv4Net> = {
                    let inner = self.daemon.lock();
                    inner.networks.values().filter_map(|n| n.spec.addressing.map(|a| a.subnet)).collect()
                };
                let taken: Vec<Ipv4Net> = taken
                    .into_iter()
                    .chain(maps.pools.values().map(|p| p.subnet))
                    .chain(host.iter().map(|h| h.net))
                    .collect();
                match next_subnet(&self.daemon.cfg.default_pools, &taken) {
                    Some(s) => s,
                    None => return fail("every subnet of tapyard's default pools is taken; give --subnet"),
                }
            }
        };
        if let Some(s) = sub {
            if !subnet.contains(&s) {
                return fail(format!("--ip-range {s} must lie inside subnet {subnet}"));
            }
        }
        let id = subnet.to_string();
        maps.pools.insert(id.clone(), Pool { subnet, ip_range: sub, gateway: None, addresses: BTreeSet::new() });
        self.save(&maps)?;
        tracing::info!(pool = %id, "docker: pool requested");
        Ok(json!({ "PoolID": id, "Pool": subnet.to_string(), "Data": {} }))
    }

    fn release_pool(&self, r: PoolRef) -> Result<Value, Failure> {
        let mut maps = self.lock();
        if maps.pools.remove(&r.pool_id).is_none() {
            return fail(format!("no pool {:?}", r.pool_id));
        }
        self.save(&maps)?;
        Ok(json!({}))
    }

    fn request_address(&self, r: AddressRequest) -> Result<Value, Failure> {
        let wanted = match r.address.as_str() {
            "" => None,
            a => Some(netns::parse_ip(a)?.0),
        };
        let gateway = r.options.get("RequestAddressType").map(String::as_str) == Some(GATEWAY_REQUEST);
        let mut maps = self.lock();
        let pool = maps.pools.get_mut(&r.pool_id).ok_or_else(|| Failure(format!("no pool {:?}", r.pool_id)))?;
        let s = pool.subnet;
        let usable = |a: Ipv4Addr| s.contains(&a) && a != s.network() && a != s.broadcast();
        let addr = match wanted {
            Some(a) if !usable(a) => return fail(format!("{a} is not a host address of subnet {s}")),
            Some(a) if pool.addresses.contains(&a) || pool.gateway == Some(a) => {
                return fail(format!("{a} is already in use on subnet {s}"))
            }
            Some(a) => a,
            // The gateway: the subnet's first host, as Docker's IPAM does.
            None if gateway => {
                s.hosts().find(|a| !pool.addresses.contains(a)).ok_or_else(|| Failure("no free address".into()))?
            }
            None => {
                // Every address of the range (its own first and last too,
                // as Docker's IPAM does), but only hosts of the subnet.
                let range = pool.ip_range.unwrap_or(s);
                (u32::from(range.network())..=u32::from(range.broadcast()))
                    .map(Ipv4Addr::from)
                    .find(|a| usable(*a) && !pool.addresses.contains(a) && pool.gateway != Some(*a))
                    .ok_or_else(|| Failure(format!("no free address left in {range}")))?
            }
        };
        if gateway {
            pool.gateway = Some(addr);
        } else {
            pool.addresses.insert(addr);
        }
        self.save(&maps)?;
        let net = Ipv4Net::new(addr, s.prefix_len()).map_err(|e| Failure(e.to_string()))?;
        Ok(json!({ "Address": net.to_string(), "Data": {} }))
    }

    fn release_address(&self, r: AddressRef) -> Result<Value, Failure> {
        let (addr, _) = netns::parse_ip(&r.address)?;
        let mut maps = self.lock();
        let pool = maps.pools.get_mut(&r.pool_id).ok_or_else(|| Failure(format!("no pool {:?}", r.pool_id)))?;
        if pool.gateway == Some(addr) {
            pool.gateway = None;
        } else if !pool.addresses.remove(&addr) {
            return fail(format!("{addr} is not allocated in pool {}", r.pool_id));
        }
        self.save(&maps)?;
        Ok(json!({}))
    }

    // ---- network driver ----

    fn create_network(&self, r: CreateNetworkRequest) -> Result<Value, Failure> {
        check_id("NetworkID", &r.network_id)?;
        if r.ipv6_data.as_ref().is_some_and(|v| !v.is_empty()) {
            return fail("tapyard networks are IPv4 only; create the network without --ipv6");
        }
        let generic: BTreeMap<String, Value> = match r.options.get(GENERIC) {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| Failure(format!("invalid option {GENERIC}: {e}")))?
            }
        };
        let opt = |k: &str| -> Result<Option<String>, Failure> {
            match generic.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => fail(format!("option {k} must be a string, got {v}")),
            }
        };
        for k in generic.keys() {
            if k.starts_with("tapyard.")
                && !["tapyard.mtu", "tapyard.name", "tapyard.port-security"].contains(&k.as_str())
            {
                return fail(format!(
                    "unknown option {k}: tapyard takes -o tapyard.mtu=N, -o tapyard.name=NAME and -o tapyard.port-security=on|off"
                ));
            }
        }
        let mtu = match opt("tapyard.mtu")?.or(opt("com.docker.network.driver.mtu")?) {
            None => None,
            Some(m) => Some(m.parse::<u32>().map_err(|_| Failure(format!("invalid MTU {m:?}")))?),
        };
        let internal = match r.options.get(INTERNAL) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            Some(v) => return fail(format!("invalid {INTERNAL}: {v}")),
        };
        let name = match opt("tapyard.name")? {
            Some(n) => n,
            None => format!("docker-{}", &r.network_id[..r.network_id.len().min(12)]),
        };
        // Checked by network_create (on or off), as `network create --port-security`.
        let port_security = opt("tapyard.port-security")?;
        let mut args = NetworkCreate { name: name.clone(), mtu, internal, port_security, ..Default::default() };
        match r.ipv4_data.as_deref().unwrap_or_default() {
            [] => args.ipam = Some("none".into()),
            [d] => {
                let subnet = parse_net("Pool", &d.pool)?.ok_or_else(|| Failure("IPv4Data without a Pool".into()))?;
                args.subnet = Some(subnet.to_string());
                if !d.gateway.is_empty() {
                    args.gateway = Some(netns::parse_ip(&d.gateway)?.0.to_string());
                }
                for (n, a) in &d.aux_addresses {
                    let a = a.as_str().ok_or_else(|| Failure(format!("aux address {n} is not a string")))?;
                    args.aux_addresses.push(format!("{n}={}", netns::parse_ip(a)?.0));
                }
                // tapyard's own pool: its --ip-range becomes the network's
                // (DHCP then hands out from the same range).
                let maps = self.lock();
                args.ip_range = maps.pools.get(&subnet.to_string()).and_then(|p| p.ip_range).map(|r| r.to_string());
            }
            _ => return fail("tapyard networks take one IPv4 subnet"),
        }
        let mut maps = self.lock();
        if maps.networks.contains_key(&r.network_id) {
            return fail(format!("network {} exists already", r.network_id));
        }
        self.daemon.network_create(args)?;
        maps.networks.insert(r.network_id.clone(), name.clone());
        if let Err(e) = self.save(&maps) {
            // Not recorded: not made either.
            maps.networks.remove(&r.network_id);
            let _ = self.daemon.network_rm(&name, true);
            return Err(e);
        }
        tracing::info!(docker = %r.network_id, network = %name, "docker: network created");
        Ok(json!({}))
    }

    fn delete_network(&self, r: NetRef) -> Result<Value, Failure> {
        let mut maps = self.lock();
        let Some(name) = maps.networks.get(&r.network_id).cloned() else {
            return fail(format!("no network {}", r.network_id));
        };
        match self.daemon.network_rm(&name, false) {
            Ok(_) => {}
            // Removed by hand with `tapyard network rm`: forget it all the same.
            Err(e) if e.kind == super::proto::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        maps.networks.remove(&r.network_id);
        maps.endpoints.retain(|_, e| e.network_id != r.network_id);
        self.save(&maps)?;
        tracing::info!(docker = %r.network_id, network = %name, "docker: network deleted");
        Ok(json!({}))
    }

    fn create_endpoint(&self, r: CreateEndpointRequest) -> Result<Value, Failure> {
        check_id("EndpointID", &r.endpoint_id)?;
        let iface = r.interface.unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return fail("tapyard networks are IPv4 only");
        }
        let address = match iface.address.as_str() {
            "" => None,
            a => Some(a.parse::<Ipv4Net>().map_err(|_| Failure(format!("invalid Address {a:?}: expected CIDR")))?),
        };
        let (mac, answer) = match iface.mac_address.as_str() {
            "" => {
                let m = MacAddr::stable_local(r.endpoint_id.as_bytes());
                (m, json!({ "Interface": { "MacAddress": m.to_string() } }))
            }
            m => (m.parse::<MacAddr>().map_err(|e| Failure(format!("invalid MacAddress {m:?}: {e}")))?, json!({})),
        };
        let mut maps = self.lock();
        let network =
            maps.networks.get(&r.network_id).cloned().ok_or_else(|| Failure(format!("no network {}", r.network_id)))?;
        if maps.endpoints.contains_key(&r.endpoint_id) {
            return fail(format!("endpoint {} exists already", r.endpoint_id));
        }
        if maps.endpoints.values().any(|e| e.network == network && e.mac == mac) {
            return fail(format!("MAC {mac} is already used on this network"));
        }
        let ifname = format!("ty{}", &r.endpoint_id[..r.endpoint_id.len().min(12)]);
        maps.endpoints.insert(
            r.endpoint_id.clone(),
            Endpoint {
                network_id: r.network_id,
                network,
                address,
                mac,
                ifname,
                joined: false,
                sandbox: None,
                publish: Vec::new(),
                container: None,
            },
        );
        self.save(&maps)?;
        Ok(answer)
    }

    fn endpoint_info(&self, r: EndpointRef) -> Result<Value, Failure> {
        let maps = self.lock();
        let e = endpoint(&maps, &r)?;
        self.follow(e);
        Ok(json!({ "Value": {
            "tapyard.network": e.network,
            "tapyard.ifname": e.ifname,
            "tapyard.mac": e.mac.to_string(),
        }}))
    }

    fn delete_endpoint(&self, r: EndpointRef) -> Result<Value, Failure> {
        let mut maps = self.lock();
        let e = endpoint(&maps, &r)?.clone();
        self.remove_port(&e);
        maps.endpoints.remove(&r.endpoint_id);
        self.save(&maps)?;
        Ok(json!({}))
    }

    /// Docker moved the endpoint's TAP into the container's namespace
    /// (Join's SandboxKey) and renamed it: the port record follows, found
    /// by network and MAC, the TAP in that namespace by its MAC (which
    /// Docker sets to the endpoint's). Then `port ls` shows where the TAP
    /// is, and a restarted daemon reattaches it there. Nothing changes
    /// while the namespace does not exist yet (`docker run` calls Join
    /// before making it) or holds no such interface; failures are logged.
    fn follow(&self, e: &Endpoint) {
        let Some(key) = &e.sandbox else {
            return;
        };
        let Ok(ns) = netns::resolve(key) else {
            return;
        };
        let name = match netns::link_by_mac(&ns, e.mac) {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(network = %e.network, sandbox = %key, error = %err, "docker: cannot find the endpoint's TAP");
                return;
            }
        };
        let mut inner = self.daemon.lock();
        let Some(rec) = inner
            .ports
            .values_mut()
            .find(|p| p.spec.network == e.network && p.spec.mac == e.mac && p.spec.vhost.is_none())
        else {
            return;
        };
        if rec.spec.netns == *key && rec.spec.ifname == name {
            return;
        }
        tracing::info!(port = %rec.id, network = %e.network, netns = %key, ifname = %name, "docker: port follows its TAP into the container");
        rec.spec.netns = key.clone();
        rec.spec.ifname = name;
        rec.spec.netns_dev = ns.dev;
        rec.spec.netns_ino = ns.ino;
        rec.netns = Some(ns);
        self.daemon.persist(&inner);
    }

    /// Asks dockerd for the containers of joined endpoints that have no name
    /// yet and writes it into their ports. Docker fills a container's
    /// `EndpointID` only once its networking is set up, after Join, so an
    /// endpoint may need a few looks; a look that names nothing doubles the
    /// wait before the next (up to `NAME_BACKOFF_MAX`), and a Join resets it.
    fn name_containers(&self) {
        let Some(api) = self.daemon.cfg.docker_api.clone() else {
            return;
        };
        {
            let n = self.naming.lock().unwrap_or_else(|e| e.into_inner());
            if n.next.is_some_and(|t| std::time::Instant::now() < t) {
                return;
            }
        }
        let unnamed: Vec<String> = self
            .lock()
            .endpoints
            .iter()
            .filter(|(_, e)| e.joined && e.container.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        if unnamed.is_empty() {
            return;
        }
        let found = match api::names(&api, &unnamed) {
            Ok(f) => f,
            Err(m) => {
                tracing::debug!(error = %m, "docker: cannot ask dockerd for container names");
                Vec::new()
            }
        };
        {
            let mut n = self.naming.lock().unwrap_or_else(|e| e.into_inner());
            n.wait = if found.is_empty() { (n.wait * 2).clamp(FOLLOW_EVERY, NAME_BACKOFF_MAX) } else { FOLLOW_EVERY };
            n.next = Some(std::time::Instant::now() + n.wait);
        }
        if found.is_empty() {
            return;
        }
        let mut maps = self.lock();
        let mut named = Vec::new();
        for (id, name) in found {
            if let Some(e) = maps.endpoints.get_mut(&id) {
                e.container = Some(name);
                named.push(e.clone());
            }
        }
        if let Err(Failure(m)) = self.save(&maps) {
            tracing::error!(error = %m, "docker: cannot save the maps");
        }
        drop(maps);
        let mut inner = self.daemon.lock();
        let mut changed = false;
        for e in named {
            for rec in inner.ports.values_mut().filter(|p| p.spec.network == e.network && p.spec.mac == e.mac) {
                if rec.spec.container != e.container {
                    rec.spec.container = e.container.clone();
                    changed = true;
                }
            }
        }
        if changed {
            self.daemon.persist(&inner);
        }
    }

    /// Follows the TAPs of joined endpoints not yet found in their
    /// containers. `docker run` calls Join, ProgramExternalConnectivity and
    /// EndpointOperInfo before the container's namespace exists and moves
    /// the TAP later, telling the plugin nothing: only looking finds it.
    fn follow_pending(&self) {
        let pending: Vec<Endpoint> =
            self.lock().endpoints.values().filter(|e| e.joined && e.sandbox.is_some()).cloned().collect();
        for e in pending {
            // Not there yet, or there but not yet renamed (Docker moves
            // the TAP first, then renames it: a look in between finds it
            // under its first name).
            let pending = |(ns, name): (String, String)| Some(&ns) != e.sandbox.as_ref() || name == e.ifname;
            if self.port_where(&e).is_some_and(pending) {
                self.follow(&e);
            }
        }
    }

    /// The namespace spec and interface name the endpoint's port record has now.
    fn port_where(&self, e: &Endpoint) -> Option<(String, String)> {
        let inner = self.daemon.lock();
        inner
            .ports
            .values()
            .find(|p| p.spec.network == e.network && p.spec.mac == e.mac && p.spec.vhost.is_none())
            .map(|p| (p.spec.netns.clone(), p.spec.ifname.clone()))
    }

    /// Removes the endpoint's port, wherever its TAP is now (found by network and MAC).
    fn remove_port(&self, e: &Endpoint) {
        let mut inner = self.daemon.lock();
        let ids: Vec<_> = inner
            .ports
            .values()
            .filter(|p| p.spec.network == e.network && p.spec.mac == e.mac && p.spec.vhost.is_none())
            .map(|p| p.id)
            .collect();
        if self.daemon.remove_ports(&mut inner, &ids) > 0 {
            self.daemon.persist(&inner);
        }
    }

    fn join(&self, r: JoinRequest) -> Result<Value, Failure> {
        let mut maps = self.lock();
        let e = endpoint(&maps, &EndpointRef { network_id: r.network_id.clone(), endpoint_id: r.endpoint_id.clone() })?
            .clone();
        if e.joined {
            // A second Join without Leave: the TAP is in the container already.
            return fail(format!("endpoint {} is joined already", r.endpoint_id));
        }
        self.daemon.connect(
            e.network.clone(),
            OWN_NETNS.to_string(),
            Some(e.ifname.clone()),
            Some(e.mac.to_string()),
            e.address.map(|a| a.to_string()),
            true,
            Vec::new(),
            // No owner: that field is the CNI plugin's (its GC acts on it).
            None,
            super::ports::Guard::default(),
            PortKind::Tap,
        )?;
        let gateway = {
            let mut inner = self.daemon.lock();
            if e.container.is_some() {
                // Joined again (docker start): the container is known.
                for rec in inner.ports.values_mut().filter(|p| p.spec.network == e.network && p.spec.mac == e.mac) {
                    rec.spec.container = e.container.clone();
                }
                self.daemon.persist(&inner);
            }
            inner.networks.get(&e.network).and_then(|n| n.spec.addressing).map(|a| a.gateway)
        };
        self.naming.lock().unwrap_or_else(|e| e.into_inner()).next = None;
        if let Some(ep) = maps.endpoints.get_mut(&r.endpoint_id) {
            ep.joined = true;
            ep.sandbox = Some(r.sandbox_key).filter(|k| !k.is_empty());
        }
        if let Err(err) = self.save(&maps) {
            self.remove_port(&e);
            return Err(err);
        }
        tracing::info!(endpoint = %r.endpoint_id, network = %e.network, tap = %e.ifname, "docker: joined");
        let mut answer = json!({ "InterfaceName": { "SrcName": e.ifname, "DstPrefix": "eth" } });
        match gateway {
            Some(g) => answer["Gateway"] = json!(g.to_string()),
            // No addressing: no route, and no second interface on docker_gwbridge.
            None => answer["DisableGatewayService"] = json!(true),
        }
        Ok(answer)
    }

    fn leave(&self, r: EndpointRef) -> Result<Value, Failure> {
        // The TAP stays: dockerd hands it back and DeleteEndpoint removes it.
        let maps = self.lock();
        endpoint(&maps, &r)?;
        Ok(json!({}))
    }

    fn program(&self, r: ProgramRequest) -> Result<Value, Failure> {
        let specs = match r.options.get(PORTMAP) {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => {
                let binds: Vec<PortBinding> =
                    serde_json::from_value(v.clone()).map_err(|e| Failure(format!("invalid {PORTMAP}: {e}")))?;
                binds.iter().map(PortBinding::spec).collect::<Result<Vec<_>, _>>()?
            }
        };
        let mut maps = self.lock();
        let e = endpoint(&maps, &EndpointRef { network_id: r.network_id.clone(), endpoint_id: r.endpoint_id.clone() })?
            .clone();
        // Called once Docker has moved the TAP into the container.
        self.follow(&e);
        let Some((ns, ifname)) = self.port_where(&e) else {
            return if specs.is_empty() { Ok(json!({})) } else { fail("the endpoint has no port: not joined") };
        };
        let mut done: Vec<String> = Vec::new();
        for s in &specs {
            if let Err(err) = self.daemon.port_publish(&e.network, &ns, Some(ifname.clone()), s) {
                // All or nothing.
                for d in &done {
                    let _ = self.daemon.port_unpublish(&e.network, &ns, Some(ifname.clone()), d);
                }
                return Err(err.into());
            }
            done.push(s.clone());
        }
        if let Some(ep) = maps.endpoints.get_mut(&r.endpoint_id) {
            ep.publish = done;
        }
        self.save(&maps)?;
        Ok(json!({}))
    }

    fn revoke(&self, r: EndpointRef) -> Result<Value, Failure> {
        let mut maps = self.lock();
        let e = endpoint(&maps, &r)?.clone();
        let place = self.port_where(&e);
        for s in &e.publish {
            let Some((ns, ifname)) = &place else { break };
            if let Err(err) = self.daemon.port_unpublish(&e.network, ns, Some(ifname.clone()), s) {
                tracing::warn!(endpoint = %r.endpoint_id, spec = %s, error = %err, "docker: cannot unpublish");
            }
        }
        if let Some(ep) = maps.endpoints.get_mut(&r.endpoint_id) {
            ep.publish.clear();
        }
        self.save(&maps)?;
        Ok(json!({}))
    }
}

fn endpoint<'a>(maps: &'a Maps, r: &EndpointRef) -> Result<&'a Endpoint, Failure> {
    match maps.endpoints.get(&r.endpoint_id) {
        Some(e) if e.network_id == r.network_id => Ok(e),
        Some(_) => fail(format!("endpoint {} is not on network {}", r.endpoint_id, r.network_id)),
        None => fail(format!("no endpoint {}", r.endpoint_id)),
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Docker ids are hex; anything else (say a path) is refused before it names a network or a TAP.
fn check_id(what: &str, id: &str) -> Result<(), Failure> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return fail(format!("invalid {what} {id:?}: expected Docker's hexadecimal id"));
    }
    Ok(())
}

fn parse_net(what: &str, s: &str) -> Result<Option<Ipv4Net>, Failure> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| Failure(format!("invalid {what} {s:?}: expected IPv4 CIDR like 10.10.0.0/24")))
}

/// A request body: a JSON object of the method's fields.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    let bad = |e: serde_json::Error| Failure(format!("malformed request body: {e}"));
    let v: Value = serde_json::from_slice(body).map_err(bad)?;
    if !v.is_object() {
        return fail("malformed request body: expected a JSON object");
    }
    serde_json::from_value(v).map_err(bad)
}

// ---- request bodies (field names as dockerd sends them) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolRequest {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default, rename = "V6")]
    v6: bool,
}

#[derive(Debug, Deserialize)]
struct PoolRef {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Debug, Deserialize)]
struct AddressRequest {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Options", default, deserialize_with = "null_is_default")]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct AddressRef {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(rename = "Address")]
    address: String,
}

#[derive(Debug, Deserialize)]
struct IpamData {
    #[serde(rename = "Pool", default)]
    pool: String,
    #[serde(rename = "Gateway", default)]
    gateway: String,
    #[serde(rename = "AuxAddresses", default, deserialize_with = "null_is_default")]
    aux_addresses: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_is_default")]
    options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<IpamData>>,
}

#[derive(Debug, Deserialize)]
struct NetRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Debug, Deserialize)]
struct EndpointRef {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointInterface {
    #[serde(default)]
    address: String,
    #[serde(default, rename = "AddressIPv6")]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Debug, Deserialize)]
struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "Interface", default)]
    interface: Option<EndpointInterface>,
}

#[derive(Debug, Deserialize)]
struct JoinRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "SandboxKey", default)]
    sandbox_key: String,
}

#[derive(Debug, Deserialize)]
struct ProgramRequest {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(rename = "Options", default, deserialize_with = "null_is_default")]
    options: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    #[serde(rename = "DiscoveryType")]
    _kind: Value,
}

/// One `-p` binding as libnetwork encodes it (types.PortBinding).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PortBinding {
    /// IP protocol number: 6 TCP, 17 UDP (IANA protocol numbers).
    proto: u8,
    #[serde(rename = "IP", default)]
    _ip: Value,
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: Option<String>,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

impl PortBinding {
    /// The binding as a `-p` spec for [`super::publish::parse`].
    fn spec(&self) -> Result<String, Failure> {
        let proto = match self.proto {
            6 => "tcp",
            17 => "udp",
            p => return fail(format!("published ports of IP protocol {p} are not supported (tcp and udp are)")),
        };
        if self.host_port_end != 0 && self.host_port_end != self.host_port {
            return fail(format!(
                "host port range {}-{} for one container port is not supported: give one host port",
                self.host_port, self.host_port_end
            ));
        }
        let ip = self.host_ip.as_deref().unwrap_or("");
        Ok(format!("{ip}:{}:{}/{proto}", self.host_port, self.port))
    }
}

fn null_is_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// ---- HTTP over the UNIX socket ----

/// One request read off a connection.
#[derive(Debug, PartialEq)]
struct HttpRequest {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

/// Reads one HTTP/1.1 request (RFC 9112): request line, headers, and a body
/// of `Content-Length` bytes or chunked. None at a clean end of stream.
fn read_request(r: &mut impl BufRead) -> Result<Option<HttpRequest>, String> {
    let mut head = 0usize;
    let mut line = String::new();
    let mut next_line = |r: &mut dyn BufRead, line: &mut String| -> Result<usize, String> {
        line.clear();
        let n = r.take((MAX_HEAD - head.min(MAX_HEAD)) as u64 + 1).read_line(line).map_err(|e| e.to_string())?;
        head += n;
        if head > MAX_HEAD {
            return Err("request head too long".into());
        }
        Ok(n)
    };
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    loop {
        if next_line(r, &mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed request line {:?}", line.trim_end()));
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut close = version == "HTTP/1.0";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        if next_line(r, &mut line)? == 0 {
            return Err("connection closed inside the request head".into());
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(format!("malformed header {l:?}"));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = v.parse().map_err(|_| format!("invalid Content-Length {v:?}"))?;
                if n > MAX_BODY {
                    return Err(format!("request body of {n} bytes is too long"));
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            if next_line(r, &mut line)? == 0 {
                return Err("connection closed inside a chunked body".into());
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let n = usize::from_str_radix(size, 16).map_err(|_| format!("invalid chunk size {size:?}"))?;
            if body.len() + n > MAX_BODY {
                return Err("request body too long".into());
            }
            let at = body.len();
            body.resize(at + n, 0);
            r.read_exact(&mut body[at..]).map_err(|e| e.to_string())?;
            let mut crlf = [0u8; 2];
            if n == 0 {
                // Trailers, then the final empty line.
                loop {
                    if next_line(r, &mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            r.read_exact(&mut crlf).map_err(|e| e.to_string())?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| format!("body cut short: {e}"))?;
    }
    Ok(Some(HttpRequest { method, path, body, close }))
}

fn write_response(w: &mut impl Write, a: &Answer, close: bool) -> std::io::Result<()> {
    let body = serde_json::to_vec(&a.body).map_err(std::io::Error::other)?;
    let reason = match a.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    write!(
        w,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n{}\r\n",
        a.status,
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )?;
    w.write_all(&body)?;
    w.flush()
}

/// Serves one connection: requests in order until the peer closes.
fn serve_conn(plugin: &Plugin, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = std::io::BufWriter::new(write_half);
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                let a = Answer { status: 400, body: json!({ "Err": format!("bad HTTP request: {e}") }) };
                let _ = write_response(&mut out, &a, true);
                return;
            }
        };
        let a = if req.method == "POST" {
            plugin.handle(&req.path, &req.body)
        } else {
            Answer {
                status: 405,
                body: json!({ "Err": format!("{} is not allowed: the plugin API is POST", req.method) }),
            }
        };
        if write_response(&mut out, &a, req.close).is_err() || req.close {
            return;
        }
    }
}

/// How often joined endpoints are looked for in their containers (`Plugin::follow_pending`).
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest wait between two questions to dockerd that named nothing.
const NAME_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// When to ask dockerd for container names next (`Plugin::name_containers`).
#[derive(Debug, Default)]
struct Naming {
    next: Option<std::time::Instant>,
    wait: std::time::Duration,
}

/// dockerd's API socket for `--docker-host`, else DOCKER_HOST when it names
/// a UNIX socket, else Docker's default.
pub fn api_path(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Serves the plugin on `listener` from a thread of its own, a thread per
/// connection, and follows TAPs into containers from another.
pub fn spawn(plugin: Arc<Plugin>, listener: UnixListener) -> std::io::Result<()> {
    let p = plugin.clone();
    std::thread::Builder::new().name("tapyard-docker-follow".into()).spawn(move || loop {
        std::thread::sleep(FOLLOW_EVERY);
        p.follow_pending();
        p.name_containers();
    })?;
    std::thread::Builder::new().name("tapyard-docker".into()).spawn(move || {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                        tracing::warn!("too many docker plugin connections; closing one");
                        continue;
                    }
                    active.fetch_add(1, Ordering::Relaxed);
                    let (p, mine) = (plugin.clone(), active.clone());
                    let spawned = std::thread::Builder::new().name("tapyard-docker-conn".into()).spawn(move || {
                        serve_conn(&p, stream);
                        mine.fetch_sub(1, Ordering::Relaxed);
                    });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "docker plugin accept failed"),
            }
        }
    })?;
    Ok(())
}

/// The plugin socket's path for `--docker-plugin-socket`, or the default.
pub fn socket_path(given: Option<&Path>) -> PathBuf {
    given.map_or_else(|| PathBuf::from(DEFAULT_SOCKET), Path::to_path_buf)
}

mod api;
#[cfg(test)]
mod tests;
