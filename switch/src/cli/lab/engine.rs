//! The lab engine: builds a checked [`Topology`] through the daemon (networks,
//! routers, ports) and on the host (namespaces, in-namespace settings, DHCP
//! clients, commands), records what it made, and removes exactly that.
//!
//! Ownership: the record file `RUNTIME_DIR/lab-NAME.json` lists everything
//! a lab made; it is written before anything is created (every name is
//! checked to be free first, so the names in it are the lab's), and again
//! whenever a process is started. `lab down` and a failed `lab up` both go
//! through [`teardown`], which is idempotent: what is already gone is skipped.
//!
//! Speed: nodes are built by a pool of threads, each with its own control
//! connection (the daemon serves clients concurrently).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::topology::{Address, Node, Topology};
use crate::cli::client::{self, Client};
use crate::control::proto::{NetworkCreate, NetworkInfo, PingInfo, PortInfo, PortSet, Request, RouterInfo};

/// Threads building nodes at once. More than the cores: most of a node's
/// time is spent waiting for `ip` and the daemon.
const BUILDERS: usize = 8;
/// How long a DHCP interface may take to get its lease.
const DHCP_DEADLINE: Duration = Duration::from_secs(30);
/// A background command that exits non-zero within this time of its start
/// failed to start (a missing program, a bad option): `lab up` fails.
const START_WINDOW: Duration = Duration::from_millis(300);

/// A process the lab started and stops at `lab down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proc {
    pub node: String,
    /// What it is: `dhcp eth0` or the command line.
    pub what: String,
    pub pid: u32,
    /// Its start time (/proc/PID/stat field 22): a pid reused by another
    /// process after ours exited is never signalled.
    pub start_time: u64,
}

/// Everything a lab made, and what `lab status`, `exec` and `graph` need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// The topology file, absolute; none for the embedded default lab.
    pub file: Option<String>,
    pub topology: Topology,
    /// The `lab up` that stays in the foreground (the default lab), to tell
    /// it to exit when `lab down` runs elsewhere.
    pub foreground_pid: Option<u32>,
    /// The daemon `lab up` started, if it started one, with its state
    /// directory and log (removed when it is stopped).
    pub daemon_pid: Option<u32>,
    #[serde(default)]
    pub daemon_files: Vec<PathBuf>,
    /// The lab's own files: logs, the DHCP hook, leases.
    pub state_dir: PathBuf,
    pub processes: Vec<Proc>,
    /// Addresses as configured (`node:ifname` → CIDR), for auto and DHCP too.
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
    /// Gateways of the networks (file name → address), as the daemon chose them.
    #[serde(default)]
    pub gateways: BTreeMap<String, String>,
    #[serde(default)]
    pub subnets: BTreeMap<String, String>,
}

impl Record {
    pub fn host(&self, name: &str) -> String {
        self.topology.host(name)
    }

    /// The namespace of the node the file calls `name`.
    pub fn ns_of(&self, name: &str) -> String {
        self.topology.ns_of(name)
    }
}

/// Where a lab's record lives: beside the daemon's socket.
pub fn runtime_dir(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/tmp")).to_path_buf()
}

pub fn record_path(socket: &Path, name: &str) -> PathBuf {
    runtime_dir(socket).join(format!("lab-{name}.json"))
}

pub fn read_record(socket: &Path, name: &str) -> anyhow::Result<Option<Record>> {
    let path = record_path(socket, name);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .with_context(|| format!("{} is not a lab record this tapyard can read (remove it by hand)", path.display()))
}

/// The labs that have a record beside `socket`, by name.
pub fn list_labs(socket: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(runtime_dir(socket))
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            Some(n.strip_prefix("lab-")?.strip_suffix(".json")?.to_string())
        })
        .collect();
    names.sort();
    names
}

fn save(socket: &Path, rec: &Record) -> anyhow::Result<()> {
    let path = record_path(socket, &rec.name);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(rec)?).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
}

// ------------------------------------------------------------ the host side

/// Namespaces and commands in them: with `ip netns` as root; through
/// `tapyard netns`/`exec` (which enter a rootless daemon's namespaces)
/// otherwise.
#[derive(Clone)]
pub struct Host {
    exe: PathBuf,
    socket: PathBuf,
    root: bool,
}

impl Host {
    pub fn new(socket: &Path) -> anyhow::Result<Host> {
        Ok(Host {
            exe: std::env::current_exe().context("cannot find the tapyard executable")?,
            socket: socket.to_path_buf(),
            root: crate::cli::euid() == Some(0),
        })
    }

    fn tapyard(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--socket").arg(&self.socket);
        c
    }

    fn netns_add(&self, name: &str) -> anyhow::Result<()> {
        if self.root {
            run(Command::new("ip").args(["netns", "add", name]))
        } else {
            run(self.tapyard().args(["netns", "add", name]))
        }
    }

    fn netns_del(&self, name: &str) {
        let mut c = if self.root { Command::new("ip") } else { self.tapyard() };
        let _ = c.args(["netns", "del", name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }

    pub fn netns_list(&self) -> Vec<String> {
        if self.root {
            return std::fs::read_dir(crate::control::netns::NETNS_RUN_DIR)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
        }
        let out = self.tapyard().args(["netns", "ls", "--json"]).output();
        out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default()
    }

    /// `argv` in namespace `ns`.
    pub fn in_ns(&self, ns: &str, argv: &[&str]) -> Command {
        if self.root {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(argv);
            c
        } else {
            let mut c = self.tapyard();
            c.args(["exec", ns, "--"]).args(argv);
            c
        }
    }
}

/// Runs `cmd`; its stderr becomes the error.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        bail!(
            "`{} {}` failed: {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Quotes a word for sh(1).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `pid` runs: exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    !matches!(proc_stat(pid), None | Some((Some('Z' | 'X'), _)))
}

/// The state letter and the start time of `pid` (proc(5), /proc/PID/stat).
fn proc_stat(pid: u32) -> Option<(Option<char>, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    Some((f.first().and_then(|s| s.chars().next()), f.get(19)?.parse().ok()?))
}

pub fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ------------------------------------------------------------ the daemon

/// Pings the daemon; starts one if none answers. Returns the pid of a
/// daemon it started and the files to remove when it stops.
fn ensure_daemon(socket: &Path, name: &str, quiet: bool) -> anyhow::Result<(Option<u32>, Vec<PathBuf>)> {
    if client::call::<PingInfo>(socket, &Request::Ping).is_ok() {
        if !quiet {
            say!("using the tapyard daemon at {}", socket.display());
        }
        return Ok((None, vec![]));
    }
    let dir = runtime_dir(socket);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let state_dir = dir.join(format!("lab-{name}-state"));
    let log = dir.join(format!("lab-{name}-daemon.log"));
    let logf = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    // A fresh state directory: a lab daemon must not bring back an older lab's networks.
    let _ = std::fs::remove_dir_all(&state_dir);
    let exe = std::env::current_exe().context("cannot find the tapyard executable")?;
    // Its own process group, so Ctrl-C on `lab up` reaches the lab (which
    // tears down through the daemon) and not the daemon itself.
    let mut child = Command::new(exe)
        .process_group(0)
        .arg("--socket")
        .arg(socket)
        .arg("daemon")
        // A lab is closed: its networks reach each other through its
        // routers, not the world (and a lab's daemon never competes with
        // a system daemon for the host's uplink).
        .args(["--uplink", "none"])
        .arg("--state-dir")
        .arg(&state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .context("cannot start the daemon")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client::call::<PingInfo>(socket, &Request::Ping).is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the daemon exited ({status}) before answering:\n{}", text.trim());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the daemon did not answer within 10 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !quiet {
        say!("started a tapyard daemon (pid {}) at {}; log: {}", child.id(), socket.display(), log.display());
    }
    Ok((Some(child.id()), vec![state_dir, log]))
}

// ------------------------------------------------------------ progress

/// A progress bar on a terminal; a line every tenth of the way otherwise
/// (only for labs big enough to wait for).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    done: AtomicUsize,
    plain: bool,
}

impl Progress {
    fn new(total: usize, quiet: bool) -> Progress {
        let tty = !quiet && std::io::IsTerminal::is_terminal(&std::io::stdout());
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("  {bar:40} {pos}/{len} nodes {elapsed} {msg}") {
                b.set_style(style);
            }
            b
        });
        Progress { bar, total, done: AtomicUsize::new(0), plain: !quiet && !tty && total >= 20 }
    }

    fn step(&self, what: &str) {
        let n = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            b.set_message(what.to_string());
            b.inc(1);
        } else if self.plain && (n * 10 / self.total != (n - 1) * 10 / self.total || n == self.total) {
            say!("  {n}/{} nodes", self.total);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

// ------------------------------------------------------------ up

/// How `lab up` runs.
pub struct UpOptions {
    /// The topology file, absolute (for the record); none for the embedded lab.
    pub file: Option<String>,
    /// The `lab up` stays in the foreground (its pid is recorded).
    pub foreground: bool,
    /// No progress bar and no summary line (a caller with output of its
    /// own: `tapyard bench`).
    pub quiet: bool,
}

/// Builds the lab; on any failure removes what it made and returns the error.
pub fn up(socket: &Path, topo: Topology, opts: UpOptions) -> anyhow::Result<Record> {
    let t0 = Instant::now();
    let name = topo.name.clone();
    let host = Host::new(socket)?;
    match read_record(socket, &name) {
        Ok(Some(old)) => match old.foreground_pid {
            Some(pid) if !process_alive(pid) => {
                say!("cleaning up what an earlier lab {name:?} left behind");
                teardown(socket, &old);
            }
            Some(pid) => bail!("lab {name:?} is already up (pid {pid}); run `tapyard lab down {name}` first"),
            None => bail!("lab {name:?} is already up; run `tapyard lab down {name}` first"),
        },
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    let mut tools = vec![("ip", "iproute2")];
    if topo.nodes.iter().flat_map(|n| &n.interfaces).any(|i| i.address == Address::Dhcp) {
        tools.push(("udhcpc", "udhcpc"));
    }
    for (tool, pkg) in tools {
        if !tool_exists(tool) {
            bail!("`{tool}` is not installed; install the Debian package {pkg} (scripts/setup.sh --lab does)");
        }
    }
    let (daemon_pid, daemon_files) = ensure_daemon(socket, &name, opts.quiet)?;
    let state_dir = runtime_dir(socket).join(format!("lab-{name}.d"));
    let rec = Record {
        name: name.clone(),
        file: opts.file.clone(),
        topology: topo,
        foreground_pid: opts.foreground.then(std::process::id),
        daemon_pid,
        daemon_files,
        state_dir: state_dir.clone(),
        processes: vec![],
        addresses: BTreeMap::new(),
        gateways: BTreeMap::new(),
        subnets: BTreeMap::new(),
    };
    // Nothing of the lab's may exist yet: the record then names only what the lab makes.
    if let Err(e) = preflight(socket, &host, &rec) {
        if rec.daemon_pid.is_some() {
            stop_daemon(socket, &rec);
        }
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    std::fs::create_dir_all(&state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    save(socket, &rec)?;
    let rec = Mutex::new(rec);
    let built = build(socket, &host, &rec, opts.quiet);
    let mut rec = rec.into_inner().unwrap_or_else(|p| p.into_inner());
    match built {
        Ok(()) => {
            save(socket, &rec)?;
            let t = t0.elapsed();
            if !opts.quiet {
                say!(
                    "lab {name:?} is up: {} nodes, {} networks, {} routers in {:.1} s",
                    rec.topology.nodes.len(),
                    rec.topology.networks.len(),
                    rec.topology.routers.len(),
                    t.as_secs_f64()
                );
            }
            rec.addresses.retain(|_, v| !v.is_empty());
            Ok(rec)
        }
        Err(e) => {
            eprintln!("tapyard: building lab {name:?} failed; removing what it made");
            teardown(socket, &rec);
            Err(e)
        }
    }
}

fn preflight(socket: &Path, host: &Host, rec: &Record) -> anyhow::Result<()> {
    let t = &rec.topology;
    let nets: Vec<NetworkInfo> = client::call(socket, &Request::NetworkLs)?;
    for n in &t.networks {
        let h = t.host(&n.name);
        if nets.iter().any(|x| x.name == h) {
            bail!("network {h:?} already exists in the daemon (another lab, or made by hand): remove it, or give this lab another name");
        }
    }
    let routers: Vec<RouterInfo> = client::call(socket, &Request::RouterLs)?;
    for r in &t.routers {
        let h = t.host(&r.name);
        if routers.iter().any(|x| x.name == h) {
            bail!("router {h:?} already exists in the daemon: remove it, or give this lab another name");
        }
    }
    let have = host.netns_list();
    for n in &t.nodes {
        if let Some(ns) = &n.netns {
            if !have.contains(ns) {
                bail!("node {:?}: network namespace {ns:?} does not exist: create it (`ip netns add {ns}`) or drop `netns`", n.name);
            }
            continue;
        }
        let h = t.host(&n.name);
        if have.contains(&h) {
            bail!(
                "network namespace {h:?} already exists: remove it (`ip netns del {h}`), or give this lab another name"
            );
        }
    }
    Ok(())
}

/// Networks, routers, then the nodes in parallel.
fn build(socket: &Path, host: &Host, rec: &Mutex<Record>, quiet: bool) -> anyhow::Result<()> {
    let topo = rec.lock().map_err(|_| anyhow!("poisoned"))?.topology.clone();
    let mut c = Client::connect(socket)?;
    for n in &topo.networks {
        let req = NetworkCreate {
            name: topo.host(&n.name),
            subnet: n.subnet.map(|s| s.to_string()),
            gateway: n.gateway.map(|g| g.to_string()),
            mtu: n.mtu,
            internal: n.internal,
            dns: n.dns.iter().map(|d| d.to_string()).collect(),
            ipam: n.link.as_ref().map(|_| "none".to_string()),
            // A lab is closed (see ensure_daemon): no network reaches beyond tapyard.
            egress: Some("none".into()),
            ..Default::default()
        };
        let info: NetworkInfo =
            c.call(&Request::NetworkCreate(req)).with_context(|| format!("creating network {:?}", n.name))?;
        let mut r = rec.lock().map_err(|_| anyhow!("poisoned"))?;
        if let Some(g) = info.gateway {
            r.gateways.insert(n.name.clone(), g);
        }
        if let Some(s) = info.subnet {
            r.subnets.insert(n.name.clone(), s);
        }
    }
    for r in &topo.routers {
        let rname = topo.host(&r.name);
        c.call_value(&Request::RouterCreate { name: rname.clone() })
            .with_context(|| format!("creating router {:?}", r.name))?;
        for n in &r.networks {
            c.call_value(&Request::RouterAttach { router: rname.clone(), network: topo.host(n) })
                .with_context(|| format!("attaching network {n:?} to router {:?}", r.name))?;
        }
        for rt in &r.routes {
            c.call_value(&Request::RouteAdd {
                router: rname.clone(),
                prefix: rt.prefix.to_string(),
                via: rt.via.to_string(),
            })
            .with_context(|| format!("router {:?}: route {} via {}", r.name, rt.prefix, rt.via))?;
        }
    }
    drop(c);
    let hook = if topo.nodes.iter().flat_map(|n| &n.interfaces).any(|i| i.address == Address::Dhcp) {
        let state = rec.lock().map_err(|_| anyhow!("poisoned"))?.state_dir.clone();
        Some(write_dhcp_hook(&state)?)
    } else {
        None
    };
    let progress = Progress::new(topo.nodes.len(), quiet);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(vec![]);
    std::thread::scope(|s| {
        for _ in 0..BUILDERS.min(topo.nodes.len()) {
            s.spawn(|| {
                let mut c = match Client::connect(socket) {
                    Ok(c) => c,
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.into());
                        return;
                    }
                };
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(node) = topo.nodes.get(i) else { break };
                    match build_node(&mut c, host, &topo, node, rec, hook.as_deref()) {
                        Ok(()) => progress.step(&node.name),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(e.context(format!("node {:?}", node.name)));
                        }
                    }
                }
            });
        }
    });
    progress.finish();
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(first) = errors.drain(..).next() {
        return Err(first);
    }
    Ok(())
}

/// The DHCP hook udhcpc runs (as scripts/udhcpc-hook.sh: applies the lease
/// to the interface and never touches /etc/resolv.conf, which inside the
/// namespace is the host's), then writes the address to the file named by
/// TAPYARD_LAB_LEASE, which `lab up` waits for.
fn write_dhcp_hook(state: &Path) -> anyhow::Result<PathBuf> {
    let path = state.join("udhcpc-hook.sh");
    let text = r#"#!/bin/sh
# Written by `tapyard lab up`: applies a udhcpc lease to the interface.
case "$1" in
deconfig)
  ip link set dev "$interface" up
  ip -4 addr flush dev "$interface"
  ;;
bound | renew)
  ip -4 addr replace "$ip/${mask:-$subnet}" broadcast "${broadcast:-+}" dev "$interface"
  if [ -n "$mtu" ]; then ip link set dev "$interface" mtu "$mtu"; fi
  for r in $router; do
    ip -4 route replace default via "$r" dev "$interface"
    break
  done
  echo "$ip/${mask:-$subnet}" > "$TAPYARD_LAB_LEASE.tmp" && mv "$TAPYARD_LAB_LEASE.tmp" "$TAPYARD_LAB_LEASE"
  ;;
esac
exit 0
"#;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Where a node's commands run: the topology file's directory (so that
/// `python3 server.py` finds the file beside it), else the lab's own.
fn workdir(r: &Record) -> PathBuf {
    r.file.as_deref().and_then(|f| Path::new(f).parent()).map_or_else(|| r.state_dir.clone(), Path::to_path_buf)
}

/// Starts `argv` in `ns` in its own process group, output appended to
/// `log`; records it. Returns the child, for the start-window check.
fn spawn_bg(
    host: &Host,
    rec: &Mutex<Record>,
    node: &str,
    ns: &str,
    what: &str,
    argv: &[&str],
    env: &[(&str, &Path)],
) -> anyhow::Result<std::process::Child> {
    let (log, state) = {
        let r = rec.lock().map_err(|_| anyhow!("poisoned"))?;
        (r.state_dir.join(format!("{node}.log")), workdir(&r))
    };
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let err = out.try_clone()?;
    let mut cmd = host.in_ns(ns, argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Its own group: `lab down` stops it and what it started, and Ctrl-C on
    // a foreground `lab up` does not reach it before the teardown does.
    let child = cmd
        .current_dir(&state)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id();
    let start_time = proc_stat(pid).map_or(0, |s| s.1);
    let mut r = rec.lock().map_err(|_| anyhow!("poisoned"))?;
    r.processes.push(Proc { node: node.into(), what: what.into(), pid, start_time });
    // Saved at once: a `lab up` killed from now on still leaves a record
    // through which `lab down` stops this process.
    save(&host.socket, &r)?;
    Ok(child)
}

fn build_node(
    c: &mut Client,
    host: &Host,
    topo: &Topology,
    node: &Node,
    rec: &Mutex<Record>,
    hook: Option<&Path>,
) -> anyhow::Result<()> {
    let ns = topo.node_ns(node);
    if node.netns.is_none() {
        host.netns_add(&ns)?;
    }
    let mut learned: Vec<(String, String)> = vec![];
    for i in &node.interfaces {
        let ip = match i.address {
            Address::Static { ip, prefix } => Some(format!("{ip}/{prefix}")),
            Address::Auto => Some("auto".into()),
            _ => None,
        };
        let p: PortInfo = c
            .call(&Request::Connect {
                network: topo.host(&i.network),
                netns: ns.clone(),
                ifname: Some(i.ifname.clone()),
                mac: i.mac.clone(),
                ip,
                offload: None,
                publish: vec![],
                owner: Some(format!("lab:{}", topo.name)),
                port_security: node.port_security(i),
                storm_limit: None,
                kind: i.kind,
            })
            .with_context(|| format!("connecting {} to network {:?}", i.ifname, i.network))?;
        if let Some(ip) = p.ip {
            learned.push((format!("{}:{}", node.name, i.ifname), ip));
        }
        if let Some(im) = i.impair {
            c.call_value(&Request::PortSet(PortSet {
                network: topo.host(&i.network),
                netns: Some(ns.clone()),
                ifname: Some(i.ifname.clone()),
                vhost_user: None,
                link_up: None,
                clear: false,
                direction: im.direction,
                impair: im.patch,
            }))
            .with_context(|| format!("setting the impairments of {}", i.ifname))?;
        }
    }
    // Settings inside the namespace, in one shell: loopback, sysctls,
    // addresses of link endpoints (their networks have no IPAM).
    let mut script = vec!["ip link set lo up".to_string()];
    for (k, v) in &node.sysctls {
        // /proc/sys/net/... is the writer's own network namespace's (proc(5)).
        script.push(format!("echo {} > {}", q(v), q(&format!("/proc/sys/{}", k.replace('.', "/")))));
    }
    for i in &node.interfaces {
        if let Address::Manual { ip, prefix } = i.address {
            script.push(format!("ip addr add {ip}/{prefix} dev {}", q(&i.ifname)));
            learned.push((format!("{}:{}", node.name, i.ifname), format!("{ip}/{prefix}")));
        }
    }
    run(&mut host.in_ns(&ns, &["sh", "-ec", &script.join("\n")])).context("configuring the namespace")?;
    // DHCP clients, then wait for their leases.
    let mut leases = vec![];
    for i in node.interfaces.iter().filter(|i| i.address == Address::Dhcp) {
        let hook = hook.ok_or_else(|| anyhow!("no DHCP hook"))?;
        let state = rec.lock().map_err(|_| anyhow!("poisoned"))?.state_dir.clone();
        let lease = state.join(format!("{}-{}.lease", node.name, i.ifname));
        let hook_s = hook.to_string_lossy().into_owned();
        let mut child = spawn_bg(
            host,
            rec,
            &node.name,
            &ns,
            &format!("dhcp {}", i.ifname),
            // -f: stay in the foreground (its pid is the one recorded); -x
            // hostname: the lease shows the node's name (`tapyard lease ls`).
            &[
                "udhcpc",
                "-f",
                "-i",
                &i.ifname,
                "-s",
                &hook_s,
                "-t",
                "10",
                "-T",
                "1",
                "-A",
                "1",
                "-x",
                &format!("hostname:{}", node.name),
            ],
            &[("TAPYARD_LAB_LEASE", &lease)],
        )?;
        leases.push((i, lease, Instant::now()));
        // A client that cannot start at all is an error now, not in 30 s.
        if let Ok(Some(st)) = child.try_wait() {
            bail!("udhcpc on {} exited at once ({st})", i.ifname);
        }
        std::mem::forget(child);
    }
    for (i, lease, t0) in leases {
        loop {
            if let Ok(text) = std::fs::read_to_string(&lease) {
                learned.push((format!("{}:{}", node.name, i.ifname), text.trim().to_string()));
                break;
            }
            if t0.elapsed() > DHCP_DEADLINE {
                bail!("{} got no DHCP lease within {} s", i.ifname, DHCP_DEADLINE.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if !node.routes.is_empty() {
        let lines: Vec<String> = node
            .routes
            .iter()
            .map(|r| {
                let mut l = format!("ip route replace {}", q(&r.prefix));
                if let Some(v) = r.via {
                    l += &format!(" via {v}");
                }
                if let Some(d) = &r.dev {
                    l += &format!(" dev {}", q(d));
                }
                l
            })
            .collect();
        run(&mut host.in_ns(&ns, &["sh", "-ec", &lines.join("\n")])).context("adding the node's routes")?;
    }
    let (dir, lab_dir) = {
        let r = rec.lock().map_err(|_| anyhow!("poisoned"))?;
        (workdir(&r), r.state_dir.clone())
    };
    // What a node's commands may use: their lab, their node (the file's
    // names) and a directory of the lab's for sockets and files.
    let env = [("LAB", Path::new(&topo.name)), ("NODE", Path::new(&node.name)), ("LAB_DIR", lab_dir.as_path())];
    for cmd in &node.exec {
        let out = host
            .in_ns(&ns, &["sh", "-c", cmd])
            .envs(env)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if let Ok(r) = rec.lock() {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(r.state_dir.join(format!("{}.log", node.name)))
            {
                let _ = f.write_all(&out.stdout);
                let _ = f.write_all(&out.stderr);
            }
        }
        if !out.status.success() {
            bail!("exec {cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    let mut started = vec![];
    for cmd in &node.commands {
        let child = spawn_bg(host, rec, &node.name, &ns, cmd, &["sh", "-c", cmd], &env)?;
        started.push((cmd, child, Instant::now()));
    }
    // A command that fails to start (missing program, bad option) exits at
    // once: wait out a short window for each, then leave it running.
    for (cmd, mut child, t0) in started {
        loop {
            match child.try_wait() {
                Ok(Some(st)) if !st.success() => {
                    let log = rec.lock().map(|r| r.state_dir.join(format!("{}.log", node.name))).ok();
                    let tail = log.and_then(|l| std::fs::read_to_string(l).ok()).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                    bail!(
                        "command {cmd:?} exited at once ({st}): {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("; ")
                    );
                }
                Ok(Some(_)) => break,
                _ if t0.elapsed() >= START_WINDOW => break,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        // Left running; reparented to init when `lab up` exits.
        std::mem::forget(child);
    }
    let mut r = rec.lock().map_err(|_| anyhow!("poisoned"))?;
    r.addresses.extend(learned);
    Ok(())
}

// ------------------------------------------------------------ down

/// Removes everything `rec` names, and the record. Idempotent.
pub fn teardown(socket: &Path, rec: &Record) {
    let host = match Host::new(socket) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tapyard: {e:#}");
            return;
        }
    };
    stop_processes(&rec.processes);
    let t = &rec.topology;
    if let Ok(mut c) = Client::connect(socket) {
        for r in &t.routers {
            let _ = c.call_value(&Request::RouterRm { name: t.host(&r.name) });
        }
    }
    // Networks (with their ports) and namespaces, in parallel.
    let nets: Vec<String> = t.networks.iter().map(|n| t.host(&n.name)).collect();
    // A node's own namespace only: one it was given (`netns`) stays.
    let nss: Vec<String> = t.nodes.iter().filter(|n| n.netns.is_none()).map(|n| t.host(&n.name)).collect();
    let next_net = AtomicUsize::new(0);
    let next_ns = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..BUILDERS {
            s.spawn(|| {
                if let Ok(mut c) = Client::connect(socket) {
                    while let Some(n) = nets.get(next_net.fetch_add(1, Ordering::Relaxed)) {
                        let _ = c.call_value(&Request::NetworkRm { name: n.clone(), force: true });
                    }
                }
                while let Some(n) = nss.get(next_ns.fetch_add(1, Ordering::Relaxed)) {
                    host.netns_del(n);
                }
            });
        }
    });
    let _ = std::fs::remove_dir_all(&rec.state_dir);
    if rec.daemon_pid.is_some() {
        stop_daemon(socket, rec);
    }
    let _ = std::fs::remove_file(record_path(socket, &rec.name));
}

/// SIGTERM to each process group the lab started (if the pid is still
/// that process), then SIGKILL to what is left after two seconds.
fn stop_processes(procs: &[Proc]) {
    let ours = |p: &Proc| process_alive(p.pid) && proc_stat(p.pid).is_some_and(|s| s.1 == p.start_time);
    let signal = |p: &Proc, sig: &str| {
        // The negative pid is the group: the command and what it started.
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{}", p.pid)])
            .stderr(Stdio::null())
            .status();
    };
    let live: Vec<&Proc> = procs.iter().filter(|p| ours(p)).collect();
    for p in &live {
        signal(p, "TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while live.iter().any(|p| ours(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in live.iter().filter(|p| ours(p)) {
        signal(p, "KILL");
    }
}

/// Stops the daemon the lab started, unless another lab still uses it: then
/// that lab takes it over (and stops it at its own `lab down`).
fn stop_daemon(socket: &Path, rec: &Record) {
    let Some(pid) = rec.daemon_pid else { return };
    for other in list_labs(socket).into_iter().filter(|n| n != &rec.name) {
        if let Ok(Some(mut o)) = read_record(socket, &other) {
            if o.daemon_pid.is_none() {
                o.daemon_pid = Some(pid);
                o.daemon_files.clone_from(&rec.daemon_files);
                if save(socket, &o).is_ok() {
                    say!("the daemon (pid {pid}) keeps running for lab {other:?}");
                    return;
                }
            }
        }
    }
    if let Ok(mut c) = Client::connect(socket) {
        let _ = c.call_value(&Request::Shutdown);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for f in &rec.daemon_files {
        let _ = std::fs::remove_dir_all(f).or_else(|_| std::fs::remove_file(f));
    }
    // A rootless daemon keeps its named namespaces beside its socket
    // (docs/ROOTLESS.md); the lab removed them, so the directory is empty
    // (remove_dir leaves a directory that is not).
    let _ = std::fs::remove_dir(super::super::rootless::named_dir(socket));
}

/// `lab down`: removes the lab; tells a foreground `lab up` that it is gone.
pub fn down(socket: &Path, name: &str) -> anyhow::Result<bool> {
    let Some(rec) = read_record(socket, name)? else {
        return Ok(false);
    };
    teardown(socket, &rec);
    if let Some(pid) = rec.foreground_pid {
        if pid != std::process::id() && process_alive(pid) {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    Ok(true)
}

// ------------------------------------------------------------ status

/// One interface as `lab status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub node: String,
    pub netns: String,
    pub ifname: String,
    pub network: String,
    pub address: Option<String>,
    pub mac: Option<String>,
    pub port: Option<u16>,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub drops: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub file: Option<String>,
    pub interfaces: Vec<IfaceStatus>,
    pub networks: Vec<serde_json::Value>,
    pub routers: Vec<serde_json::Value>,
    pub processes: Vec<serde_json::Value>,
}

pub fn status(socket: &Path, rec: &Record) -> LabStatus {
    let t = &rec.topology;
    let ports: Vec<PortInfo> = client::call(socket, &Request::PortLs { network: None }).unwrap_or_default();
    let mut interfaces = vec![];
    for n in &t.nodes {
        let ns = t.node_ns(n);
        for i in &n.interfaces {
            let net = t.host(&i.network);
            let p = ports.iter().find(|p| p.netns == ns && p.ifname == i.ifname && p.network == net);
            let key = format!("{}:{}", n.name, i.ifname);
            let c = p.map(|p| &p.counters);
            interfaces.push(IfaceStatus {
                node: n.name.clone(),
                netns: ns.clone(),
                ifname: i.ifname.clone(),
                network: i.network.clone(),
                address: p.and_then(|p| p.ip.clone()).or_else(|| rec.addresses.get(&key).cloned()),
                mac: p.map(|p| p.mac.clone()),
                port: p.map(|p| p.id),
                rx_packets: c.map_or(0, |c| c.rx_packets),
                tx_packets: c.map_or(0, |c| c.tx_packets),
                rx_bytes: c.map_or(0, |c| c.rx_bytes),
                tx_bytes: c.map_or(0, |c| c.tx_bytes),
                drops: c.map_or(0, |c| c.drops.values().sum()),
            });
        }
    }
    let networks = t
        .networks
        .iter()
        .map(|n| {
            serde_json::json!({
                "name": n.name,
                "host_name": t.host(&n.name),
                "subnet": rec.subnets.get(&n.name),
                "gateway": rec.gateways.get(&n.name),
                "link": n.link,
                "internal": n.internal,
            })
        })
        .collect();
    let routers = t
        .routers
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "host_name": t.host(&r.name),
                "networks": r.networks,
                "routes": r.routes.iter().map(|x| format!("{} via {}", x.prefix, x.via)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let processes = rec
        .processes
        .iter()
        .map(|p| {
            let up = process_alive(p.pid) && proc_stat(p.pid).is_some_and(|s| s.1 == p.start_time);
            serde_json::json!({ "node": p.node, "pid": p.pid, "what": p.what, "running": up })
        })
        .collect();
    LabStatus { name: rec.name.clone(), file: rec.file.clone(), interfaces, networks, routers, processes }
}

pub fn print_status(s: &LabStatus) {
    use crate::cli::out;
    out(&format!("lab {}{}", s.name, s.file.as_ref().map(|f| format!(" ({f})")).unwrap_or_default()));
    let w = |col: &[&str], head: &str| col.iter().map(|c| c.len()).chain([head.len()]).max().unwrap_or(0);
    let nodes: Vec<&str> = s.interfaces.iter().map(|i| i.node.as_str()).collect();
    let ifs: Vec<&str> = s.interfaces.iter().map(|i| i.ifname.as_str()).collect();
    let nets: Vec<&str> = s.interfaces.iter().map(|i| i.network.as_str()).collect();
    let addrs: Vec<&str> = s.interfaces.iter().map(|i| i.address.as_deref().unwrap_or("-")).collect();
    let (wn, wi, we, wa) = (w(&nodes, "NODE"), w(&ifs, "IFNAME"), w(&nets, "NETWORK"), w(&addrs, "ADDRESS"));
    out(&format!(
        "  {:<wn$} {:<wi$} {:<we$} {:<wa$} {:<17} {:>8} {:>8} {:>6}",
        "NODE", "IFNAME", "NETWORK", "ADDRESS", "MAC", "RX", "TX", "DROPS"
    ));
    for (k, i) in s.interfaces.iter().enumerate() {
        out(&format!(
            "  {:<wn$} {:<wi$} {:<we$} {:<wa$} {:<17} {:>8} {:>8} {:>6}",
            i.node,
            i.ifname,
            i.network,
            addrs[k],
            i.mac.as_deref().unwrap_or("(no port)"),
            i.rx_packets,
            i.tx_packets,
            i.drops
        ));
    }
    let names: Vec<&str> = s.networks.iter().map(|n| n["name"].as_str().unwrap_or("")).collect();
    let wn = w(&names, "NETWORK");
    out(&format!("  {:<wn$} {:<18} {:<16} LINK", "NETWORK", "SUBNET", "GATEWAY"));
    for (k, n) in s.networks.iter().enumerate() {
        let link = n["link"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" <-> "));
        out(format!(
            "  {:<wn$} {:<18} {:<16} {}",
            names[k],
            n["subnet"].as_str().unwrap_or("-"),
            n["gateway"].as_str().unwrap_or("-"),
            link.unwrap_or_default()
        )
        .trim_end());
    }
    for r in &s.routers {
        let list = |k: &str| {
            r[k].as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        out(&format!("  router {}: networks {}{}", r["name"].as_str().unwrap_or(""), list("networks"), {
            let routes = list("routes");
            if routes.is_empty() {
                String::new()
            } else {
                format!("; routes {routes}")
            }
        }));
    }
    for p in &s.processes {
        out(&format!(
            "  process {} on {}: {} ({})",
            p["pid"],
            p["node"].as_str().unwrap_or(""),
            p["what"].as_str().unwrap_or(""),
            if p["running"].as_bool() == Some(true) { "running" } else { "exited" }
        ));
    }
}

// ------------------------------------------------------------ graph

/// The lab as a Graphviz graph: nodes (boxes), networks and links (ellipses),
/// routers (diamonds); edges carry the interface and its address.
pub fn dot(rec: &Record) -> String {
    let t = &rec.topology;
    let id = |kind: &str, n: &str| format!("\"{kind}:{}\"", n.replace('"', "'"));
    let mut s = format!("graph \"{}\" {{\n  layout=dot; rankdir=LR; node [fontname=\"sans-serif\"]; edge [fontname=\"sans-serif\", fontsize=10];\n", rec.name);
    for n in &t.networks {
        let label = match (&n.link, rec.subnets.get(&n.name)) {
            (Some(_), _) => format!("{}\\n(link)", n.name),
            (None, Some(sub)) => format!("{}\\n{sub}", n.name),
            (None, None) => n.name.clone(),
        };
        s += &format!(
            "  {} [shape=ellipse, style=filled, fillcolor=\"#dde8f8\", label=\"{label}\"];\n",
            id("net", &n.name)
        );
    }
    for r in &t.routers {
        s += &format!(
            "  {} [shape=diamond, style=filled, fillcolor=\"#f8e0c0\", label=\"{}\"];\n",
            id("router", &r.name),
            r.name
        );
        for n in &r.networks {
            let gw = rec.gateways.get(n).cloned().unwrap_or_default();
            s += &format!("  {} -- {} [label=\"{gw}\", style=bold];\n", id("router", &r.name), id("net", n));
        }
    }
    for n in &t.nodes {
        s += &format!(
            "  {} [shape=box, style=\"rounded,filled\", fillcolor=\"#e8f4e0\", label=\"{}\"];\n",
            id("node", &n.name),
            n.name
        );
        for i in &n.interfaces {
            let key = format!("{}:{}", n.name, i.ifname);
            let addr = rec.addresses.get(&key).cloned().unwrap_or_else(|| i.address.shown());
            s += &format!("  {} -- {} [label=\"{} {addr}\"];\n", id("node", &n.name), id("net", &i.network), i.ifname);
        }
    }
    s += "}\n";
    s
}

/// Writes the picture to `out`: DOT for `.dot`, else through Graphviz's
/// `dot`; without it, the DOT text beside `out`. Returns what was written.
pub fn write_graph(rec: &Record, out: &Path) -> anyhow::Result<String> {
    let text = dot(rec);
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "dot" || ext == "gv" {
        std::fs::write(out, &text).with_context(|| format!("cannot write {}", out.display()))?;
        return Ok(format!("wrote {}", out.display()));
    }
    if !matches!(ext.as_str(), "svg" | "png" | "pdf") {
        bail!("-o {}: give a file ending in .svg, .png, .pdf or .dot", out.display());
    }
    if !tool_exists("dot") {
        let dotfile = out.with_extension("dot");
        std::fs::write(&dotfile, &text).with_context(|| format!("cannot write {}", dotfile.display()))?;
        return Ok(format!(
            "Graphviz `dot` is not installed (Debian package graphviz): wrote the DOT text to {} instead",
            dotfile.display()
        ));
    }
    let mut child = Command::new("dot")
        .arg(format!("-T{ext}"))
        .arg("-o")
        .arg(out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run dot")?;
    child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?.write_all(text.as_bytes())?;
    let o = child.wait_with_output()?;
    if !o.status.success() {
        bail!("dot failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(format!("wrote {}", out.display()))
}
