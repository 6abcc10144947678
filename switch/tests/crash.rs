//! Crash consistency (issue 15; docs/RELIABILITY.md, "Crash consistency").
//!
//! A seeded random sequence of control operations (network create/rm,
//! connect/disconnect of TAP and vhost-user ports, router create/rm,
//! attach/detach, route add/del, reserve, DHCP handshakes from a real
//! client) runs against a real daemon, which is killed with SIGKILL at
//! chosen moments: between operations, and while an operation is in flight
//! (its outcome is then unknown: either the state before or the state after
//! is accepted, but nothing in between). Some restarts are clean (SIGTERM).
//! The test keeps a model of what the daemon acknowledged, and after every
//! restart checks:
//!
//! - every acknowledged network, port (MAC, address), vhost-user port,
//!   router (networks, routes), reservation and DHCP lease is there, and
//!   nothing refused or half-made is: the namespaces hold exactly the
//!   interfaces of the model's ports, with their MACs and addresses, no
//!   port address is held by a MAC without a port, no socket file is left
//!   where no vhost-user port is, and the host has none of the ports' MACs;
//! - the interfaces of ports acknowledged before the restart are the same
//!   ones (same ifindex: taken back, not re-created);
//! - traffic flows: between two ports of a probe network connected at the
//!   start, and between two ports of the model when there are such.
//!
//! The daemon runs with `--uplink none`: no nftables rules are made, so
//! none can be left over (tests/egress.rs covers the uplink's restarts).
//!
//! Size: `TAPYARD_CRASH_OPS` operations (default 100) and
//! `TAPYARD_CRASH_KILLS` kills (default 10); `TAPYARD_CRASH_SEED` replays a
//! run (the seed is printed). The run (1,000 operations, 50 kills):
//! `TAPYARD_CRASH_OPS=1000 TAPYARD_CRASH_KILLS=50 cargo test -p
//! tapyard-switch --test crash -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const NETS: usize = 4;
const NAMESPACES: usize = 3;
const IFNAMES: usize = 3;
const ROUTERS: usize = 2;
const SOCKETS: usize = 3;
/// Port addresses and leases older than this many seconds from now are port addresses (100 years).
const FAR: u64 = 50 * 365 * 24 * 3600;

/// splitmix64: a small seeded generator, so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn net_name(i: usize) -> String {
    format!("n{i}")
}

fn router_name(r: usize) -> String {
    format!("r{r}")
}

fn subnet(i: usize) -> String {
    format!("10.231.{i}.0/24")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PortM {
    net: usize,
    mac: String,
    /// `A.B.C.D/P` when connected with `--ip`.
    ip: Option<String>,
    /// The interface's index once seen; unchanged across restarts.
    ifindex: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RouterM {
    nets: BTreeSet<String>,
    /// prefix → via
    routes: BTreeMap<String, String>,
}

/// What the daemon acknowledged.
#[derive(Debug, Clone, Default)]
struct Model {
    nets: BTreeSet<usize>,
    /// (namespace, ifname) → port
    ports: BTreeMap<(usize, usize), PortM>,
    /// socket → network
    vhosts: BTreeMap<usize, usize>,
    routers: BTreeMap<usize, RouterM>,
    /// (network, MAC) → IP
    reservations: BTreeMap<(usize, String), String>,
    /// (network, MAC) → IP of acknowledged DHCP leases
    leases: BTreeMap<(usize, String), String>,
    /// Every MAC a port ever had (none may show up in the host).
    macs: BTreeSet<String>,
}

impl Model {
    fn remove_net(&mut self, i: usize) {
        self.nets.remove(&i);
        self.ports.retain(|_, p| p.net != i);
        self.vhosts.retain(|_, n| *n != i);
        self.reservations.retain(|(n, _), _| *n != i);
        self.leases.retain(|(n, _), _| *n != i);
        for r in self.routers.values_mut() {
            r.nets.remove(&net_name(i));
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    NetCreate(usize),
    NetRm(usize),
    /// network, namespace, ifname, address: None (DHCP), Some("auto"), Some(static)
    Connect(usize, usize, usize, Option<String>),
    Disconnect(usize, usize, usize),
    VhostConnect(usize, usize),
    VhostDisconnect(usize, usize),
    RouterCreate(usize),
    RouterRm(usize),
    Attach(usize, usize),
    Detach(usize, usize),
    /// router, prefix, via
    RouteAdd(usize, String, String),
    RouteDel(usize, String),
    /// network, MAC, IP
    Reserve(usize, String, String),
    /// namespace, ifname
    Dhcp(usize, usize),
}

struct World {
    d: Daemon,
    ns: Vec<Netns>,
    probe: (Netns, Netns),
    sockets: PathBuf,
    model: Model,
    /// Operations run, kills, clean restarts, unknown outcomes resolved each way.
    stats: BTreeMap<&'static str, u64>,
}

fn ifname(k: usize) -> String {
    format!("e{k}")
}

impl World {
    fn socket(&self, s: usize) -> String {
        self.sockets.join(format!("v{s}.sock")).display().to_string()
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    fn pick_op(&self, rng: &mut Rng) -> Op {
        // Mostly things that exist (else most operations would be refused).
        let existing = |rng: &mut Rng, have: Vec<usize>, all: usize| {
            if !have.is_empty() && rng.chance(85) {
                have[rng.below(have.len())]
            } else {
                rng.below(all)
            }
        };
        let net = existing(rng, self.model.nets.iter().copied().collect(), NETS);
        let (mut j, mut k) = (rng.below(NAMESPACES), rng.below(IFNAMES));
        let free: Vec<(usize, usize)> = (0..NAMESPACES)
            .flat_map(|j| (0..IFNAMES).map(move |k| (j, k)))
            .filter(|key| !self.model.ports.contains_key(key))
            .collect();
        if !free.is_empty() && rng.chance(85) {
            (j, k) = free[rng.below(free.len())];
        }
        let r = existing(rng, self.model.routers.keys().copied().collect(), ROUTERS);
        if self.model.nets.len() < 2 && rng.chance(50) {
            return Op::NetCreate(rng.below(NETS));
        }
        match rng.below(100) {
            0..=7 => Op::NetCreate(rng.below(NETS)),
            8..=11 => Op::NetRm(net),
            12..=33 => {
                let ip = match rng.below(3) {
                    0 => None,
                    1 => Some("auto".to_string()),
                    // A small set, so static addresses sometimes collide (refused).
                    _ => Some(format!("10.231.{net}.{}/24", 10 + rng.below(6))),
                };
                Op::Connect(net, j, k, ip)
            }
            34..=47 => {
                // Mostly a port that exists, on its own network.
                match self.model.ports.iter().nth(rng.below(self.model.ports.len().max(1))) {
                    Some((&(j, k), p)) if rng.chance(85) => Op::Disconnect(p.net, j, k),
                    _ => Op::Disconnect(net, j, k),
                }
            }
            48..=50 => Op::VhostConnect(net, rng.below(SOCKETS)),
            51..=54 => Op::VhostDisconnect(net, rng.below(SOCKETS)),
            55..=57 => Op::RouterCreate(r),
            58 => Op::RouterRm(r),
            59..=65 => Op::Attach(r, net),
            66..=69 => Op::Detach(r, net),
            70..=75 => Op::RouteAdd(r, format!("10.232.{}.0/24", rng.below(4)), format!("10.231.{net}.200")),
            76..=79 => Op::RouteDel(r, format!("10.232.{}.0/24", rng.below(4))),
            80..=85 => {
                let mac = format!("02:aa:00:00:00:{:02x}", rng.below(6));
                Op::Reserve(net, mac, format!("10.231.{net}.{}", 100 + rng.below(6)))
            }
            _ => {
                // A port without an address of its own (mostly).
                let dhcp: Vec<(usize, usize)> =
                    self.model.ports.iter().filter(|(_, p)| p.ip.is_none()).map(|(key, _)| *key).collect();
                match dhcp.get(rng.below(dhcp.len().max(1))) {
                    Some(&(j, k)) if rng.chance(90) => Op::Dhcp(j, k),
                    _ => Op::Dhcp(j, k),
                }
            }
        }
    }

    /// The command line of `op` (the CLI, or the DHCP client in its namespace).
    fn command(&self, op: &Op) -> Command {
        let cli = |args: Vec<String>| {
            let mut c = Command::new(TAPYARD);
            c.arg("--socket").arg(&self.d.socket).args(args);
            c
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match op {
            Op::NetCreate(i) => cli(s(&["network", "create", &net_name(*i), "--subnet", &subnet(*i)])),
            Op::NetRm(i) => cli(s(&["network", "rm", &net_name(*i), "--force"])),
            Op::Connect(i, j, k, ip) => {
                let mut a = s(&["connect", &net_name(*i), &self.ns[*j].name, "--ifname", &ifname(*k), "--json"]);
                if let Some(ip) = ip {
                    a.extend(s(&["--ip", ip]));
                }
                cli(a)
            }
            Op::Disconnect(i, j, k) => {
                cli(s(&["disconnect", &net_name(*i), &self.ns[*j].name, "--ifname", &ifname(*k)]))
            }
            Op::VhostConnect(i, v) => cli(s(&["connect", &net_name(*i), "--vhost-user", &self.socket(*v), "--json"])),
            Op::VhostDisconnect(i, v) => cli(s(&["disconnect", &net_name(*i), "--vhost-user", &self.socket(*v)])),
            Op::RouterCreate(r) => cli(s(&["router", "create", &router_name(*r)])),
            Op::RouterRm(r) => cli(s(&["router", "rm", &router_name(*r)])),
            Op::Attach(r, i) => cli(s(&["router", "attach", &router_name(*r), &net_name(*i)])),
            Op::Detach(r, i) => cli(s(&["router", "detach", &router_name(*r), &net_name(*i)])),
            Op::RouteAdd(r, p, via) => cli(s(&["route", "add", &router_name(*r), p, "via", via])),
            Op::RouteDel(r, p) => cli(s(&["route", "del", &router_name(*r), p])),
            Op::Reserve(i, mac, ip) => cli(s(&["network", "reserve", &net_name(*i), mac, ip])),
            Op::Dhcp(j, k) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.ns[*j].name, "python3", &fixture("dhcp_client.py"), &ifname(*k), "1"]);
                c
            }
        }
    }

    /// Applies an acknowledged `op` (its stdout: `out`) to the model.
    fn apply(&mut self, op: &Op, out: &str) {
        let m = &mut self.model;
        match op {
            Op::NetCreate(i) => {
                m.nets.insert(*i);
            }
            Op::NetRm(i) => m.remove_net(*i),
            Op::Connect(i, j, k, _) => {
                let p: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("connect output {out:?}: {e}"));
                self.add_port(*i, *j, *k, &p);
            }
            Op::Disconnect(_, j, k) => {
                m.ports.remove(&(*j, *k));
            }
            Op::VhostConnect(i, v) => {
                m.vhosts.insert(*v, *i);
            }
            Op::VhostDisconnect(_, v) => {
                m.vhosts.remove(v);
            }
            Op::RouterCreate(r) => {
                // (An in-flight create of a router that existed changed nothing.)
                m.routers.entry(*r).or_default();
            }
            Op::RouterRm(r) => {
                m.routers.remove(r);
            }
            Op::Attach(r, i) => {
                m.routers.get_mut(r).expect("acknowledged: the router exists").nets.insert(net_name(*i));
            }
            Op::Detach(r, i) => {
                m.routers.get_mut(r).expect("acknowledged: the router exists").nets.remove(&net_name(*i));
            }
            Op::RouteAdd(r, p, via) => {
                m.routers.get_mut(r).expect("acknowledged: the router exists").routes.insert(p.clone(), via.clone());
            }
            Op::RouteDel(r, p) => {
                m.routers.get_mut(r).expect("acknowledged: the router exists").routes.remove(p);
            }
            Op::Reserve(i, mac, ip) => {
                m.reservations.insert((*i, mac.clone()), ip.clone());
            }
            Op::Dhcp(j, k) => {
                let ip = out.split_whitespace().nth(1).expect("ACK IP SERVER").to_string();
                let p = &m.ports[&(*j, *k)];
                // A port with an address of its own is answered with it: no
                // DHCP lease of its own (the port address stays the port's).
                if p.ip.is_none() {
                    m.leases.insert((p.net, p.mac.clone()), ip);
                }
            }
        }
    }

    /// Adds the port `p` (a `port ls` entry or connect's reply) to the model.
    fn add_port(&mut self, i: usize, j: usize, k: usize, p: &Value) {
        let mac = p["mac"].as_str().unwrap().to_string();
        let ip = if p["ip_source"] == "static" { p["ip"].as_str().map(String::from) } else { None };
        // An address given to the port replaces the MAC's DHCP lease.
        if ip.is_some() {
            self.model.leases.remove(&(i, mac.clone()));
        }
        self.model.macs.insert(mac.clone());
        self.model.ports.insert((j, k), PortM { net: i, mac, ip, ifindex: None });
    }

    /// After a restart that cut `op` short: the model takes whichever outcome
    /// the daemon shows for the operation's own object (before or after);
    /// the full check that follows finds anything half-made.
    fn resolve(&mut self, op: &Op, dhcp_out: &str) {
        let nets = self.d.json(&["network", "ls"]);
        let has_net = |i: usize| nets.as_array().unwrap().iter().any(|n| n["name"] == net_name(i));
        let ports = self.d.json(&["port", "ls"]);
        let tap = |j: usize, k: usize| {
            ports
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["netns"] == self.ns[j].name && p["ifname"] == ifname(k))
                .cloned()
        };
        // The network vhost-user socket v is a port of, if any.
        let vhost = |v: usize| {
            ports
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["vhost"]["socket"] == self.socket(v))
                .map(|p| p["network"].clone())
        };
        let routers = self.d.json(&["router", "ls"]);
        let router = |r: usize| routers.as_array().unwrap().iter().find(|x| x["name"] == router_name(r)).cloned();
        let done = match op {
            Op::NetCreate(i) => has_net(*i),
            Op::NetRm(i) => !has_net(*i),
            Op::Connect(i, j, k, _) => match tap(*j, *k) {
                Some(p) if !self.model.ports.contains_key(&(*j, *k)) => {
                    self.add_port(*i, *j, *k, &p);
                    self.count("unknown: done");
                    return;
                }
                _ => false,
            },
            Op::Disconnect(_, j, k) => tap(*j, *k).is_none(),
            Op::VhostConnect(i, v) => vhost(*v).is_some_and(|n| n == net_name(*i).as_str()),
            Op::VhostDisconnect(_, v) => vhost(*v).is_none(),
            Op::RouterCreate(r) => router(*r).is_some(),
            Op::RouterRm(r) => router(*r).is_none(),
            Op::Attach(r, i) | Op::Detach(r, i) => {
                let on =
                    router(*r).is_some_and(|x| x["networks"].as_array().unwrap().iter().any(|n| *n == net_name(*i)));
                on == matches!(op, Op::Attach(..))
            }
            Op::RouteAdd(r, p, via) => router(*r).is_some_and(|x| {
                x["routes"].as_array().unwrap().iter().any(|rt| rt["prefix"] == p.as_str() && rt["via"] == via.as_str())
            }),
            Op::RouteDel(r, p) => {
                router(*r).is_some_and(|x| !x["routes"].as_array().unwrap().iter().any(|rt| rt["prefix"] == p.as_str()))
            }
            Op::Reserve(i, mac, ip) => {
                has_net(*i) && {
                    let n = self.d.json(&["network", "inspect", &net_name(*i)]);
                    n["reservations"][mac.as_str()] == ip.as_str()
                }
            }
            Op::Dhcp(j, k) => {
                // Acknowledged to the client before the kill: it must be there.
                if dhcp_out.starts_with("ACK") {
                    true
                } else if let Some(p) = self.model.ports.get(&(*j, *k)).filter(|p| p.ip.is_none()) {
                    let (net, mac) = (p.net, p.mac.clone());
                    let leases = self.d.json(&["lease", "ls"]);
                    let bound =
                        leases.as_array().unwrap().iter().find(|l| {
                            l["network"] == net_name(net) && l["mac"] == mac.as_str() && l["state"] == "bound"
                        });
                    if let Some(l) = bound {
                        self.model.leases.insert((net, mac), l["ip"].as_str().unwrap().to_string());
                    }
                    self.count(if bound.is_some() { "unknown: done" } else { "unknown: not done" });
                    return;
                } else {
                    false
                }
            }
        };
        self.count(if done { "unknown: done" } else { "unknown: not done" });
        if done {
            let out = if matches!(op, Op::Dhcp(..)) { dhcp_out } else { "" };
            match op {
                // Nothing to do on a router that does not exist.
                Op::Attach(r, _) | Op::Detach(r, _) | Op::RouteAdd(r, ..) | Op::RouteDel(r, _)
                    if !self.model.routers.contains_key(r) => {}
                _ => self.apply(op, out),
            }
        }
    }

    /// What the daemon shows must be the model: networks, ports, routers.
    fn check_light(&self, when: &str) {
        let nets: BTreeSet<String> = self
            .d
            .json(&["network", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().into())
            .collect();
        let mut want: BTreeSet<String> = self.model.nets.iter().map(|i| net_name(*i)).collect();
        want.insert("probe".into());
        assert_eq!(nets, want, "networks {when}");
        let ports = self.d.json(&["port", "ls"]);
        let mut taps = BTreeMap::new();
        let mut vhosts = BTreeMap::new();
        for p in ports.as_array().unwrap() {
            if p["network"] == "probe" {
                continue;
            }
            let net: usize = p["network"].as_str().unwrap()[1..].parse().unwrap();
            if let Some(s) = p["vhost"]["socket"].as_str() {
                vhosts.insert(s.to_string(), net);
                continue;
            }
            let j = self.ns.iter().position(|n| p["netns"] == n.name.as_str()).expect("a namespace of the test");
            let k: usize = p["ifname"].as_str().unwrap()[1..].parse().unwrap();
            let ip = if p["ip_source"] == "static" { p["ip"].as_str().map(String::from) } else { None };
            taps.insert((j, k), (net, p["mac"].as_str().unwrap().to_string(), ip));
        }
        let want_taps: BTreeMap<_, _> =
            self.model.ports.iter().map(|(key, p)| (*key, (p.net, p.mac.clone(), p.ip.clone()))).collect();
        assert_eq!(taps, want_taps, "TAP ports {when}");
        let want_vhosts: BTreeMap<_, _> = self.model.vhosts.iter().map(|(v, n)| (self.socket(*v), *n)).collect();
        assert_eq!(vhosts, want_vhosts, "vhost-user ports {when}");
        let mut routers = BTreeMap::new();
        for r in self.d.json(&["router", "ls"]).as_array().unwrap() {
            let idx: usize = r["name"].as_str().unwrap()[1..].parse().unwrap();
            let nets = r["networks"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
            let routes = r["routes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rt| !rt["via"].is_null())
                .map(|rt| (rt["prefix"].as_str().unwrap().to_string(), rt["via"].as_str().unwrap().to_string()))
                .collect();
            routers.insert(idx, RouterM { nets, routes });
        }
        assert_eq!(routers, self.model.routers, "routers {when}");
    }

    /// Everything: the light check, reservations, leases, the namespaces'
    /// interfaces, the host, socket files, traffic. The interfaces of
    /// ports seen before keep their ifindex, `except` those an operation
    /// cut short may have re-created.
    fn check_full(&mut self, when: &str, except: &BTreeSet<(usize, usize)>) {
        self.check_light(when);
        let log = || self.d.log();
        // Reservations.
        for i in &self.model.nets {
            let n = self.d.json(&["network", "inspect", &net_name(*i)]);
            let got: BTreeMap<String, String> = n["reservations"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(m, ip)| (m.clone(), ip.as_str().unwrap().to_string()))
                .collect();
            let want: BTreeMap<String, String> = self
                .model
                .reservations
                .iter()
                .filter(|((n, _), _)| n == i)
                .map(|((_, m), ip)| (m.clone(), ip.clone()))
                .collect();
            assert_eq!(got, want, "reservations of {} {when}", net_name(*i));
        }
        // Leases: every acknowledged DHCP lease, every port address, no other port address.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let leases = self.d.json(&["lease", "ls"]);
        let leases = leases.as_array().unwrap();
        let find = |net: usize, mac: &str| {
            leases.iter().find(|l| l["network"] == net_name(net) && l["mac"] == mac && l["client_id"].is_null())
        };
        for ((net, mac), ip) in &self.model.leases {
            let l = find(*net, mac).unwrap_or_else(|| panic!("DHCP lease {mac} {ip} on n{net} lost {when}"));
            assert!(l["ip"] == ip.as_str() && l["state"] == "bound", "DHCP lease {mac} {ip} on n{net} {when}: {l}");
        }
        let mut port_addrs = BTreeSet::new();
        for p in self.model.ports.values() {
            if let Some(ip) = &p.ip {
                let addr = ip.split('/').next().unwrap();
                let l = find(p.net, &p.mac).unwrap_or_else(|| panic!("port address {ip} of {} not held {when}", p.mac));
                assert!(
                    l["ip"] == addr && l["expires"].as_u64().unwrap() > now + FAR,
                    "port address {ip} of {} {when}: {l}\n{}",
                    p.mac,
                    log()
                );
                port_addrs.insert((net_name(p.net), p.mac.clone()));
            }
        }
        for l in leases {
            if l["network"] != "probe" && l["expires"].as_u64().unwrap() > now + FAR {
                let key = (l["network"].as_str().unwrap().to_string(), l["mac"].as_str().unwrap().to_string());
                assert!(port_addrs.contains(&key), "a port address without its port {when}: {l}\n{}", log());
            }
        }
        // The namespaces hold exactly the model's interfaces.
        for (j, ns) in self.ns.iter().enumerate() {
            let links = ns.ip_json(&["addr", "show"]);
            let mut seen = BTreeMap::new();
            for l in links.as_array().unwrap() {
                let name = l["ifname"].as_str().unwrap();
                if name == "lo" {
                    continue;
                }
                let k: usize = name.strip_prefix('e').and_then(|k| k.parse().ok()).expect("an interface of ours");
                let addrs: BTreeSet<String> = inet_addrs(l).into_iter().collect();
                seen.insert(k, (l["address"].as_str().unwrap().to_string(), addrs, l["ifindex"].as_u64().unwrap()));
            }
            let want: BTreeSet<usize> = self.model.ports.keys().filter(|(jj, _)| *jj == j).map(|(_, k)| *k).collect();
            assert_eq!(
                seen.keys().copied().collect::<BTreeSet<_>>(),
                want,
                "interfaces in namespace {j} {when} (orphan or missing TAP)\n{}",
                log()
            );
            for (k, (mac, addrs, ifindex)) in seen {
                let p = self.model.ports.get_mut(&(j, k)).unwrap();
                assert_eq!(mac, p.mac, "MAC of e{k} in namespace {j} {when}");
                if let Some(ip) = &p.ip {
                    assert!(addrs.contains(ip), "e{k} in namespace {j} lost {ip} {when}: {addrs:?}");
                }
                match p.ifindex {
                    Some(old) if !except.contains(&(j, k)) => {
                        assert_eq!(old, ifindex, "e{k} in namespace {j} was re-created {when}\n{}", self.d.log())
                    }
                    _ => p.ifindex = Some(ifindex),
                }
            }
        }
        // None of the ports' MACs in the host.
        let host = Command::new("ip").args(["-j", "link", "show"]).output().unwrap();
        let host: Value = serde_json::from_slice(&host.stdout).unwrap();
        for l in host.as_array().unwrap() {
            let mac = l["address"].as_str().unwrap_or_default();
            assert!(!self.model.macs.contains(mac), "a port's interface in the host namespace {when}: {l}");
        }
        // Socket files only where vhost-user ports are.
        let files: BTreeSet<String> =
            std::fs::read_dir(&self.sockets).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
        let want: BTreeSet<String> = self.model.vhosts.keys().map(|v| self.socket(*v)).collect();
        assert_eq!(files, want, "vhost-user socket files {when}");
        // Traffic.
        assert!(self.probe.0.reaches("10.231.9.3"), "probe ports cannot reach each other {when}\n{}", self.d.log());
        if let Some((a, b)) = self.ping_pair() {
            let (ja, pa) = a;
            let (jb, pb) = b;
            let to = pb.ip.as_deref().unwrap().split('/').next().unwrap().to_string();
            // The address may have been another MAC's before (auto addresses are reused).
            let _ = Command::new("ip").args(["-n", &self.ns[ja].name, "neigh", "flush", "all"]).status();
            assert!(
                self.ns[ja].reaches(&to),
                "{} ({}) cannot reach {to} ({}) on n{} {when}\n{}",
                self.ns[ja].name,
                pa.mac,
                pb.mac,
                pa.net,
                self.d.log()
            );
            let _ = jb;
        }
    }

    /// Two ports with addresses on one network in different namespaces,
    /// each the only interface of its namespace on that network.
    fn ping_pair(&self) -> Option<((usize, PortM), (usize, PortM))> {
        let alone =
            |j: usize, net: usize| self.model.ports.iter().filter(|((jj, _), p)| *jj == j && p.net == net).count() == 1;
        let with_ip: Vec<(usize, &PortM)> = self
            .model
            .ports
            .iter()
            .filter(|((j, _), p)| p.ip.is_some() && alone(*j, p.net))
            .map(|((j, _), p)| (*j, p))
            .collect();
        for (ja, a) in &with_ip {
            for (jb, b) in &with_ip {
                if ja != jb && a.net == b.net {
                    return Some(((*ja, (*a).clone()), (*jb, (*b).clone())));
                }
            }
        }
        None
    }
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn random_operations_and_kills_lose_nothing_acknowledged_and_leave_nothing_half_made() {
    if !net_admin() {
        return;
    }
    need("python3", "python3");
    let seed = std::env::var("TAPYARD_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    let ops = env_num("TAPYARD_CRASH_OPS", 100) as usize;
    let kills = (env_num("TAPYARD_CRASH_KILLS", 10) as usize).min(ops);
    eprintln!("crash: seed {seed} (TAPYARD_CRASH_SEED={seed} replays), {ops} operations, {kills} kills");
    let mut rng = Rng(seed);
    // Which operations end in a kill (half of them while in flight), and a
    // fifth as many clean restarts (SIGTERM) after others.
    let mut kill_at = BTreeMap::new();
    while kill_at.len() < kills {
        kill_at.insert(rng.below(ops), rng.chance(50));
    }
    let mut clean_at = BTreeSet::new();
    while clean_at.len() < kills.div_ceil(5).min(ops - kills) {
        let i = rng.below(ops);
        if !kill_at.contains_key(&i) {
            clean_at.insert(i);
        }
    }

    let d = Daemon::start("crash");
    let sockets = d.dir.join("vhost-sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    let ns: Vec<Netns> = (0..NAMESPACES).map(|j| Netns::new(&format!("crash{j}"))).collect();
    let probe = (Netns::new("crashpa"), Netns::new("crashpb"));
    d.ok(&["network", "create", "probe", "--subnet", "10.231.9.0/24"]);
    d.ok(&["connect", "probe", &probe.0.name, "--ip", "10.231.9.2/24"]);
    d.ok(&["connect", "probe", &probe.1.name, "--ip", "10.231.9.3/24"]);
    let mut w = World { d, ns, probe, sockets, model: Model::default(), stats: BTreeMap::new() };
    let started = Instant::now();

    for n in 0..ops {
        let op = w.pick_op(&mut rng);
        let mut cmd = w.command(&op);
        let when = format!("after operation {n} {op:?} (seed {seed})");
        match kill_at.get(&n) {
            Some(true) => {
                // Kill while the operation is in flight.
                let child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
                let delay = if matches!(op, Op::Dhcp(..)) { 20_000 + rng.below(120_000) } else { rng.below(30_000) };
                std::thread::sleep(Duration::from_micros(delay as u64));
                w.d.signal("KILL");
                w.count("kills in flight");
                // Restarted before the client is waited for: a DHCP client
                // may get its answer from the new daemon.
                w.d.spawn();
                let out = child.wait_with_output().unwrap();
                let out = String::from_utf8_lossy(&out.stdout).to_string();
                if std::env::var_os("TAPYARD_CRASH_VERBOSE").is_some() {
                    eprintln!("{n} {op:?}: killed in flight after {delay} µs: {}", out.trim());
                }
                let except: BTreeSet<(usize, usize)> = match &op {
                    Op::Connect(_, j, k, _) | Op::Disconnect(_, j, k) => [(*j, *k)].into(),
                    Op::NetRm(i) => w.model.ports.iter().filter(|(_, p)| p.net == *i).map(|(key, _)| *key).collect(),
                    _ => BTreeSet::new(),
                };
                w.resolve(&op, &out);
                w.check_full(&format!("{when}, killed in flight"), &except);
            }
            _ => {
                let out = cmd.output().unwrap();
                if out.status.success() {
                    w.count("acknowledged");
                    w.apply(&op, &String::from_utf8_lossy(&out.stdout));
                } else {
                    w.count("refused");
                }
                if std::env::var_os("TAPYARD_CRASH_VERBOSE").is_some() {
                    eprintln!("{n} {op:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
                }
                w.check_light(&when);
                if kill_at.contains_key(&n) || clean_at.contains(&n) {
                    let clean = clean_at.contains(&n);
                    w.d.signal(if clean { "TERM" } else { "KILL" });
                    w.count(if clean { "clean restarts" } else { "kills between operations" });
                    w.d.spawn();
                    w.check_full(&format!("{when}, restarted"), &BTreeSet::new());
                } else if n % 25 == 24 {
                    w.check_full(&when, &BTreeSet::new());
                }
            }
        }
    }
    w.check_full("at the end", &BTreeSet::new());
    eprintln!(
        "crash: {ops} operations, {:?}, in {:.1} s; final model: {} networks, {} TAP ports, {} vhost-user ports, {} routers, {} leases",
        w.stats,
        started.elapsed().as_secs_f64(),
        w.model.nets.len(),
        w.model.ports.len(),
        w.model.vhosts.len(),
        w.model.routers.len(),
        w.model.leases.len()
    );
}
