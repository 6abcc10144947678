//! The L2 switch against real namespaces: reachability, isolation, learning,
//! moves, disconnects, vanished namespaces and drop counters.

mod common;

use common::*;
use serde_json::Value;

fn port_ids_by_netns(d: &Daemon) -> std::collections::HashMap<String, (u64, String, String)> {
    d.json(&["port", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["netns"].as_str().unwrap().to_string(),
                (
                    p["id"].as_u64().unwrap(),
                    p["mac"].as_str().unwrap().to_string(),
                    p["network"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

#[test]
fn three_and_two_namespaces_reach_within_and_never_across_networks() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("iso");
    let (na, nb) = (name("isoA"), name("isoB"));
    // No subnets: both networks use addresses of the same /24, so only the
    // switch keeps them apart (an ARP broadcast leaking would be answered).
    d.ok(&["network", "create", &na, "--ipam", "none"]);
    d.ok(&["network", "create", &nb, "--ipam", "none"]);
    let a: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("isoa{i}"))).collect();
    let b: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("isob{i}"))).collect();
    let ip = |i: usize| format!("10.77.0.{}", i);
    for (i, ns) in a.iter().enumerate() {
        d.ok(&["connect", &na, &ns.name, "--ip", &format!("{}/24", ip(i + 1))]);
    }
    for (i, ns) in b.iter().enumerate() {
        d.ok(&["connect", &nb, &ns.name, "--ip", &format!("{}/24", ip(i + 4))]);
    }
    std::thread::scope(|s| {
        let mut checks = Vec::new();
        for (i, x) in a.iter().enumerate() {
            for j in 0..3 {
                if i != j {
                    checks.push(s.spawn(move || (format!("a{i}->a{j}"), x.reaches(&ip(j + 1)), true)));
                }
            }
            for j in 0..2 {
                checks.push(s.spawn(move || (format!("a{i}->b{j}"), x.ping_quick(&ip(j + 4)), false)));
            }
        }
        for (i, x) in b.iter().enumerate() {
            checks.push(s.spawn(move || (format!("b{i}->b{}", 1 - i), x.reaches(&ip(5 - i)), true)));
            for j in 0..3 {
                checks.push(s.spawn(move || (format!("b{i}->a{j}"), x.ping_quick(&ip(j + 1)), false)));
            }
        }
        for c in checks {
            let (pair, got, want) = c.join().unwrap();
            assert_eq!(got, want, "{pair}: reached={got}, expected {want}");
        }
    });

    // Every MAC is in the FDB of its own network, on its own port, and nowhere else.
    let ports = port_ids_by_netns(&d);
    let fdb = d.json(&["fdb", "show"]);
    let fdb = fdb.as_array().unwrap();
    for ns in a.iter().chain(b.iter()) {
        let (id, mac, net) = &ports[&ns.name];
        let rows: Vec<&Value> = fdb.iter().filter(|e| e["mac"] == mac.as_str()).collect();
        assert_eq!(rows.len(), 1, "{mac} of {} should be learned exactly once: {fdb:?}", ns.name);
        assert_eq!(rows[0]["port"].as_u64().unwrap(), *id);
        assert_eq!(rows[0]["network"], net.as_str());
        assert!(rows[0]["age_secs"].as_u64().unwrap() < 30);
    }
    // Filtering by network shows only that network.
    let only_b = d.json(&["fdb", "show", &nb]);
    assert_eq!(only_b.as_array().unwrap().len(), 2);
    // The human-readable listing has a row per entry.
    assert_eq!(d.ok(&["fdb", "show"]).lines().count(), 1 + 5);

    // Counters moved, and nothing was dropped as malformed.
    for p in d.json(&["port", "ls"]).as_array().unwrap() {
        let c = &p["counters"];
        assert!(c["rx_packets"].as_u64().unwrap() > 0 && c["tx_packets"].as_u64().unwrap() > 0, "{p}");
        assert_eq!(c["drops"]["runt"], 0);
        assert_eq!(c["drops"]["bad_src_mac"], 0);
    }
    let shown = d.json(&["port", "ls", &na]);
    assert_eq!(shown.as_array().unwrap().len(), 3);
}

#[test]
fn a_mac_that_moves_to_another_port_is_followed() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("mv");
    let net = name("mv");
    d.ok(&["network", "create", &net, "--subnet", "10.78.0.0/24"]);
    let n1 = Netns::new("mv1");
    let n2 = Netns::new("mv2");
    let n3 = Netns::new("mv3");
    let mac = "02:aa:00:00:00:01";
    d.ok(&["connect", &net, &n1.name, "--ip", "10.78.0.11", "--mac", mac]);
    d.ok(&["connect", &net, &n2.name, "--ip", "10.78.0.12"]);
    // n3 will take over n1's MAC and address: what port security forbids
    // (tests/port_security.rs), so this port has it off, as a lab's would.
    d.ok(&["connect", &net, &n3.name, "--ip", "10.78.0.13", "--port-security", "off"]);
    assert!(n1.reaches("10.78.0.12"));
    let port_of = |d: &Daemon| -> Option<u64> {
        d.json(&["fdb", "show", &net])
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac)
            .and_then(|e| e["port"].as_u64())
    };
    let ports = port_ids_by_netns(&d);
    assert_eq!(port_of(&d), Some(ports[&n1.name].0));

    // The station "moves": n1 goes quiet, n3 takes over its MAC and address.
    assert!(n1.run(&["ip", "link", "set", "eth0", "down"]));
    assert!(n3.run(&["ip", "addr", "flush", "dev", "eth0"]));
    assert!(n3.run(&["ip", "link", "set", "eth0", "address", mac]));
    assert!(n3.run(&["ip", "addr", "add", "10.78.0.11/24", "dev", "eth0"]));
    // n3 speaks first (gratuitous traffic): the switch must learn the move from it.
    assert!(n3.reaches("10.78.0.12"));
    assert_eq!(port_of(&d), Some(ports[&n3.name].0), "MAC should have moved to n3's port");
    // And unicast to the MAC now goes to the new port.
    assert!(n2.run(&["ip", "neigh", "flush", "all"]));
    assert!(n2.reaches("10.78.0.11"));
}

#[test]
fn disconnect_removes_the_interface_and_the_port() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("dc");
    let net = name("dc");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let ns = Netns::new("dc1");
    d.ok(&["connect", &net, &ns.name, "--ifname", "lan0", "--ip", "10.79.0.2/24"]);
    assert!(ns.has_link("lan0"));
    assert!(ns.run(&["sh", "-c", "ip -4 addr show dev lan0 | grep -q 10.79.0.2/24"]));
    assert!(ns.run(&["sh", "-c", "ip link show dev lan0 | grep -q 'state UP\\|LOWER_UP'"]));
    // Disconnecting with the wrong interface name is a clear not-found.
    let out = d.cli(&["disconnect", &net, &ns.name]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("port ls"));
    d.ok(&["disconnect", &net, &ns.name, "--ifname", "lan0"]);
    assert!(!ns.has_link("lan0"), "the interface must disappear from the namespace");
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn a_deleted_namespace_takes_its_port_with_it() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("gone");
    let net = name("gone");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let keep = Netns::new("gonek");
    let doomed = Netns::new("gone1");
    d.ok(&["connect", &net, &keep.name, "--ip", "10.80.0.1/24"]);
    d.ok(&["connect", &net, &doomed.name, "--ip", "10.80.0.2/24"]);
    assert!(keep.reaches("10.80.0.2"));
    doomed.delete();
    let gone = wait_for(5, || d.port(&doomed.name).is_null());
    assert!(gone, "port of a deleted namespace must be removed; log:\n{}", d.log());
    assert!(d.log().contains("vanished"), "the removal must be logged");
    // Nothing else was disturbed.
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 1);
    assert!(d.json(&["fdb", "show"]).as_array().unwrap().iter().all(|e| e["netns"] != doomed.name.as_str()));
}

#[test]
fn frames_with_a_group_source_address_are_dropped_and_counted() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("bad");
    let net = name("bad");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let a = Netns::new("bada");
    let b = Netns::new("badb");
    d.ok(&["connect", &net, &a.name, "--ip", "10.81.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.81.0.2/24"]);
    // Five raw frames from a multicast source address, and five from the all-zero address.
    let script = r"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for src in (bytes([1, 0, 0x5e, 0, 0, 1]), bytes(6)):
    for _ in range(5):
        s.send(b'\xff' * 6 + src + b'\x88\xb5' + bytes(46))
";
    common::need("python3", "python3");
    assert!(a.run(&["python3", "-c", script]), "python3 raw-socket sender failed");
    let ok = wait_for(3, || d.port(&a.name)["counters"]["drops"]["bad_src_mac"] == 10);
    assert!(ok, "ten bad-source frames should be counted: {}", d.json(&["port", "ls"]));
    // None of them reached the other port, and the switch still works.
    let pb = d.port(&b.name);
    // b saw only the few frames of its own ARP/ND chatter, not the ten bad ones.
    assert!(pb["counters"]["tx_packets"].as_u64().unwrap() < 10, "bad frames must not be flooded: {pb}");
    assert!(a.reaches("10.81.0.2"));
    assert!(d.json(&["fdb", "show"]).as_array().unwrap().iter().all(|e| e["mac"] != "01:00:5e:00:00:01"));
}

#[test]
fn a_full_forwarding_table_counts_and_still_forwards() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("full");
    let net = name("full");
    d.ok(&["network", "create", &net, "--ipam", "none", "--fdb-capacity", "2"]);
    let ns: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("full{i}"))).collect();
    for (i, n) in ns.iter().enumerate() {
        n.no_ipv6();
        d.ok(&["connect", &net, &n.name, "--ip", &format!("10.84.0.{}/24", i + 1)]);
    }
    // Three stations, room for two: everyone still reaches everyone (frames
    // to the unlearned one are flooded), and the overflow is counted.
    assert!(ns[0].reaches("10.84.0.2"));
    assert!(ns[1].reaches("10.84.0.3"));
    assert!(ns[2].reaches("10.84.0.1"));
    assert_eq!(d.json(&["fdb", "show"]).as_array().unwrap().len(), 2, "the bound holds");
    let learn_full: u64 =
        d.json(&["port", "ls"]).as_array().unwrap().iter().map(|p| p["counters"]["learn_full"].as_u64().unwrap()).sum();
    assert!(learn_full > 0, "frames whose source could not be learned are counted");
    let inspect = d.json(&["network", "ls"]);
    assert_eq!(inspect[0]["fdb_capacity"], 2);
}

#[test]
fn idle_macs_age_out_after_the_networks_ageing_time() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("age");
    let net = name("age");
    d.ok(&["network", "create", &net, "--ipam", "none", "--ageing", "2"]);
    let a = Netns::new("agea");
    let b = Netns::new("ageb");
    for n in [&a, &b] {
        n.no_ipv6();
    }
    d.ok(&["connect", &net, &a.name, "--ip", "10.85.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.85.0.2/24"]);
    assert!(a.reaches("10.85.0.2"));
    assert_eq!(d.json(&["fdb", "show", &net]).as_array().unwrap().len(), 2);
    assert_eq!(d.json(&["network", "inspect", &net])["ageing_secs"], 2);
    // Silence for a little over the ageing time: the entries go.
    let aged = wait_for(8, || d.json(&["fdb", "show", &net]).as_array().unwrap().is_empty());
    assert!(aged, "entries should age out: {}", d.json(&["fdb", "show"]));
    // Traffic brings them back.
    assert!(a.reaches("10.85.0.2"));
    assert_eq!(d.json(&["fdb", "show", &net]).as_array().unwrap().len(), 2);
    // And flush empties the table on demand.
    assert!(d.ok(&["fdb", "flush", &net]).contains("flushed 2"));
    assert!(d.json(&["fdb", "show"]).as_array().unwrap().is_empty());
}

#[test]
fn frames_for_a_down_interface_are_counted_as_link_down() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("down");
    let net = name("down");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let a = Netns::new("downa");
    let b = Netns::new("downb");
    d.ok(&["connect", &net, &a.name, "--ip", "10.86.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.86.0.2/24"]);
    assert!(a.reaches("10.86.0.2"));
    assert!(b.run(&["ip", "link", "set", "eth0", "down"]));
    assert!(!a.ping_quick("10.86.0.2"));
    let drops = d.port(&b.name)["counters"]["drops"]["link_down"].as_u64().unwrap();
    assert!(drops >= 2, "the pings toward the down interface are counted on its port: {}", d.port(&b.name));
    assert!(b.run(&["ip", "link", "set", "eth0", "up"]));
    assert!(a.reaches("10.86.0.2"), "and traffic resumes when it comes back up");
}

#[test]
fn namespaces_are_found_by_name_path_and_pid() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("spec");
    let net = name("spec");
    d.ok(&["network", "create", &net, "--subnet", "10.87.0.0/24"]);
    let named = Netns::new("specn");
    // An anonymous namespace, held only by a process: reached as pid:N.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Kill(std::process::Command::new("unshare").args(["--net", "sleep", "60"]).spawn().unwrap());
    let pid = holder.0.id().to_string();
    let by_pid = format!("pid:{pid}");
    let in_pid_ns = |args: &[&str]| {
        std::process::Command::new("nsenter")
            .args(["--net", "-t", &pid])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    // Wait until unshare has switched namespaces (its ns differs from ours).
    assert!(wait_for(5, || {
        std::fs::read_link(format!("/proc/{pid}/ns/net")).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    }));
    let path = format!("/run/netns/{}", named.name);
    d.ok(&["connect", &net, &path, "--ip", "10.87.0.2"]);
    d.ok(&["connect", &net, &by_pid, "--ip", "10.87.0.3", "--ifname", "lan0"]);
    assert!(named.has_link("eth0"));
    assert!(in_pid_ns(&["ip", "link", "show", "dev", "lan0"]));
    assert!(in_pid_ns(&["ip", "link", "set", "lo", "up"]));
    assert!(named.reaches("10.87.0.3"));
    assert!(in_pid_ns(&["ping", "-n", "-q", "-c", "1", "-w", "3", "10.87.0.2"]));
    d.ok(&["disconnect", &net, &by_pid, "--ifname", "lan0"]);
    assert!(!in_pid_ns(&["ip", "link", "show", "dev", "lan0"]));
    d.ok(&["disconnect", &net, &path]);
    assert!(!named.has_link("eth0"));
    // A pid that does not exist is a clear not-found.
    let out = d.cli(&["connect", &net, "pid:999999999"]);
    assert_eq!(out.status.code(), Some(3));
}
