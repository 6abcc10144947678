//! Published ports from the command line (`connect --publish`, `port
//! publish|unpublish`): the daemon holds each published host port with a
//! socket of its own, refuses a host port in use (by another program or by
//! itself) leaving nothing half-made, releases it on unpublish and
//! disconnect, and holds it again after a SIGKILL and restart (or keeps it
//! inactive when another program took it meanwhile). Whether a host port is
//! held is checked from outside: this test tries to bind it. Traffic
//! through the forwarding rules is the firewall's tests'.
//!
//! Every published port here is on 127.0.0.1, so nothing is exposed beyond
//! the machine while the test runs. Publishing without an uplink is refused.

mod common;

use std::net::{TcpListener, UdpSocket};

use common::*;

/// A TCP port free on 127.0.0.1 now (the kernel's pick for port 0; free
/// again once this returns).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether someone holds 127.0.0.1:`port` (binding it fails).
fn tcp_held(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

fn udp_held(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// The `publish` entries of the port in `netns`.
fn published(d: &Daemon, netns: &str) -> Vec<serde_json::Value> {
    d.port(netns)["publish"].as_array().cloned().unwrap_or_default()
}

/// The entry for host port `port`/`proto`.
fn entry(d: &Daemon, netns: &str, port: u16, proto: &str) -> serde_json::Value {
    published(d, netns)
        .into_iter()
        .find(|p| p["host_port"] == port && p["proto"] == proto)
        .unwrap_or_else(|| panic!("no {port}/{proto} published in {netns}: {}", d.port(netns)))
}

/// Runs the CLI expecting a failure whose stderr says `says`; returns the exit code.
fn refused(d: &Daemon, args: &[&str], says: &str) -> Option<i32> {
    let out = d.cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tapyard {args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(says), "tapyard {args:?}: {err:?} does not say {says:?}");
    out.status.code()
}

#[test]
fn published_ports_are_held_refused_when_taken_released_and_kept_across_a_restart() {
    if !net_admin() {
        return;
    }
    // Published ports need an uplink: this daemon has one in the test's
    // namespace (the only one there: its interface and transit subnet are
    // its own; a clean stop, also on a failed assert, removes them and
    // restores forwarding).
    let ifname = name("up");
    let mut d = Daemon::start_with("pub", None, &["--uplink-ifname", &ifname, "--uplink-subnet", "100.127.254.0/30"]);
    let net = name("pub");
    d.ok(&["network", "create", &net, "--subnet", "10.74.0.0/24"]);
    let a = Netns::new("puba");
    let b = Netns::new("pubb");

    // connect --publish: a fixed TCP port and a UDP port left to the kernel.
    let web = free_port();
    let spec = format!("127.0.0.1:{web}:80");
    let out = d.ok(&["connect", &net, &a.name, "--ip", "10.74.0.10", "--publish", &spec, "-p", "127.0.0.1::53/udp"]);
    assert!(out.contains(&format!("127.0.0.1:{web}->80/tcp")), "connect says what it published: {out}");
    let tcp = entry(&d, &a.name, web, "tcp");
    assert_eq!((tcp["host_ip"].as_str(), tcp["container_port"].as_u64()), (Some("127.0.0.1"), Some(80)));
    assert_eq!(tcp["state"], "active", "a static address: forwarded at once");
    let dns = published(&d, &a.name).into_iter().find(|p| p["proto"] == "udp").expect("the udp publish");
    let dns_port = u16::try_from(dns["host_port"].as_u64().unwrap()).unwrap();
    assert_ne!(dns_port, 0, "the kernel's choice is recorded");
    assert!(tcp_held(web) && udp_held(dns_port), "the daemon holds both host ports");
    let table = d.ok(&["port", "ls"]);
    assert!(table.lines().next().unwrap().ends_with("PUBLISH"), "{table}");
    let row = table.lines().find(|l| l.contains(&a.name)).unwrap();
    let mut cell: Vec<&str> = row.split_whitespace().last().unwrap().split(',').collect();
    cell.sort();
    let mut want = [format!("127.0.0.1:{web}->80/tcp"), format!("127.0.0.1:{dns_port}->53/udp")];
    want.sort();
    assert_eq!(cell, want, "{table}");

    // The same host port again, for another namespace: refused, nothing left
    // behind (no port, no interface, no address taken from IPAM).
    let again = format!("{web}:8080");
    let code = refused(
        &d,
        &["connect", &net, &b.name, "--ip", "auto", "-p", &again],
        &format!("host port {web}/tcp is already in use: tapyard publishes it"),
    );
    assert_eq!(code, Some(1), "a conflict");
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 1);
    assert!(!b.has_link("eth0"));
    assert_eq!(d.json(&["lease", "ls", &net]).as_array().unwrap().len(), 1, "only a's address is recorded");

    // A host port another program listens on: refused with the port named.
    let thief = TcpListener::bind("127.0.0.1:0").unwrap();
    let stolen = thief.local_addr().unwrap().port();
    for spec in [format!("127.0.0.1:{stolen}:80"), format!("{stolen}:80")] {
        let host = if spec.starts_with("127.") { format!("127.0.0.1:{stolen}") } else { stolen.to_string() };
        refused(
            &d,
            &["connect", &net, &b.name, "--ip", "auto", "-p", &spec],
            &format!("host port {host}/tcp is already in use"),
        );
    }
    // Also when only the last of several is taken: the others are released again.
    let first = free_port();
    refused(
        &d,
        &["connect", &net, &b.name, "-p", &format!("127.0.0.1:{first}:80"), "-p", &format!("127.0.0.1:{stolen}:81")],
        "is already in use",
    );
    assert!(!tcp_held(first), "the first host port was given back");
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 1);
    assert!(!b.has_link("eth0"));
    assert_eq!(d.json(&["lease", "ls", &net]).as_array().unwrap().len(), 1);
    // A bad spec is the caller's mistake (status 2), and so is a network without egress.
    assert_eq!(refused(&d, &["connect", &net, &b.name, "-p", "80:0"], "container port 0"), Some(2));
    let l2 = name("publ2");
    d.ok(&["network", "create", &l2, "--ipam", "none"]);
    refused(&d, &["connect", &l2, &b.name, "-p", "80"], &format!("network \"{l2}\" has no egress"));
    assert!(!b.has_link("eth0"));

    // port publish / unpublish on a running port.
    let extra = free_port();
    let out = d.ok(&["port", "publish", &net, &a.name, &format!("127.0.0.1:{extra}:81")]);
    assert_eq!(out.trim(), format!("127.0.0.1:{extra}->81/tcp"));
    assert!(tcp_held(extra));
    assert_eq!(entry(&d, &a.name, extra, "tcp")["state"], "active");
    refused(&d, &["port", "publish", &net, &a.name, &format!("127.0.0.1:{extra}:82")], "already in use");
    d.ok(&["port", "unpublish", &net, &a.name, &format!("127.0.0.1:{extra}:81")]);
    assert!(!tcp_held(extra), "unpublish releases the host port");
    assert_eq!(published(&d, &a.name).len(), 2);
    refused(&d, &["port", "unpublish", &net, &a.name, &format!("127.0.0.1:{extra}:81")], "does not publish");
    // A port whose address comes from DHCP (none yet) waits.
    let late = free_port();
    d.ok(&["connect", &net, &b.name, "-p", &format!("127.0.0.1:{late}:80")]);
    assert_eq!(entry(&d, &b.name, late, "tcp")["state"], "waiting", "no address yet");
    assert!(tcp_held(late));
    let row = d.ok(&["port", "ls"]).lines().find(|l| l.contains(&b.name)).unwrap().to_string();
    assert!(row.ends_with(&format!("127.0.0.1:{late}->80/tcp(waiting)")), "{row}");

    // Forwarded once DHCP gives the port an address.
    need("udhcpc", "udhcpc");
    let fixture = format!("{}/tests/fixtures/udhcpc.sh", env!("CARGO_MANIFEST_DIR"));
    let bound = b.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &fixture, "-t", "5", "-T", "1"]);
    assert!(bound, "udhcpc got no lease; daemon log:\n{}", d.log());
    assert_eq!(entry(&d, &b.name, late, "tcp")["state"], "active", "{}", d.port(&b.name));

    // SIGKILL and restart: the publishes are kept and held again. One whose
    // host port another program took while the daemon was down is kept inactive.
    d.signal("KILL");
    let squatter = TcpListener::bind(("127.0.0.1", late)).expect("released when the daemon died");
    d.spawn();
    assert_eq!(entry(&d, &a.name, web, "tcp")["state"], "active", "log:\n{}", d.log());
    assert_eq!(entry(&d, &a.name, dns_port, "udp")["state"], "active");
    assert!(tcp_held(web) && udp_held(dns_port), "held again after the restart");
    let lost = entry(&d, &b.name, late, "tcp");
    assert_eq!(lost["state"], "inactive", "{lost}");
    assert!(lost["error"].as_str().unwrap().contains("already in use"), "{lost}");
    assert!(d.log().contains("published port is inactive"), "logged as an error");
    let row = d.ok(&["port", "ls"]).lines().find(|l| l.contains(&b.name)).unwrap().to_string();
    assert!(row.ends_with("(inactive)"), "{row}");
    // Once it is free again, publishing the same spec takes it back.
    drop(squatter);
    d.ok(&["port", "publish", &net, &b.name, &format!("127.0.0.1:{late}:80")]);
    assert_eq!(entry(&d, &b.name, late, "tcp")["state"], "active", "its lease outlived the restart");
    assert!(tcp_held(late));
    // Unpublished as shown by port ls.
    d.ok(&["port", "unpublish", &net, &b.name, &format!("127.0.0.1:{late}->80/tcp")]);
    assert!(!tcp_held(late) && published(&d, &b.name).is_empty());

    // Disconnect releases every host port of the port.
    d.ok(&["disconnect", &net, &a.name]);
    assert!(!tcp_held(web) && !udp_held(dns_port), "disconnect releases the host ports");
    d.ok(&["disconnect", &net, &b.name]);
}

#[test]
fn publish_is_refused_for_a_vhost_user_port_on_the_command_line() {
    if !net_admin() {
        return;
    }
    let d = Daemon::start("pubvh");
    let net = name("pubvh");
    d.ok(&["network", "create", &net, "--subnet", "10.74.1.0/24"]);
    // Without an uplink (`--uplink none`), nothing can be published, and nothing is left half-made.
    let c = Netns::new("pubvhc");
    refused(&d, &["connect", &net, &c.name, "-p", "127.0.0.1:8080:80"], "the daemon runs with --uplink none");
    assert!(!c.has_link("eth0"));
    let sock = d.dir.join("vm.sock");
    let out = d.cli(&["connect", &net, "--vhost-user", sock.to_str().unwrap(), "-p", "8080:80"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--publish"));
    assert_eq!(d.json(&["port", "ls"]), serde_json::json!([]));
}
