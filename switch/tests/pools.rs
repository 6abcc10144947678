//! Default pools and explicit subnets against what the daemon's host already
//! routes: a network created without `--subnet` skips every subnet that
//! overlaps a route or address of the daemon's namespace (as Docker's pools
//! do), and an explicit `--subnet` that overlaps one is refused with the
//! route named, unless `--force-subnet`.
//!
//! Each daemon runs inside a namespace of its own (`ip netns exec`), so the
//! "host" is a namespace the test builds: its routes are exactly the ones
//! added here, whatever the machine's own (a `docker0`, say) are, and
//! nothing is added to the machine's namespace. The namespace, with its
//! empty bridges standing in for `docker0`, is deleted on drop, also when the test fails.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use common::*;

/// A daemon whose own namespace is `ns`, with extra daemon arguments.
struct HostDaemon {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl HostDaemon {
    fn start(tag: &str, ns: &Netns, extra: &[&str]) -> HostDaemon {
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name(tag)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        // `ip netns exec` execs the daemon, so the child's pid is the daemon's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, TAPYARD, "--socket"])
            .arg(dir.join("tapyard.sock"))
            .args(["daemon", "--uplink", "none", "--workers", "1", "--state-dir"])
            .arg(dir.join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = HostDaemon { socket: dir.join("tapyard.sock"), dir, child: Some(child) };
        assert!(
            wait_for(10, || d.cli(&["network", "ls"]).status.success()),
            "daemon did not answer; log:\n{}",
            std::fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default()
        );
        d
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(TAPYARD).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    /// `network create` with `args`: its subnet, or its exit code and stderr.
    fn create(&self, args: &[&str]) -> Result<String, (Option<i32>, String)> {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        a.push("--json");
        let out = self.cli(&a);
        if !out.status.success() {
            return Err((out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Ok(v["subnet"].as_str().unwrap_or_default().to_string())
    }
}

impl Drop for HostDaemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ip -n NS ARGS...`, panicking on failure.
fn ip(ns: &Netns, args: &[&str]) {
    let mut a = vec!["ip", "-n", &ns.name];
    a.extend_from_slice(args);
    sh(&a);
}

/// The case: a host whose `docker0` holds 172.17.0.1/16.
#[test]
fn default_pools_skip_the_hosts_routes_and_explicit_overlaps_are_refused() {
    if !net_admin() {
        return;
    }
    let ns = Netns::new("pools");
    ip(&ns, &["link", "add", "docker0", "type", "bridge"]);
    ip(&ns, &["addr", "add", "172.17.0.1/16", "dev", "docker0"]);
    ip(&ns, &["link", "set", "docker0", "up"]);
    // An address on a link that is down has no connected route: the address
    // alone must block its prefix.
    ip(&ns, &["link", "add", "quiet0", "type", "bridge"]);
    ip(&ns, &["addr", "add", "198.18.4.1/24", "dev", "quiet0"]);
    let d = HostDaemon::start("pools", &ns, &[]);

    assert_eq!(d.create(&[&name("auto1")]).unwrap(), "172.18.0.0/16");
    let (code, err) = d.create(&[&name("mine"), "--subnet", "172.17.5.0/24"]).unwrap_err();
    assert_eq!(code, Some(1), "a conflict: {err}");
    assert!(err.contains("route 172.17.0.0/16 dev docker0") && err.contains("--force-subnet"), "{err}");
    let (code, err) = d.create(&[&name("mine"), "--subnet", "198.18.4.0/25"]).unwrap_err();
    assert_eq!(code, Some(1), "a conflict: {err}");
    assert!(err.contains("address 198.18.4.1/24 on quiet0"), "{err}");
    assert_eq!(d.create(&[&name("mine"), "--subnet", "172.17.5.0/24", "--force-subnet"]).unwrap(), "172.17.5.0/24");
    // --force-subnet means nothing without --subnet: the CLI says so.
    let (code, _) = d.create(&[&name("x"), "--force-subnet"]).unwrap_err();
    assert_eq!(code, Some(2));
}

#[test]
fn the_default_route_blocks_nothing_and_a_pool_can_run_out_on_host_routes() {
    if !net_admin() {
        return;
    }
    let ns = Netns::new("poolx");
    ip(&ns, &["link", "add", "up0", "type", "bridge"]);
    ip(&ns, &["addr", "add", "198.18.0.1/24", "dev", "up0"]);
    ip(&ns, &["link", "set", "up0", "up"]);
    // A default route overlaps every subnet; it must not count (Docker's rule).
    ip(&ns, &["route", "add", "default", "dev", "up0"]);
    // An AnyIP range in the local table is a claim on its prefix as well.
    ip(&ns, &["route", "add", "local", "198.19.0.0/16", "dev", "lo"]);
    let d = HostDaemon::start("poolx", &ns, &["--default-pool", "198.18.0.0/23/24"]);

    assert_eq!(d.create(&[&name("p1")]).unwrap(), "198.18.1.0/24");
    let (code, err) = d.create(&[&name("p2")]).unwrap_err();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("every subnet of the default address pools is taken"), "{err}");
    let (code, err) = d.create(&[&name("p3"), "--subnet", "198.19.1.0/24"]).unwrap_err();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("route local 198.19.0.0/16 dev lo"), "{err}");
    // A subnet nothing on the host routes is taken as before.
    assert_eq!(d.create(&[&name("p4"), "--subnet", "10.77.0.0/24"]).unwrap(), "10.77.0.0/24");
}

/// On a host that routes nothing (a fresh namespace), networks without
/// `--subnet` take Docker's default pools in order; an explicit subnet is
/// skipped by the next automatic one. (This ran in the machine's own
/// namespace before, where a `docker0` would change the answer.)
#[test]
fn networks_without_a_subnet_take_the_next_default_pool_subnet() {
    if !net_admin() {
        return;
    }
    let ns = Netns::new("poolq");
    let d = HostDaemon::start("poolq", &ns, &[]);
    assert_eq!(d.create(&[&name("poola")]).unwrap(), "172.17.0.0/16");
    assert_eq!(d.create(&[&name("poolb")]).unwrap(), "172.18.0.0/16");
    assert_eq!(d.create(&[&name("poolc"), "--subnet", "172.19.0.0/24"]).unwrap(), "172.19.0.0/24");
    assert_eq!(d.create(&[&name("poold")]).unwrap(), "172.20.0.0/16");
    assert_eq!(d.create(&[&name("poole"), "--ipam", "none"]).unwrap(), "");
    let out = d.cli(&["network", "inspect", &name("poola"), "--json"]);
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((a["gateway"].as_str(), a["pool_size"].as_u64()), (Some("172.17.0.1"), Some(65534)));
}
