//! Harness for the integration tests: a real `tapyard daemon` on a private
//! socket and state directory, and network namespaces named after the test
//! process, all removed on drop (also when a test fails).
//!
//! Namespaces and TAP devices need CAP_NET_ADMIN: run as root, or through
//! `scripts/test.sh`, which re-runs the suite inside `unshare --user
//! --map-root-user --net --mount`. A test that needs them starts with
//! `if !net_admin() { return; }`: under a plain `cargo test` without the
//! capability it is skipped with a printed reason, and every other test still
//! runs; under `scripts/test.sh` (which exports `TAPYARD_TEST_STRICT=1`) it
//! fails instead, as does a test whose peer program is missing (`need`)
//! anywhere: the test command never passes by not testing.
//!
//! `vhost_frontend` is a virtio-net VM (vhost-user frontend) for vhost-user ports.

#![allow(dead_code)]

pub mod testpmd;
pub mod vhost_frontend;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const TAPYARD: &str = env!("CARGO_BIN_EXE_tapyard");

/// A unique, short tag for names: process id plus a per-test tag.
pub fn name(tag: &str) -> String {
    format!("ty{}{}", std::process::id(), tag)
}

/// The environment variable `scripts/test.sh` sets to 1: nothing may be skipped.
pub const STRICT_ENV: &str = "TAPYARD_TEST_STRICT";

/// Whether this run is the test command's (`TAPYARD_TEST_STRICT=1`), where a
/// missing capability fails a test instead of skipping it.
pub fn strict() -> bool {
    std::env::var_os(STRICT_ENV).is_some_and(|v| v == "1")
}

const NEEDS_NET_ADMIN: &str = "needs CAP_NET_ADMIN to create network namespaces and TAP devices \
     (run as root, or run scripts/test.sh, which runs the tests inside \
     `unshare --user --map-root-user --net --mount`)";

/// Whether this process can create network namespaces (probed once, by making one).
fn can_make_namespaces() -> bool {
    static PROBE: OnceLock<bool> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let probe = name("probe");
        let ok =
            Command::new("ip").args(["netns", "add", &probe]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        let _ = Command::new("ip").args(["netns", "del", &probe]).stderr(Stdio::null()).status();
        ok
    })
}

/// True when the calling test may create namespaces and TAP devices. When it
/// may not: under `scripts/test.sh` (strict) the test fails here; otherwise a
/// line "skipped: ..." naming the test goes straight to the terminal (past the
/// harness's output capture, so a plain `cargo test` shows it) and the caller
/// returns.
pub fn net_admin() -> bool {
    if can_make_namespaces() {
        return true;
    }
    assert!(!strict(), "this test {NEEDS_NET_ADMIN}");
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {NEEDS_NET_ADMIN}");
    false
}

/// Whether this process runs in the host's (initial) user namespace, whose
/// uid map is the identity over every id: where root has the capabilities
/// that only count there (CAP_BPF for XDP programs). Not so in
/// scripts/test.sh's user-namespace run or scripts/test-rootless.sh's pass.
pub fn initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Fails the calling test, with the Debian package that provides it, when `tool`
/// is not on PATH. Peers are never optional: a test without its peer fails.
pub fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "{tool} is not installed: run scripts/setup.sh (Debian package {package})");
}

fn ensure_privileged() {
    assert!(can_make_namespaces(), "this test {NEEDS_NET_ADMIN}; start it with `if !net_admin() {{ return; }}`");
}

pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
    /// The namespace the daemon runs in (`ip netns exec`); none: the test's.
    netns: Option<String>,
    /// Daemon flags after `daemon` (`--uplink none` unless given).
    flags: Vec<String>,
}

impl Daemon {
    /// A daemon in the test's namespace, without an uplink (many run at once).
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, None, &["--uplink", "none"])
    }

    /// A daemon in namespace `netns` (its "host", with an uplink of its own
    /// unless `flags` say otherwise), with daemon `flags`.
    pub fn start_in(tag: &str, netns: &str, flags: &[&str]) -> Daemon {
        Daemon::start_with(tag, Some(netns), flags)
    }

    pub fn start_with(tag: &str, netns: Option<&str>, flags: &[&str]) -> Daemon {
        ensure_privileged();
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name(tag)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            socket: dir.join("run/tapyard.sock"),
            state: dir.join("state"),
            dir,
            child: None,
            netns: netns.map(str::to_string),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// Starts the daemon process on this socket and state directory and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        // `ip netns exec` execs the daemon: the child's pid is the daemon's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TAPYARD]);
                c
            }
            None => Command::new(TAPYARD),
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon")
            .args(&self.flags)
            .args(["--workers", "2", "--state-dir"])
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.cli(&["network", "ls"]).status.success() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("daemon exited ({st}) before answering; log:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "daemon did not answer; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends `sig` to the daemon and waits for it to exit; returns its exit code (None if killed by a signal).
    pub fn signal(&mut self, sig: &str) -> Option<i32> {
        let mut child = self.child.take().expect("daemon running");
        let _ = Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit after SIG{sig}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(TAPYARD).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    /// Runs the CLI and panics with its stderr if it fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tapyard {args:?} failed ({}): {}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The `port ls` entry of the port in namespace `netns`.
    pub fn port(&self, netns: &str) -> serde_json::Value {
        let ports = self.json(&["port", "ls"]);
        ports.as_array().unwrap().iter().find(|p| p["netns"] == netns).cloned().unwrap_or_default()
    }

    /// Runs the CLI with `--json` appended and parses its output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// Sends `sig` to a child we started, waits up to 5 s for it to exit, then kills it.
pub fn stop_child(mut c: Child, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &c.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A network namespace made by a test, deleted on drop.
pub struct Netns {
    pub name: String,
}

/// A namespace's interface as the container sees it ([`Netns::link`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    pub mac: String,
    pub ifindex: u64,
    /// IPv4 addresses as `A.B.C.D/P`.
    pub addrs: Vec<String>,
    pub default_via: Option<String>,
}

/// The IPv4 addresses (`A.B.C.D/P`) of one link object of `ip -j addr`.
pub fn inet_addrs(link: &serde_json::Value) -> Vec<String> {
    let Some(info) = link["addr_info"].as_array() else { return Vec::new() };
    info.iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        ensure_privileged();
        let n = Netns { name: name(tag) };
        sh(&["ip", "netns", "add", &n.name]);
        sh(&["ip", "-n", &n.name, "link", "set", "lo", "up"]);
        n
    }

    /// Runs a command inside the namespace; returns whether it succeeded.
    pub fn run(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Turns IPv6 off, so that no router solicitations, MLD reports or
    /// neighbour discovery add frames a test counts or refresh the
    /// forwarding table behind its back.
    pub fn no_ipv6(&self) {
        for k in ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"] {
            assert!(self.run(&["sysctl", "-qw", k]), "cannot set {k} in {}", self.name);
        }
    }

    /// `ip -n NS -j ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new("ip").args(["-n", &self.name, "-j"]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?} in {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `ifname` as the container sees it (read inside the namespace, not
    /// from the daemon's records).
    pub fn link(&self, ifname: &str) -> Link {
        let l = &self.ip_json(&["addr", "show", "dev", ifname])[0];
        let up = l["flags"].as_array().unwrap().iter().any(|f| f == "UP");
        let routes = self.ip_json(&["-4", "route", "show", "default"]);
        let default_via = routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dev"] == ifname)
            .and_then(|r| r["gateway"].as_str())
            .map(String::from);
        Link {
            up,
            mac: l["address"].as_str().unwrap().to_string(),
            ifindex: l["ifindex"].as_u64().unwrap(),
            addrs: inet_addrs(l),
            default_via,
        }
    }

    pub fn has_link(&self, ifname: &str) -> bool {
        self.run(&["ip", "link", "show", "dev", ifname])
    }

    /// Pings `ip` until one reply or 3 s pass.
    pub fn reaches(&self, ip: &str) -> bool {
        self.run(&["ping", "-n", "-q", "-c", "1", "-w", "3", ip])
    }

    /// Two pings 0.2 s apart, one second to answer: false when nothing answers.
    pub fn ping_quick(&self, ip: &str) -> bool {
        self.run(&["ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", ip])
    }

    pub fn delete(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `f` every 50 ms until it holds or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
