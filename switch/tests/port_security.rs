//! Port security, DHCP snooping, storm control and the DHCP starvation cap
//! against real namespaces and TAPs (issue 15): what a hostile container
//! sends reaches no one and is counted by reason, and what an honest one
//! sends still flows. Frames are forged with python3's raw sockets.

mod common;

use std::process::{Command, Stdio};

use common::{name, need, wait_for, Daemon, Netns};
use serde_json::Value;

/// Runs `script` (python3, raw sockets on eth0) in `ns`; its stdout.
fn python(ns: &Netns, script: &str) -> String {
    need("python3", "python3");
    let out =
        Command::new("ip").args(["netns", "exec", &ns.name, "python3", "-c", script]).output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python helpers every forging script starts with: a raw socket on eth0,
/// `mac` (ours), `eth(dst, src, type, payload)`, `ip_udp(src, dst, sport,
/// dport, payload)` (checksummed IPv4, UDP without checksum), `mac_of("..")`.
const PRELUDE: &str = r"
import socket, struct, time, random
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
mac = s.getsockname()[4]
def mac_of(t): return bytes(int(x, 16) for x in t.split(':'))
def ip4(t): return socket.inet_aton(t)
def eth(dst, src, ty, payload): return (dst + src + struct.pack('!H', ty) + payload).ljust(60, b'\0')
def ip_udp(src, dst, sport, dport, payload):
    udp = struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, ip4(src), ip4(dst))
    return ip[:10] + struct.pack('!H', csum(ip)) + ip[12:] + udp
def arp(op, sha, spa, tha, tpa):
    return struct.pack('!HHBBH', 1, 0x0800, 6, 4, op) + sha + ip4(spa) + tha + ip4(tpa)
def bootp(op, chaddr, opts):
    b = bytearray(240); b[0] = op; b[1] = 1; b[2] = 6; b[28:34] = chaddr
    b[236:240] = b'\x63\x82\x53\x63'
    return bytes(b) + opts + b'\xff'
";

fn counter(p: &Value, drop: &str) -> u64 {
    p["counters"]["drops"][drop].as_u64().unwrap_or(0)
}

fn tx(p: &Value) -> u64 {
    p["counters"]["tx_packets"].as_u64().unwrap()
}

#[test]
fn spoofed_sources_forged_arp_and_rogue_dhcp_reach_no_one() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("psec");
    let net = name("psec");
    d.ok(&["network", "create", &net, "--subnet", "10.150.0.0/24"]);
    let (a, b, c, e) = (Netns::new("pseca"), Netns::new("psecb"), Netns::new("psecc"), Netns::new("psece"));
    for n in [&a, &b, &c, &e] {
        n.no_ipv6();
    }
    d.ok(&["connect", &net, &a.name, "--ip", "10.150.0.2/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.150.0.3/24"]);
    d.ok(&["connect", &net, &c.name, "--ip", "10.150.0.4/24"]);
    // e, a lab node that may spoof: the control group.
    d.ok(&["connect", &net, &e.name, "--ip", "10.150.0.5/24", "--port-security", "off"]);
    assert_eq!(d.port(&a.name)["port_security"], true, "on by default: {}", d.port(&a.name));
    assert_eq!(d.port(&e.name)["port_security"], false);
    // Everyone reaches c (learned, ARP settled): honest traffic passes.
    for n in [&a, &b, &e] {
        assert!(n.reaches("10.150.0.4"), "log:\n{}", d.log());
    }
    let (b_mac, c_mac) = (d.port(&b.name)["mac"].clone(), d.port(&c.name)["mac"].clone());
    let (b_mac, c_mac) = (b_mac.as_str().unwrap(), c_mac.as_str().unwrap());
    let c_before = tx(&d.port(&c.name));
    // From a: 20 each of a spoofed IPv4 source (b's address) to c, a
    // spoofed source MAC (b's), a forged ARP reply telling c that b's
    // address is at a's MAC, and a rogue DHCP offer broadcast.
    let forge = format!(
        r"{PRELUDE}
b, c = mac_of('{b_mac}'), mac_of('{c_mac}')
for _ in range(20):
    s.send(eth(c, mac, 0x0800, ip_udp('10.150.0.3', '10.150.0.4', 5000, 9, b'spoof')))
    s.send(eth(c, b, 0x0800, ip_udp('10.150.0.2', '10.150.0.4', 5000, 9, b'spoof')))
    s.send(eth(c, mac, 0x0806, arp(2, mac, '10.150.0.3', c, '10.150.0.4')))
    s.send(eth(b'\xff' * 6, mac, 0x0800, ip_udp('10.150.0.2', '255.255.255.255', 67, 68,
        bootp(2, c, b'\x35\x01\x02\x36\x04' + ip4('10.150.0.2')))))
"
    );
    python(&a, &forge);
    let pa = || d.port(&a.name);
    let counted = wait_for(5, || {
        let p = pa();
        ["spoofed_ip", "spoofed_mac", "spoofed_arp", "rogue_dhcp"].iter().all(|r| counter(&p, r) == 20)
    });
    assert!(counted, "each forgery dropped and counted by reason: {}", pa()["counters"]["drops"]);
    // None reached c (its few frames since are its own pings' neighbours, at most).
    let c_after = tx(&d.port(&c.name));
    assert!(c_after - c_before < 5, "forged frames reached c: {c_before} -> {c_after}");
    // c's neighbour entry for b is b's MAC, not a's.
    let neigh = Command::new("ip").args(["-n", &c.name, "neigh", "show", "10.150.0.3"]).output().unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(!neigh.contains(d.port(&a.name)["mac"].as_str().unwrap()), "c's ARP cache poisoned: {neigh}");
    // b's MAC is still learned on b's port.
    let fdb = d.json(&["fdb", "show", &net]);
    let b_entry = fdb.as_array().unwrap().iter().find(|x| x["mac"] == b_mac).cloned();
    assert!(b_entry.is_some_and(|x| x["netns"] == b.name.as_str()), "b's MAC moved: {fdb}");
    // The control: the same spoofed source from e (port security off) does reach c.
    let c_before = tx(&d.port(&c.name));
    let from_e = format!(
        r"{PRELUDE}
c = mac_of('{c_mac}')
for _ in range(20):
    s.send(eth(c, mac, 0x0800, ip_udp('10.150.0.3', '10.150.0.4', 5000, 9, b'spoof')))
"
    );
    python(&e, &from_e);
    let reached = wait_for(5, || tx(&d.port(&c.name)) >= c_before + 20);
    assert!(reached, "without port security the spoofed frames are forwarded");
    assert_eq!(counter(&d.port(&e.name), "spoofed_ip"), 0);
    // And a is still served.
    assert!(a.reaches("10.150.0.4"));
    // A network's default: ports of a `--port-security off` network have
    // it off unless they ask; an unknown value is refused.
    let lab = name("pseclab");
    d.ok(&["network", "create", &lab, "--subnet", "10.154.0.0/24", "--port-security", "off"]);
    assert_eq!(d.json(&["network", "inspect", &lab])["port_security"], false);
    let (l1, l2) = (Netns::new("psecl1"), Netns::new("psecl2"));
    d.ok(&["connect", &lab, &l1.name, "--ip", "10.154.0.2/24"]);
    d.ok(&["connect", &lab, &l2.name, "--ip", "10.154.0.3/24", "--port-security", "on"]);
    assert_eq!(d.port(&l1.name)["port_security"], false);
    assert_eq!(d.port(&l2.name)["port_security"], true);
    let out = d.cli(&["network", "create", &name("psecbad"), "--port-security", "maybe"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("use on or off"));
}

#[test]
fn a_port_flooding_random_macs_leaves_the_others_ping_intact() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("mflood");
    let net = name("mflood");
    d.ok(&["network", "create", &net, "--subnet", "10.151.0.0/24"]);
    let (f, g, b, c) = (Netns::new("mfloodf"), Netns::new("mfloodg"), Netns::new("mfloodb"), Netns::new("mfloodc"));
    for n in [&f, &g, &b, &c] {
        n.no_ipv6();
    }
    // f floods without port security (only the table's fair share and storm
    // control stand in its way); g floods with it (every frame is spoofed).
    d.ok(&["connect", &net, &f.name, "--ip", "10.151.0.2/24", "--port-security", "off"]);
    d.ok(&["connect", &net, &g.name, "--ip", "10.151.0.5/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.151.0.3/24"]);
    d.ok(&["connect", &net, &c.name, "--ip", "10.151.0.4/24"]);
    assert!(b.reaches("10.151.0.4"));
    // b pings c every 10 ms for 4 s while f and g each send 100,000 frames
    // from random source MACs to random unicast destinations.
    let ping = Command::new("ip")
        .args(["netns", "exec", &b.name, "ping", "-n", "-q", "-c", "400", "-i", "0.01", "-W", "2", "10.151.0.4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let flood = format!(
        r"{PRELUDE}
r = random.Random(7)
frame = bytearray(eth(bytes(6), bytes(6), 0x88b5, b''))
for i in range(100000):
    frame[0:6] = bytes([2]) + r.randbytes(5)
    frame[6:12] = bytes([2]) + r.randbytes(5)
    s.send(frame)
"
    );
    let g_flood = Command::new("ip")
        .args(["netns", "exec", &g.name, "python3", "-c", &flood])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    python(&f, &flood);
    let g_out = g_flood.wait_with_output().unwrap();
    assert!(g_out.status.success(), "{}", String::from_utf8_lossy(&g_out.stderr));
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("400 packets transmitted, 400 received"), "pings lost under the MAC flood:\n{text}");
    // Both stations are still learned on their own ports.
    let fdb = d.json(&["fdb", "show", &net]);
    for n in [&b, &c] {
        let mac = d.port(&n.name)["mac"].clone();
        let e = fdb.as_array().unwrap().iter().find(|x| x["mac"] == mac).cloned();
        assert!(e.is_some_and(|x| x["netns"] == n.name.as_str()), "{} lost its entry", n.name);
    }
    // Every frame of g's that tapyard read (the kernel drops what overflows
    // the TAP's queue before it does) was dropped as spoofed, and taught
    // the table nothing; f's flooding was limited by storm control.
    let (pf, pg) = (d.port(&f.name), d.port(&g.name));
    let (g_rx, g_spoofed) = (pg["counters"]["rx_packets"].as_u64().unwrap(), counter(&pg, "spoofed_mac"));
    assert!(g_spoofed >= 10_000 && g_spoofed + 5 >= g_rx, "{}", pg["counters"]);
    assert!(fdb.as_array().unwrap().iter().filter(|x| x["netns"] == g.name.as_str()).count() <= 1);
    assert!(counter(&pf, "storm") > 0, "{}", pf["counters"]);
}

#[test]
fn one_port_cycling_client_ids_gets_a_few_leases_and_the_pool_stays_open() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let d = Daemon::start("starve");
    let net = name("starve");
    d.ok(&["network", "create", &net, "--subnet", "10.152.0.0/24"]);
    let (a, b) = (Netns::new("starvea"), Netns::new("starveb"));
    for n in [&a, &b] {
        n.no_ipv6();
    }
    d.ok(&["connect", &net, &a.name]);
    d.ok(&["connect", &net, &b.name]);
    // a sends 30 DISCOVERs, each with its own client identifier (and its own
    // MAC as chaddr, as port security requires), then 10 with other chaddrs.
    let starve = format!(
        r"{PRELUDE}
for i in range(30):
    opts = b'\x35\x01\x01' + b'\x3d\x07\x01' + bytes([2, 0xee, 0, 0, 0, i])
    s.send(eth(b'\xff' * 6, mac, 0x0800, ip_udp('0.0.0.0', '255.255.255.255', 68, 67, bootp(1, mac, opts))))
for i in range(10):
    other = bytes([2, 0xdd, 0, 0, 0, i])
    s.send(eth(b'\xff' * 6, mac, 0x0800, ip_udp('0.0.0.0', '255.255.255.255', 68, 67, bootp(1, other, b'\x35\x01\x01'))))
"
    );
    python(&a, &starve);
    let gw = || d.json(&["network", "inspect", &net])["gateway_counters"].clone();
    let capped = wait_for(5, || gw()["per_port_cap"] == 26 && gw()["dhcp_offer"] == 4);
    assert!(capped, "four offers, 26 refused: {}", gw());
    assert_eq!(counter(&d.port(&a.name), "spoofed_mac"), 10, "a DISCOVER for another chaddr is spoofed");
    // b still gets an address, and reaches the gateway with it.
    let hook = format!("{}/tests/fixtures/udhcpc.sh", env!("CARGO_MANIFEST_DIR"));
    let bound = b.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &hook, "-t", "5", "-T", "1"]);
    assert!(bound, "log:\n{}", d.log());
    assert!(b.reaches("10.152.0.1"));
    let leases = d.json(&["lease", "ls", &net]);
    let bound: Vec<&Value> = leases.as_array().unwrap().iter().filter(|l| l["state"] == "bound").collect();
    assert_eq!(bound.len(), 1, "only b's lease is bound: {leases}");
    let held_by_a = leases.as_array().unwrap().iter().filter(|l| l["mac"] == d.port(&a.name)["mac"]).count();
    assert_eq!(held_by_a, 4, "a holds four offers: {leases}");
}

#[test]
fn storm_control_floods_the_limit_per_second_and_counts_the_rest() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("storm");
    let net = name("storm");
    d.ok(&["network", "create", &net, "--subnet", "10.153.0.0/24"]);
    let (a, b) = (Netns::new("storma"), Netns::new("stormb"));
    for n in [&a, &b] {
        n.no_ipv6();
    }
    d.ok(&["connect", &net, &a.name, "--ip", "10.153.0.2/24", "--storm-limit", "200"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.153.0.3/24"]);
    assert_eq!(d.port(&a.name)["storm_limit"], 200);
    assert!(a.reaches("10.153.0.3"));
    let rx = |p: &Value| p["counters"]["rx_packets"].as_u64().unwrap();
    let (a_before, b_before) = (rx(&d.port(&a.name)), tx(&d.port(&b.name)));
    let script = format!(
        r"{PRELUDE}
t = time.monotonic()
for _ in range(5000):
    s.send(eth(b'\xff' * 6, mac, 0x88b5, b''))
print(time.monotonic() - t)
"
    );
    let secs: f64 = python(&a, &script).trim().parse().unwrap();
    let pa = || d.port(&a.name);
    // What tapyard read of them (the kernel drops what overflows the TAP's
    // queue first) was flooded or counted, every frame.
    let read = |p: &Value| rx(p) - a_before;
    let settled = wait_for(5, || {
        let p = pa();
        read(&p) >= 1000 && tx(&d.port(&b.name)) - b_before + counter(&p, "storm") >= read(&p)
    });
    assert!(settled, "every broadcast read was flooded or counted: {}", pa()["counters"]);
    let flooded = tx(&d.port(&b.name)) - b_before;
    // The frames span at most ceil(secs) + 1 one-second windows of the
    // daemon's clock (+1 for frames the worker reads after the sender stops).
    // At least one whole window's limit, less the few frames a flooded in
    // the same second before (its ARP for b).
    let windows = secs.ceil() as u64 + 2;
    assert!((190..=200 * windows).contains(&flooded), "{flooded} flooded in {secs:.2} s");
    assert_eq!(counter(&pa(), "storm") + flooded, read(&pa()));
    // Unicast is not limited: a still reaches b.
    assert!(a.reaches("10.153.0.3"));
}
