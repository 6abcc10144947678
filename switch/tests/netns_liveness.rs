//! A TAP port goes when its namespace goes, however the TAP was opened.
//!
//! A TAP's queue fds hold a reference on the namespace they were opened in,
//! and tapyard opens them inside the container's namespace (at connect, and
//! when a restarted daemon reattaches a surviving interface). So deleting a
//! namespace never makes the interface vanish by itself: the daemon notices
//! by checking the namespace's name (control/housekeeping.rs), within about
//! a second. The plain case (connect, `ip netns del`) is in l2.rs.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn a_namespace_deleted_after_a_sigkill_restart_takes_its_port_with_it() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("lvk");
    let net = name("lvk");
    d.ok(&["network", "create", &net, "--subnet", "10.86.0.0/24"]);
    let keep = Netns::new("lvkk");
    let doomed = Netns::new("lvkd");
    d.ok(&["connect", &net, &keep.name, "--ip", "auto"]);
    d.ok(&["connect", &net, &doomed.name, "--ip", "auto"]);
    assert_eq!(d.signal("KILL"), None);
    d.spawn();
    assert!(d.log().contains("reattached to its surviving interface"), "{}", d.log());
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 2);

    doomed.delete();
    let gone = wait_for(5, || d.port(&doomed.name).is_null());
    assert!(gone, "the port of a namespace deleted after a restart must be removed; log:\n{}", d.log());
    assert!(d.log().contains("namespace gone"), "the removal must say why; log:\n{}", d.log());
    let ports = d.json(&["port", "ls"]);
    assert_eq!(ports.as_array().unwrap().len(), 1, "the other port stays: {ports}");
    assert!(keep.reaches("10.86.0.1"), "the other container still reaches the gateway");
}

#[test]
fn a_pid_namespace_goes_with_its_process() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("lvp");
    let net = name("lvp");
    d.ok(&["network", "create", &net, "--subnet", "10.87.0.0/24"]);
    // A "container": a process in a network namespace of its own, named by nothing but its pid.
    let child = Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id();
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let entered = wait_for(5, || std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != ours));
    if !entered {
        stop_child(child, "KILL");
        panic!("unshare --net did not enter a new namespace");
    }
    let spec = format!("pid:{pid}");
    let out = d.cli(&["connect", &net, &spec, "--ip", "auto"]);
    let connected = out.status.success();
    stop_child(child, "KILL");
    assert!(connected, "connect {spec}: {}", String::from_utf8_lossy(&out.stderr));

    let gone = wait_for(5, || d.port(&spec).is_null());
    assert!(gone, "the port of an exited pid:N container must be removed; log:\n{}", d.log());
    assert!(d.log().contains("namespace gone"), "the removal must say why; log:\n{}", d.log());
}
