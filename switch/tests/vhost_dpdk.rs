//! tapyard's vhost-user backend against a frontend nobody here wrote: DPDK
//! testpmd with `net_virtio_user` (what a DPDK application in a VM or a
//! container does), on the same network as a container namespace.

mod common;

use std::process::Command;

use common::testpmd::{Testpmd, ONE_AT_A_TIME};
use common::*;

/// A daemon with a container and a vhost-user port on network `dn`: (daemon,
/// container, the port's socket, the port's MAC).
fn lab(tag: &str) -> (Daemon, Netns, String, String) {
    let d = Daemon::start(tag);
    d.ok(&["network", "create", "dn", "--subnet", "10.89.0.0/24"]);
    let ct = Netns::new(&format!("{tag}c"));
    d.ok(&["connect", "dn", &ct.name, "--ip", "10.89.0.2/24"]);
    let sock = d.dir.join("pmd.sock").to_str().unwrap().to_string();
    let p = d.json(&["connect", "dn", "--vhost-user", &sock]);
    let mac = p["mac"].as_str().unwrap().to_string();
    (d, ct, sock, mac)
}

fn vhost_port(d: &Daemon, sock: &str) -> serde_json::Value {
    let ports = d.json(&["port", "ls"]);
    ports.as_array().unwrap().iter().find(|p| p["vhost"]["socket"] == sock).cloned().unwrap_or_default()
}

/// testpmd as a virtio-user frontend on `sock`, in forwarding `mode`.
fn frontend(tag: &str, sock: &str, mac: &str, app: &[&str]) -> Testpmd {
    let vdev = format!("net_virtio_user0,path={sock},mac={mac}");
    // --no-flush-rx: testpmd would otherwise drain and free what arrives while it starts.
    let mut a: Vec<String> =
        vec!["-a".into(), "--no-flush-rx".into(), "--total-num-mbufs=8192".into(), "--stats-period=1".into()];
    a.extend(app.iter().map(|s| s.to_string()));
    Testpmd::spawn(tag, "0,1", &["--vdev".into(), vdev], &a)
}

fn kernel_rx_packets(ns: &Netns) -> u64 {
    let out = Command::new("ip").args(["-n", &ns.name, "-j", "-s", "link", "show", "eth0"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

#[test]
fn testpmd_answers_a_containers_pings_through_tapyard() {
    if !common::net_admin() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (d, ct, sock, mac) = lab("dp");
    // icmpecho: testpmd answers ARP requests and ICMP echo requests itself.
    let pmd = frontend("echo", &sock, &mac, &["--forward-mode=icmpecho"]);
    assert!(
        wait_for(30, || vhost_port(&d, &sock)["vhost"]["connected"] == true
            && vhost_port(&d, &sock)["vhost"]["features"].as_array().is_some_and(|f| !f.is_empty())),
        "testpmd did not connect; its log:\n{}\ndaemon log:\n{}",
        pmd.log(),
        d.log()
    );
    assert!(pmd.wait_log("packet forwarding - ports=1", 30), "{}", pmd.log());
    let p = vhost_port(&d, &sock);
    let features: Vec<&str> = p["vhost"]["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(features.contains(&"version_1") && features.contains(&"mrg_rxbuf"), "{features:?}");
    // Both directions: the request crosses tapyard into testpmd's rings, the reply comes back.
    assert!(
        wait_for(20, || ct.run(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "10.89.0.50"])),
        "no echo replies from testpmd; port: {}\ntestpmd log:\n{}",
        vhost_port(&d, &sock),
        pmd.log()
    );
    let p = vhost_port(&d, &sock);
    assert!(p["counters"]["rx_packets"].as_u64().unwrap() >= 3, "{p}");
    assert!(p["counters"]["tx_packets"].as_u64().unwrap() >= 3, "{p}");
}

#[test]
fn testpmd_txonly_frames_arrive_in_a_container() {
    if !common::net_admin() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (d, ct, sock, mac) = lab("dt");
    let ct_mac = d.port(&ct.name)["mac"].as_str().unwrap().to_string();
    let before = kernel_rx_packets(&ct);
    let mut pmd = frontend(
        "tx",
        &sock,
        &mac,
        &["--forward-mode=txonly", "--txpkts=64", &format!("--eth-peer=0,{ct_mac}"), "--burst=32"],
    );
    // Frames from testpmd's rings through tapyard into the container's kernel.
    assert!(
        wait_for(30, || kernel_rx_packets(&ct) > before + 10_000),
        "the container got {} frames; port: {}\ntestpmd log:\n{}",
        kernel_rx_packets(&ct) - before,
        vhost_port(&d, &sock),
        pmd.log()
    );
    let log = pmd.stop();
    let p = vhost_port(&d, &sock);
    assert!(p["counters"]["rx_packets"].as_u64().unwrap() > 10_000, "{p}");
    assert_eq!(p["vhost"]["counters"]["bad_chain_too_short"], 0, "{p}");
    assert!(log.contains("TX-packets"), "testpmd printed no totals:\n{log}");
    // testpmd went away: the port is down, and stays.
    assert!(wait_for(10, || vhost_port(&d, &sock)["vhost"]["connected"] == false));
}
