//! AF_XDP ports (`connect --kind afxdp`, port/xdp.rs and control/netns.rs's
//! veth pair): traffic through them both ways, to a TAP port and to the
//! gateway, TCP with the container's checksum offloads, what `port ls`
//! shows, and the veth's life: deleted with the port, kept across a killed
//! daemon and taken back, gone with its namespace.
//!
//! AF_XDP needs CAP_BPF and CAP_NET_RAW in the host's user namespace: in a
//! user namespace (scripts/test.sh as a user, scripts/test-rootless.sh's
//! pass as nobody) these tests say they are skipped, and the test
//! command's summary names them; the root pass runs them.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

/// Whether this process may load XDP programs (root in the initial user
/// namespace). When not, under the test command the summary says so
/// (scripts/test.sh names "AF_XDP ports" among what it skipped).
fn can_xdp() -> bool {
    if !net_admin() {
        return false;
    }
    if !initial_userns() {
        let test = std::thread::current().name().unwrap_or("this test").to_string();
        // Past the harness's output capture, as common::net_admin's line.
        let _ =
            writeln!(std::io::stderr(), "{test}: skipped: AF_XDP needs root in the host's user namespace (CAP_BPF)");
        return false;
    }
    true
}

/// Whether interface `name` exists in the test's (and daemon's) namespace.
fn host_has(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().is_ok_and(|o| o.status.success())
}

/// `iperf3 -c` from `client` to `server_ip` for 2 MB; true when it completed.
fn tcp_transfer(client: &Netns, server: &Netns, server_ip: &str) -> bool {
    let srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "iperf3", "-s", "-1", "-B", server_ip])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The server listens once its socket is bound: wait for that, not a fixed time.
    let listening = wait_for(10, || {
        Command::new("ip")
            .args(["netns", "exec", &server.name, "ss", "-Hltn", "sport = :5201"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    let ok = listening && client.run(&["iperf3", "-c", server_ip, "-n", "2M", "--connect-timeout", "3000"]);
    stop_child(srv, "TERM");
    ok
}

#[test]
fn afxdp_ports_switch_to_each_other_to_a_tap_and_to_the_gateway() {
    if !can_xdp() {
        return;
    }
    need("iperf3", "iperf3");
    let d = Daemon::start("xdp");
    let net = name("xdp");
    d.ok(&["network", "create", &net, "--subnet", "10.91.0.0/24"]);
    let a = Netns::new("xdpa");
    let b = Netns::new("xdpb");
    let c = Netns::new("xdpc");
    d.ok(&["connect", &net, &a.name, "--kind", "afxdp", "--ip", "10.91.0.2"]);
    d.ok(&["connect", &net, &b.name, "--kind", "afxdp", "--ip", "10.91.0.3"]);
    d.ok(&["connect", &net, &c.name, "--ip", "10.91.0.4"]);

    // What port ls says, and what the kernel has.
    let pa = d.port(&a.name);
    let switch_end = pa["afxdp"]["switch_ifname"].as_str().expect("afxdp details in port ls").to_string();
    assert!(switch_end.starts_with("tyx"), "{pa}");
    let mode = pa["afxdp"]["mode"].as_str().unwrap();
    assert!(mode.starts_with("native") || mode.starts_with("generic"), "{pa}");
    assert_eq!(pa["queues"], 2, "one queue per worker: {pa}");
    assert_eq!(pa["offloads"], serde_json::json!([]), "{pa}");
    assert!(host_has(&switch_end), "the switch's end is in the daemon's namespace");
    let la = a.link("eth0");
    assert!(la.up && la.addrs == ["10.91.0.2/24"] && la.default_via.as_deref() == Some("10.91.0.1"), "{la:?}");
    assert_eq!(la.mac, pa["mac"].as_str().unwrap());

    assert!(a.reaches("10.91.0.3"), "AF_XDP to AF_XDP");
    assert!(a.reaches("10.91.0.4"), "AF_XDP to TAP");
    assert!(c.reaches("10.91.0.2"), "TAP to AF_XDP");
    assert!(b.reaches("10.91.0.1"), "the gateway answers an AF_XDP port");
    // TCP with the container's own checksum offloads on, both ways and to a TAP.
    assert!(tcp_transfer(&a, &b, "10.91.0.3"), "TCP AF_XDP -> AF_XDP\n{}", d.log());
    assert!(tcp_transfer(&c, &a, "10.91.0.2"), "TCP TAP -> AF_XDP (TSO super-frames segmented)\n{}", d.log());
    assert!(tcp_transfer(&a, &c, "10.91.0.4"), "TCP AF_XDP -> TAP\n{}", d.log());

    // The counters saw it; the sockets' own drop counters are there (what
    // they hold depends on how the flood met the worker: only their presence).
    let pa = d.port(&a.name);
    for k in ["rx_ring_full", "rx_fill_ring_empty", "port_rx_dropped"] {
        assert!(pa["afxdp"]["counters"][k].is_u64(), "{k}: {pa}");
    }
    assert_eq!(pa["afxdp"]["counters"]["port_rx_dropped"], 0, "no frame too long for a chunk: {pa}");
    let stats = d.json(&["stats"]);
    let sa = stats["ports"].as_array().unwrap().iter().find(|p| p["netns"] == a.name.as_str()).cloned().unwrap();
    assert!(sa["afxdp_counters"]["rx_ring_full"].is_u64(), "stats carries the sockets' counters: {sa}");
    let table = d.ok(&["port", "ls", &net]);
    assert!(table.contains(&format!("afxdp(native):{switch_end}")), "{table}");
    assert!(pa["counters"]["rx_packets"].as_u64().unwrap() > 1000, "{pa}");
    assert!(pa["counters"]["tx_packets"].as_u64().unwrap() > 1000, "{pa}");

    // port set --down: the container sees its carrier go, and nothing
    // passes; --up brings both back through the same sockets.
    d.ok(&["port", "set", &net, &b.name, "--down"]);
    let no_carrier = || b.run(&["sh", "-c", "ip link show eth0 | grep -q NO-CARRIER"]);
    assert!(wait_for(5, no_carrier), "the container sees no carrier");
    assert!(!a.ping_quick("10.91.0.3"));
    d.ok(&["port", "set", &net, &b.name, "--up"]);
    assert!(wait_for(10, || a.ping_quick("10.91.0.3")), "traffic flows again after --up\n{}", d.log());

    // Disconnect deletes the veth: both ends.
    d.ok(&["disconnect", &net, &a.name]);
    assert!(!host_has(&switch_end), "the switch's end is gone");
    assert!(!a.has_link("eth0"), "the container's end is gone");
    assert!(!b.reaches("10.91.0.2"));
}

#[test]
fn an_afxdp_port_survives_a_killed_daemon_and_goes_with_its_namespace() {
    if !can_xdp() {
        return;
    }
    let mut d = Daemon::start("xdpr");
    let net = name("xdpr");
    d.ok(&["network", "create", &net, "--subnet", "10.92.0.0/24"]);
    let a = Netns::new("xdpra");
    let b = Netns::new("xdprb");
    d.ok(&["connect", &net, &a.name, "--kind", "afxdp", "--ip", "10.92.0.2"]);
    d.ok(&["connect", &net, &b.name, "--kind", "afxdp", "--ip", "10.92.0.3"]);
    let switch_end = d.port(&a.name)["afxdp"]["switch_ifname"].as_str().unwrap().to_string();
    let index_before = a.link("eth0").ifindex;
    assert!(a.reaches("10.92.0.3"));

    d.signal("KILL");
    assert!(host_has(&switch_end), "a veth outlives the daemon");
    d.spawn();
    assert!(d.log().contains("port reattached to its surviving interface"), "{}", d.log());
    assert_eq!(a.link("eth0").ifindex, index_before, "the same interface, not a new one");
    assert!(a.reaches("10.92.0.3"), "traffic flows again after the restart\n{}", d.log());
    assert!(d.port(&a.name)["afxdp"]["mode"].as_str().is_some_and(|m| m != "detached"));

    // The namespace goes: the veth goes with it, and the daemon drops the port.
    a.delete();
    assert!(wait_for(10, || !host_has(&switch_end)), "the veth goes with its namespace");
    assert!(
        wait_for(10, || d.json(&["port", "ls"]).as_array().unwrap().len() == 1),
        "the port of the vanished namespace is removed\n{}",
        d.log()
    );
    assert!(b.reaches("10.92.0.1"), "the other port still works");
}

#[test]
fn afxdp_options_that_do_not_apply_are_refused() {
    if !can_xdp() {
        return;
    }
    let d = Daemon::start("xdpo");
    let net = name("xdpo");
    d.ok(&["network", "create", &net, "--subnet", "10.93.0.0/24"]);
    let a = Netns::new("xdpoa");
    let out = d.cli(&["connect", &net, &a.name, "--kind", "afxdp", "--offload", "off"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--offload"), "{out:?}");
    let out = d.cli(&["connect", &net, "--vhost-user", "/tmp/x.sock", "--kind", "afxdp"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kind"), "{out:?}");
    // A network whose MTU a one-page frame cannot carry: refused up front.
    let big = name("xdpj");
    d.ok(&["network", "create", &big, "--ipam", "none", "--mtu", "9000"]);
    let out = d.cli(&["connect", &big, &a.name, "--kind", "afxdp"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MTU 9000") && err.contains("3506"), "{err}");
    assert!(!a.has_link("eth0"), "nothing made");
    // An interface name the namespace already has: a conflict, nothing left
    // behind. The switch's end is named after network and MAC, so a connect
    // with the same MAC under another name would trip over a leftover (and
    // log that it deleted one).
    sh(&["ip", "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let mac = "02:00:00:00:93:01";
    let out = d.cli(&["connect", &net, &a.name, "--kind", "afxdp", "--mac", mac]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eth0 already exists in namespace"), "{err}");
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());
    d.ok(&["connect", &net, &a.name, "--kind", "afxdp", "--mac", mac, "--ifname", "eth1"]);
    let sw = d.port(&a.name)["afxdp"]["switch_ifname"].as_str().unwrap().to_string();
    assert!(host_has(&sw));
    assert!(!d.log().contains("left by a daemon killed"), "the refused connect left its veth:\n{}", d.log());
}
