//! Lab topology files (docs/labs.md): the TOML format, its parsing and every
//! check made before anything is created.
//!
//! This module owns the file format only: it turns text into a [`Topology`]
//! whose names, addresses and references are known to be consistent, or into
//! [`Errors`], each naming `file:line:column` and what to fix. It creates
//! nothing and talks to no daemon (the engine does); so every rejection
//! happens before `lab up` touches the host.
//!
//! Positions come from `toml::Spanned` on every key and value the checks
//! may complain about; unknown keys are refused by `deny_unknown_fields`,
//! which the TOML parser reports with their position.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use tapyard_ipam::Ipv4Net;
use toml::Spanned;

use crate::impair::{self, Direction, Distribution, ImpairPatch};

/// The longest lab name: host names are `LAB-NAME`, and a network name may
/// have 64 characters at most.
pub const MAX_LAB_NAME: usize = 24;
/// The longest host name of a network, router or namespace (the daemon's
/// limit for network names).
pub const MAX_HOST_NAME: usize = 64;

/// One problem in a topology file, where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// Every problem found in a file (all of them, not only the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<Problem>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the topology file (nothing was created):", if n == 1 { "" } else { "s" })?;
        for (i, p) in self.0.iter().enumerate() {
            if i + 1 < n {
                writeln!(f, "  {p}")?;
            } else {
                write!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

// ------------------------------------------------------------ the raw file

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<Spanned<String>>,
    #[serde(default)]
    networks: IndexMap<Spanned<String>, RawNetwork>,
    #[serde(default)]
    routers: IndexMap<Spanned<String>, RawRouter>,
    #[serde(default)]
    nodes: IndexMap<Spanned<String>, RawNode>,
    #[serde(default)]
    links: Vec<Spanned<RawLink>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    subnet: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouter {
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Spanned<String>,
    via: Option<Spanned<String>>,
    dev: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    /// An existing network namespace the node is (attached, never created
    /// or removed by the lab); absent: the lab makes `LAB-NODE`.
    netns: Option<Spanned<String>>,
    #[serde(default)]
    interfaces: Vec<Spanned<RawInterface>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    sysctls: IndexMap<Spanned<String>, Spanned<toml::Value>>,
    /// One-shot commands, run in order; each must exit 0 (containerlab's `exec`).
    #[serde(default)]
    exec: Vec<Spanned<String>>,
    /// Background processes (servers), stopped at `lab down`.
    #[serde(default)]
    commands: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    network: Spanned<String>,
    ifname: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    impair: Option<Spanned<RawImpair>>,
    port_security: Option<bool>,
    kind: Option<crate::control::proto::PortKind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImpair {
    delay: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    distribution: Option<Spanned<String>>,
    loss: Option<Spanned<String>>,
    loss_burst: Option<Spanned<f64>>,
    duplicate: Option<Spanned<String>>,
    reorder: Option<Spanned<String>>,
    corrupt: Option<Spanned<String>>,
    rate: Option<Spanned<String>>,
    burst: Option<Spanned<String>>,
    limit: Option<Spanned<u32>>,
    direction: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    endpoints: Spanned<Vec<Spanned<String>>>,
    name: Option<Spanned<String>>,
    subnet: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
}

// ------------------------------------------------------------ the checked topology

/// A checked lab: every reference resolves, every name and address is legal
/// and unique. Names are the file's; `host_*` functions give the host's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub networks: Vec<Network>,
    pub routers: Vec<Router>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// None: the daemon takes one from its default pools (or, for a link, no IPAM at all).
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub internal: bool,
    pub dns: Vec<Ipv4Addr>,
    /// Made from a `links` entry: a two-port L2 network without IPAM; its
    /// endpoints' addresses are set in the namespaces by the lab.
    pub link: Option<[String; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Router {
    pub name: String,
    pub networks: Vec<String>,
    pub routes: Vec<RouterRoute>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterRoute {
    pub prefix: Ipv4Net,
    pub via: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// An existing namespace (`netns = "..."`): attached as it is, and left
    /// in place at `lab down`; none: the lab's own `LAB-NODE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<NodeRoute>,
    pub sysctls: Vec<(String, String)>,
    pub exec: Vec<String>,
    pub commands: Vec<String>,
}

impl Node {
    /// Whether the node routes IPv4 (its sysctls turn forwarding on): a
    /// router's packets carry other hosts' source addresses, so its ports
    /// get no port security unless the file asks for it.
    pub fn forwards(&self) -> bool {
        self.sysctls.iter().any(|(k, v)| {
            matches!(k.as_str(), "net.ipv4.ip_forward" | "net.ipv4.conf.all.forwarding") && v.trim() != "0"
        })
    }

    /// The port security `connect` asks for on interface `i` of this node.
    pub fn port_security(&self, i: &Interface) -> Option<bool> {
        i.port_security.or_else(|| self.forwards().then_some(false))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRoute {
    /// `default` or a CIDR.
    pub prefix: String,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// The file's network name (a `links` entry's name for a link endpoint).
    pub network: String,
    pub ifname: String,
    pub mac: Option<String>,
    pub address: Address,
    pub impair: Option<Impair>,
    /// `port_security = true|false`; absent: the daemon's default, except
    /// on a node that forwards IPv4 (`Node::forwards`), whose port is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    /// `kind = "tap"|"afxdp"` (`connect --kind`); absent: a TAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::control::proto::PortKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    /// No address (an L2-only interface).
    None,
    /// Given to the daemon with `connect` (it sets it and the default route).
    Static { ip: Ipv4Addr, prefix: u8 },
    /// Set in the namespace by the lab (a link endpoint: its network has no IPAM).
    Manual { ip: Ipv4Addr, prefix: u8 },
    /// `connect --ip auto`: the daemon's IPAM picks one.
    Auto,
    /// A DHCP client the lab runs in the node's namespace.
    Dhcp,
}

impl Address {
    pub fn shown(&self) -> String {
        match self {
            Address::None => "-".into(),
            Address::Static { ip, prefix } | Address::Manual { ip, prefix } => format!("{ip}/{prefix}"),
            Address::Auto => "auto".into(),
            Address::Dhcp => "dhcp".into(),
        }
    }
}

/// An interface's impairments, as `port_set` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Impair {
    pub direction: Direction,
    pub patch: ImpairPatch,
}

impl Topology {
    /// True when some interface has impairments (then `lab up` needs `port_set`).
    pub fn has_impairments(&self) -> bool {
        self.nodes.iter().flat_map(|n| &n.interfaces).any(|i| i.impair.is_some())
    }

    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The namespace of `node`: its `netns`, else `LAB-node`.
    pub fn node_ns(&self, node: &Node) -> String {
        node.netns.clone().unwrap_or_else(|| self.host(&node.name))
    }

    /// The namespace of the node the file calls `name` (as [`Self::node_ns`]);
    /// `LAB-name` for a name that is no node.
    pub fn ns_of(&self, name: &str) -> String {
        self.node(name).map_or_else(|| self.host(name), |n| self.node_ns(n))
    }

    /// The host name of something the file calls `name`: `LAB-name`.
    pub fn host(&self, name: &str) -> String {
        host_name(&self.name, name)
    }
}

pub fn host_name(lab: &str, name: &str) -> String {
    format!("{lab}-{name}")
}

/// Checks a lab name given on the command line (`--prefix`) or in the file.
pub fn check_lab_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LAB_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid lab name {name:?}: 1 to {MAX_LAB_NAME} letters, digits, '-' or '_', starting with a letter or digit"
        ))
    }
}

// ------------------------------------------------------------ parsing

/// Where problems are collected while checking, with the text for positions.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.problems.push(Problem { file: self.file.to_string(), line, column, message: message.into() });
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Parses and checks a topology. `file` is shown in messages; `stem` names
/// the lab when the file has no `name`; `rename` (`--prefix`) overrides both.
pub fn parse(text: &str, file: &str, stem: &str, rename: Option<&str>) -> Result<Topology, Errors> {
    let mut cx = Ctx { file, text, problems: Vec::new() };
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            cx.at(span, hint_for_parse_error(&msg));
            return Err(Errors(cx.problems));
        }
    };
    let topo = check(&mut cx, raw, stem, rename);
    if cx.problems.is_empty() {
        Ok(topo)
    } else {
        Err(Errors(cx.problems))
    }
}

/// The parser's message, with what to do for the common cases.
fn hint_for_parse_error(msg: &str) -> String {
    if msg.starts_with("unknown field") {
        format!("{msg}: remove or rename it (docs/labs.md lists every key)")
    } else {
        msg.to_string()
    }
}

fn legal_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// Parses `a.b.c.d/p` into the address and prefix length.
fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not an address with a prefix, like 10.1.0.5/24"))?;
    let ip: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 =
        p.parse().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{p:?} is not a prefix length (0 to 32)"))?;
    Ok((ip, prefix))
}

fn parse_subnet(s: &str) -> Result<Ipv4Net, String> {
    let (ip, prefix) = parse_cidr(s)?;
    let net = Ipv4Net::new(ip, prefix).map_err(|e| e.to_string())?;
    if net.network() != ip {
        return Err(format!("{s} has host bits set: the subnet is {}", net.trunc()));
    }
    Ok(net)
}

/// Why `ip` cannot be a host's address in `net` with gateway `gw`, if it cannot.
fn host_address_problem(ip: Ipv4Addr, net: Ipv4Net, gw: Option<Ipv4Addr>) -> Option<String> {
    if !net.contains(&ip) {
        return Some(format!("{ip} is outside the subnet {net}: pick an address inside it"));
    }
    if net.prefix_len() < 31 && ip == net.network() {
        return Some(format!("{ip} is the network address of {net}: pick a host address"));
    }
    if net.prefix_len() < 31 && ip == net.broadcast() {
        return Some(format!("{ip} is the broadcast address of {net}: pick a host address"));
    }
    if gw == Some(ip) {
        return Some(format!("{ip} is the gateway of {net} (tapyard answers there): pick another address"));
    }
    None
}

/// The gateway the daemon gives a subnet: `gateway`, else the first host address.
fn gateway_of(net: Ipv4Net, gateway: Option<Ipv4Addr>) -> Ipv4Addr {
    gateway.unwrap_or_else(|| Ipv4Addr::from(u32::from(net.network()) + 1))
}

fn check_mac(s: &str) -> Result<String, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| parts.iter().map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2)).collect())
        .flatten();
    let Some(b) = bytes else {
        return Err(format!("{s:?} is not a MAC address: write six hex bytes like 02:00:00:00:00:01"));
    };
    if b[0] & 1 == 1 {
        return Err(format!(
            "{s} is a multicast MAC (the low bit of the first byte is set): use 02:... for a local unicast one"
        ));
    }
    if b.iter().all(|x| *x == 0) {
        return Err(format!("{s} is the zero MAC: pick another"));
    }
    Ok(s.to_ascii_lowercase())
}

fn check_ifname(s: &str) -> Result<(), String> {
    crate::control::netns::check_ifname(s).map_err(|e| format!("{e} (IFNAMSIZ is 16 with the final NUL)"))
}

type LinkEnd = (Spanned<String>, usize, Option<(Ipv4Addr, u8)>);

fn check(cx: &mut Ctx, raw: RawFile, stem: &str, rename: Option<&str>) -> Topology {
    // The lab's name: --prefix, else `name`, else the file's stem.
    let name = match (rename, &raw.name) {
        (Some(r), _) => r.to_string(),
        (None, Some(n)) => {
            if let Err(e) = check_lab_name(n.get_ref()) {
                cx.at(n.span(), format!("{e}; names prefix every network, router and namespace of the lab"));
            }
            n.get_ref().clone()
        }
        (None, None) => {
            if let Err(e) = check_lab_name(stem) {
                cx.at(
                    0..0,
                    format!("the file has no `name`, and its stem cannot name the lab: {e}; add name = \"...\""),
                );
            }
            stem.to_string()
        }
    };
    let mut topo = Topology { name: name.clone(), networks: vec![], routers: vec![], nodes: vec![] };
    let host_ok = |cx: &mut Ctx, what: &str, n: &Spanned<String>| {
        if !legal_name(n.get_ref()) {
            cx.at(
                n.span(),
                format!(
                    "invalid {what} name {:?}: letters, digits, '-' or '_', starting with a letter or digit",
                    n.get_ref()
                ),
            );
            return;
        }
        let host = host_name(&name, n.get_ref());
        if host.len() > MAX_HOST_NAME {
            cx.at(
                n.span(),
                format!(
                    "{what} name {:?} is too long: on the host it becomes {host:?}, over {MAX_HOST_NAME} characters",
                    n.get_ref()
                ),
            );
        }
    };

    // Networks.
    for (key, n) in &raw.networks {
        host_ok(cx, "network", key);
        let subnet = n.subnet.as_ref().and_then(|s| match parse_subnet(s.get_ref()) {
            Ok(net) if net.prefix_len() > 30 => {
                cx.at(s.span(), format!("subnet {net} is too small for a gateway and a host: use /30 or shorter"));
                None
            }
            Ok(net) => Some(net),
            Err(e) => {
                cx.at(s.span(), format!("bad subnet: {e}"));
                None
            }
        });
        let gateway = n.gateway.as_ref().and_then(|g| {
            let Ok(ip) = g.get_ref().parse::<Ipv4Addr>() else {
                cx.at(g.span(), format!("gateway {:?} is not an IPv4 address", g.get_ref()));
                return None;
            };
            match subnet {
                None if n.subnet.is_none() => {
                    cx.at(g.span(), "a gateway needs a subnet: add subnet = \"...\" to this network");
                    None
                }
                None => None,
                Some(net) => match host_address_problem(ip, net, None) {
                    Some(p) => {
                        cx.at(g.span(), format!("bad gateway: {p}"));
                        None
                    }
                    None => Some(ip),
                },
            }
        });
        if let Some(m) = &n.mtu {
            if !(576..=9000).contains(m.get_ref()) {
                cx.at(m.span(), format!("mtu {} is out of range: 576 to 9000", m.get_ref()));
            }
        }
        let mut dns = vec![];
        for d in &n.dns {
            match d.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) => dns.push(ip),
                Err(_) => cx.at(d.span(), format!("dns server {:?} is not an IPv4 address", d.get_ref())),
            }
        }
        topo.networks.push(Network {
            name: key.get_ref().clone(),
            subnet,
            gateway,
            mtu: n.mtu.as_ref().map(|m| *m.get_ref()),
            internal: n.internal,
            dns,
            link: None,
        });
    }
    // Two networks of one lab with overlapping subnets could never be routed.
    for (i, a) in topo.networks.iter().enumerate() {
        for b in &topo.networks[..i] {
            if let (Some(x), Some(y)) = (a.subnet, b.subnet) {
                if x.contains(&y.network()) || y.contains(&x.network()) {
                    let span =
                        raw.networks.get_index(i).and_then(|(_, n)| n.subnet.as_ref()).map_or(0..0, |s| s.span());
                    cx.at(
                        span,
                        format!(
                            "subnet {x} of network {:?} overlaps {y} of network {:?}: give them disjoint subnets",
                            a.name, b.name
                        ),
                    );
                }
            }
        }
    }

    // Routers.
    let mut attached: HashMap<String, String> = HashMap::new();
    for (key, r) in &raw.routers {
        host_ok(cx, "router", key);
        let mut nets = vec![];
        for n in &r.networks {
            let Some(net) = topo.network(n.get_ref()) else {
                cx.at(
                    n.span(),
                    format!(
                        "router {:?}: no network {:?} in this file; declare [networks.{}] or fix the name",
                        key.get_ref(),
                        n.get_ref(),
                        n.get_ref()
                    ),
                );
                continue;
            };
            if net.internal {
                cx.at(n.span(), format!("network {:?} is internal: it cannot be attached to a router (remove internal = true or the attachment)", n.get_ref()));
            }
            if let Some(other) = attached.insert(n.get_ref().clone(), key.get_ref().clone()) {
                if &other == key.get_ref() {
                    cx.at(n.span(), format!("network {:?} is listed twice for this router", n.get_ref()));
                } else {
                    cx.at(
                        n.span(),
                        format!(
                            "network {:?} is already attached to router {other:?}: a network has one router",
                            n.get_ref()
                        ),
                    );
                }
            }
            nets.push(n.get_ref().clone());
        }
        let mut routes = vec![];
        for rt in &r.routes {
            let rt_ref = rt.get_ref();
            if let Some(d) = &rt_ref.dev {
                cx.at(d.span(), "a router route takes prefix and via, not dev");
            }
            let prefix = match parse_subnet(rt_ref.prefix.get_ref()) {
                Ok(p) => Some(p),
                Err(e) => {
                    cx.at(rt_ref.prefix.span(), format!("bad route prefix: {e}"));
                    None
                }
            };
            let via = match &rt_ref.via {
                None => {
                    cx.at(rt.span(), "a router route needs via = \"NEXT-HOP\"");
                    None
                }
                Some(v) => match v.get_ref().parse::<Ipv4Addr>() {
                    Err(_) => {
                        cx.at(v.span(), format!("via {:?} is not an IPv4 address", v.get_ref()));
                        None
                    }
                    Ok(ip) => {
                        let on_link = nets
                            .iter()
                            .filter_map(|n| topo.network(n))
                            .any(|n| n.subnet.is_none_or(|s| s.contains(&ip)));
                        if !on_link {
                            cx.at(v.span(), format!("next hop {ip} is in none of this router's networks' subnets: pick an address of an attached network"));
                        }
                        Some(ip)
                    }
                },
            };
            if let (Some(prefix), Some(via)) = (prefix, via) {
                routes.push(RouterRoute { prefix, via });
            }
        }
        topo.routers.push(Router { name: key.get_ref().clone(), networks: nets, routes });
    }

    // Links: each a network of its own, without IPAM.
    // Each endpoint: its text (for positions), its network's index, its address.
    let mut link_ends: Vec<LinkEnd> = vec![];
    for l in &raw.links {
        let lr = l.get_ref();
        let eps = lr.endpoints.get_ref();
        if eps.len() != 2 {
            cx.at(
                lr.endpoints.span(),
                format!(
                    "a link has exactly two endpoints, like [\"r1:eth1\", \"r2:eth1\"]; this one has {}",
                    eps.len()
                ),
            );
            continue;
        }
        let mut ends: Vec<[String; 2]> = vec![];
        for e in eps {
            match e.get_ref().split_once(':') {
                Some((n, i)) if !n.is_empty() && !i.is_empty() => ends.push([n.to_string(), i.to_string()]),
                _ => cx.at(e.span(), format!("endpoint {:?} is not NODE:IFNAME, like \"r1:eth1\"", e.get_ref())),
            }
        }
        if ends.len() != 2 {
            continue;
        }
        let lname = match &lr.name {
            Some(n) => {
                host_ok(cx, "link", n);
                n.get_ref().clone()
            }
            None => format!("{}-{}-{}-{}", ends[0][0], ends[0][1], ends[1][0], ends[1][1]),
        };
        let name_span = lr.name.as_ref().map_or(l.span(), |n| n.span());
        if lr.name.is_none() && host_name(&name, &lname).len() > MAX_HOST_NAME {
            cx.at(l.span(), format!("this link's network would be called {lname:?}, too long: add name = \"...\""));
        }
        if topo.network(&lname).is_some() {
            cx.at(
                name_span,
                format!("link network {lname:?} has the name of another network: give the link another name = \"...\""),
            );
        }
        let subnet = lr.subnet.as_ref().and_then(|s| match parse_subnet(s.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                cx.at(s.span(), format!("bad link subnet: {e}"));
                None
            }
        });
        if !lr.addresses.is_empty() && lr.addresses.len() != 2 {
            cx.at(l.span(), "addresses = [A, B] gives one address per endpoint, in the order of endpoints");
        }
        if !lr.addresses.is_empty() && lr.subnet.is_none() {
            cx.at(l.span(), "a link with addresses needs its subnet = \"...\" (the addresses are checked against it)");
        }
        let mut addrs: Vec<Option<(Ipv4Addr, u8)>> = vec![None, None];
        for (k, a) in lr.addresses.iter().enumerate().take(2) {
            match parse_cidr(a.get_ref()) {
                Err(e) => cx.at(a.span(), format!("bad address: {e}")),
                Ok((ip, p)) => {
                    if let Some(net) = subnet {
                        if p != net.prefix_len() {
                            cx.at(
                                a.span(),
                                format!(
                                    "{ip}/{p} does not match the link's subnet {net}: write {ip}/{}",
                                    net.prefix_len()
                                ),
                            );
                        } else if let Some(pr) = host_address_problem(ip, net, None) {
                            cx.at(a.span(), pr);
                        }
                    }
                    addrs[k] = Some((ip, p));
                }
            }
        }
        if addrs[0].is_some() && addrs[0].map(|a| a.0) == addrs[1].map(|a| a.0) {
            cx.at(l.span(), "both endpoints of this link have the same address");
        }
        if let Some(m) = &lr.mtu {
            if !(576..=9000).contains(m.get_ref()) {
                cx.at(m.span(), format!("mtu {} is out of range: 576 to 9000", m.get_ref()));
            }
        }
        let ni = topo.networks.len();
        topo.networks.push(Network {
            name: lname,
            subnet: None,
            gateway: None,
            mtu: lr.mtu.as_ref().map(|m| *m.get_ref()),
            internal: true,
            dns: vec![],
            link: Some([eps[0].get_ref().clone(), eps[1].get_ref().clone()]),
        });
        for (k, e) in eps.iter().enumerate() {
            link_ends.push((e.clone(), ni, addrs[k]));
        }
    }

    // Nodes.
    let mut addrs_seen: HashMap<(String, Ipv4Addr), String> = HashMap::new();
    let mut macs_seen: HashMap<String, String> = HashMap::new();
    let mut netns_seen: HashMap<String, String> = HashMap::new();
    for (key, n) in &raw.nodes {
        host_ok(cx, "node", key);
        let node_name = key.get_ref().clone();
        let netns = n.netns.as_ref().map(|ns| {
            let v = ns.get_ref();
            // A name under /run/netns: one path component, as `ip netns add` takes.
            let ok = !v.is_empty()
                && v.len() <= 255
                && v != "."
                && v != ".."
                && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                cx.at(
                    ns.span(),
                    format!(
                        "netns {v:?}: a namespace name (letters, digits, '.', '_', '-'), as `ip netns ls` shows it"
                    ),
                );
            } else if let Some(other) = netns_seen.insert(v.clone(), node_name.clone()) {
                cx.at(
                    ns.span(),
                    format!("nodes {other:?} and {node_name:?} both name netns {v:?}: a namespace is one node"),
                );
            }
            v.clone()
        });
        let mut ifaces: Vec<Interface> = vec![];
        let mut ifname_spans: HashMap<String, Range<usize>> = HashMap::new();
        for (k, i) in n.interfaces.iter().enumerate() {
            let ir = i.get_ref();
            let net = topo.network(ir.network.get_ref()).cloned();
            match &net {
                None => cx.at(
                    ir.network.span(),
                    format!(
                        "node {node_name:?}: no network {:?} in this file; declare [networks.{}] or fix the name",
                        ir.network.get_ref(),
                        ir.network.get_ref()
                    ),
                ),
                Some(n) if n.link.is_some() => cx.at(
                    ir.network.span(),
                    format!(
                        "{:?} is a link: its endpoints are given in links, not in interfaces",
                        ir.network.get_ref()
                    ),
                ),
                _ => {}
            }
            let ifname = match &ir.ifname {
                Some(f) => {
                    if let Err(e) = check_ifname(f.get_ref()) {
                        cx.at(f.span(), e);
                    }
                    f.get_ref().clone()
                }
                None => format!("eth{k}"),
            };
            let ifspan = ir.ifname.as_ref().map_or(i.span(), |f| f.span());
            if ifname_spans.insert(ifname.clone(), ifspan.clone()).is_some() {
                cx.at(ifspan, format!("node {node_name:?} has two interfaces named {ifname}: give one another ifname"));
            }
            let mac = ir.mac.as_ref().and_then(|m| match check_mac(m.get_ref()) {
                Ok(mac) => {
                    if let Some(other) = macs_seen.insert(mac.clone(), format!("{node_name}:{ifname}")) {
                        cx.at(m.span(), format!("MAC {mac} is already used by {other}: MACs must be unique in a lab"));
                    }
                    Some(mac)
                }
                Err(e) => {
                    cx.at(m.span(), e);
                    None
                }
            });
            let address = match &ir.address {
                None => Address::None,
                Some(a) => match a.get_ref().as_str() {
                    "auto" => Address::Auto,
                    "dhcp" => Address::Dhcp,
                    s => match parse_cidr(s) {
                        Err(e) => {
                            cx.at(a.span(), format!("bad address: {e}; or write \"auto\" or \"dhcp\""));
                            Address::None
                        }
                        Ok((ip, p)) => {
                            match net.as_ref().map(|n| (n.subnet, n.gateway)) {
                                Some((Some(sub), gw)) => {
                                    if p != sub.prefix_len() && sub.contains(&ip) {
                                        cx.at(a.span(), format!("{ip}/{p} does not match the subnet {sub} of network {:?}: write {ip}/{}", ir.network.get_ref(), sub.prefix_len()));
                                    } else if let Some(pr) = host_address_problem(ip, sub, Some(gateway_of(sub, gw))) {
                                        cx.at(a.span(), format!("network {:?}: {pr}", ir.network.get_ref()));
                                    }
                                }
                                Some((None, _)) => cx.at(a.span(), format!("network {:?} has no subnet in this file, so a static address cannot be checked: add subnet = \"...\" to it, or use \"auto\"", ir.network.get_ref())),
                                None => {}
                            }
                            if let Some(other) =
                                addrs_seen.insert((ir.network.get_ref().clone(), ip), format!("{node_name}:{ifname}"))
                            {
                                cx.at(
                                    a.span(),
                                    format!(
                                        "address {ip} on network {:?} is already given to {other}",
                                        ir.network.get_ref()
                                    ),
                                );
                            }
                            Address::Static { ip, prefix: p }
                        }
                    },
                },
            };
            let impair = ir.impair.as_ref().and_then(|im| check_impair(cx, im));
            ifaces.push(Interface {
                network: ir.network.get_ref().clone(),
                ifname,
                mac,
                address,
                impair,
                port_security: ir.port_security,
                kind: ir.kind,
            });
        }
        // Link endpoints on this node.
        for (e, ni, addr) in
            link_ends.iter().filter(|(e, ..)| e.get_ref().split_once(':').is_some_and(|(n, _)| n == node_name))
        {
            let ifname = e.get_ref().split_once(':').map(|(_, i)| i.to_string()).unwrap_or_default();
            if let Err(err) = check_ifname(&ifname) {
                cx.at(e.span(), err);
            }
            if ifname_spans.insert(ifname.clone(), e.span()).is_some() {
                cx.at(
                    e.span(),
                    format!(
                        "node {node_name:?} already has an interface {ifname}: pick another ifname for this endpoint"
                    ),
                );
            }
            let address = match addr {
                Some((ip, prefix)) => {
                    let net = &topo.networks[*ni].name;
                    if let Some(other) = addrs_seen.insert((net.clone(), *ip), format!("{node_name}:{ifname}")) {
                        cx.at(e.span(), format!("address {ip} on link {net:?} is already given to {other}"));
                    }
                    Address::Manual { ip: *ip, prefix: *prefix }
                }
                None => Address::None,
            };
            ifaces.push(Interface {
                network: topo.networks[*ni].name.clone(),
                ifname,
                mac: None,
                address,
                impair: None,
                port_security: None,
                kind: None,
            });
        }
        // Routes of the node.
        let mut routes = vec![];
        for rt in &n.routes {
            let r = rt.get_ref();
            let p = r.prefix.get_ref();
            if p != "default" {
                if let Err(e) = parse_subnet(p) {
                    cx.at(r.prefix.span(), format!("bad route prefix: {e} (or \"default\")"));
                }
            }
            let via = r.via.as_ref().and_then(|v| match v.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    cx.at(v.span(), format!("via {:?} is not an IPv4 address", v.get_ref()));
                    None
                }
            });
            if let Some(d) = &r.dev {
                if !ifaces.iter().any(|i| &i.ifname == d.get_ref()) {
                    cx.at(d.span(), format!("node {node_name:?} has no interface {:?}", d.get_ref()));
                }
            }
            if r.via.is_none() && r.dev.is_none() {
                cx.at(rt.span(), "a node route needs via = \"NEXT-HOP\", dev = \"IFNAME\", or both");
            }
            routes.push(NodeRoute { prefix: p.clone(), via, dev: r.dev.as_ref().map(|d| d.get_ref().clone()) });
        }
        let mut sysctls = vec![];
        for (k, v) in &n.sysctls {
            let key_ok = k.get_ref().starts_with("net.")
                && k.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !k.get_ref().contains("..");
            if !key_ok {
                cx.at(
                    k.span(),
                    format!(
                        "sysctl {:?}: only net.* keys (the node's network namespace's own) may be set",
                        k.get_ref()
                    ),
                );
            }
            let val = match v.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => u8::from(*b).to_string(),
                _ => {
                    cx.at(v.span(), "a sysctl value is a string, an integer or a boolean");
                    String::new()
                }
            };
            if val.contains(['\n', '\0']) {
                cx.at(v.span(), "a sysctl value is one line");
            }
            sysctls.push((k.get_ref().clone(), val));
        }
        let mut cmds = |list: &Vec<Spanned<String>>| {
            list.iter()
                .map(|c| {
                    if c.get_ref().trim().is_empty() {
                        cx.at(c.span(), "an empty command: remove it");
                    }
                    c.get_ref().clone()
                })
                .collect::<Vec<_>>()
        };
        let exec = cmds(&n.exec);
        let commands = cmds(&n.commands);
        topo.nodes.push(Node { name: node_name, netns, interfaces: ifaces, routes, sysctls, exec, commands });
    }
    // Link endpoints naming nodes that do not exist.
    for (e, ..) in &link_ends {
        let node = e.get_ref().split_once(':').map_or("", |(n, _)| n);
        if topo.node(node).is_none() {
            cx.at(
                e.span(),
                format!("endpoint {:?}: no node {node:?} in this file; declare [nodes.{node}]", e.get_ref()),
            );
        }
    }
    let mut seen = HashSet::new();
    for (e, ..) in &link_ends {
        if !seen.insert(e.get_ref().clone()) {
            cx.at(e.span(), format!("endpoint {:?} is used by two links", e.get_ref()));
        }
    }
    topo
}

fn check_impair(cx: &mut Ctx, im: &Spanned<RawImpair>) -> Option<Impair> {
    let r = im.get_ref();
    let mut p = ImpairPatch::default();
    let mut ok = true;
    let mut take = |v: &Option<Spanned<String>>, f: &dyn Fn(&str) -> Result<u64, String>| -> Option<u64> {
        let v = v.as_ref()?;
        match f(v.get_ref()) {
            Ok(x) => Some(x),
            Err(e) => {
                cx.at(v.span(), e);
                ok = false;
                None
            }
        }
    };
    let pct = |s: &str| impair::parse_percent(s).map(u64::from);
    p.delay_us = take(&r.delay, &impair::parse_duration);
    p.jitter_us = take(&r.jitter, &impair::parse_duration);
    p.loss_ppm = take(&r.loss, &pct).map(|v| v as u32);
    p.duplicate_ppm = take(&r.duplicate, &pct).map(|v| v as u32);
    p.reorder_ppm = take(&r.reorder, &pct).map(|v| v as u32);
    p.corrupt_ppm = take(&r.corrupt, &pct).map(|v| v as u32);
    p.rate_bps = take(&r.rate, &impair::parse_rate);
    p.burst_bytes = take(&r.burst, &impair::parse_size);
    p.loss_burst = r.loss_burst.as_ref().map(|b| *b.get_ref());
    p.limit = r.limit.as_ref().map(|l| *l.get_ref());
    if let Some(d) = &r.distribution {
        p.distribution = match d.get_ref().as_str() {
            "uniform" => Some(Distribution::Uniform),
            "normal" => Some(Distribution::Normal),
            "pareto" => Some(Distribution::Pareto),
            other => {
                cx.at(d.span(), format!("distribution {other:?}: write uniform, normal or pareto"));
                ok = false;
                None
            }
        };
    }
    let direction = match r.direction.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
        None | Some(("both", _)) => Direction::Both,
        Some(("in", _)) => Direction::In,
        Some(("out", _)) => Direction::Out,
        Some((other, span)) => {
            cx.at(span, format!("direction {other:?}: write both, in or out"));
            ok = false;
            Direction::Both
        }
    };
    if !ok {
        return None;
    }
    if p.is_empty() {
        cx.at(im.span(), "an empty impair table: give at least one of delay, loss, rate, ... (docs/labs.md)");
        return None;
    }
    let mut i = impair::Impairment::default();
    if let Err(e) = p.apply(&mut i) {
        cx.at(im.span(), format!("impair: {e}"));
        return None;
    }
    Some(Impair { direction, patch: p })
}

/// Counts of what a topology makes, for progress and messages.
pub fn summary(t: &Topology) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("networks", t.networks.iter().filter(|n| n.link.is_none()).count()),
        ("links", t.networks.iter().filter(|n| n.link.is_some()).count()),
        ("routers", t.routers.len()),
        ("nodes", t.nodes.len()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Topology {
        parse(text, "t.toml", "t", None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The problems' `line:col: message` lines.
    fn bad(text: &str) -> Vec<String> {
        match parse(text, "t.toml", "t", None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(Errors(ps)) => ps.iter().map(|p| format!("{}:{}: {}", p.line, p.column, p.message)).collect(),
        }
    }

    fn has(problems: &[String], line_col: &str, words: &str) {
        assert!(
            problems.iter().any(|p| p.starts_with(line_col) && p.contains(words)),
            "no problem at {line_col} saying {words:?}; got {problems:#?}"
        );
    }

    const MINIMAL: &str = r#"[networks.front]
subnet = "10.1.0.0/24"
[networks.back]
subnet = "10.2.0.0/24"
[routers.r1]
networks = ["front", "back"]
[nodes.web]
interfaces = [{ network = "front", address = "auto" }]
[nodes.db]
interfaces = [{ network = "back", address = "10.2.0.20/24" }]
[nodes.client]
interfaces = [{ network = "front", address = "dhcp" }]
"#;

    #[test]
    fn the_issues_minimal_file_parses_as_is() {
        let t = parse(MINIMAL, "minimal.toml", "minimal", None).unwrap();
        assert_eq!(t.name, "minimal");
        assert_eq!(t.networks.len(), 2);
        assert_eq!(t.routers[0].networks, ["front", "back"]);
        let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["web", "db", "client"], "file order is kept");
        assert_eq!(t.nodes[0].interfaces[0].address, Address::Auto);
        assert_eq!(t.nodes[0].interfaces[0].ifname, "eth0");
        assert_eq!(t.nodes[1].interfaces[0].address, Address::Static { ip: "10.2.0.20".parse().unwrap(), prefix: 24 });
        assert_eq!(t.nodes[2].interfaces[0].address, Address::Dhcp);
        assert_eq!(t.host("web"), "minimal-web");
        assert!(!t.has_impairments());
    }

    #[test]
    fn the_name_key_and_prefix_name_the_lab() {
        assert_eq!(ok("name = \"demo\"\n").name, "demo");
        assert_eq!(parse("name = \"demo\"\n", "x", "x", Some("other")).unwrap().name, "other");
        has(&bad("name = \"no spaces\"\n"), "1:8", "invalid lab name");
        assert!(parse("", "x.toml", "has space", None).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_where_they_are() {
        has(&bad("[networks.a]\nsubnet = \"10.0.0.0/24\"\nsubet = 1\n"), "3:1", "unknown field `subet`");
        has(&bad("[nodes.a]\ninterfaces = [{ network = \"x\", adress = \"auto\" }]\n"), "2:", "unknown field `adress`");
        has(&bad("nodez = 1\n"), "1:1", "unknown field `nodez`");
        has(
            &bad(
                "[nodes.a]\ninterfaces = [{ network = \"n\", impair = { delay = \"1ms\", lag = 1 } }]\n[networks.n]\n",
            ),
            "2:",
            "unknown field `lag`",
        );
    }

    #[test]
    fn dangling_references_name_what_is_missing() {
        let p = bad("[routers.r]\nnetworks = [\"nope\"]\n[nodes.a]\ninterfaces = [{ network = \"gone\" }]\n");
        has(&p, "2:13", "no network \"nope\"");
        has(&p, "4:27", "no network \"gone\"");
        let p = bad("links = [{ endpoints = [\"x:eth1\", \"y:eth1\"] }]\n");
        has(&p, "1:25", "no node \"x\"");
        has(&p, "1:35", "no node \"y\"");
    }

    #[test]
    fn addresses_outside_or_on_reserved_places_are_refused() {
        let base = "[networks.n]\nsubnet = \"10.0.0.0/24\"\n[nodes.a]\n";
        for (addr, words) in [
            ("10.0.1.5/24", "outside the subnet"),
            ("10.0.0.0/24", "network address"),
            ("10.0.0.255/24", "broadcast address"),
            ("10.0.0.1/24", "gateway"),
            ("10.0.0.5/16", "does not match the subnet"),
            ("10.0.0.5", "not an address with a prefix"),
        ] {
            let p = bad(&format!("{base}interfaces = [{{ network = \"n\", address = \"{addr}\" }}]\n"));
            has(&p, "4:42", words);
        }
        // A gateway of one's own moves the reserved address.
        ok("[networks.n]\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.254\"\n[nodes.a]\ninterfaces = [{ network = \"n\", address = \"10.0.0.1/24\" }]\n");
        has(&bad("[networks.n]\nsubnet = \"10.0.0.0/24\"\ngateway = \"10.9.0.1\"\n"), "3:11", "outside the subnet");
        has(&bad("[networks.n]\nsubnet = \"10.0.0.1/24\"\n"), "2:10", "host bits set");
        has(
            &bad(&format!("{base}interfaces = [{{ network = \"n\", address = \"dhcpp\" }}]\n")),
            "4:42",
            "\"auto\" or \"dhcp\"",
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let p = bad(r#"[networks.n]
subnet = "10.0.0.0/24"
[nodes.a]
interfaces = [{ network = "n", address = "10.0.0.5/24", mac = "02:00:00:00:00:01" }, { network = "n", ifname = "eth0" }]
[nodes.b]
interfaces = [{ network = "n", address = "10.0.0.5/24", mac = "02:00:00:00:00:01" }]
"#);
        has(&p, "4:112", "two interfaces named eth0");
        has(&p, "6:42", "10.0.0.5 on network \"n\" is already given to a:eth0");
        has(&p, "6:63", "MAC 02:00:00:00:00:01 is already used by a:eth0");
        // Duplicate table keys are a TOML error, reported by the parser.
        has(&bad("[nodes.a]\n[nodes.a]\n"), "2:", "duplicate");
        let p = bad("[networks.a]\nsubnet = \"10.0.0.0/16\"\n[networks.b]\nsubnet = \"10.0.5.0/24\"\n");
        has(&p, "4:10", "overlaps");
    }

    #[test]
    fn host_names_are_checked_for_length_and_characters() {
        let long = "x".repeat(70);
        has(&bad(&format!("[networks.{long}]\n")), "1:11", "too long");
        has(&bad("[nodes.\"a b\"]\n"), "1:8", "invalid node name");
        has(
            &bad("[networks.n]\n[nodes.a]\ninterfaces = [{ network = \"n\", ifname = \"a-very-long-ifname\" }]\n"),
            "3:41",
            "IFNAMSIZ",
        );
        has(
            &bad("[networks.n]\n[nodes.a]\ninterfaces = [{ network = \"n\", ifname = \"a:b\" }]\n"),
            "3:41",
            "invalid interface name",
        );
    }

    #[test]
    fn routers_and_routes_are_checked() {
        let base = "[networks.a]\nsubnet = \"10.0.0.0/24\"\n[networks.i]\ninternal = true\n";
        has(&bad(&format!("{base}[routers.r]\nnetworks = [\"a\", \"i\"]\n")), "6:18", "internal");
        has(
            &bad(&format!("{base}[routers.r]\nnetworks = [\"a\"]\n[routers.s]\nnetworks = [\"a\"]\n")),
            "8:13",
            "already attached to router \"r\"",
        );
        has(&bad(&format!("{base}[routers.r]\nnetworks = [\"a\"]\nroutes = [{{ prefix = \"10.9.0.0/16\", via = \"10.1.0.9\" }}]\n")), "7:43", "none of this router's networks");
        let t = ok(&format!(
            "{base}[routers.r]\nnetworks = [\"a\"]\nroutes = [{{ prefix = \"10.9.0.0/16\", via = \"10.0.0.9\" }}]\n"
        ));
        assert_eq!(t.routers[0].routes[0].via, Ipv4Addr::new(10, 0, 0, 9));
        has(&bad("[nodes.a]\nroutes = [{ prefix = \"default\", dev = \"eth9\" }]\n"), "2:39", "no interface \"eth9\"");
        has(&bad("[nodes.a]\nsysctls = { \"kernel.panic\" = 1 }\n"), "2:13", "only net.*");
        let t =
            ok("[nodes.a]\nsysctls = { \"net.ipv4.ip_forward\" = 1 }\nexec = [\"true\"]\ncommands = [\"sleep 100\"]\n");
        assert_eq!(t.nodes[0].sysctls, [("net.ipv4.ip_forward".to_string(), "1".to_string())]);
    }

    #[test]
    fn a_node_may_name_an_existing_namespace_once() {
        let t = ok("name = \"l\"\n[nodes.a]\nnetns = \"blue\"\n[nodes.b]\n");
        assert_eq!(t.nodes[0].netns.as_deref(), Some("blue"));
        assert_eq!(t.node_ns(&t.nodes[0]), "blue");
        assert_eq!(t.ns_of("b"), "l-b");
        has(&bad("[nodes.a]\nnetns = \"../x\"\n"), "2:9", "a namespace name");
        has(&bad("[nodes.a]\nnetns = \"\"\n"), "2:9", "a namespace name");
        has(&bad("[nodes.a]\nnetns = \"x\"\n[nodes.b]\nnetns = \"x\"\n"), "4:9", "both name netns \"x\"");
    }

    #[test]
    fn routers_get_no_port_security_unless_the_file_asks() {
        let t = ok(r#"[networks.a]
[nodes.h]
interfaces = [{ network = "a" }, { network = "a", port_security = false }]
[nodes.r]
sysctls = { "net.ipv4.ip_forward" = 1 }
interfaces = [{ network = "a" }, { network = "a", port_security = true }]
"#);
        let (h, r) = (&t.nodes[0], &t.nodes[1]);
        assert!(!h.forwards() && r.forwards());
        assert_eq!(h.port_security(&h.interfaces[0]), None, "the daemon's default");
        assert_eq!(h.port_security(&h.interfaces[1]), Some(false));
        assert_eq!(r.port_security(&r.interfaces[0]), Some(false), "a router forwards others' packets");
        assert_eq!(r.port_security(&r.interfaces[1]), Some(true));
    }

    #[test]
    fn links_become_two_port_networks_with_their_endpoints_addresses() {
        let t = ok(r#"[nodes.r1]
[nodes.r2]
[[links]]
endpoints = ["r1:eth1", "r2:eth1"]
subnet = "10.0.12.0/30"
addresses = ["10.0.12.1/30", "10.0.12.2/30"]
[[links]]
endpoints = ["r1:eth2", "r2:eth2"]
"#);
        assert_eq!(t.networks.len(), 2);
        assert_eq!(t.networks[0].name, "r1-eth1-r2-eth1");
        assert_eq!(t.networks[0].link.as_ref().unwrap()[1], "r2:eth1");
        assert_eq!(t.nodes[0].interfaces.len(), 2);
        assert_eq!(t.nodes[1].interfaces[0].address, Address::Manual { ip: "10.0.12.2".parse().unwrap(), prefix: 30 });
        assert_eq!(t.nodes[1].interfaces[1].address, Address::None);
        let p = bad("links = [{ endpoints = [\"a:e1\", \"b:e1\"], subnet = \"10.0.0.0/30\", addresses = [\"10.0.0.1/30\", \"10.0.0.3/30\"] }]\n[nodes.a]\n[nodes.b]\n");
        has(&p, "1:", "broadcast");
        has(&bad("links = [{ endpoints = [\"a:e1\"] }]\n[nodes.a]\n"), "1:24", "exactly two endpoints");
        has(&bad("links = [{ endpoints = [\"a\", \"a:e2\"] }]\n[nodes.a]\n"), "1:25", "not NODE:IFNAME");
    }

    #[test]
    fn impairments_are_parsed_with_the_port_set_units() {
        let t = ok(r#"[networks.wan]
[nodes.a]
interfaces = [{ network = "wan", impair = { delay = "20ms", jitter = "5ms", distribution = "normal", loss = "1%", loss_burst = 3.0, duplicate = "0.1%", reorder = "1%", corrupt = "0.1%", rate = "10mbit", burst = "32kb", limit = 1000, direction = "out" } }]
"#);
        let i = t.nodes[0].interfaces[0].impair.unwrap();
        assert_eq!(i.direction, Direction::Out);
        assert_eq!(i.patch.delay_us, Some(20_000));
        assert_eq!(i.patch.jitter_us, Some(5_000));
        assert_eq!(i.patch.distribution, Some(Distribution::Normal));
        assert_eq!(i.patch.loss_ppm, Some(10_000));
        assert_eq!(i.patch.rate_bps, Some(10_000_000));
        assert_eq!(i.patch.burst_bytes, Some(32 * 1024));
        assert_eq!(i.patch.limit, Some(1000));
        assert!(t.has_impairments());
        let base = "[networks.wan]\n[nodes.a]\ninterfaces = [{ network = \"wan\", impair = ";
        has(&bad(&format!("{base}{{ delay = \"20\" }} }}]\n")), "3:53", "not a time");
        has(&bad(&format!("{base}{{ loss = \"1\" }} }}]\n")), "3:52", "not a percentage");
        has(&bad(&format!("{base}{{ rate = \"fast\" }} }}]\n")), "3:52", "not a rate");
        has(&bad(&format!("{base}{{ direction = \"up\" }} }}]\n")), "3:57", "both, in or out");
        has(&bad(&format!("{base}{{ reorder = \"1%\" }} }}]\n")), "3:43", "reorder needs a delay");
    }
}
