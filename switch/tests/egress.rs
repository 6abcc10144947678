//! Egress through the uplink, with the kernel's NAT: a daemon in a "host"
//! namespace of the test's own, an "outside" namespace joined to it by a
//! veth pair on 198.18.0.0/15 (the benchmarking range: it never leaves this
//! machine) serving HTTP and iperf3, and containers on tapyard networks.
//! Each test has its own host, so the daemon's uplink, nftables table,
//! forwarding sysctl and iptables policy are the test's alone and go with
//! its namespaces.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{need, net_admin, sh, stop_child, wait_for, Daemon, Netns};

const HOST_IP: &str = "198.18.0.1";
const OUTSIDE_IP: &str = "198.18.0.2";
const HTTP_PORT: &str = "8000";

/// A process the test started, stopped (by its pid) on drop.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop_child(c, "TERM");
        }
    }
}

/// The host namespace (the daemon's), the outside namespace, and what the
/// outside serves.
struct World {
    host: Netns,
    outside: Netns,
    dir: PathBuf,
    /// The SHA-256 of the file served.
    sha: String,
    _http: Proc,
}

impl World {
    fn new(tag: &str) -> World {
        need("python3", "python3");
        need("curl", "curl");
        need("nft", "nftables");
        let host = Netns::new(&format!("{tag}h"));
        let outside = Netns::new(&format!("{tag}o"));
        // Made in place: the names live only inside the two namespaces.
        sh(&[
            "ip",
            "link",
            "add",
            "up0",
            "netns",
            &host.name,
            "type",
            "veth",
            "peer",
            "name",
            "out0",
            "netns",
            &outside.name,
        ]);
        sh(&["ip", "-n", &host.name, "addr", "add", &format!("{HOST_IP}/24"), "dev", "up0"]);
        sh(&["ip", "-n", &host.name, "link", "set", "up0", "up"]);
        sh(&["ip", "-n", &outside.name, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "out0"]);
        sh(&["ip", "-n", &outside.name, "link", "set", "out0", "up"]);
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", common::name(&format!("{tag}w"))));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        // 4 MiB that no cache or compression can fake.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
        let bytes: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let blob = dir.join("www/blob");
        std::fs::write(&blob, bytes).unwrap();
        let sha = sha256(&blob);
        let log = std::fs::File::create(dir.join("http.log")).unwrap();
        let http = Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.name,
                "python3",
                "-u",
                "-m",
                "http.server",
                HTTP_PORT,
                "--bind",
                OUTSIDE_IP,
            ])
            .arg("--directory")
            .arg(dir.join("www"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let w = World { host, outside, dir, sha, _http: Proc(Some(http)) };
        let url = format!("http://{OUTSIDE_IP}:{HTTP_PORT}/");
        assert!(
            wait_for(10, || w.outside.run(&["curl", "-sf", "-o", "/dev/null", &url])),
            "the outside's HTTP server did not start"
        );
        w
    }

    /// The HTTP server's log: one line per request, the client's address first.
    fn http_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("http.log")).unwrap_or_default()
    }

    /// Downloads the blob from the outside inside `ns`; Ok(its SHA-256) or Err(curl's error).
    fn download(&self, ns: &Netns, timeout: &str) -> Result<String, String> {
        let out = self.dir.join(format!("got-{}", ns.name));
        let _ = std::fs::remove_file(&out);
        let r = Command::new("ip")
            .args(["netns", "exec", &ns.name, "curl", "-sS", "--connect-timeout", timeout, "--max-time", "60", "-o"])
            .arg(&out)
            .arg(format!("http://{OUTSIDE_IP}:{HTTP_PORT}/blob"))
            .output()
            .unwrap();
        if !r.status.success() {
            return Err(String::from_utf8_lossy(&r.stderr).into_owned());
        }
        Ok(sha256(&out))
    }

    fn daemon(&self, tag: &str, flags: &[&str]) -> Daemon {
        Daemon::start_in(tag, &self.host.name, flags)
    }

    /// Runs `args` in the host namespace and returns its stdout (panics on failure).
    fn host_out(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.host.name]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?} in the host failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// The rules of tapyard's nftables table in the host, one per line, or
    /// None if there is no such table.
    fn tapyard_rules(&self) -> Option<Vec<String>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.host.name, "nft", "list", "table", "ip", "tapyard"])
            .output()
            .unwrap();
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain") && *l != "}")
                .filter(|l| !l.starts_with("type "))
                // Counters change between listings; the rules do not.
                .map(|l| l.split(" counter packets").next().unwrap_or(l).to_string())
                .collect()
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn forwarding(w: &World) -> String {
    w.host_out(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim().to_string()
}

#[test]
fn a_container_downloads_from_outside_through_nat_and_iperf3_runs() {
    if !net_admin() {
        return;
    }
    need("iperf3", "iperf3");
    let w = World::new("dl");
    let d = w.daemon("dl", &[]);
    let c = Netns::new("dlc");
    d.ok(&["network", "create", "n1", "--subnet", "10.77.0.0/24"]);
    d.ok(&["connect", "n1", &c.name, "--ip", "10.77.0.2/24"]);
    assert_eq!(w.download(&c, "10").as_deref(), Ok(w.sha.as_str()), "log:\n{}", d.log());
    // The outside saw the host's address, not the container's: masqueraded.
    let log = w.http_log();
    assert!(log.lines().any(|l| l.starts_with(&format!("{HOST_IP} ")) && l.contains("GET /blob")), "{log}");
    assert!(!log.contains("10.77.0.2"), "{log}");
    // Bulk TCP through the same path.
    let server = Proc(Some(
        Command::new("ip")
            .args(["netns", "exec", &w.outside.name, "iperf3", "-s", "-1", "-B", OUTSIDE_IP, "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut ok = false;
    // iperf3 -s may not listen yet: retry the client until it connects.
    assert!(wait_for(10, || {
        ok = c.run(&["iperf3", "-c", OUTSIDE_IP, "-p", "5201", "-n", "16M"]);
        ok
    }));
    drop(server);
    // The kernel's side: most of iperf3's 16 MiB out of the network (with
    // -n the server may end the test before it has read the last few MiB,
    // and the client may exit with some still in flight: wait for it).
    let mut info = serde_json::Value::Null;
    let all_out = wait_for(10, || {
        info = d.json(&["network", "inspect", "n1"]);
        info["egress_counters"]["out_bytes"].as_u64().unwrap_or(0) > 8 << 20
    });
    assert!(all_out, "{info}");
    assert_eq!(info["egress"], "nat");
    assert!(info["route_counters"]["routed"].as_u64().unwrap() > 0, "{info}");
    let e = &info["egress_counters"];
    assert!(e["connections"].as_u64().unwrap() >= 2, "{info}");
    // And the 4 MiB download back in.
    assert!(e["in_bytes"].as_u64().unwrap() > 4 << 20, "{info}");
    assert!(e["in_packets"].as_u64().unwrap() > 0, "{info}");
}

#[test]
fn networks_without_egress_cannot_reach_outside() {
    if !net_admin() {
        return;
    }
    let w = World::new("no");
    let d = w.daemon("no", &[]);
    let (a, b, e) = (Netns::new("noa"), Netns::new("nob"), Netns::new("noe"));
    d.ok(&["network", "create", "none", "--subnet", "10.78.1.0/24", "--egress", "none"]);
    d.ok(&["network", "create", "inner", "--subnet", "10.78.2.0/24", "--internal"]);
    d.ok(&["network", "create", "open", "--subnet", "10.78.3.0/24"]);
    d.ok(&["connect", "none", &a.name, "--ip", "10.78.1.2/24"]);
    d.ok(&["connect", "inner", &b.name, "--ip", "10.78.2.2/24"]);
    d.ok(&["connect", "open", &e.name, "--ip", "10.78.3.2/24"]);
    // The control: the same daemon's network with egress gets through.
    assert_eq!(w.download(&e, "10").as_deref(), Ok(w.sha.as_str()));
    for ns in [&a, &b] {
        assert!(w.download(ns, "2").is_err(), "{} reached the outside", ns.name);
        assert!(!ns.ping_quick(OUTSIDE_IP));
    }
    assert_eq!(d.json(&["network", "inspect", "none"])["egress"], "none");
    assert_eq!(d.json(&["network", "inspect", "inner"])["egress"], "none");
    // --egress nat cannot be had without a subnet or on an internal network.
    assert!(!d.cli(&["network", "create", "x", "--internal", "--egress", "nat"]).status.success());
    assert!(!d.cli(&["network", "create", "y", "--ipam", "none", "--egress", "nat"]).status.success());
    assert!(!d.cli(&["network", "create", "z", "--egress", "sideways"]).status.success());
}

#[test]
fn egress_works_with_iptables_forward_policy_drop() {
    if !net_admin() {
        return;
    }
    need("iptables", "iptables");
    let w = World::new("fd");
    // As Docker leaves it. The policy belongs to the test's host namespace
    // and goes with it.
    w.host_out(&["iptables", "-P", "FORWARD", "DROP"]);
    let d = w.daemon("fd", &[]);
    let c = Netns::new("fdc");
    d.ok(&["network", "create", "n1", "--subnet", "10.79.0.0/24"]);
    d.ok(&["connect", "n1", &c.name, "--ip", "10.79.0.2/24"]);
    assert_eq!(w.download(&c, "10").as_deref(), Ok(w.sha.as_str()), "log:\n{}", d.log());
    // Forwarding is open for tapyard's interface only: iptables still works
    // and still drops everything else.
    let rules = w.host_out(&["iptables", "-S", "FORWARD"]);
    assert!(rules.starts_with("-P FORWARD DROP"), "{rules}");
    let accepts = |dir: &str| {
        rules.lines().any(|l| l.starts_with(&format!("-A FORWARD {dir} tapyard0 ")) && l.ends_with("-j ACCEPT"))
    };
    assert!(accepts("-i") && accepts("-o"), "{rules}");
    assert_eq!(rules.lines().filter(|l| l.contains("tapyard0")).count(), 2, "{rules}");
}

#[test]
fn two_networks_with_egress_never_reach_each_other_through_the_host() {
    if !net_admin() {
        return;
    }
    let w = World::new("iso");
    let d = w.daemon("iso", &[]);
    let (a, b) = (Netns::new("isoa"), Netns::new("isob"));
    d.ok(&["network", "create", "na", "--subnet", "10.80.1.0/24"]);
    d.ok(&["network", "create", "nb", "--subnet", "10.80.2.0/24"]);
    d.ok(&["connect", "na", &a.name, "--ip", "10.80.1.2/24"]);
    d.ok(&["connect", "nb", &b.name, "--ip", "10.80.2.2/24"]);
    // Both reach the outside...
    assert!(a.reaches(OUTSIDE_IP) && b.reaches(OUTSIDE_IP));
    // ...and neither reaches the other, in either direction, even though the
    // host routes both subnets.
    assert!(!a.ping_quick("10.80.2.2"));
    assert!(!b.ping_quick("10.80.1.2"));
    let routes = w.host_out(&["ip", "route"]);
    assert!(routes.contains("10.80.1.0/24 via") && routes.contains("10.80.2.0/24 via"), "{routes}");
    // tapyard answered with Network Unreachable (RFC 1812 §5.2.7.1) rather than handing them to the host.
    let na = d.json(&["network", "inspect", "na"]);
    assert!(na["route_counters"]["no_route"].as_u64().unwrap() > 0, "{na}");
    // A router that attaches both joins them.
    d.ok(&["router", "create", "r"]);
    d.ok(&["router", "attach", "r", "na"]);
    d.ok(&["router", "attach", "r", "nb"]);
    assert!(wait_for(5, || a.ping_quick("10.80.2.2")));
}

#[test]
fn sigkill_restart_keeps_egress_without_duplicate_rules_and_a_clean_stop_leaves_nothing() {
    if !net_admin() {
        return;
    }
    need("iptables", "iptables");
    let w = World::new("rs");
    w.host_out(&["iptables", "-P", "FORWARD", "DROP"]);
    assert_eq!(forwarding(&w), "0");
    let mut d = w.daemon("rs", &[]);
    let c = Netns::new("rsc");
    d.ok(&["network", "create", "n1", "--subnet", "10.81.0.0/24"]);
    d.ok(&["connect", "n1", &c.name, "--ip", "10.81.0.2/24"]);
    assert_eq!(w.download(&c, "10").as_deref(), Ok(w.sha.as_str()));
    assert_eq!(forwarding(&w), "1");
    let before = w.tapyard_rules().expect("tapyard's table");
    assert!(!before.is_empty());
    d.signal("KILL");
    d.spawn();
    assert_eq!(w.download(&c, "10").as_deref(), Ok(w.sha.as_str()), "after restart; log:\n{}", d.log());
    assert_eq!(w.tapyard_rules().expect("tapyard's table"), before, "rules changed or doubled across a restart");
    let fwd = w.host_out(&["iptables", "-S", "FORWARD"]);
    assert_eq!(fwd.lines().filter(|l| l.contains("tapyard0")).count(), 2, "{fwd}");
    // A clean stop: no table, no uplink, no route, forwarding as it was
    // before the first start (not as the killed daemon left it).
    d.signal("TERM");
    assert_eq!(w.tapyard_rules(), None);
    assert!(!w.host.has_link("tapyard0"));
    let routes = w.host_out(&["ip", "route"]);
    assert!(!routes.contains("10.81.0.0/24"), "{routes}");
    let fwd = w.host_out(&["iptables", "-S", "FORWARD"]);
    assert!(!fwd.contains("tapyard0"), "{fwd}");
    assert_eq!(forwarding(&w), "0");
}

#[test]
fn a_transit_subnet_the_host_routes_is_refused_at_start() {
    if !net_admin() {
        return;
    }
    let host = Netns::new("trh");
    sh(&["ip", "-n", &host.name, "route", "add", "100.127.0.0/16", "dev", "lo"]);
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", common::name("tr")));
    let out = Command::new("ip")
        .args(["netns", "exec", &host.name, common::TAPYARD, "--socket"])
        .arg(dir.join("s"))
        .args(["daemon", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("overlaps route 100.127.0.0/16 dev lo") && err.contains("--uplink-subnet"), "{err}");
    assert!(!host.has_link("tapyard0"));
}

/// Starts `args` in namespace `ns`, stderr to `log`.
fn spawn_in(ns: &Netns, args: &[&str], log: &Path) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    Proc(Some(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap(),
    ))
}

/// An HTTP GET of `url` from namespace `ns`: Ok(body) or Err(curl's error).
fn get(ns: &Netns, url: &str) -> Result<String, String> {
    let r = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-sS", "--connect-timeout", "3", "--max-time", "10", url])
        .output()
        .unwrap();
    if r.status.success() {
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&r.stderr).into_owned())
    }
}

/// One UDP datagram to `to` from namespace `ns`, and the answer (the echo
/// server below answers with what it got and the sender's address).
fn udp_ask(ns: &Netns, to_ip: &str, port: u16) -> Option<String> {
    let code = format!(
        "import socket\ns=socket.socket(2,2)\ns.settimeout(1)\ns.sendto(b'hi from ',('{to_ip}',{port}))\nprint(s.recvfrom(200)[0].decode())"
    );
    let r = Command::new("ip").args(["netns", "exec", &ns.name, "python3", "-c", &code]).output().unwrap();
    r.status.success().then(|| String::from_utf8_lossy(&r.stdout).trim().to_string())
}

const UDP_ECHO: &str = "import socket\ns=socket.socket(2,2)\ns.bind(('0.0.0.0',5353))\nwhile True:\n  d,a=s.recvfrom(200)\n  s.sendto(d+a[0].encode(),a)";

#[test]
fn published_tcp_and_udp_ports_are_reached_from_the_host_and_outside_with_the_source_kept() {
    if !net_admin() {
        return;
    }
    need("iptables", "iptables");
    let w = World::new("pp");
    w.host_out(&["iptables", "-P", "FORWARD", "DROP"]);
    let mut d = w.daemon("pp", &[]);
    let c = Netns::new("ppc");
    d.ok(&["network", "create", "web", "--subnet", "10.82.0.0/24"]);
    d.ok(&["connect", "web", &c.name, "--ip", "10.82.0.2/24", "--publish", "18080:8080", "-p", "15353:5353/udp"]);
    std::fs::write(w.dir.join("www/hello"), "hello from the container\n").unwrap();
    let www = w.dir.join("www");
    let _http = spawn_in(
        &c,
        &["python3", "-u", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", www.to_str().unwrap()],
        &w.dir.join("c-http.log"),
    );
    let _udp = spawn_in(&c, &["python3", "-c", UDP_ECHO], &w.dir.join("c-udp.log"));
    assert!(wait_for(10, || c.run(&["curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:8080/hello"])));
    // From the host itself: its loopback and its own address.
    for url in ["http://127.0.0.1:18080/hello", &format!("http://{HOST_IP}:18080/hello")] {
        assert_eq!(get(&w.host, url).as_deref(), Ok("hello from the container\n"), "{url}; log:\n{}", d.log());
    }
    // From another machine: its own address reaches the container.
    assert_eq!(get(&w.outside, &format!("http://{HOST_IP}:18080/hello")).as_deref(), Ok("hello from the container\n"));
    let log = std::fs::read_to_string(w.dir.join("c-http.log")).unwrap();
    assert!(log.lines().any(|l| l.starts_with(&format!("{OUTSIDE_IP} ")) && l.contains("GET /hello")), "{log}");
    // UDP, from outside, the source kept too.
    let mut answer = None;
    assert!(wait_for(10, || {
        answer = udp_ask(&w.outside, HOST_IP, 15353);
        answer.is_some()
    }));
    assert_eq!(answer.as_deref(), Some(format!("hi from {OUTSIDE_IP}").as_str()));
    // The port list shows them, active.
    let p = d.port(&c.name);
    let shown: Vec<String> =
        p["publish"].as_array().unwrap().iter().map(|e| format!("{}/{}", e["host_port"], e["state"])).collect();
    assert_eq!(shown, ["15353/\"active\"", "18080/\"active\""], "{p}");
    // SIGKILL and restart: still published, still reached.
    d.signal("KILL");
    d.spawn();
    assert!(wait_for(10, || get(&w.outside, &format!("http://{HOST_IP}:18080/hello")).is_ok()), "log:\n{}", d.log());
    // A host port someone else holds is refused, and nothing is left half-made.
    let _squatter = spawn_in(
        &w.host,
        &[
            "python3",
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',18081))\ns.listen()\ntime.sleep(600)",
        ],
        &w.dir.join("squat.log"),
    );
    assert!(wait_for(10, || w.host_out(&["ss", "-Htln"]).contains(":18081 ")));
    let out = d.cli(&["port", "publish", "web", &c.name, "18081:8080"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host port 18081/tcp is already in use"));
    assert_eq!(d.port(&c.name)["publish"].as_array().unwrap().len(), 2);
    // Unpublished: closed from outside.
    d.ok(&["port", "unpublish", "web", &c.name, "18080:8080"]);
    assert!(get(&w.outside, &format!("http://{HOST_IP}:18080/hello")).is_err());
    assert!(get(&w.host, "http://127.0.0.1:18080/hello").is_err());
}

/// A file the test made, removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn dhcp_offers_the_hosts_resolvers_without_loopback_ones_on_networks_with_egress() {
    if !net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let host = Netns::new("dnsh");
    // The host's resolv.conf as the daemon reads it: a loopback stub (which
    // a container cannot reach) and a real resolver.
    let conf = TempFile(std::env::temp_dir().join(format!("tapyard-it-{}-resolv.conf", common::name("dns"))));
    std::fs::write(&conf.0, "nameserver 127.0.0.53\nnameserver 198.18.0.53\nsearch example.test\n").unwrap();
    let d = Daemon::start_in("dns", &host.name, &["--resolv-conf", conf.0.to_str().unwrap()]);
    d.ok(&["network", "create", "out", "--subnet", "10.83.1.0/24"]);
    d.ok(&["network", "create", "own", "--subnet", "10.83.2.0/24", "--dns", "198.18.7.7"]);
    d.ok(&["network", "create", "shut", "--subnet", "10.83.3.0/24", "--egress", "none"]);
    assert_eq!(d.json(&["network", "inspect", "out"])["dns"], serde_json::json!(["198.18.0.53"]));
    assert_eq!(d.json(&["network", "inspect", "own"])["dns"], serde_json::json!(["198.18.7.7"]));
    assert_eq!(d.json(&["network", "inspect", "shut"])["dns"], serde_json::json!([]));
    // What a real DHCP client is offered.
    let hook = d.dir.join("dns-hook.sh");
    let got = d.dir.join("dns-got");
    std::fs::write(&hook, format!("#!/bin/sh\n[ \"$1\" = bound ] && echo \"$dns\" > {}\nexit 0\n", got.display()))
        .unwrap();
    sh(&["chmod", "0755", hook.to_str().unwrap()]);
    let c = Netns::new("dnsc");
    d.ok(&["connect", "out", &c.name]);
    let bound = c.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", hook.to_str().unwrap(), "-t", "5", "-T", "1"]);
    assert!(bound, "udhcpc got no lease; log:\n{}", d.log());
    assert_eq!(std::fs::read_to_string(&got).unwrap().trim(), "198.18.0.53");
}
