//! `connect`'s kernel side (control/netns.rs over rtnetlink): what a refused
//! connect leaves behind, and that the daemon's threads never stay in a
//! container's namespace.

mod common;

use std::process::Command;

use common::*;

/// Interfaces in the namespace `ns` (None: the daemon's and ours), by name.
fn links(ns: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(["-j", "link", "show"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().iter().map(|l| l["ifname"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_taken_interface_name_is_a_conflict_that_leaves_nothing_behind() {
    let d = Daemon::start("taken");
    let net = name("taken");
    d.ok(&["network", "create", &net, "--subnet", "10.84.0.0/24"]);
    let a = Netns::new("takena");
    sh(&["ip", "-n", &a.name, "tuntap", "add", "eth0", "mode", "tap"]);
    let host_before = links(None);
    let ns_before = links(Some(&a.name));

    let out = d.cli(&["connect", &net, &a.name, "--ip", "10.84.0.9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eth0 already exists in namespace") && err.contains("--ifname"), "{err}");
    assert_eq!(links(None), host_before, "no TAP left in the daemon's namespace");
    assert_eq!(links(Some(&a.name)), ns_before, "no TAP left in the container");
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());

    // Under another name it works, and the container gets address and route.
    d.ok(&["connect", &net, &a.name, "--ifname", "eth1", "--ip", "10.84.0.9"]);
    assert!(a.run(&["sh", "-c", "ip -4 addr show dev eth1 | grep -q 'inet 10.84.0.9/24'"]));
    assert!(a.run(&["sh", "-c", "ip -4 route show default | grep -q 'via 10.84.0.1 dev eth1'"]));
    assert!(a.reaches("10.84.0.1"), "the gateway answers over eth1");
}

#[test]
fn the_daemons_threads_stay_in_its_own_namespace() {
    let d = Daemon::start("ownns");
    let net = name("ownns");
    d.ok(&["network", "create", &net, "--subnet", "10.85.0.0/24"]);
    let a = Netns::new("ownnsa");
    let b = Netns::new("ownnsb");
    d.ok(&["connect", &net, &a.name, "--ip", "auto"]);
    d.ok(&["connect", &net, &b.name, "--ip", "auto"]);
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap();
    let mut n = 0;
    for t in tasks {
        let t = t.unwrap().path();
        // A thread may end between listing and reading: skip it.
        let Ok(ns) = std::fs::read_link(t.join("ns/net")) else { continue };
        assert_eq!(ns, ours, "daemon thread {} is in another network namespace", t.display());
        n += 1;
    }
    assert!(n > 1, "the daemon has a control thread and workers");
}
