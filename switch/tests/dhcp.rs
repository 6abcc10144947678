//! DHCP and the gateway against real clients nobody here wrote: busybox
//! udhcpc and ISC dhclient, in namespaces attached to the real daemon.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs udhcpc once in `ns`: exits when bound (address stays), or fails.
fn udhcpc_once(ns: &Netns, hostname: &str) -> bool {
    ns.run(&[
        "udhcpc",
        "-f",
        "-q",
        "-n",
        "-i",
        "eth0",
        "-s",
        &fixture("udhcpc.sh"),
        "-t",
        "5",
        "-T",
        "1",
        "-x",
        &format!("hostname:{hostname}"),
    ])
}

fn addr_in(ns: &Netns) -> Option<String> {
    let out = Command::new("ip").args(["-n", &ns.name, "-4", "-o", "addr", "show", "dev", "eth0"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(|a| a.split('/').next().unwrap().to_string())
}

/// A process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lease_of(d: &Daemon, ip: &str) -> serde_json::Value {
    d.json(&["lease", "ls"]).as_array().unwrap().iter().find(|l| l["ip"] == ip).cloned().unwrap_or_default()
}

#[test]
fn udhcpc_gets_a_lease_reaches_gateway_and_peers_and_renews_across_a_sigkill() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let mut d = Daemon::start("udh");
    let net = name("udh");
    d.ok(&["network", "create", &net, "--subnet", "10.91.0.0/24", "--dns", "10.91.0.53", "--lease-time", "120"]);
    let peer = Netns::new("udhp");
    d.ok(&["connect", &net, &peer.name, "--ip", "auto"]);
    let c = Netns::new("udhc");
    d.ok(&["connect", &net, &c.name]);
    // A long-running client: SIGUSR1 makes it renew (unicast REQUEST with ciaddr).
    let client = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &c.name,
                "udhcpc",
                "-f",
                "-i",
                "eth0",
                "-s",
                &fixture("udhcpc.sh"),
                "-t",
                "5",
                "-T",
                "1",
            ])
            .args(["-x", "hostname:udh-client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(10, || addr_in(&c).is_some()), "udhcpc got no address; daemon log:\n{}", d.log());
    let ip = addr_in(&c).unwrap();
    assert!(ip.starts_with("10.91.0."), "{ip}");
    assert!(c.run(&["sh", "-c", "ip route show default | grep -q 'via 10.91.0.1'"]));
    assert!(c.reaches("10.91.0.1"), "the gateway answers ARP and ping");
    let peer_ip = d.port(&peer.name)["ip"].as_str().unwrap().trim_end_matches("/24").to_string();
    assert!(c.reaches(&peer_ip));
    let lease = lease_of(&d, &ip);
    assert_eq!(lease["hostname"], "udh-client");
    assert_eq!(lease["state"], "bound");
    assert!(lease["client_id"].as_str().unwrap().starts_with("01"), "udhcpc sends 01+MAC: {lease}");

    // Renewal keeps the address and extends the lease.
    let before = lease["expires"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let pid = client.0.id().to_string();
    let renewed = |d: &Daemon, after: u64| {
        let _ = Command::new("kill").args(["-USR1", &pid]).status();
        wait_for(5, || lease_of(d, &ip)["expires"].as_u64().is_some_and(|e| e > after))
    };
    assert!(renewed(&d, before), "renewal did not extend the lease");
    assert!(wait_for(3, || addr_in(&c).as_deref() == Some(ip.as_str())), "the address is kept");

    // Killed and restarted: the lease is still there, and the renewing client keeps its address.
    assert_eq!(d.signal("KILL"), None);
    d.spawn();
    let after_restart = lease_of(&d, &ip);
    assert_eq!(after_restart["state"], "bound", "the lease survived SIGKILL");
    std::thread::sleep(Duration::from_millis(1100));
    // The interface survived the kill (persistent TAP), address and all.
    assert_eq!(addr_in(&c).as_deref(), Some(ip.as_str()));
    assert!(renewed(&d, after_restart["expires"].as_u64().unwrap()), "renewal after restart failed; log:\n{}", d.log());
    assert_eq!(lease_of(&d, &ip)["mac"], d.port(&c.name)["mac"]);
    let counters = d.json(&["network", "inspect", &net])["gateway_counters"].clone();
    assert!(counters["dhcp_ack"].as_u64().unwrap() >= 1, "{counters}");
}

/// The README's command, taken literally: `udhcpc -i eth0 -q -n -s scripts/udhcpc-hook.sh`
/// leaves the address and a default route via the gateway, and (where this test may make
/// /etc/netns, i.e. as real root) the namespace's resolv.conf untouched.
#[test]
fn the_shipped_udhcpc_hook_applies_the_lease_and_leaves_resolv_conf_alone() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let d = Daemon::start("hook");
    let net = name("hook");
    d.ok(&["network", "create", &net, "--subnet", "10.92.0.0/24", "--dns", "10.92.0.53"]);
    let c = Netns::new("hookc");
    d.ok(&["connect", &net, &c.name]);
    // `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf: a
    // hook that rewrote resolv.conf would rewrite this file instead of the host's.
    let etc = std::path::PathBuf::from("/etc/netns").join(&c.name);
    let sentinel = "# tapyard test: must stay as it is\n";
    let guarded =
        std::fs::create_dir_all(&etc).and_then(|()| std::fs::write(etc.join("resolv.conf"), sentinel)).is_ok();
    struct RemoveDir(std::path::PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = RemoveDir(etc.clone());
    let hook = format!("{}/../scripts/udhcpc-hook.sh", env!("CARGO_MANIFEST_DIR"));
    assert!(
        c.run(&["udhcpc", "-i", "eth0", "-q", "-n", "-t", "5", "-T", "1", "-s", &hook]),
        "udhcpc with the shipped hook failed; daemon log:\n{}",
        d.log()
    );
    let ip = addr_in(&c).expect("the hook left no address on eth0");
    assert!(ip.starts_with("10.92.0."), "{ip}");
    let out = Command::new("ip").args(["-n", &c.name, "-4", "route", "show", "default"]).output().unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(routes.contains("via 10.92.0.1 dev eth0"), "no default route via the gateway: {routes:?}");
    assert!(c.reaches("10.92.0.1"), "the gateway answers through the configured interface");
    if guarded {
        assert_eq!(std::fs::read_to_string(etc.join("resolv.conf")).unwrap(), sentinel, "the hook rewrote resolv.conf");
    } else {
        println!("note: /etc/netns is not writable here; resolv.conf not checked");
    }
}

#[test]
fn dhclient_gets_a_lease_keyed_by_its_mac() {
    if !common::net_admin() {
        return;
    }
    need("dhclient", "isc-dhcp-client");
    let d = Daemon::start("dhc");
    let net = name("dhc");
    d.ok(&["network", "create", &net, "--subnet", "10.92.0.0/24"]);
    let c = Netns::new("dhcc");
    d.ok(&["connect", &net, &c.name]);
    let pidfile = d.dir.join("dhclient.pid");
    let leasefile = d.dir.join("dhclient.leases");
    // In the foreground (-d) as our own child, so it is stopped by the pid we
    // started: once bound, a backgrounded dhclient outlives the test (reading
    // its pid file races with its fork) and keeps the namespace alive.
    let child = Command::new("ip")
        .args(["netns", "exec", &c.name, "dhclient", "-d", "-1", "-4", "-sf", &fixture("dhclient.sh")])
        .arg("-pf")
        .arg(&pidfile)
        .arg("-lf")
        .arg(&leasefile)
        .arg("eth0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Proc(child);
    let mut ip = None;
    let bound = wait_for(15, || {
        ip = addr_in(&c);
        ip.is_some() || child.0.try_wait().ok().flatten().is_some()
    });
    if !bound || ip.is_none() {
        panic!("dhclient got no address; daemon log:\n{}", d.log());
    }
    let reached = c.reaches("10.92.0.1");
    let lease = ip.as_deref().map(|ip| lease_of(&d, ip)).unwrap_or_default();
    drop(child);
    let ip = ip.expect("dhclient configured an address");
    assert!(ip.starts_with("10.92.0."), "{ip}");
    assert!(reached, "ping to the gateway");
    assert!(lease["client_id"].is_null(), "dhclient sends no client id: keyed by MAC: {lease}");
    assert_eq!(lease["mac"], d.port(&c.name)["mac"]);
}

#[test]
fn fifty_clients_get_fifty_distinct_addresses() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let d = Daemon::start("fifty");
    let net = name("fifty");
    d.ok(&["network", "create", &net, "--subnet", "10.93.0.0/24"]);
    let ns: Vec<Netns> = (0..50).map(|i| Netns::new(&format!("f{i}"))).collect();
    for n in &ns {
        d.ok(&["connect", &net, &n.name]);
    }
    std::thread::scope(|s| {
        let jobs: Vec<_> = ns.iter().map(|n| s.spawn(move || udhcpc_once(n, &n.name))).collect();
        for (i, j) in jobs.into_iter().enumerate() {
            assert!(j.join().unwrap(), "client {i} got no lease; log:\n{}", d.log());
        }
    });
    let mut ips: Vec<String> = ns.iter().map(|n| addr_in(n).expect("an address")).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "fifty distinct addresses");
    assert_eq!(d.json(&["lease", "ls", &net]).as_array().unwrap().len(), 50);
    assert_eq!(d.json(&["network", "inspect", &net])["pool_used"], 51, "50 leases and the gateway");
}

#[test]
fn malformed_dhcp_and_arp_are_counted_and_the_gateway_keeps_serving() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let d = Daemon::start("mal");
    let net = name("mal");
    d.ok(&["network", "create", &net, "--subnet", "10.94.0.0/24"]);
    let c = Netns::new("malc");
    // Port security off: with it, the guard would drop the malformed ARP
    // (not Ethernet/IPv4) before the gateway could count it; this test is
    // about the gateway's own parsing (tests/port_security.rs covers the guard).
    d.ok(&["connect", &net, &c.name, "--port-security", "off"]);
    let script = r"
import socket, struct
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
mac = s.getsockname()[4]
def udp_frame(payload, udp_len=None):
    udp = struct.pack('!HHHH', 68, 67, udp_len or 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b'\xff' * 4)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    return b'\xff' * 6 + mac + b'\x08\x00' + ip + udp
bootp = bytearray(240); bootp[0] = 1; bootp[1] = 1; bootp[2] = 6; bootp[28:34] = mac
bad_magic = bytes(bootp) + b'\x35\x01\x01\xff'
s.send(udp_frame(bad_magic))
good = bytes(bootp[:236]) + b'\x63\x82\x53\x63' + b'\x35\x01\x01\xff'
s.send(udp_frame(good[:100], udp_len=8 + len(good)))
overrun = bytes(bootp[:236]) + b'\x63\x82\x53\x63' + b'\x35\x01\x01\x0c\x40ab'
s.send(udp_frame(overrun))
arp = struct.pack('!HHBBH', 1, 0x0800, 16, 4, 1) + bytes(16) + bytes(4) + bytes(6) + bytes([10, 94, 0, 1])
# the gateway address where an Ethernet ARP has its target (what the switch looks at)
arp = arp[:24] + bytes([10, 94, 0, 1]) + arp[28:]
s.send(b'\xff' * 6 + mac + b'\x08\x06' + arp.ljust(46, b'\0'))
";
    common::need("python3", "python3");
    assert!(c.run(&["python3", "-c", script]), "python3 raw-socket sender failed");
    let counters = || d.json(&["network", "inspect", &net])["gateway_counters"].clone();
    let ok = wait_for(3, || {
        let k = counters();
        k["bad_magic"] == 1 && k["dhcp_malformed"] == 1 && k["truncated"] == 1 && k["arp_malformed"] == 1
    });
    assert!(ok, "each malformed message counted by reason: {}", counters());
    assert!(d.json(&["lease", "ls"]).as_array().unwrap().is_empty());
    // And a real client is still served.
    assert!(udhcpc_once(&c, "after"), "log:\n{}", d.log());
    assert!(c.reaches("10.94.0.1"));
}

#[test]
fn replies_through_a_relay_reach_it_at_its_own_mac() {
    if !common::net_admin() {
        return;
    }
    need("python3", "python3");
    let d = Daemon::start("rly");
    let net = name("rly");
    d.ok(&["network", "create", &net, "--subnet", "10.97.0.0/24"]);
    let r = Netns::new("rlyr");
    // A relay agent is a trusted device (it sends from the DHCP server
    // port): port security off for it, as DHCP snooping trusts a relay's port.
    d.ok(&["connect", &net, &r.name, "--ip", "10.97.0.5/24", "--port-security", "off"]);
    // RFC 1122 §3.3.6: drop unicast datagrams that came in a link-layer
    // broadcast, as a router or hardened host does.
    for k in ["all", "eth0"] {
        assert!(r.run(&["sysctl", "-qw", &format!("net.ipv4.conf.{k}.drop_unicast_in_l2_multicast=1")]));
    }
    // The relay forwards a client's DISCOVER (giaddr = its own address, hops
    // 1) from port 67 to the gateway, and waits for the OFFER on port 67.
    let script = r"
import socket, struct, random
relay = '10.97.0.5'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((relay, 67))
s.settimeout(1)
xid = random.getrandbits(32)
chaddr = bytes([2, 0x52, 0x4c, 0, 0, 7])
msg = struct.pack('!BBBBIHH4s4s4s4s', 1, 1, 6, 1, xid, 0, 0, bytes(4), bytes(4), bytes(4), socket.inet_aton(relay))
msg += chaddr.ljust(16, b'\0') + bytes(192) + b'\x63\x82\x53\x63' + b'\x35\x01\x01\xff'
for _ in range(5):
    s.sendto(msg, ('10.97.0.1', 67))
    try:
        while True:
            d, _ = s.recvfrom(2048)
            if len(d) < 240 or d[4:8] != struct.pack('!I', xid):
                continue
            i, kind = 240, None
            while i + 1 < len(d) and d[i] != 255:
                if d[i] == 0:
                    i += 1
                    continue
                if d[i] == 53:
                    kind = d[i + 2]
                i += 2 + d[i + 1]
            print(kind, socket.inet_ntoa(d[16:20]), d[28:34].hex())
            raise SystemExit(0)
    except socket.timeout:
        pass
raise SystemExit('no reply reached the relay')
";
    let out = Command::new("ip").args(["netns", "exec", &r.name, "python3", "-c", script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}\nlog:\n{}", stdout, String::from_utf8_lossy(&out.stderr), d.log());
    let f: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"2"), "a DHCPOFFER (type 2): {stdout}");
    assert!(f[1].starts_with("10.97.0.") && f[1] != "10.97.0.1" && f[1] != "10.97.0.5", "yiaddr: {stdout}");
    assert_eq!(f[2], "02524c000007", "for the relayed client: {stdout}");
}
