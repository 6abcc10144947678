//! `tapyard lab`: the embedded default lab, tapyard's main job in one command.
//!
//! `lab up` uses the daemon at the socket if one answers, or starts one there;
//! creates two networks (`PREFIX-red`, `PREFIX-blue`) and two namespaces on
//! each with static addresses; pings every ordered pair; prints who reaches
//! whom. Each namespace also gets an on-link route to the other network's
//! subnet, so a ping across networks sends real ARP broadcasts onto its own
//! network: the isolation check fails if the switch ever leaked a frame
//! between networks, rather than passing because the kernel had no route.
//!
//! What the lab made is written to `RUNTIME_DIR/lab-PREFIX.json`, so `lab down`
//! (from any shell) removes exactly that, and stops the daemon only if the lab
//! started it.

#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::client::{self, Client};
use crate::control::proto::{NetworkCreate, PingInfo, PortInfo, Request};

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Build the lab, print the connectivity matrix, keep it until Ctrl-C or `lab down`.
    Up {
        /// Tear the lab down after the matrix; exit 0 only if every expectation held.
        #[arg(long)]
        check: bool,
        /// Prefix of the lab's networks and namespaces.
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Remove everything `lab up` made (and the daemon, if it started one).
    Down {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
}

const NETWORKS: [(&str, &str); 2] = [("red", "10.89.1"), ("blue", "10.89.2")];
const HOSTS_PER_NETWORK: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabHost {
    netns: String,
    network: String,
    ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LabRecord {
    prefix: String,
    /// The `lab up` process (to tell it to exit when `lab down` runs elsewhere).
    lab_pid: u32,
    /// The daemon the lab started, if it started one.
    daemon_pid: Option<u32>,
    networks: Vec<String>,
    hosts: Vec<LabHost>,
}

fn record_path(socket: &Path, prefix: &str) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/tmp")).join(format!("lab-{prefix}.json"))
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub fn run(cmd: LabCmd, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        LabCmd::Up { check, prefix } => up(socket, &prefix, check),
        LabCmd::Down { prefix } => {
            let path = record_path(socket, &prefix);
            let Ok(bytes) = std::fs::read(&path) else {
                println!("no lab {prefix:?} is up (no {})", path.display());
                return Ok(0);
            };
            let rec: LabRecord =
                serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))?;
            teardown(socket, &rec);
            let _ = std::fs::remove_file(&path);
            if rec.lab_pid != std::process::id() && process_alive(rec.lab_pid) {
                // The foreground `lab up` that made it: tell it the lab is gone.
                let _ = Command::new("kill").args(["-TERM", &rec.lab_pid.to_string()]).status();
            }
            println!("lab {prefix:?} removed");
            Ok(0)
        }
    }
}

/// Whether `pid` runs: exists and is not a zombie (a daemon the lab started
/// stays a zombie until the `lab up` process that spawned it exits).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may contain spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty() || prefix.len() > 20 || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("--prefix must be 1 to 20 letters, digits or '-'");
    }
    Ok(())
}

/// Pings the daemon; starts one if none answers. Returns the pid of a daemon we started.
fn ensure_daemon(socket: &Path, prefix: &str) -> anyhow::Result<Option<u32>> {
    if client::call::<PingInfo>(socket, &Request::Ping).is_ok() {
        println!("using the tapyard daemon at {}", socket.display());
        return Ok(None);
    }
    let dir = socket.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let state_dir = dir.join(format!("lab-{prefix}-state"));
    let log = dir.join(format!("lab-{prefix}-daemon.log"));
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
    println!("started a tapyard daemon (pid {}) at {}; log: {}", child.id(), socket.display(), log.display());
    Ok(Some(child.id()))
}

fn up(socket: &Path, prefix: &str, check: bool) -> anyhow::Result<i32> {
    check_prefix(prefix)?;
    let rec_path = record_path(socket, prefix);
    if let Ok(bytes) = std::fs::read(&rec_path) {
        match serde_json::from_slice::<LabRecord>(&bytes) {
            Ok(old) if process_alive(old.lab_pid) => {
                bail!("lab {prefix:?} is already up (pid {}); run `tapyard lab down` first", old.lab_pid)
            }
            Ok(old) => {
                println!("cleaning up what an earlier lab {prefix:?} left behind");
                teardown(socket, &old);
            }
            Err(_) => {}
        }
        let _ = std::fs::remove_file(&rec_path);
    }
    for tool in ["ip", "ping", "nsenter"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            bail!("`{tool}` is not installed; install iproute2, iputils-ping and util-linux (scripts/setup.sh does)");
        }
    }
    let daemon_pid = ensure_daemon(socket, prefix)?;
    let mut rec =
        LabRecord { prefix: prefix.into(), lab_pid: std::process::id(), daemon_pid, networks: vec![], hosts: vec![] };
    for (color, net24) in NETWORKS {
        for h in 1..=HOSTS_PER_NETWORK {
            let _ = net24;
            rec.hosts.push(LabHost {
                netns: format!("{prefix}-{color}{h}"),
                network: format!("{prefix}-{color}"),
                // Filled in from IPAM when the namespace is connected (--ip auto).
                ip: String::new(),
            });
        }
    }
    // Record before building, so an interrupted build is still cleaned up.
    let save = |rec: &LabRecord| std::fs::write(&rec_path, serde_json::to_vec_pretty(rec).unwrap_or_default());
    save(&rec).with_context(|| format!("cannot write {}", rec_path.display()))?;
    let built = build(socket, &mut rec);
    save(&rec).ok();
    let ok = match built {
        Ok(()) => matrix(&rec),
        Err(e) => {
            eprintln!("tapyard: building the lab failed: {e:#}");
            teardown(socket, &rec);
            let _ = std::fs::remove_file(&rec_path);
            return Ok(1);
        }
    };
    if check {
        teardown(socket, &rec);
        let _ = std::fs::remove_file(&rec_path);
        println!("{}", if ok { "lab check passed" } else { "lab check FAILED" });
        return Ok(if ok { 0 } else { 1 });
    }
    println!();
    println!("The lab is up. Try:");
    println!("  ip netns exec {prefix}-red1 ping -c 3 {}", rec.hosts[1].ip);
    println!("  ip netns exec {prefix}-red1 ping -c 3 10.89.1.1      # the gateway");
    println!("  tapyard port ls        tapyard fdb show        tapyard network ls");
    println!("Ctrl-C here, or `tapyard lab down` elsewhere, removes it.");
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    signals.forever().next();
    if rec_path.exists() {
        teardown(socket, &rec);
        let _ = std::fs::remove_file(&rec_path);
        println!("lab {prefix:?} removed");
    }
    Ok(if ok { 0 } else { 1 })
}

fn build(socket: &Path, rec: &mut LabRecord) -> anyhow::Result<()> {
    let mut c = Client::connect(socket)?;
    for (color, net24) in NETWORKS {
        let name = format!("{}-{color}", rec.prefix);
        c.call_value(&Request::NetworkCreate(NetworkCreate {
            name: name.clone(),
            subnet: Some(format!("{net24}.0/24")),
            ..Default::default()
        }))?;
        rec.networks.push(name);
    }
    for i in 0..rec.hosts.len() {
        let h = rec.hosts[i].clone();
        sh(Command::new("ip").args(["netns", "add", &h.netns]))?;
        sh(Command::new("ip").args(["-n", &h.netns, "link", "set", "lo", "up"]))?;
        // The address comes from IPAM; the default route points at the gateway.
        let p: PortInfo = c.call(&Request::Connect {
            network: h.network.clone(),
            netns: h.netns.clone(),
            ifname: None,
            mac: None,
            ip: Some("auto".into()),
            offload: None,
            publish: vec![],
            owner: None,
        })?;
        let cidr = p.ip.unwrap_or_default();
        rec.hosts[i].ip = cidr.split('/').next().unwrap_or_default().to_string();
        println!("  {:<14} {:<10} eth0 {} {cidr}", h.netns, h.network, p.mac);
        // On-link route to the other network (see the module doc).
        for (_, other) in NETWORKS.iter().filter(|(color, _)| !h.network.ends_with(&format!("-{color}"))) {
            sh(Command::new("ip").args(["-n", &h.netns, "route", "add", &format!("{other}.0/24"), "dev", "eth0"]))?;
        }
    }
    Ok(())
}

/// Pings `ip` from namespace `ns` in a thread: three pings 0.2 s apart, one
/// second to answer; true if any answer came.
fn ping(ns: &str, ip: &str) -> std::thread::JoinHandle<bool> {
    let (ns, ip) = (ns.to_string(), ip.to_string());
    std::thread::spawn(move || {
        Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", &ip])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Pings every ordered pair at once; prints the matrix; true if every expectation held.
fn matrix(rec: &LabRecord) -> bool {
    let hosts = &rec.hosts;
    let mut jobs = Vec::new();
    for (i, a) in hosts.iter().enumerate() {
        for (j, b) in hosts.iter().enumerate() {
            if i == j {
                continue;
            }
            jobs.push((i, j, ping(&a.netns, &b.ip)));
        }
    }
    // Each namespace also pings its own network's gateway (answered by tapyard).
    for (i, a) in hosts.iter().enumerate() {
        jobs.push((i, hosts.len(), ping(&a.netns, &gateway_of(a))));
    }
    let n = hosts.len();
    let mut reach = vec![vec![None; n + 1]; n];
    for (i, j, h) in jobs {
        reach[i][j] = Some(h.join().unwrap_or(false));
    }
    let w = hosts.iter().map(|h| h.netns.len()).max().unwrap_or(4).max(6);
    println!();
    println!("Connectivity (row pings column; ok = reached, -- = blocked, as expected; FAIL = not as expected):");
    print!("{:w$}", "", w = w + 2);
    for h in hosts {
        print!("{:>w$}", h.netns, w = w + 2);
    }
    println!("{:>9}", "gateway");
    let mut all_ok = true;
    let mut failures = Vec::new();
    for (i, a) in hosts.iter().enumerate() {
        print!("{:<w$}", a.netns, w = w + 2);
        for (j, b) in hosts.iter().enumerate() {
            let cell = match reach[i][j] {
                None => "·".to_string(),
                Some(r) => {
                    let expect = a.network == b.network;
                    if r == expect {
                        if r {
                            "ok".into()
                        } else {
                            "--".into()
                        }
                    } else {
                        all_ok = false;
                        failures.push(format!(
                            "{} -> {} ({}): {}",
                            a.netns,
                            b.netns,
                            b.ip,
                            if expect {
                                "expected to reach, did not"
                            } else {
                                "reached across networks: isolation broken"
                            }
                        ));
                        "FAIL".into()
                    }
                }
            };
            print!("{:>w$}", cell, w = w + 2);
        }
        let gw = match reach[i][n] {
            Some(true) => "ok".to_string(),
            _ => {
                all_ok = false;
                failures.push(format!("{} -> its gateway {}: no answer", a.netns, gateway_of(a)));
                "FAIL".to_string()
            }
        };
        println!("{gw:>9}");
    }
    for f in &failures {
        println!("  FAIL {f}");
    }
    let same = hosts
        .iter()
        .enumerate()
        .flat_map(|(i, a)| hosts.iter().enumerate().filter(move |(j, b)| *j != i && b.network == a.network))
        .count();
    println!(
        "{} pairs on the same network reach each other and their gateway; {} cross-network pairs stay isolated.",
        if all_ok { "All" } else { "Not all" },
        n * (n - 1) - same
    );
    all_ok
}

/// The gateway address of a lab host's network (the first host of its /24).
fn gateway_of(h: &LabHost) -> String {
    let net24 = NETWORKS.iter().find(|(c, _)| h.network.ends_with(&format!("-{c}"))).map_or("", |(_, n)| n);
    format!("{net24}.1")
}

/// Removes the lab's ports, networks and namespaces, and the daemon if the
/// lab started it. Idempotent: what is already gone is skipped.
fn teardown(socket: &Path, rec: &LabRecord) {
    if let Ok(mut c) = Client::connect(socket) {
        for n in &rec.networks {
            let _ = c.call_value(&Request::NetworkRm { name: n.clone(), force: true });
        }
        if rec.daemon_pid.is_some() {
            let _ = c.call_value(&Request::Shutdown);
        }
    }
    for h in &rec.hosts {
        let _ = Command::new("ip").args(["netns", "del", &h.netns]).stderr(Stdio::null()).status();
    }
    if let Some(pid) = rec.daemon_pid {
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
