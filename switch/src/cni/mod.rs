//! `tapyard-cni`: a CNI plugin (specification 1.0.0 and 1.1.0,
//! <https://github.com/containernetworking/cni/blob/main/SPEC.md>) that
//! attaches a container's network namespace to a tapyard network through
//! the daemon's control socket. This module owns the plugin's side of the
//! protocol: the environment and configuration it reads, the result and
//! error JSON it prints, and the mapping of ADD, DEL, CHECK, VERSION,
//! STATUS and GC onto control requests. The binary (`src/bin/tapyard-cni.rs`)
//! only calls [`main`]. Documented for users in docs/cni.md.
//!
//! Ports made here carry the container id as their `owner` (control
//! protocol, `connect`), which is how DEL and GC find them again, even
//! after the namespace is gone.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tapyard_ipam::Ipv4Net;

use crate::cli::client::{Client, ClientError};
use crate::control::netns::link_state;
use crate::control::proto::{ErrorKind, NetworkCreate, NetworkInfo, PortInfo, Request};

/// The versions this plugin speaks (SPEC.md "Version"); results carry the
/// configuration's version, which must be one of these.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The spec's well-known error codes (SPEC.md "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now (SPEC.md 1.1 "STATUS").
    pub const NOT_AVAILABLE: u32 = 50;
    pub const OTHER: u32 = 999;
}

/// An error as the spec prints it on stdout: `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    #[serde(rename = "cniVersion", default, skip_serializing_if = "String::is_empty")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError { cni_version: String::new(), code, msg: msg.into(), details: String::new() }
    }
    fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }
}

impl From<ClientError> for CniError {
    fn from(e: ClientError) -> CniError {
        match &e {
            // The daemon may be starting: the runtime may retry (code 11).
            ClientError::Connect { .. } => CniError::new(code::TRY_LATER, e.to_string()),
            ClientError::Io { .. } => CniError::new(code::IO, e.to_string()),
            ClientError::Api(a) if a.kind == ErrorKind::BadRequest => {
                CniError::new(code::INVALID_CONFIG, a.message.clone())
            }
            _ => CniError::new(code::OTHER, e.to_string()),
        }
    }
}

type Res<T> = Result<T, CniError>;

/// The CNI_* variables (SPEC.md "Parameters").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Env {
    /// From the process environment.
    pub fn from_process() -> Env {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Env {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
            path: v("CNI_PATH"),
        }
    }

    fn required(&self, what: &str, v: &str) -> Res<()> {
        if v.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, format!("{what} is required for {}", self.command)));
        }
        Ok(())
    }

    /// The variables ADD, DEL and CHECK need; the container id as the spec
    /// allows it (alphanumerics, `_`, `.`, `-`).
    fn check_attachment(&self, need_netns: bool) -> Res<()> {
        self.required("CNI_CONTAINERID", &self.container_id)?;
        let ok = |c: char| c.is_ascii_alphanumeric() || "_.-".contains(c);
        if !self.container_id.chars().all(ok) {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID {:?} has characters other than A-Z a-z 0-9 _ . -", self.container_id),
            ));
        }
        self.required("CNI_IFNAME", &self.ifname)?;
        if need_netns {
            self.required("CNI_NETNS", &self.netns)?;
        }
        Ok(())
    }
}

/// The network configuration on stdin (docs/cni.md). Unknown keys (a
/// runtime adds `runtimeConfig`, `args`, `capabilities`, ...) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Config {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The tapyard network [default: `name`].
    #[serde(default)]
    pub network: Option<String>,
    /// The daemon's control socket [default: as the `tapyard` CLI].
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Port security of the container's port (`connect --port-security`):
    /// false for a container that routes or spoofs on purpose [default:
    /// the network's, on for ports with an address].
    #[serde(rename = "portSecurity", default)]
    pub port_security: Option<bool>,
    /// The container's interface (`connect --kind`): "tap" or "afxdp" (a
    /// veth read through AF_XDP; the daemon must run as root) [default: tap].
    #[serde(rename = "portKind", default)]
    pub port_kind: Option<crate::control::proto::PortKind>,
    #[serde(default)]
    pub ipam: Option<Ipam>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// GC (1.1): the attachments to keep.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl Config {
    /// Decodes stdin: broken JSON is code 6 (as the reference plugins'
    /// "error unmarshall network config"), a wrong shape code 7, a version
    /// this plugin does not speak code 1.
    pub fn parse(stdin: &[u8]) -> Res<Config> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(code::DECODE, format!("error unmarshalling network config: {e}")))?;
        let c: Config = serde_json::from_value(v)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("invalid network config: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {:?}", c.cni_version),
            )
            .details(format!("tapyard-cni supports {}", SUPPORTED_VERSIONS.join(", "))));
        }
        if c.name.is_empty() {
            return Err(CniError::new(code::INVALID_CONFIG, "the network config has no \"name\""));
        }
        if let Some(i) = &c.ipam {
            if i.kind.is_empty() || i.kind.contains('/') {
                return Err(CniError::new(code::INVALID_CONFIG, format!("invalid ipam type {:?}", i.kind)));
            }
        }
        Ok(c)
    }

    fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }

    /// The IPAM plugin to delegate to; None: tapyard's own.
    fn delegate(&self) -> Option<&str> {
        self.ipam.as_ref().map(|i| i.kind.as_str()).filter(|k| *k != "tapyard")
    }

    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .or_else(|| std::env::var_os("TAPYARD_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from))
            .unwrap_or_else(crate::cli::default_socket)
    }
}

/// Runs the plugin: reads the environment and stdin, prints the result or
/// the error JSON; returns the exit status.
pub fn main() -> i32 {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let out = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(&env, &stdin),
        Err(e) => Err(CniError::new(code::IO, format!("cannot read the network config from stdin: {e}"))),
    };
    let mut stdout = std::io::stdout().lock();
    match out {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            0
        }
        Ok(None) => 0,
        Err(mut e) => {
            if e.cni_version.is_empty() {
                e.cni_version = version_of(&stdin);
            }
            let _ = writeln!(stdout, "{}", serde_json::to_string(&e).unwrap_or_default());
            1
        }
    }
}

/// The `cniVersion` of stdin if it has one this plugin speaks, else the newest.
fn version_of(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_string())
}

/// One invocation: the JSON to print on success (None: print nothing).
pub fn run(env: &Env, stdin: &[u8]) -> Res<Option<Value>> {
    match env.command.as_str() {
        // VERSION needs no valid config: runtimes send `{"cniVersion": V}`.
        "VERSION" => Ok(Some(json!({"cniVersion": version_of(stdin), "supportedVersions": SUPPORTED_VERSIONS}))),
        "ADD" => {
            env.check_attachment(true)?;
            add(env, &Config::parse(stdin)?, stdin).map(Some)
        }
        "DEL" => {
            env.check_attachment(false)?;
            del(env, &Config::parse(stdin)?, stdin).map(|_| None)
        }
        "CHECK" => {
            env.check_attachment(true)?;
            check(env, &Config::parse(stdin)?, stdin).map(|_| None)
        }
        "STATUS" => status(&Config::parse(stdin)?).map(|_| None),
        "GC" => gc(env, &Config::parse(stdin)?, stdin).map(|_| None),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, VERSION, STATUS, GC)"),
        )),
    }
}

fn client(c: &Config) -> Res<Client> {
    Ok(Client::connect(&c.socket())?)
}

/// The address, gateway, routes and DNS an attachment gets.
#[derive(Debug, Clone, PartialEq)]
struct Addressing {
    ip: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    /// The IPAM plugin's routes; none: a default route via the gateway.
    routes: Vec<Value>,
    dns: Value,
}

fn add(env: &Env, c: &Config, stdin: &[u8]) -> Res<Value> {
    let mut cl = client(c)?;
    // A delegated IPAM plugin runs first: its address decides the subnet.
    let delegated = match c.delegate() {
        Some(plugin) => Some(delegated_addressing(&exec_ipam(env, plugin, "ADD", stdin)?)?),
        None => None,
    };
    let made = (|| {
        let net = ensure_network(&mut cl, c, delegated.as_ref())?;
        let ip = match &delegated {
            Some(d) => d.ip.map(|ip| ip.to_string()),
            None if net.subnet.is_some() => Some("auto".to_string()),
            None => None,
        };
        let port: PortInfo = cl.call(&Request::Connect {
            network: c.network().to_string(),
            netns: env.netns.clone(),
            ifname: Some(env.ifname.clone()),
            mac: None,
            ip,
            offload: None,
            publish: vec![],
            owner: Some(env.container_id.clone()),
            port_security: c.port_security,
            storm_limit: None,
            kind: c.port_kind,
        })?;
        Ok::<_, CniError>((net, port))
    })();
    let (net, port) = match made {
        Ok(x) => x,
        Err(e) => {
            // SPEC.md "Delegated plugins": on failure, DEL the delegate.
            if let Some(plugin) = c.delegate() {
                let _ = exec_ipam(env, plugin, "DEL", stdin);
            }
            return Err(e);
        }
    };
    let addressing = match delegated {
        Some(d) => d,
        None => Addressing {
            ip: port.ip.as_deref().and_then(|s| s.parse().ok()),
            gateway: net.gateway.as_deref().and_then(|g| g.parse().ok()),
            routes: vec![],
            dns: dns_of(&net),
        },
    };
    Ok(result(c, env, &port, &addressing))
}

/// The network of the config, made with its subnet, gateway and MTU if
/// missing. Concurrent ADDs may race to make it: the loser finds it made.
fn ensure_network(cl: &mut Client, c: &Config, delegated: Option<&Addressing>) -> Res<NetworkInfo> {
    let name = c.network().to_string();
    match cl.call::<NetworkInfo>(&Request::NetworkInspect { name: name.clone() }) {
        Ok(n) => return Ok(n),
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let ipam = c.ipam.clone().unwrap_or_default();
    let (subnet, gateway) = match delegated {
        Some(d) => (d.ip.map(|ip| ip.trunc().to_string()), d.gateway.map(|g| g.to_string())),
        None => (ipam.subnet, ipam.gateway),
    };
    let req = NetworkCreate { name: name.clone(), subnet, gateway, mtu: c.mtu, ..Default::default() };
    match cl.call::<NetworkInfo>(&Request::NetworkCreate(req)) {
        Ok(n) => Ok(n),
        Err(ClientError::Api(e)) if e.kind == ErrorKind::Conflict => {
            Ok(cl.call::<NetworkInfo>(&Request::NetworkInspect { name })?)
        }
        Err(e) => Err(e.into()),
    }
}

fn dns_of(net: &NetworkInfo) -> Value {
    let mut d = Map::new();
    if !net.dns.is_empty() {
        d.insert("nameservers".into(), json!(net.dns));
    }
    if let Some(dom) = &net.domain {
        d.insert("domain".into(), json!(dom));
    }
    Value::Object(d)
}

/// The spec's result: `prevResult` (if chained after another plugin) with
/// this attachment appended, else a new one (SPEC.md "Success").
fn result(c: &Config, env: &Env, port: &PortInfo, a: &Addressing) -> Value {
    let mut r = match &c.prev_result {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    r.insert("cniVersion".into(), json!(c.cni_version));
    let mut list = |k: &str| match r.remove(k) {
        Some(Value::Array(v)) => v,
        _ => vec![],
    };
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    let index = interfaces.len();
    interfaces.push(json!({"name": env.ifname, "mac": port.mac, "sandbox": env.netns}));
    if let Some(ip) = a.ip {
        let mut e = json!({"interface": index, "address": ip.to_string()});
        if let Some(g) = a.gateway {
            e["gateway"] = json!(g.to_string());
        }
        ips.push(e);
    }
    if a.routes.is_empty() {
        if let Some(g) = a.gateway.filter(|_| a.ip.is_some()) {
            routes.push(json!({"dst": "0.0.0.0/0", "gw": g.to_string()}));
        }
    } else {
        routes.extend(a.routes.iter().cloned());
    }
    r.insert("interfaces".into(), Value::Array(interfaces));
    r.insert("ips".into(), Value::Array(ips));
    r.insert("routes".into(), Value::Array(routes));
    let dns = match (r.remove("dns"), &a.dns) {
        (Some(Value::Object(prev)), Value::Object(ours)) if ours.is_empty() => Value::Object(prev),
        _ => a.dns.clone(),
    };
    r.insert("dns".into(), dns);
    Value::Object(r)
}

/// The first IPv4 address of a delegated IPAM plugin's result, its
/// gateway, routes and DNS.
fn delegated_addressing(r: &Value) -> Res<Addressing> {
    let bad = |what: &str| CniError::new(code::OTHER, format!("the IPAM plugin's result {what}: {r}"));
    let ips = r.get("ips").and_then(Value::as_array).ok_or_else(|| bad("has no ips"))?;
    let first = ips
        .iter()
        .find_map(|i| {
            let a: Ipv4Net = i.get("address")?.as_str()?.parse().ok()?;
            let g = i.get("gateway").and_then(Value::as_str).and_then(|g| g.parse::<Ipv4Addr>().ok());
            Some((a, g))
        })
        .ok_or_else(|| bad("has no IPv4 address"))?;
    let routes = r.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    // The interface's default route goes via the gateway: say so in the routes.
    let routes = routes
        .into_iter()
        .map(|mut rt| {
            if rt.get("dst").and_then(Value::as_str) == Some("0.0.0.0/0") && rt.get("gw").is_none() {
                if let Some(g) = first.1 {
                    rt["gw"] = json!(g.to_string());
                }
            }
            rt
        })
        .collect();
    Ok(Addressing { ip: Some(first.0), gateway: first.1, routes, dns: r.get("dns").cloned().unwrap_or(json!({})) })
}

/// Runs IPAM plugin `plugin` from CNI_PATH with the same environment
/// (CNI_COMMAND = `command`) and stdin, as SPEC.md "Delegated plugins"
/// says; its result on success, its error (passed on) otherwise.
fn exec_ipam(env: &Env, plugin: &str, command: &str, stdin: &[u8]) -> Res<Value> {
    exec_ipam_as(env, &env.container_id, &env.ifname, plugin, command, stdin)
}

fn exec_ipam_as(env: &Env, container: &str, ifname: &str, plugin: &str, command: &str, stdin: &[u8]) -> Res<Value> {
    let path = find_plugin(&env.path, plugin)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::IO, format!("cannot run IPAM plugin {}: {e}", path.display())))?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin that exits without reading all of it is judged by its status.
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO, format!("IPAM plugin {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(serde_json::from_str::<CniError>(&text).unwrap_or_else(|_| {
            CniError::new(code::OTHER, format!("IPAM plugin {plugin} failed ({}): {}", out.status, text.trim()))
        }));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text)
        .map_err(|e| CniError::new(code::DECODE, format!("cannot decode IPAM plugin {plugin}'s result: {e}")))
}

/// `plugin` in the first CNI_PATH directory that has it.
fn find_plugin(cni_path: &str, plugin: &str) -> Res<PathBuf> {
    cni_path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(plugin)).find(|p| p.is_file()).ok_or_else(
        || CniError::new(code::INVALID_CONFIG, format!("IPAM plugin {plugin:?} not found in CNI_PATH {cni_path:?}")),
    )
}

/// The ports this plugin made for `container` on the config's network,
/// with `ifname` if given.
fn owned_ports(cl: &mut Client, c: &Config, container: Option<&str>, ifname: Option<&str>) -> Res<Vec<PortInfo>> {
    let ports: Vec<PortInfo> = match cl.call(&Request::PortLs { network: Some(c.network().to_string()) }) {
        Ok(p) => p,
        // No network: nothing of ours left.
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => vec![],
        Err(e) => return Err(e.into()),
    };
    Ok(ports
        .into_iter()
        .filter(|p| {
            p.owner.as_deref().is_some_and(|o| container.is_none_or(|c| o == c)) && ifname.is_none_or(|i| p.ifname == i)
        })
        .collect())
}

fn disconnect(cl: &mut Client, p: &PortInfo) -> Res<()> {
    let req =
        Request::Disconnect { network: p.network.clone(), netns: p.netns.clone(), ifname: Some(p.ifname.clone()) };
    match cl.call::<Value>(&req) {
        Ok(_) => Ok(()),
        // Gone meanwhile (the daemon removes ports of vanished namespaces).
        Err(ClientError::Api(e)) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// DEL: idempotent, and fine when the namespace is gone (SPEC.md "DEL").
fn del(env: &Env, c: &Config, stdin: &[u8]) -> Res<()> {
    let mut cl = client(c)?;
    for p in owned_ports(&mut cl, c, Some(&env.container_id), Some(&env.ifname))? {
        disconnect(&mut cl, &p)?;
    }
    if let Some(plugin) = c.delegate() {
        exec_ipam(env, plugin, "DEL", stdin)?;
    }
    Ok(())
}

/// CHECK: the port is known to the daemon, and the interface, its
/// addresses and the default route are as the ADD result (`prevResult`) says.
fn check(env: &Env, c: &Config, stdin: &[u8]) -> Res<()> {
    let prev = c
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs the ADD result as \"prevResult\""))?;
    let mut cl = client(c)?;
    let ours = owned_ports(&mut cl, c, Some(&env.container_id), Some(&env.ifname))?;
    if ours.is_empty() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("no attachment of container {} with {} on network {:?}", env.container_id, env.ifname, c.network()),
        ));
    }
    let other = |m: String| CniError::new(code::OTHER, m);
    let state = link_state(Path::new(&env.netns), &env.ifname)
        .map_err(|e| other(e.message))?
        .ok_or_else(|| other(format!("interface {} not found in namespace {}", env.ifname, env.netns)))?;
    let interfaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let index = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(env.ifname.as_str())
            && i.get("sandbox").and_then(Value::as_str) == Some(env.netns.as_str())
    });
    let Some(index) = index else {
        return Err(other(format!("prevResult has no interface {} in sandbox {}", env.ifname, env.netns)));
    };
    if let Some(mac) = interfaces[index].get("mac").and_then(Value::as_str) {
        let have = state.mac.map(|m| m.to_string()).unwrap_or_default();
        if !have.eq_ignore_ascii_case(mac) {
            return Err(other(format!("interface {} has MAC {have}, not {mac}", env.ifname)));
        }
    }
    if !state.up {
        return Err(other(format!("interface {} is down", env.ifname)));
    }
    let ips = prev.get("ips").and_then(Value::as_array).cloned().unwrap_or_default();
    for ip in ips.iter().filter(|i| i.get("interface").and_then(Value::as_u64) == Some(index as u64)) {
        let Some(addr) = ip.get("address").and_then(Value::as_str) else { continue };
        let Ok(want) = addr.parse::<Ipv4Net>() else { continue };
        if !state.addrs.contains(&want) {
            return Err(other(format!("Failed to match addr {addr} on interface {}", env.ifname)));
        }
    }
    let routes = prev.get("routes").and_then(Value::as_array).cloned().unwrap_or_default();
    for r in routes.iter().filter(|r| r.get("dst").and_then(Value::as_str) == Some("0.0.0.0/0")) {
        let gw = r.get("gw").and_then(Value::as_str).and_then(|g| g.parse::<Ipv4Addr>().ok());
        let ok = match gw {
            Some(g) => state.default_gateways.contains(&g),
            None => !state.default_gateways.is_empty(),
        };
        if !ok {
            return Err(other(format!(
                "Failed to match route 0.0.0.0/0{} on interface {}",
                gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                env.ifname
            )));
        }
    }
    if let Some(plugin) = c.delegate() {
        exec_ipam(env, plugin, "CHECK", stdin)?;
    }
    Ok(())
}

/// STATUS (1.1): whether ADD can work now, i.e. the daemon answers.
fn status(c: &Config) -> Res<()> {
    let mut cl = Client::connect(&c.socket()).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    cl.call::<Value>(&Request::Ping).map_err(|e| CniError::new(code::NOT_AVAILABLE, e.to_string()))?;
    Ok(())
}

/// GC (1.1): removes this plugin's attachments on the network that are
/// not in `cni.dev/valid-attachments`, releasing a delegated IPAM
/// plugin's addresses for them too.
fn gc(env: &Env, c: &Config, stdin: &[u8]) -> Res<()> {
    let valid: BTreeSet<(String, String)> = c
        .valid_attachments
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "GC needs \"cni.dev/valid-attachments\""))?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let mut cl = client(c)?;
    for p in owned_ports(&mut cl, c, None, None)? {
        let owner = p.owner.clone().unwrap_or_default();
        if valid.contains(&(owner.clone(), p.ifname.clone())) {
            continue;
        }
        disconnect(&mut cl, &p)?;
        if let Some(plugin) = c.delegate() {
            exec_ipam_as(env, &owner, &p.ifname, plugin, "DEL", stdin)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn version_lists_both_and_echoes_the_asked_version() {
        let v = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#).unwrap().unwrap();
        assert_eq!(v, json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}));
        let v = run(&env("VERSION"), b"").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        let code_of = |e: &Env, s: &[u8]| run(e, s).unwrap_err().code;
        assert_eq!(code_of(&env("ADD"), br#"{"cniVersion":"1.0.0","na"#), code::DECODE);
        assert_eq!(code_of(&env("ADD"), br#"{"cniVersion":"0.2.0","name":"n","type":"tapyard-cni"}"#), 1);
        assert_eq!(code_of(&env("ADD"), br#"{"cniVersion":"1.0.0","name":7}"#), code::INVALID_CONFIG);
        assert_eq!(code_of(&env("ADD"), br#"{"cniVersion":"1.0.0","name":""}"#), code::INVALID_CONFIG);
        let bad_ipam = br#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"../x"}}"#;
        assert_eq!(code_of(&env("ADD"), bad_ipam), code::INVALID_CONFIG);
        assert_eq!(code_of(&env("NOPE"), b"{}"), code::INVALID_ENV);
        assert_eq!(code_of(&env(""), b"{}"), code::INVALID_ENV);
        let mut e = env("ADD");
        e.netns.clear();
        assert_eq!(code_of(&e, br#"{"cniVersion":"1.0.0","name":"n"}"#), code::INVALID_ENV);
        e = env("DEL");
        e.container_id = "a/b".into();
        assert_eq!(code_of(&e, br#"{"cniVersion":"1.0.0","name":"n"}"#), code::INVALID_ENV);
        // CHECK without prevResult (no daemon needed to know).
        let e = run(&env("CHECK"), br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG, "{e:?}");
    }

    #[test]
    fn unreachable_daemon_is_try_later_and_status_unavailable() {
        let cfg = br#"{"cniVersion":"1.1.0","name":"n","socket":"/nonexistent/tapyard.sock"}"#;
        assert_eq!(run(&env("ADD"), cfg).unwrap_err().code, code::TRY_LATER);
        assert_eq!(run(&env("STATUS"), cfg).unwrap_err().code, code::NOT_AVAILABLE);
    }

    #[test]
    fn error_json_has_the_spec_keys() {
        let mut e = CniError::new(6, "bad");
        e.cni_version = "1.0.0".into();
        assert_eq!(serde_json::to_value(&e).unwrap(), json!({"cniVersion": "1.0.0", "code": 6, "msg": "bad"}));
    }

    fn port() -> PortInfo {
        serde_json::from_value(json!({"id": 1, "network": "n", "netns": "/run/netns/x", "ifname": "eth0",
            "mac": "02:00:00:00:00:01", "ip": "10.1.0.2/24", "worker": 0,
            "counters": serde_json::to_value(crate::stats::PortCounters::default()).unwrap()}))
        .unwrap()
    }

    #[test]
    fn result_has_interface_ip_route_and_appends_to_prev_result() {
        let a = Addressing {
            ip: Some("10.1.0.2/24".parse().unwrap()),
            gateway: Some("10.1.0.1".parse().unwrap()),
            routes: vec![],
            dns: json!({}),
        };
        let c = Config { cni_version: "1.0.0".into(), name: "n".into(), ..Default::default() };
        let r = result(&c, &env("ADD"), &port(), &a);
        assert_eq!(
            r,
            json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
                "ips": [{"interface": 0, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {}})
        );
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}], "ips": [],
            "dns": {"nameservers": ["10.0.0.53"]}});
        let c = Config { prev_result: Some(prev), ..c };
        let r = result(&c, &env("ADD"), &port(), &a);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["dns"]["nameservers"][0], "10.0.0.53");
    }

    #[test]
    fn delegated_result_is_read_and_default_route_gets_the_gateway() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24", "gateway": "10.9.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}});
        let a = delegated_addressing(&r).unwrap();
        assert_eq!(a.ip, Some("10.9.0.5/24".parse().unwrap()));
        assert_eq!(a.routes, vec![json!({"dst": "0.0.0.0/0", "gw": "10.9.0.1"})]);
        assert_eq!(delegated_addressing(&json!({"ips": []})).unwrap_err().code, code::OTHER);
    }

    #[test]
    fn plugins_are_found_on_cni_path_only() {
        assert_eq!(find_plugin("/nonexistent:", "host-local").unwrap_err().code, code::INVALID_CONFIG);
        let sh = find_plugin("/nonexistent:/bin", "sh").unwrap();
        assert_eq!(sh, Path::new("/bin/sh"));
    }
}
