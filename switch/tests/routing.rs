//! Routing between networks through a router, against real namespaces.

mod common;

use std::process::Command;

use common::*;

/// Two networks with the given subnets (and extra `network create` flags for
/// the second), both attached to a new router. Returns (router, first, second).
fn routed_pair(d: &Daemon, tag: &str, first: &str, second: &str, extra: &[&str]) -> (String, String, String) {
    let (r, n1, n2) = (name(tag), name(&format!("{tag}1")), name(&format!("{tag}2")));
    d.ok(&["network", "create", &n1, "--subnet", first]);
    let mut args = vec!["network", "create", &n2, "--subnet", second];
    args.extend_from_slice(extra);
    d.ok(&args);
    d.ok(&["router", "create", &r]);
    d.ok(&["router", "attach", &r, &n1]);
    d.ok(&["router", "attach", &r, &n2]);
    (r, n1, n2)
}

fn ip_of(d: &Daemon, netns: &str) -> String {
    d.port(netns)["ip"].as_str().unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn three_networks_on_a_router_reach_each_other_and_isolation_holds() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("rt");
    let r = name("rt");
    let nets: Vec<String> = (1..=3).map(|i| name(&format!("rtn{i}"))).collect();
    for (i, n) in nets.iter().enumerate() {
        d.ok(&["network", "create", n, "--subnet", &format!("10.95.{}.0/24", i + 1)]);
    }
    let lonely = name("rtlone");
    d.ok(&["network", "create", &lonely, "--subnet", "10.95.9.0/24"]);
    let internal = name("rtint");
    d.ok(&["network", "create", &internal, "--subnet", "10.95.8.0/24", "--internal"]);
    d.ok(&["router", "create", &r]);
    for n in &nets {
        d.ok(&["router", "attach", &r, n]);
    }
    let out = d.cli(&["router", "attach", &r, &internal]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--internal"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut hosts = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        for j in 0..2 {
            let ns = Netns::new(&format!("rt{i}{j}"));
            d.ok(&["connect", n, &ns.name, "--ip", "auto"]);
            hosts.push((i, ns));
        }
    }
    let lone = Netns::new("rtl");
    d.ok(&["connect", &lonely, &lone.name, "--ip", "auto"]);
    let ips: Vec<String> = hosts.iter().map(|(_, ns)| ip_of(&d, &ns.name)).collect();
    // Every container reaches every container of the other networks.
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for (a, (na, nsa)) in hosts.iter().enumerate() {
            for (b, (nb, _)) in hosts.iter().enumerate() {
                if na != nb {
                    let ip = ips[b].clone();
                    jobs.push(s.spawn(move || (a, b, nsa.reaches(&ip))));
                }
            }
        }
        for j in jobs {
            let (a, b, ok) = j.join().unwrap();
            assert!(ok, "{} -> {} across the router failed; log:\n{}", hosts[a].1.name, ips[b], d.log());
        }
    });
    // The router's other gateway addresses answer ping, as a Linux router's addresses do.
    assert!(hosts[0].1.reaches("10.95.2.1") && hosts[0].1.reaches("10.95.3.1"), "log:\n{}", d.log());
    // A network on no router stays unreachable, both ways.
    let lone_ip = ip_of(&d, &lone.name);
    assert!(!hosts[0].1.ping_quick(&lone_ip));
    assert!(!lone.ping_quick(&ips[0]));
    // traceroute-style: TTL 1 to a remote address draws Time Exceeded from the gateway.
    let out = Command::new("ip")
        .args(["netns", "exec", &hosts[0].1.name, "ping", "-n", "-c", "1", "-W", "2", "-t", "1", &ips[2]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Time to live exceeded") && text.contains("10.95.1.1"), "{text}");
    // TCP across the router: iperf3 moves data for two seconds.
    common::need("iperf3", "iperf3");
    let server = std::process::Command::new("ip")
        .args(["netns", "exec", &hosts[4].1.name, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 is installed by scripts/setup.sh");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(server);
    let mut report = serde_json::Value::Null;
    let ran = wait_for(5, || {
        let out = Command::new("ip")
            .args(["netns", "exec", &hosts[0].1.name, "iperf3", "-c", &ips[4], "-t", "2", "-J"])
            .output()
            .unwrap();
        report = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // The server may not listen yet (connection refused): try again.
        out.status.success() && report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(ran, "iperf3 across the router: {report}");
    assert!(report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 1_000_000, "{report}");
    let info = d.json(&["router", "inspect", &r]);
    assert!(info["counters"]["routed"].as_u64().unwrap() > 0, "{info}");
    let per_net = d.json(&["network", "inspect", &nets[0]])["route_counters"].clone();
    assert!(per_net["routed"].as_u64().unwrap() > 0 && per_net["ttl_expired"].as_u64().unwrap() >= 1, "{per_net}");
    assert!(info["counters"]["ttl_expired"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["counters"]["icmp_sent"].as_u64().unwrap() >= 1, "{info}");
    assert_eq!(d.json(&["route", "ls", &r]).as_array().unwrap().len(), 3);
    // Detaching a network cuts it off at once.
    d.ok(&["router", "detach", &r, &nets[2]]);
    assert!(!hosts[0].1.ping_quick(&ips[4]));
    assert!(hosts[0].1.reaches(&ips[2]), "the others still route");
    // A network attached to a router is removed only with --force (which
    // detaches it); without, the error names the command that detaches it.
    let out = d.cli(&["network", "rm", &nets[0]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("tapyard router detach {r} {}", nets[0])), "{err}");
    d.ok(&["network", "rm", &nets[0], "--force"]);
    assert!(!d.json(&["router", "inspect", &r])["networks"].as_array().unwrap().iter().any(|n| n == nets[0].as_str()));
}

#[test]
fn a_static_route_via_a_forwarding_container_and_routers_survive_a_restart() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("srt");
    let (r, n1, n2) = routed_pair(&d, "srt", "10.97.1.0/24", "10.97.2.0/24", &[]);
    // A container on n1 forwards to a network behind it (a veth into `behind`).
    let fwd = Netns::new("srtf");
    let behind = Netns::new("srtb");
    let client = Netns::new("srtc");
    // A router's packets carry other hosts' sources: no port security on its port.
    d.ok(&["connect", &n1, &fwd.name, "--ip", "auto", "--port-security", "off"]);
    d.ok(&["connect", &n2, &client.name, "--ip", "auto"]);
    let fwd_ip = ip_of(&d, &fwd.name);
    sh(&["ip", "-n", &fwd.name, "link", "add", "in0", "type", "veth", "peer", "name", "out0", "netns", &behind.name]);
    sh(&["ip", "-n", &fwd.name, "addr", "add", "10.98.0.1/24", "dev", "in0"]);
    sh(&["ip", "-n", &fwd.name, "link", "set", "in0", "up"]);
    sh(&["ip", "-n", &behind.name, "addr", "add", "10.98.0.2/24", "dev", "out0"]);
    sh(&["ip", "-n", &behind.name, "link", "set", "out0", "up"]);
    sh(&["ip", "-n", &behind.name, "route", "add", "default", "via", "10.98.0.1"]);
    assert!(fwd.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]));
    let out = d.cli(&["route", "add", &r, "10.98.0.0/24", "via", "10.99.0.1"]);
    assert!(!out.status.success(), "a next hop outside the router's networks is refused");
    d.ok(&["route", "add", &r, "10.98.0.0/24", "via", &fwd_ip]);
    assert!(client.reaches("10.98.0.2"), "through the router and the forwarding container; log:\n{}", d.log());
    let routes = d.json(&["route", "ls", &r]);
    assert!(
        routes.as_array().unwrap().iter().any(|x| x["via"] == fwd_ip.as_str() && x["network"] == n1.as_str()),
        "{routes}"
    );

    // Killed and restarted: routers, routes and their networks come back, and route.
    assert_eq!(d.signal("KILL"), None);
    d.spawn();
    assert_eq!(d.json(&["router", "ls"])[0]["networks"].as_array().unwrap().len(), 2);
    assert!(client.reaches("10.98.0.2"), "after restart; log:\n{}", d.log());
    d.ok(&["route", "del", &r, "10.98.0.0/24"]);
    assert!(!client.ping_quick("10.98.0.2"));
}

#[test]
fn df_packets_too_big_for_the_egress_mtu_draw_fragmentation_needed() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("mtu");
    let (r, big, small) = routed_pair(&d, "mtu", "10.99.1.0/24", "10.99.2.0/24", &["--mtu", "1280"]);
    let a = Netns::new("mtua");
    let b = Netns::new("mtuc");
    d.ok(&["connect", &big, &a.name, "--ip", "auto"]);
    d.ok(&["connect", &small, &b.name, "--ip", "auto"]);
    let bip = ip_of(&d, &b.name);
    assert!(a.reaches(&bip));
    // Without DF it is dropped and counted (tapyard does not fragment). First,
    // before the sender learns the path MTU from the error below.
    let _ = a.run(&["ping", "-n", "-c", "1", "-W", "1", "-M", "dont", "-s", "1400", &bip]);
    // A worker adds its counts to the router's at the end of a burst, which
    // may come after the ICMP error it punted has reached the sender: wait.
    let counters = || d.json(&["router", "inspect", &r])["counters"].clone();
    assert!(wait_for(3, || counters()["too_big"].as_u64().unwrap() >= 1), "{}", counters());
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1400", &bip])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Frag needed") && text.contains("1280"), "{text}");
    assert!(wait_for(3, || counters()["frag_needed"].as_u64().unwrap() >= 1), "{}", counters());
}

#[test]
fn unknown_next_hops_are_resolved_by_arp_or_answered_host_unreachable() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("arp");
    let (_, n1, n2) = routed_pair(&d, "arp", "10.96.1.0/24", "10.96.2.0/24", &[]);
    let a = Netns::new("arpa");
    let b = Netns::new("arpb");
    d.ok(&["connect", &n1, &a.name, "--ip", "auto"]);
    // b configures its own address: tapyard has no record of it.
    d.ok(&["connect", &n2, &b.name]);
    assert!(b.run(&["ip", "addr", "add", "10.96.2.77/24", "dev", "eth0"]));
    assert!(b.run(&["ip", "route", "add", "default", "via", "10.96.2.1"]));
    assert!(a.reaches("10.96.2.77"), "resolved by ARP from the gateway; log:\n{}", d.log());
    let c = d.json(&["network", "inspect", &n1])["gateway_counters"].clone();
    assert!(c["arp_resolving"].as_u64().unwrap_or(0) >= 1, "{c}");
    // Nobody at that address: Host Unreachable after the ARP timeout.
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-n", "-c", "1", "-W", "6", "10.96.2.99"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Host Unreachable"), "{text}");
}

#[test]
fn a_dhcp_lease_is_a_routing_neighbour_at_once() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("rdh");
    let (_, n1, n2) = routed_pair(&d, "rdh", "10.94.1.0/24", "10.94.2.0/24", &[]);
    let a = Netns::new("rdha");
    let c = Netns::new("rdhc");
    d.ok(&["connect", &n1, &a.name, "--ip", "auto"]);
    d.ok(&["connect", &n2, &c.name]);
    let hook = format!("{}/tests/fixtures/udhcpc.sh", env!("CARGO_MANIFEST_DIR"));
    assert!(c.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &hook, "-t", "5", "-T", "1"]), "no lease");
    let lease = d.json(&["lease", "ls", &n2])[0].clone();
    let ip = lease["ip"].as_str().unwrap().to_string();
    // The bound lease is published to the workers as a neighbour at once,
    // before the client has sent anything else (no ARP to learn it from).
    let neighbors = d.json(&["network", "inspect", &n2])["neighbors"].clone();
    assert_eq!(neighbors[&ip], lease["mac"], "{neighbors}");
    assert!(a.reaches(&ip), "log:\n{}", d.log());
}

#[test]
fn a_dhcp_lease_of_a_port_without_port_security_becomes_a_neighbour_soon() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("rdq");
    let (_, n1, n2) = routed_pair(&d, "rdq", "10.94.3.0/24", "10.94.4.0/24", &[]);
    let a = Netns::new("rdqa");
    let c = Netns::new("rdqc");
    d.ok(&["connect", &n1, &a.name, "--ip", "auto"]);
    // Without port security the lease need not be published before its ACK:
    // the gateway gathers such neighbours and publishes them within 50 ms,
    // or as soon as it is idle.
    d.ok(&["connect", &n2, &c.name, "--port-security", "off"]);
    let hook = format!("{}/tests/fixtures/udhcpc.sh", env!("CARGO_MANIFEST_DIR"));
    assert!(c.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &hook, "-t", "5", "-T", "1"]), "no lease");
    let lease = d.json(&["lease", "ls", &n2])[0].clone();
    let ip = lease["ip"].as_str().unwrap().to_string();
    let published = common::wait_for(5, || d.json(&["network", "inspect", &n2])["neighbors"][&ip] == lease["mac"]);
    assert!(published, "{}", d.json(&["network", "inspect", &n2]));
    assert!(a.reaches(&ip), "log:\n{}", d.log());
}
