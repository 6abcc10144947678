//! labkit: L2 segments that network namespaces attach to, built by the data
//! paths tapyard is compared with and by tapyard itself, and the guard that
//! removes everything they made.
//!
//! A [`Backend`] joins a set of namespaces into one L2 segment (or, for
//! tapyard's routed variant, two segments joined by a router) and addresses
//! their interfaces: [`LinuxBridge`] (a kernel bridge and veth pairs),
//! [`Vde`] (vde_switch with TAP ports), [`Ovs`] (ovs-vswitchd, userspace
//! datapath, TAP ports, a private database) and [`Tapyard`] (a tapyard daemon
//! this module starts; its segment is a lab topology built by the engine of
//! `tapyard lab up`, `cli::lab::engine`, with the endpoints' namespaces as
//! the nodes' `netns`). `tapyard bench` measures between the namespaces.
//!
//! Everything a backend makes is registered in a [`Lab`] as it is made:
//! namespaces (and every link in them: backends make links only inside the
//! lab's namespaces), processes (by pid and start time, so a recycled pid is
//! never signalled), and the lab's directory. Dropping the `Lab` removes them, the last made first, on
//! success, on error and after Ctrl-C (see [`install_interrupt_flag`]: the
//! signal sets a flag the waits here check, and the stack unwinds through the
//! guards).
//!
//! Namespaces and links are made with `ip(8)` commands, as the lab engine
//! does: the kernel's answer comes back as text for the setup
//! log, and bridges, veths and `tuntap` have no helper in `control::netns`
//! (which makes tapyard's own TAPs by netlink inside the daemon).

#![forbid(unsafe_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapyard_ipam::Ipv4Net;

use super::client::Client;
use super::lab::engine::{self, UpOptions};
use super::lab::topology::{Address, Interface, Network, Node, Router, Topology};
use crate::control::proto::Request;

// ------------------------------------------------------------------ interrupts

static INTERRUPTED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Makes SIGINT and SIGTERM set a flag instead of ending the process, so that
/// the guards run. Call once, before making anything.
pub fn install_interrupt_flag() -> std::io::Result<()> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(flag))?;
    }
    Ok(())
}

/// Whether SIGINT or SIGTERM arrived since [`install_interrupt_flag`].
pub fn interrupted() -> bool {
    INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

// ------------------------------------------------------------------ errors

/// Why a segment could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A tool is missing or this build lacks a feature: nothing is wrong.
    #[error("{0}")]
    Skip(String),
    /// Something that should have worked did not.
    #[error("{0}")]
    Fail(String),
    /// SIGINT or SIGTERM arrived.
    #[error("interrupted")]
    Interrupted,
}

type Res<T> = Result<T, SetupError>;

fn fail(m: impl Into<String>) -> SetupError {
    SetupError::Fail(m.into())
}

// ------------------------------------------------------------------ processes

/// The start time of `pid` (field 22 of /proc/PID/stat, in clock ticks since boot).
pub fn starttime(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The fields of /proc/PID/stat after the command name (field 3 first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces and ')'.
    let rest = s.rsplit_once(") ")?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Running and not a zombie.
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).is_some_and(|s| s != "Z" && s != "X")
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct Tracked {
    pid: u32,
    start: u64,
    /// Our child: reaped after it ends.
    child: Option<Child>,
    what: String,
}

// ------------------------------------------------------------------ the guard

/// Everything one segment (or a set of them) made; removed on drop.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    log: PathBuf,
    nice: Option<i32>,
    netns: Vec<String>,
    procs: Vec<Tracked>,
    torn_down: bool,
}

impl Lab {
    /// A lab whose names start with `prefix` (at most 13 characters: link
    /// names get two more, and the kernel takes 15), with `dir` as its private directory (made now,
    /// removed on drop), commands and their output appended to `log`, and
    /// every switch process at nice level `nice`.
    pub fn new(prefix: &str, dir: &Path, log: &Path, nice: Option<i32>) -> Res<Lab> {
        if prefix.is_empty() || prefix.len() > 13 {
            return Err(fail(format!("lab prefix {prefix:?}: 1 to 13 characters")));
        }
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Lab {
            prefix: prefix.into(),
            dir: dir.into(),
            log: log.into(),
            nice,
            netns: vec![],
            procs: vec![],
            torn_down: false,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The private directory (sockets, databases, pid files, peers' logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }
    /// `PREFIX` + `suffix`: a name of this lab.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Appends a line to the setup log.
    pub fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// `cmd` with `nice -n` in front when a nice level was asked for (relative
    /// to this process's, as `nice(1)` takes it).
    pub fn niced(&self, prog: &str) -> Command {
        match self.nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.args(["-n", &(n - own_nice()).to_string(), prog]);
                c
            }
            None => Command::new(prog),
        }
    }

    /// `ip netns exec NS [nice -n N] PROG`.
    pub fn in_ns(&self, ns: &str, prog: &str, nice: bool) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let (true, Some(n)) = (nice, self.nice) {
            c.args(["nice", "-n", &(n - own_nice()).to_string()]);
        }
        c.arg(prog);
        c
    }

    /// Runs `cmd` to its end, its command line and output into the setup log;
    /// an error names the command and the last line it printed.
    pub fn run(&self, cmd: &mut Command) -> Res<String> {
        if interrupted() {
            return Err(SetupError::Interrupted);
        }
        let line = format!("+ {}", show(cmd));
        self.note(&line);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run {}: {e}", cmd.get_program().to_string_lossy())))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        for l in stdout.lines().chain(stderr.lines()) {
            self.note(l);
        }
        if !out.status.success() {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
            return Err(fail(format!("{} failed: {}", show(cmd), last.trim())));
        }
        Ok(stdout)
    }

    /// `ip ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Res<String> {
        self.run(Command::new("ip").args(args))
    }

    /// Makes namespace `name` (registered once made: a name that exists
    /// already is refused and never removed), loopback up, IPv6 off (no DAD,
    /// router or multicast listener messages in the measurements).
    pub fn add_netns(&mut self, name: &str) -> Res<()> {
        self.ip(&["netns", "add", name])?;
        self.netns.push(name.to_string());
        self.ip(&["-n", name, "link", "set", "lo", "up"])?;
        let _ = self.run(self.in_ns(name, "sysctl", false).args([
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]));
        Ok(())
    }

    /// Whether `name` is a namespace of this lab.
    pub fn has_netns(&self, name: &str) -> bool {
        self.netns.iter().any(|n| n == name)
    }

    /// Addresses `ifname` in `ns` and sets it up.
    pub fn addr_up(&self, ns: &str, ifname: &str, cidr: &str) -> Res<()> {
        self.ip(&["-n", ns, "addr", "add", cidr, "dev", ifname])?;
        self.ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Starts `cmd` in its own process group (a Ctrl-C reaches this process
    /// only; the guard stops the rest in order), its output appended to
    /// `out`; tracked until the guard stops it.
    pub fn spawn(&mut self, cmd: &mut Command, out: &Path, what: &str) -> Res<u32> {
        if interrupted() {
            return Err(SetupError::Interrupted);
        }
        self.note(&format!("+ {} > {}", show(cmd), out.display()));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .map_err(|e| fail(format!("cannot open {}: {e}", out.display())))?;
        let err = f.try_clone().map_err(|e| fail(e.to_string()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(err)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", cmd.get_program().to_string_lossy())))?;
        let pid = child.id();
        let start = starttime(pid).unwrap_or(0);
        self.procs.push(Tracked { pid, start, child: Some(child), what: what.into() });
        Ok(pid)
    }

    /// Tracks a process that detached itself, from the pid file it writes
    /// (waited for up to 5 s).
    pub fn track_pidfile(&mut self, pidfile: &Path, what: &str) -> Res<u32> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = std::fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse::<u32>().ok()) {
                if let Some(start) = starttime(pid) {
                    self.procs.push(Tracked { pid, start, child: None, what: what.into() });
                    return Ok(pid);
                }
            }
            if Instant::now() > deadline {
                return Err(fail(format!("{what} wrote no pid file ({})", pidfile.display())));
            }
            self.pause(Duration::from_millis(100))?;
        }
    }

    /// Whether a process this lab started has ended (reaping it if it is our child).
    pub fn exited(&mut self, pid: u32) -> bool {
        for t in &mut self.procs {
            if t.pid == pid {
                if let Some(c) = &mut t.child {
                    return !matches!(c.try_wait(), Ok(None));
                }
                return !alive(pid);
            }
        }
        !alive(pid)
    }

    /// Sleeps, unless a signal came.
    pub fn pause(&self, d: Duration) -> Res<()> {
        if interrupted() {
            return Err(SetupError::Interrupted);
        }
        std::thread::sleep(d);
        if interrupted() {
            return Err(SetupError::Interrupted);
        }
        Ok(())
    }

    /// Polls `ok` every `step` until it holds or `limit` passes.
    pub fn wait_for(&self, limit: Duration, step: Duration, mut ok: impl FnMut() -> bool) -> Res<bool> {
        let deadline = Instant::now() + limit;
        loop {
            if ok() {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            self.pause(step)?;
        }
    }

    /// Stops one tracked process: SIGTERM, up to 10 s, then SIGKILL.
    fn stop(&self, t: &mut Tracked) {
        if starttime(t.pid) != Some(t.start) {
            if let Some(c) = &mut t.child {
                let _ = c.try_wait();
            }
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &t.pid.to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let gone = match &mut t.child {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => !alive(t.pid),
            };
            if gone {
                return;
            }
            if Instant::now() > deadline {
                self.note(&format!("{} (pid {}) ignored SIGTERM for 10 s: SIGKILL", t.what, t.pid));
                if starttime(t.pid) == Some(t.start) {
                    let _ = Command::new("kill").args(["-KILL", &t.pid.to_string()]).status();
                }
                if let Some(c) = &mut t.child {
                    let _ = c.wait();
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every process (the last started first), removes every link in
    /// the lab's namespaces and the namespaces, and the directory. No backend
    /// makes a link in this namespace (veth pairs are made with both ends in
    /// place), so nothing here is removed by a name pattern that could match
    /// another run's. Idempotent; errors are ignored (what is already gone is fine).
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        let mut procs = std::mem::take(&mut self.procs);
        for t in procs.iter_mut().rev() {
            self.stop(t);
        }
        let quiet = |args: &[&str]| Command::new("ip").args(args).stderr(Stdio::null()).output().ok();
        for ns in std::mem::take(&mut self.netns).iter().rev() {
            if !Path::new("/run/netns").join(ns).exists() {
                continue;
            }
            // Every link in our namespaces is ours (persistent TAPs included,
            // which a namespace's removal would otherwise move back to the host).
            if let Some(out) = quiet(&["-n", ns, "-o", "link", "show"]) {
                for l in link_names(&String::from_utf8_lossy(&out.stdout)) {
                    if l != "lo" {
                        quiet(&["-n", ns, "link", "del", &l]);
                    }
                }
            }
            quiet(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Link names of `ip -o link show` (the part before `@` of `veth0@if3`).
fn link_names(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n).to_string()).collect()
}

/// The nice level of this process (field 19 of /proc/self/stat).
fn own_nice() -> i32 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(16).and_then(|v| v.parse().ok())))
        .unwrap_or(0)
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

// ------------------------------------------------------------------ backends

/// A namespace to attach and the address its interface gets (CIDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub netns: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Endpoint {
    fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix_len)
    }
}

/// A segment that is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The processes that forward (empty for the kernel bridge): their CPU time is the switch's cost.
    pub switch_pids: Vec<u32>,
    /// The address each endpoint got, in the order given.
    pub addrs: Vec<Ipv4Addr>,
    /// How it was built, one line.
    pub setup: String,
}

/// An L2 segment that namespaces attach to.
pub trait Backend {
    /// Short name (bridge, vde, ovs, ovs-tso, tapyard, tapyard-routed, tapyard-busy, tapyard-afxdp, tapyard-steer).
    fn name(&self) -> &str;
    /// A title for people.
    fn title(&self) -> &str;
    /// Builds the segment with `ends` attached (their namespaces exist) and
    /// addressed; registers everything it makes in `lab`.
    fn up(&mut self, lab: &mut Lab, ends: &[Endpoint]) -> Result<Segment, SetupError>;
}

/// A namespace `S` of the lab for the switch itself, made when first needed.
fn switch_ns(lab: &mut Lab) -> Res<String> {
    let s = lab.name("s");
    if !lab.has_netns(&s) {
        lab.add_netns(&s)?;
    }
    Ok(s)
}

/// The Linux kernel bridge in namespace S, each endpoint attached by a veth pair.
#[derive(Debug, Default)]
pub struct LinuxBridge;

impl Backend for LinuxBridge {
    fn name(&self) -> &str {
        "bridge"
    }
    fn title(&self) -> &str {
        "Linux bridge (veth)"
    }
    fn up(&mut self, lab: &mut Lab, ends: &[Endpoint]) -> Res<Segment> {
        let s = switch_ns(lab)?;
        lab.ip(&["-n", &s, "link", "add", "br0", "type", "bridge"])?;
        lab.ip(&["-n", &s, "link", "set", "br0", "up"])?;
        // Bridged frames skip iptables, as they do through the userspace switches.
        let _ = lab.run(lab.in_ns(&s, "sysctl", false).args([
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ]));
        for (i, e) in ends.iter().enumerate() {
            let peer = lab.name(&format!("p{}", port_letter(i)));
            lab.ip(&["-n", &e.netns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns", &s])?;
            lab.ip(&["-n", &s, "link", "set", &peer, "master", "br0", "up"])?;
        }
        for e in ends {
            lab.addr_up(&e.netns, "eth0", &e.cidr())?;
        }
        Ok(Segment {
            switch_pids: vec![],
            addrs: ends.iter().map(|e| e.addr).collect(),
            setup: "Linux bridge in namespace S, A and B attached by veth pairs (bridge-nf-call-* off)".into(),
        })
    }
}

fn port_letter(i: usize) -> char {
    (b'a' + (i % 26) as u8) as char
}

/// The TAP of endpoint `i`: PREFIX + t + a, b, ...
fn tap_name(lab: &Lab, i: usize) -> String {
    lab.name(&format!("t{}", port_letter(i)))
}

/// Moves the TAPs from S to their endpoints and addresses them.
fn move_taps(lab: &Lab, s: &str, ends: &[Endpoint]) -> Res<()> {
    for (i, e) in ends.iter().enumerate() {
        lab.ip(&["-n", s, "link", "set", &tap_name(lab, i), "netns", &e.netns])?;
    }
    for (i, e) in ends.iter().enumerate() {
        lab.addr_up(&e.netns, &tap_name(lab, i), &e.cidr())?;
    }
    Ok(())
}

/// vde_switch with one TAP per endpoint, made and attached in namespace S,
/// then moved to the endpoints.
#[derive(Debug, Default)]
pub struct Vde;

const INSTALL_HINT: &str = "install with `scripts/setup.sh --bench`";

impl Backend for Vde {
    fn name(&self) -> &str {
        "vde"
    }
    fn title(&self) -> &str {
        "vde_switch (TAP)"
    }
    fn up(&mut self, lab: &mut Lab, ends: &[Endpoint]) -> Res<Segment> {
        if !have("vde_switch") {
            return Err(SetupError::Skip(format!("vde_switch not found (Debian package vde2), {INSTALL_HINT}")));
        }
        let s = switch_ns(lab)?;
        let taps: Vec<String> = (0..ends.len()).map(|i| tap_name(lab, i)).collect();
        for t in &taps {
            lab.ip(&["-n", &s, "tuntap", "add", "dev", t, "mode", "tap"])?;
            lab.ip(&["-n", &s, "link", "set", t, "up"])?;
        }
        let d = lab.dir().to_path_buf();
        let mut cmd = lab.in_ns(&s, "vde_switch", true);
        for t in &taps {
            cmd.args(["-t", t]);
        }
        cmd.arg("-d").arg("-p").arg(d.join("vde.pid")).arg("-s").arg(d.join("vde.sock"));
        cmd.arg("-M").arg(d.join("vde.mgmt")).args(["-f", "/dev/null"]);
        lab.run(&mut cmd).map_err(|e| fail(format!("vde_switch did not start: {e}")))?;
        let pid = lab.track_pidfile(&d.join("vde.pid"), "vde_switch")?;
        let carrier = |t: &str| {
            Command::new("ip")
                .args(["netns", "exec", &s, "cat", &format!("/sys/class/net/{t}/carrier")])
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
        };
        if !lab.wait_for(Duration::from_secs(10), Duration::from_millis(100), || taps.iter().all(|t| carrier(t)))? {
            return Err(fail("vde_switch did not attach the TAPs"));
        }
        move_taps(lab, &s, ends)?;
        Ok(Segment {
            switch_pids: vec![pid],
            addrs: ends.iter().map(|e| e.addr).collect(),
            setup: "vde_switch -t TAP -t TAP, TAPs created and attached in namespace S, then moved to A and B".into(),
        })
    }
}

/// Open vSwitch, userspace (netdev) datapath, one `type=tap` port per
/// endpoint, NORMAL action; a private ovsdb-server and ovs-vswitchd whose
/// database, sockets, logs and pid files are in the lab's directory (a system
/// Open vSwitch, if any, is never touched).
#[derive(Debug, Default)]
pub struct Ovs {
    /// `other_config:userspace-tso-enable=true` (vnet_hdr and TSO on the TAPs).
    pub tso: bool,
}

impl Ovs {
    fn cmd(&self, lab: &Lab, mut c: Command) -> Command {
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            c.env(var, lab.dir());
        }
        c
    }
    fn vsctl(&self, lab: &Lab, args: &[&str]) -> Res<String> {
        let mut c = self.cmd(lab, Command::new("ovs-vsctl"));
        c.arg(format!("--db=unix:{}", lab.dir().join("db.sock").display())).arg("--timeout=15").args(args);
        lab.run(&mut c)
    }
}

impl Backend for Ovs {
    fn name(&self) -> &str {
        if self.tso {
            "ovs-tso"
        } else {
            "ovs"
        }
    }
    fn title(&self) -> &str {
        if self.tso {
            "Open vSwitch netdev (TAP) + userspace TSO"
        } else {
            "Open vSwitch netdev (TAP)"
        }
    }
    fn up(&mut self, lab: &mut Lab, ends: &[Endpoint]) -> Res<Segment> {
        for t in ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"] {
            if !have(t) {
                return Err(SetupError::Skip(format!(
                    "{t} not found (Debian package openvswitch-switch), {INSTALL_HINT}"
                )));
            }
        }
        let schema = Path::new("/usr/share/openvswitch/vswitch.ovsschema");
        if !schema.exists() {
            return Err(SetupError::Skip(format!(
                "{} not found (Debian package openvswitch-common), {INSTALL_HINT}",
                schema.display()
            )));
        }
        let s = switch_ns(lab)?;
        let d = lab.dir().to_path_buf();
        let p = |f: &str| d.join(f).display().to_string();
        let mut c = self.cmd(lab, Command::new("ovsdb-tool"));
        lab.run(c.args(["create", &p("conf.db")]).arg(schema))?;
        let mut c = self.cmd(lab, lab.in_ns(&s, "ovsdb-server", false));
        c.arg(p("conf.db"))
            .arg(format!("--remote=punix:{}", p("db.sock")))
            .arg(format!("--pidfile={}", p("ovsdb-server.pid")))
            .args(["--detach", "--no-chdir"])
            .arg(format!("--log-file={}", p("ovsdb-server.log")))
            .arg(format!("--unixctl={}", p("ovsdb-server.ctl")));
        lab.run(&mut c).map_err(|e| fail(format!("ovsdb-server did not start: {e}")))?;
        lab.track_pidfile(&d.join("ovsdb-server.pid"), "ovsdb-server")?;
        self.vsctl(lab, &["--no-wait", "init"])?;
        if self.tso {
            self.vsctl(lab, &["--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true"])?;
        }
        let mut c = self.cmd(lab, lab.in_ns(&s, "ovs-vswitchd", true));
        c.arg(format!("unix:{}", p("db.sock")))
            .arg(format!("--pidfile={}", p("ovs-vswitchd.pid")))
            .args(["--detach", "--no-chdir"])
            .arg(format!("--log-file={}", p("ovs-vswitchd.log")))
            .arg(format!("--unixctl={}", p("ovs-vswitchd.ctl")));
        if let Err(e) = lab.run(&mut c) {
            let log = std::fs::read_to_string(d.join("ovs-vswitchd.log")).unwrap_or_default();
            let why = log.lines().find(|l| l.contains("ERR") || l.contains("EMER")).unwrap_or("");
            return Err(fail(format!("ovs-vswitchd did not start: {e} {why}")));
        }
        let pid = lab.track_pidfile(&d.join("ovs-vswitchd.pid"), "ovs-vswitchd")?;
        self.vsctl(lab, &["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"])
            .map_err(|e| fail(format!("ovs-vsctl add-br (netdev datapath) failed: {e}")))?;
        let taps: Vec<String> = (0..ends.len()).map(|i| tap_name(lab, i)).collect();
        for t in &taps {
            self.vsctl(lab, &["add-port", "br0", t, "--", "set", "interface", t, "type=tap"])
                .map_err(|e| fail(format!("ovs-vsctl add-port {t} type=tap failed: {e}")))?;
        }
        let exists = |t: &str| {
            Command::new("ip")
                .args(["-n", &s, "link", "show", t])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|st| st.success())
        };
        if !lab.wait_for(Duration::from_secs(10), Duration::from_millis(100), || taps.iter().all(|t| exists(t)))? {
            return Err(fail("ovs-vswitchd did not make its TAPs"));
        }
        move_taps(lab, &s, ends)?;
        let setup = if self.tso {
            "as ovs, with other_config:userspace-tso-enable=true (vnet_hdr and TSO on the TAPs)"
        } else {
            "ovs-vswitchd, userspace (netdev) datapath, type=tap ports created in namespace S and moved to A and B, NORMAL action"
        };
        Ok(Segment { switch_pids: vec![pid], addrs: ends.iter().map(|e| e.addr).collect(), setup: setup.into() })
    }
}

/// How the tapyard backend joins the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapyardMode {
    /// One network, `--ipam none` (pure L2, like the bridge).
    Switched,
    /// One network per endpoint (198.18.N.0/24, N = 1, 2, ...; the endpoint
    /// gets .10, whatever address it asked for), joined by one router.
    Routed,
    /// As `Switched`, the daemon started with `--poll busy`.
    Busy,
    /// As `Switched`, both ports AF_XDP (`connect --kind afxdp`).
    Afxdp,
    /// As `Switched`, the daemon started with `--tap-steering cpu`.
    Steer,
}

/// A tapyard daemon started by this backend (this very executable, or
/// `exe`), with its socket and state in the lab's directory and `--uplink
/// none`; networks made through the control socket.
#[derive(Debug)]
pub struct Tapyard {
    pub exe: PathBuf,
    pub mode: TapyardMode,
    /// `daemon --workers N`.
    pub workers: Option<u32>,
    /// Where the daemon's stderr goes.
    pub daemon_log: PathBuf,
    /// Run the daemon in this namespace (its uplink is that namespace's) rather than this one.
    pub netns: Option<String>,
    /// Let the daemon have its uplink (egress NAT); false: `--uplink none`.
    pub uplink: bool,
}

impl Tapyard {
    /// A daemon of this executable in this namespace, `--uplink none`.
    pub fn new(mode: TapyardMode, workers: Option<u32>, daemon_log: PathBuf) -> std::io::Result<Tapyard> {
        Ok(Tapyard { exe: std::env::current_exe()?, mode, workers, daemon_log, netns: None, uplink: false })
    }
}

impl Tapyard {
    /// The daemon's control socket.
    pub fn socket(lab: &Lab) -> PathBuf {
        lab.dir().join("ty.sock")
    }

    /// Starts the daemon and waits until it answers (10 s); a daemon that
    /// refuses one of `extra` flags is a skip (an older tapyard).
    pub fn start(&self, lab: &mut Lab, extra: &[&str]) -> Res<u32> {
        let exe = self.exe.to_string_lossy();
        let mut c = match &self.netns {
            Some(ns) => lab.in_ns(ns, &exe, true),
            None => lab.niced(&exe),
        };
        c.arg("--socket").arg(Self::socket(lab)).arg("daemon");
        if !self.uplink {
            c.args(["--uplink", "none"]);
        }
        c.arg("--state-dir").arg(lab.dir().join("state"));
        if let Some(w) = self.workers {
            c.args(["--workers", &w.to_string()]);
        }
        c.args(extra);
        let pid = lab.spawn(&mut c, &self.daemon_log, "tapyard daemon")?;
        let sock = Self::socket(lab);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Client::connect(&sock).and_then(|mut c| c.call_value(&Request::NetworkLs)).is_ok() {
                return Ok(pid);
            }
            if lab.exited(pid) {
                let log = std::fs::read_to_string(&self.daemon_log).unwrap_or_default();
                let why = log
                    .lines()
                    .find(|l| {
                        let l = l.to_ascii_lowercase();
                        l.contains("error") || l.contains("unexpected") || l.contains("invalid")
                    })
                    .or_else(|| log.lines().last())
                    .unwrap_or("no message")
                    .to_string();
                if let Some(flag) = extra.first() {
                    if why.contains(flag) {
                        return Err(SetupError::Skip(format!(
                            "this tapyard does not take `daemon {}` (the daemon refused it: {why})",
                            extra.join(" ")
                        )));
                    }
                }
                return Err(fail(format!("the tapyard daemon exited: {why}")));
            }
            if Instant::now() > deadline {
                return Err(fail("the tapyard daemon did not answer on its socket within 10 s"));
            }
            lab.pause(Duration::from_millis(50))?;
        }
    }

    /// One request to the daemon (logged in the lab's log).
    pub fn call(&self, lab: &Lab, req: &Request) -> Res<serde_json::Value> {
        lab.note(&format!("> {}", serde_json::to_string(req).unwrap_or_default()));
        let r = Client::connect(&Self::socket(lab)).and_then(|mut c| c.call_value(req));
        r.map_err(|e| fail(format!("tapyard: {e}")))
    }
}

impl Backend for Tapyard {
    fn name(&self) -> &str {
        match self.mode {
            TapyardMode::Switched => "tapyard",
            TapyardMode::Routed => "tapyard-routed",
            TapyardMode::Busy => "tapyard-busy",
            TapyardMode::Afxdp => "tapyard-afxdp",
            TapyardMode::Steer => "tapyard-steer",
        }
    }
    fn title(&self) -> &str {
        match self.mode {
            TapyardMode::Switched => "tapyard, switched",
            TapyardMode::Routed => "tapyard, routed",
            TapyardMode::Busy => "tapyard, switched, --poll busy",
            TapyardMode::Afxdp => "tapyard, switched, AF_XDP ports",
            TapyardMode::Steer => "tapyard, switched, --tap-steering cpu",
        }
    }
    fn up(&mut self, lab: &mut Lab, ends: &[Endpoint]) -> Res<Segment> {
        let extra: &[&str] = match self.mode {
            TapyardMode::Busy => &["--poll", "busy"],
            TapyardMode::Steer => &["--tap-steering", "cpu"],
            _ => &[],
        };
        let pid = self.start(lab, extra)?;
        let workers = self.workers.map(|w| format!(", --workers {w}")).unwrap_or_default();
        let (topo, addrs) = bench_topology(self.mode, ends)?;
        let subnets: Vec<String> = topo.networks.iter().filter_map(|n| n.subnet.map(|s| s.to_string())).collect();
        lab.note(&format!("> lab up {}", serde_json::to_string(&topo).unwrap_or_default()));
        // The lab engine of `tapyard lab up` builds it, on the daemon just
        // started (which it finds answering, so it starts none); its
        // namespaces are the endpoints', which the `Lab` guard owns.
        let opts = UpOptions { file: None, foreground: false, quiet: true };
        engine::up(&Self::socket(lab), topo, opts).map_err(|e| fail(format!("tapyard lab: {e:#}")))?;
        let setup = match self.mode {
            TapyardMode::Routed => format!(
                "tapyard daemon, A and B on two networks ({}) joined by a tapyard router{workers}",
                subnets.join(", ")
            ),
            TapyardMode::Busy => format!("as tapyard, the daemon started with --poll busy{workers}"),
            TapyardMode::Afxdp => format!("as tapyard, both ports `--kind afxdp` (veth + AF_XDP){workers}"),
            TapyardMode::Steer => format!("as tapyard, the daemon started with --tap-steering cpu{workers}"),
            TapyardMode::Switched => {
                format!("tapyard daemon, A and B on one network (--ipam none: pure L2){workers}")
            }
        };
        Ok(Segment { switch_pids: vec![pid], addrs, setup })
    }
}

/// The benchmark's segment as a lab topology (lab `bench`, its nodes the
/// endpoints' namespaces), and the address each endpoint gets. Switched
/// (and busy): the two endpoints on one link (a network without IPAM, pure
/// L2, as the Linux bridge), addressed as asked. Routed: a network per
/// endpoint (198.18.N.0/24, the endpoint .10, whatever it asked for) on one
/// router.
fn bench_topology(mode: TapyardMode, ends: &[Endpoint]) -> Res<(Topology, Vec<Ipv4Addr>)> {
    let node = |i: usize, e: &Endpoint, network: String, address: Address| Node {
        name: format!("n{}", i + 1),
        netns: Some(e.netns.clone()),
        interfaces: vec![Interface {
            network,
            ifname: "eth0".into(),
            mac: None,
            address,
            impair: None,
            port_security: None,
            kind: (mode == TapyardMode::Afxdp).then_some(crate::control::proto::PortKind::Afxdp),
        }],
        routes: vec![],
        sysctls: vec![],
        exec: vec![],
        commands: vec![],
    };
    let net = |name: String, subnet: Option<Ipv4Net>, link: Option<[String; 2]>| Network {
        name,
        subnet,
        gateway: None,
        mtu: None,
        internal: false,
        dns: vec![],
        link,
    };
    let mut t = Topology { name: "bench".into(), networks: vec![], routers: vec![], nodes: vec![] };
    let mut addrs = vec![];
    if mode == TapyardMode::Routed {
        let mut router = Router { name: "r".into(), networks: vec![], routes: vec![] };
        for (i, e) in ends.iter().enumerate() {
            let n = u8::try_from(i + 1).map_err(|_| fail("at most 255 endpoints"))?;
            let name = format!("r{n}");
            let subnet = Ipv4Net::new(Ipv4Addr::new(198, 18, n, 0), 24).map_err(|e| fail(e.to_string()))?;
            let ip = Ipv4Addr::new(198, 18, n, 10);
            t.networks.push(net(name.clone(), Some(subnet), None));
            router.networks.push(name.clone());
            t.nodes.push(node(i, e, name, Address::Static { ip, prefix: 24 }));
            addrs.push(ip);
        }
        t.routers.push(router);
    } else {
        let [a, b] = ends else {
            return Err(fail(format!("the tapyard backend joins two endpoints, not {}", ends.len())));
        };
        t.networks.push(net("ab".into(), None, Some(["n1:eth0".into(), "n2:eth0".into()])));
        for (i, e) in [a, b].into_iter().enumerate() {
            t.nodes.push(node(i, e, "ab".into(), Address::Manual { ip: e.addr, prefix: e.prefix_len }));
            addrs.push(e.addr);
        }
    }
    Ok((t, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_of_ip_o_link() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue\n\
                   5: tyb12pa@if4: <BROADCAST> mtu 1500\n\
                   7: br0: <BROADCAST> mtu 1500\n";
        assert_eq!(link_names(out), ["lo", "tyb12pa", "br0"]);
    }

    #[test]
    fn own_process_stat() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(starttime(me).is_some());
        assert!(cpu_ticks(me).is_some());
        assert!((-20..=19).contains(&own_nice()));
    }

    #[test]
    fn bench_topologies_are_lab_topologies_on_the_endpoints_namespaces() {
        let ends = [
            Endpoint { netns: "tyb1a".into(), addr: Ipv4Addr::new(10, 0, 0, 1), prefix_len: 24 },
            Endpoint { netns: "tyb1b".into(), addr: Ipv4Addr::new(10, 0, 0, 2), prefix_len: 24 },
        ];
        let (t, addrs) = bench_topology(TapyardMode::Switched, &ends).unwrap();
        assert_eq!(addrs, [ends[0].addr, ends[1].addr]);
        assert_eq!(t.networks.len(), 1);
        assert!(t.networks[0].link.is_some() && t.networks[0].subnet.is_none(), "one link, no IPAM");
        assert!(t.routers.is_empty());
        let ns: Vec<_> = t.nodes.iter().map(|n| t.node_ns(n)).collect();
        assert_eq!(ns, ["tyb1a", "tyb1b"]);
        assert_eq!(t.nodes[1].interfaces[0].address, Address::Manual { ip: ends[1].addr, prefix: 24 });

        let (t, addrs) = bench_topology(TapyardMode::Routed, &ends).unwrap();
        assert_eq!(addrs, [Ipv4Addr::new(198, 18, 1, 10), Ipv4Addr::new(198, 18, 2, 10)]);
        let subnets: Vec<_> = t.networks.iter().map(|n| n.subnet.unwrap().to_string()).collect();
        assert_eq!(subnets, ["198.18.1.0/24", "198.18.2.0/24"]);
        assert_eq!(t.routers[0].networks, ["r1", "r2"]);
        assert_eq!(t.nodes[0].interfaces[0].address, Address::Static { ip: addrs[0], prefix: 24 });

        assert!(bench_topology(TapyardMode::Busy, &ends[..1]).is_err(), "a link joins two");
    }

    #[test]
    fn prefix_is_short() {
        let d = std::env::temp_dir().join(format!("labkit-test-{}", std::process::id()));
        assert!(Lab::new("muchtoolongprefix", &d, &d.join("log"), None).is_err());
        let lab = Lab::new("tyk1", &d, &d.join("log"), None).unwrap();
        assert_eq!(lab.name("a"), "tyk1a");
        drop(lab);
        assert!(!d.exists(), "the guard removes its directory");
    }
}
