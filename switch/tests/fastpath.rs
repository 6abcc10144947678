//! The fast path against real namespaces: offloads negotiated per port, TCP
//! super-frames crossing whole or segmented by tapyard, both queues of a
//! two-worker daemon carrying traffic with no frame delivered twice, and a
//! port removed and re-added while another pair keeps its traffic.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// An iperf3 server in `ns` for one test, killed when dropped.
struct Server(std::process::Child);

impl Server {
    fn start(ns: &Netns) -> Server {
        common::need("iperf3", "iperf3");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "iperf3", "-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 is installed by scripts/setup.sh");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `iperf3 -c ip` in `ns` with `args` until it connects; returns the JSON report.
fn iperf(ns: &Netns, ip: &str, args: &[&str]) -> serde_json::Value {
    let mut report = serde_json::Value::Null;
    let ran = wait_for(5, || {
        let out =
            Command::new("ip").args(["netns", "exec", &ns.name, "iperf3", "-c", ip, "-J"]).args(args).output().unwrap();
        report = serde_json::from_slice(&out.stdout).unwrap_or_default();
        out.status.success() && report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0
    });
    assert!(ran, "iperf3 from {} to {ip}: {report}", ns.name);
    report
}

/// Packets the kernel saw arrive on `ifname` in `ns` (the frames tapyard wrote to it).
fn kernel_rx_packets(ns: &Netns, ifname: &str) -> u64 {
    let out = Command::new("ip").args(["-n", &ns.name, "-j", "-s", "link", "show", ifname]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

fn counters(d: &Daemon, ns: &Netns) -> serde_json::Value {
    d.port(&ns.name)["counters"].clone()
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap()
}

/// What `ns` has sent into the switch came as super-frames (TSO at work).
fn assert_super_frames(d: &Daemon, ns: &Netns) {
    let c = counters(d, ns);
    let avg = n(&c["rx_bytes"]) / n(&c["rx_packets"]).max(1);
    assert!(avg > 3000, "{}'s frames are super-frames (average {avg} bytes): {c}", ns.name);
}

/// Runs `f`; every frame tapyard wrote to `ns` meanwhile was MTU-sized
/// (segmented in software). Returns the counters after.
fn assert_segmented_during(d: &Daemon, ns: &Netns, f: impl FnOnce()) -> serde_json::Value {
    let before = counters(d, ns);
    f();
    let after = counters(d, ns);
    let frames = n(&after["tx_packets"]) - n(&before["tx_packets"]);
    let bytes = n(&after["tx_bytes"]) - n(&before["tx_bytes"]);
    assert!(frames > 0 && bytes / frames <= 1514, "{} got MTU-sized frames only: {after}", ns.name);
    after
}

const RECV_PY: &str = "import socket,hashlib,sys\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7777)); s.listen(1)\n\
print('listening', flush=True)\n\
c,_=s.accept(); h=hashlib.sha256(); n=0\n\
while True:\n    b=c.recv(1<<20)\n    if not b: break\n    h.update(b); n+=len(b)\n\
print(n, h.hexdigest(), flush=True)\n";

const SEND_PY: &str = "import socket,hashlib,sys\n\
c=socket.create_connection((sys.argv[1], 7777)); h=hashlib.sha256(); n=0\n\
for i in range(int(sys.argv[2])):\n    b=hashlib.sha512(i.to_bytes(8,'big')).digest()*1024\n    c.sendall(b); h.update(b); n+=len(b)\n\
c.shutdown(socket.SHUT_WR); c.recv(1); print(n, h.hexdigest(), flush=True)\n";

/// Sends 64 KiB × `blocks` of checksummed data from `from` to `ip` in `to`
/// over TCP and checks that exactly those bytes arrived (length and SHA-256).
fn transfer(from: &Netns, to: &Netns, ip: &str, blocks: u32) {
    use std::io::BufRead;
    common::need("python3", "python3");
    let mut rx = Command::new("ip")
        .args(["netns", "exec", &to.name, "python3", "-c", RECV_PY, ip])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(rx.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let out = Command::new("ip")
        .args(["netns", "exec", &from.name, "timeout", "60", "python3", "-c", SEND_PY, ip, &blocks.to_string()])
        .output()
        .unwrap();
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let got = lines.next().map(|l| l.unwrap()).unwrap_or_default();
    let _ = rx.kill();
    let _ = rx.wait();
    assert_eq!(sent, format!("{}", u64::from(blocks) * 65536) + &sent[sent.find(' ').unwrap_or(0)..]);
    assert_eq!(got, sent, "received vs sent (bytes, sha256); sender stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn super_frames_cross_whole_or_segmented_and_the_stream_is_intact() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("gso");
    let net = name("gso");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let (a, b, c) = (Netns::new("gsoa"), Netns::new("gsob"), Netns::new("gsoc"));
    d.ok(&["connect", &net, &a.name, "--ip", "10.77.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.77.0.2/24"]);
    d.ok(&["connect", &net, &c.name, "--ip", "10.77.0.3/24", "--offload", "off"]);
    // Negotiation per port: one queue per worker; offloads as asked.
    let pa = d.port(&a.name);
    assert_eq!(pa["queues"], 2, "{pa}");
    let offs: Vec<&str> = pa["offloads"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
    for o in ["csum", "tso4", "tso6"] {
        assert!(offs.contains(&o), "{pa}");
    }
    assert_eq!(d.port(&c.name)["offloads"], serde_json::json!([]));

    // A → B: both take TSO, so super-frames cross whole. 64 MiB of
    // checksummed data must arrive exactly.
    transfer(&a, &b, "10.77.0.2", 1024);
    assert_super_frames(&d, &a);

    // A → C: C has no offloads, so tapyard segments every super-frame and
    // fills in every checksum; C's kernel verifies them (a bad one is dropped,
    // and TCP would retransmit or stall).
    let _s2 = Server::start(&c);
    let mut r = serde_json::Value::Null;
    assert_segmented_during(&d, &c, || {
        transfer(&a, &c, "10.77.0.3", 1024);
        r = iperf(&a, "10.77.0.3", &["-t", "2"]);
    });
    let ca = counters(&d, &a);
    assert_eq!(n(&ca["drops"]["bad_offload"]), 0, "{ca}");
    // Retransmissions would show lost (badly segmented) frames; a few are normal under load.
    let retr = n(&r["end"]["sum_sent"]["retransmits"]);
    assert!(retr < 100, "{retr} retransmits A → C: {r}");
}

#[test]
fn both_queues_carry_traffic_and_no_frame_is_delivered_twice() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("mq");
    let net = name("mq");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let (a, b) = (Netns::new("mqa"), Netns::new("mqb"));
    a.no_ipv6();
    b.no_ipv6();
    d.ok(&["connect", &net, &a.name, "--ip", "10.78.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.78.0.2/24"]);
    let _s = Server::start(&b);
    // Eight flows a round: the kernel spreads flows over the TAP's queues
    // by hash, so all eight on one queue is a 1-in-128 chance (seen in CI);
    // each further round brings eight new flows (new source ports).
    let mut rounds = 0;
    let (ca, qa) = loop {
        rounds += 1;
        let r = iperf(&a, "10.78.0.2", &["-P", "8", "-t", "2"]);
        assert!(n(&r["end"]["sum_received"]["bytes"]) > 1_000_000, "{r}");
        // The last frames drained: each port wrote what the other read.
        let mut now = (serde_json::Value::Null, serde_json::Value::Null);
        let drained = wait_for(5, || {
            let ports = d.json(&["port", "ls"]);
            let of = |ns: &Netns| {
                ports.as_array().unwrap().iter().find(|p| p["netns"] == ns.name.as_str()).unwrap()["counters"].clone()
            };
            now = (of(&a), of(&b));
            n(&now.0["rx_packets"]) == n(&now.1["tx_packets"]) && n(&now.1["rx_packets"]) == n(&now.0["tx_packets"])
        });
        let (ca, cb) = now;
        // Two ports only: every frame read on one is written to the other
        // once (floods included).
        assert!(drained, "A rx vs B tx, B rx vs A tx: {ca} {cb}");
        let qa: Vec<u64> = ca["rx_queue_packets"].as_array().unwrap().iter().map(n).collect();
        if (qa[0] > 0 && qa[1] > 0) || rounds == 3 {
            break (ca, qa);
        }
    };
    assert!(qa[0] > 0 && qa[1] > 0, "both of A's queues carried frames after {rounds} rounds of 8 flows: {qa:?}");
    assert_eq!(qa.iter().sum::<u64>(), n(&ca["rx_packets"]));
    // The kernel received exactly what was written. Read together until they
    // agree: a late frame (an ARP probe of a stale neighbour, a last ACK)
    // may pass between reading tapyard's counters and the kernel's.
    let mut seen = (0, 0, 0, 0);
    let equal = wait_for(5, || {
        let ports = d.json(&["port", "ls"]);
        let tx = |ns: &Netns| {
            n(&ports.as_array().unwrap().iter().find(|p| p["netns"] == ns.name.as_str()).unwrap()["counters"]
                ["tx_packets"])
        };
        seen = (kernel_rx_packets(&b, "eth0"), tx(&b), kernel_rx_packets(&a, "eth0"), tx(&a));
        seen.0 == seen.1 && seen.2 == seen.3
    });
    assert!(equal, "kernel rx vs tapyard tx, B then A: {seen:?}");
}

#[test]
fn a_port_removed_and_readded_costs_another_pair_nothing() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("rea");
    let net = name("rea");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let (a, b, x) = (Netns::new("reaa"), Netns::new("reab"), Netns::new("reax"));
    d.ok(&["connect", &net, &a.name, "--ip", "10.79.0.1/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.79.0.2/24"]);
    d.ok(&["connect", &net, &x.name, "--ip", "10.79.0.3/24"]);
    assert!(a.reaches("10.79.0.2"));
    // A pings B 300 times every 10 ms while X's port is removed and re-added
    // (each change republishes the snapshot and re-registers every worker's queues).
    let ping = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-n", "-q", "-c", "300", "-i", "0.01", "10.79.0.2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..5 {
        d.ok(&["disconnect", &net, &x.name]);
        d.ok(&["connect", &net, &x.name, "--ip", "10.79.0.3/24"]);
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("300 packets transmitted, 300 received"), "{text}");
    assert!(x.reaches("10.79.0.1"), "the re-added port works");
}

#[test]
fn routed_super_frames_cross_whole_or_are_segmented_after_routing() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("rgso");
    let (r, n1, n2) = (name("rgso"), name("rgso1"), name("rgso2"));
    d.ok(&["network", "create", &n1, "--subnet", "10.81.1.0/24"]);
    d.ok(&["network", "create", &n2, "--subnet", "10.81.2.0/24"]);
    d.ok(&["router", "create", &r]);
    d.ok(&["router", "attach", &r, &n1]);
    d.ok(&["router", "attach", &r, &n2]);
    let (a, b, c) = (Netns::new("rgsoa"), Netns::new("rgsob"), Netns::new("rgsoc"));
    d.ok(&["connect", &n1, &a.name, "--ip", "10.81.1.10"]);
    d.ok(&["connect", &n2, &b.name, "--ip", "10.81.2.10"]);
    d.ok(&["connect", &n2, &c.name, "--ip", "10.81.2.11", "--offload", "off"]);
    assert!(a.reaches("10.81.2.10") && a.reaches("10.81.2.11"));
    // Routed once: the reply left C with TTL 64 and arrives with 63.
    let out =
        Command::new("ip").args(["netns", "exec", &a.name, "ping", "-n", "-c", "1", "10.81.2.11"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("ttl=63"), "{}", String::from_utf8_lossy(&out.stdout));
    // To B (offloads on): super-frames are routed whole.
    transfer(&a, &b, "10.81.2.10", 512);
    assert_super_frames(&d, &a);
    // To C (offloads off): routed, then segmented; C's kernel checks every checksum.
    assert_segmented_during(&d, &c, || transfer(&a, &c, "10.81.2.11", 512));
    let info = d.json(&["router", "inspect", &r]);
    assert!(n(&info["counters"]["routed"]) > 0, "{info}");
    // Nothing expired or was dropped on the way (segments copy the rewritten
    // header, so they carry the TTL the super-frame got: see the worker's
    // routing and datapath::offload's unit tests).
    assert_eq!(n(&info["counters"]["ttl_expired"]), 0, "{info}");
    assert_eq!(n(&counters(&d, &a)["drops"]["bad_offload"]), 0);
}
