//! `control::firewall` against the real `nft` and `iptables` (nf_tables
//! backend), each test in a network namespace of its own: the table is
//! replaced whole and never duplicated, our accepts in iptables' `FORWARD`
//! stay single and leave iptables usable, counters are read, removal leaves
//! nothing, the host settings are restored (also after a "SIGKILL"), and
//! traffic is masqueraded and published ports are DNATed.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use common::{name, need, net_admin, sh, wait_for, Netns};
use serde_json::Value;
use tapyard_switch::control::firewall::{
    self, Compat, Dnat, EgressNet, Firewall, FirewallSpec, HostPort, COMPAT_COMMENT, TABLE,
};
use tapyard_switch::control::publish::{Proto, Publish};

const UPLINK: &str = "tapyard0";

fn in_ns(ns: &Netns, args: &[&str]) -> Output {
    Command::new("ip").args(["netns", "exec", &ns.name]).args(args).output().unwrap()
}

/// Runs a command in the namespace; its stdout; fails the test when it fails.
fn ok(ns: &Netns, args: &[&str]) -> String {
    let out = in_ns(ns, args);
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn firewall(ns: &Netns) -> Firewall {
    Firewall::with_command(vec!["ip".into(), "netns".into(), "exec".into(), ns.name.clone(), "nft".into()])
}

/// A namespace with a TAP device named as the uplink (what the daemon makes).
fn namespace(tag: &str) -> Netns {
    need("nft", "nftables");
    let ns = Netns::new(tag);
    sh(&["ip", "-n", &ns.name, "tuntap", "add", "dev", UPLINK, "mode", "tap"]);
    ns
}

fn spec() -> FirewallSpec {
    FirewallSpec {
        uplink: UPLINK.into(),
        egress: vec![
            EgressNet { name: "front".into(), subnet: "10.71.0.0/24".parse().unwrap() },
            EgressNet { name: "back".into(), subnet: "10.72.0.0/24".parse().unwrap() },
        ],
        published: vec![
            Dnat {
                publish: Publish { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                container: Ipv4Addr::new(10, 71, 0, 2),
            },
            Dnat {
                publish: Publish {
                    host_ip: Some(Ipv4Addr::LOCALHOST),
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp,
                },
                container: Ipv4Addr::new(10, 72, 0, 2),
            },
        ],
        guard: true,
    }
}

/// The namespace's whole ruleset as nft lists it.
fn listing(ns: &Netns) -> Vec<Value> {
    let v: Value = serde_json::from_str(&ok(ns, &["nft", "-j", "list", "ruleset"])).unwrap();
    v["nftables"].as_array().unwrap().clone()
}

fn tables_named(objs: &[Value], name: &str) -> usize {
    objs.iter().filter(|o| o.pointer("/table/name").and_then(Value::as_str) == Some(name)).count()
}

/// A rule as (chain, comment, statements without counter values).
fn key(r: &Value) -> (String, String, String) {
    let expr: Vec<Value> = r["expr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| if s.get("counter").is_some() { serde_json::json!({"counter": {}}) } else { s.clone() })
        .collect();
    (
        r["chain"].as_str().unwrap().to_string(),
        r.get("comment").and_then(Value::as_str).unwrap_or("").to_string(),
        serde_json::to_string(&expr).unwrap(),
    )
}

/// Our table's rules in the kernel, by key, with how often each occurs.
fn our_rules(objs: &[Value]) -> BTreeMap<(String, String, String), usize> {
    let mut m = BTreeMap::new();
    for r in objs.iter().filter_map(|o| o.get("rule")).filter(|r| r["table"] == TABLE) {
        *m.entry(key(r)).or_insert(0) += 1;
    }
    m
}

/// The rules `ruleset` asks for, keyed the same way.
fn wanted_rules(spec: &FirewallSpec) -> BTreeMap<(String, String, String), usize> {
    let json = serde_json::to_value(firewall::ruleset(spec, &Compat::default()).unwrap()).unwrap();
    let mut m = BTreeMap::new();
    for r in json["nftables"].as_array().unwrap().iter().filter_map(|c| c.pointer("/add/rule")) {
        *m.entry(key(r)).or_insert(0) += 1;
    }
    m
}

#[test]
fn apply_twice_gives_one_table_exactly_as_generated() {
    if !net_admin() {
        return;
    }
    let ns = namespace("fwtab");
    let fw = firewall(&ns);
    fw.check().expect("nft and the kernel support what the rules need");
    let sp = spec();
    fw.apply(&sp).unwrap();
    fw.apply(&sp).unwrap();
    let objs = listing(&ns);
    assert_eq!(tables_named(&objs, TABLE), 1);
    let have = our_rules(&objs);
    // What the kernel holds is what the pure function generated (so the JSON
    // we build is read as meant), each rule once.
    assert_eq!(have, wanted_rules(&sp));
    assert!(have.values().all(|&n| n == 1), "duplicates: {have:?}");
    assert_eq!(have.len(), 20);
    // No FORWARD chain of iptables here: none was made.
    assert_eq!(tables_named(&objs, "filter"), 0);

    // A changed spec replaces the table: the dropped network's rules are gone.
    let mut smaller = sp.clone();
    smaller.egress.pop();
    smaller.published.pop();
    smaller.guard = false;
    fw.apply(&smaller).unwrap();
    let objs = listing(&ns);
    assert_eq!(tables_named(&objs, TABLE), 1);
    assert_eq!(our_rules(&objs), wanted_rules(&smaller));
    assert!(!serde_json::to_string(&objs).unwrap().contains("10.72.0.0"));

    fw.remove().unwrap();
    assert_eq!(tables_named(&listing(&ns), TABLE), 0);
    fw.remove().expect("removing what is gone is not an error");
    assert!(matches!(fw.counters(), Err(firewall::FirewallError::NoTable)));
}

fn iptables_forward(ns: &Netns) -> Vec<String> {
    ok(ns, &["iptables-nft", "-S", "FORWARD"]).lines().map(str::to_string).collect()
}

#[test]
fn iptables_forward_drop_gets_our_accepts_once_and_stays_usable() {
    if !net_admin() {
        return;
    }
    need("iptables-nft", "iptables");
    let ns = namespace("fwipt");
    // What Docker leaves: policy DROP, its own rules and chains.
    ok(&ns, &["iptables-nft", "-P", "FORWARD", "DROP"]);
    ok(&ns, &["iptables-nft", "-N", "DOCKER-USER"]);
    ok(&ns, &["iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER"]);
    ok(
        &ns,
        &[
            "iptables-nft",
            "-A",
            "FORWARD",
            "-o",
            "docker0",
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
    );
    let fw = firewall(&ns);
    fw.apply(&spec()).unwrap();
    fw.apply(&spec()).unwrap();

    let comment = format!("\"{COMPAT_COMMENT}\"");
    let ours_in = format!("-A FORWARD -i {UPLINK} -m comment --comment {comment} -j ACCEPT");
    let ours_out = format!("-A FORWARD -o {UPLINK} -m comment --comment {comment} -j ACCEPT");
    let rules = iptables_forward(&ns);
    assert_eq!(
        rules,
        [
            "-P FORWARD DROP".to_string(),
            ours_in.clone(),
            ours_out.clone(),
            "-A FORWARD -j DOCKER-USER".into(),
            "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
        ],
        "iptables -S FORWARD"
    );
    // iptables still lists and changes the chain (as Docker does at its start).
    let list = ok(&ns, &["iptables-nft", "-L", "FORWARD", "-n", "-v"]);
    assert!(list.contains("policy DROP") && list.contains(COMPAT_COMMENT), "{list}");
    ok(&ns, &["iptables-nft", "-I", "FORWARD", "-j", "DOCKER-USER"]);
    ok(&ns, &["iptables-nft", "-D", "FORWARD", "1"]);
    let saved = ok(&ns, &["iptables-nft-save"]);
    assert!(saved.contains(&ours_in), "{saved}");
    // Docker restarting puts its jump above ours; our next apply moves ours back to the top, still once.
    ok(&ns, &["iptables-nft", "-I", "FORWARD", "-j", "DOCKER-USER"]);
    fw.apply(&spec()).unwrap();
    let rules = iptables_forward(&ns);
    assert_eq!(rules[1..3], [ours_in.clone(), ours_out.clone()]);
    assert_eq!(rules.iter().filter(|r| **r == ours_in).count(), 1);
    assert_eq!(rules.iter().filter(|r| **r == ours_out).count(), 1);
    assert_eq!(rules.len(), 6);

    // A new uplink name (a changed configuration) replaces the accepts for the old one.
    sh(&["ip", "-n", &ns.name, "tuntap", "add", "dev", "tapyard1", "mode", "tap"]);
    let mut renamed = spec();
    renamed.uplink = "tapyard1".into();
    fw.apply(&renamed).unwrap();
    let rules = iptables_forward(&ns);
    assert!(rules.iter().all(|r| !r.contains(&format!(" {UPLINK} "))), "{rules:?}");
    assert_eq!(rules.iter().filter(|r| r.contains("tapyard1")).count(), 2);

    fw.remove().unwrap();
    let rules = iptables_forward(&ns);
    assert!(rules.iter().all(|r| !r.contains("tapyard")), "{rules:?}");
    assert_eq!(rules[0], "-P FORWARD DROP");
    assert_eq!(rules.len(), 4, "Docker's rules stay: {rules:?}");
    assert_eq!(tables_named(&listing(&ns), TABLE), 0);
}

#[test]
fn counters_are_read_from_the_kernel() {
    if !net_admin() {
        return;
    }
    let ns = namespace("fwcnt");
    let fw = firewall(&ns);
    fw.apply(&spec()).unwrap();
    let c = fw.counters().unwrap();
    assert_eq!(c.egress.keys().collect::<Vec<_>>(), ["back", "front"]);
    assert!(c.egress.values().all(|e| *e == Default::default()));
    let udp = HostPort { host_ip: Some(Ipv4Addr::LOCALHOST), host_port: 5353, proto: Proto::Udp };
    let tcp = HostPort { host_ip: None, host_port: 8080, proto: Proto::Tcp };
    assert_eq!(c.published, BTreeMap::from([(tcp, 0), (udp, 0)]));
    // One UDP datagram to the published port from the host itself: the output
    // chain DNATs it; the send then fails (no route to the container here),
    // after the rule has counted it.
    ok(&ns, &["bash", "-c", "echo x > /dev/udp/127.0.0.1/5353 || true"]);
    assert_eq!(fw.counters().unwrap().published[&udp], 1);
}

/// Re-runs one test of this binary inside `ns` (sysctls under /proc/sys and
/// /proc/net are those of the reader's namespace): `FW_CHILD` tells it that it
/// is the child, and carries its argument.
fn run_in(ns: &Netns, test: &str, arg: &std::path::Path) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("FW_CHILD", arg)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "child {test} failed: {text}");
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ok(ns, &["cat", &format!("/proc/sys/{}", key.replace('.', "/"))]).trim().to_string()
}

/// A state directory removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let d = std::env::temp_dir().join(name(tag));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        StateDir(d)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The child's part of `forwarding_is_restored_in_a_namespace`: only does
/// something when run by it, inside the namespace.
#[test]
fn child_enable_forwarding() {
    let Some(state) = std::env::var_os("FW_CHILD") else { return };
    let state = PathBuf::from(state);
    let guard = firewall::enable_forwarding(&state, UPLINK).unwrap();
    println!("guard={guard}");
    assert!(guard, "a new namespace starts with ip_forward=0");
}

#[test]
fn child_restore_forwarding() {
    let Some(state) = std::env::var_os("FW_CHILD") else { return };
    firewall::restore_forwarding(&PathBuf::from(state)).unwrap();
}

#[test]
fn child_legacy_filter() {
    let Some(want) = std::env::var_os("FW_CHILD") else { return };
    assert_eq!(firewall::legacy_iptables_filter().to_string(), want.to_string_lossy());
}

/// Legacy iptables' filter table is seen once something loaded it in the namespace.
#[test]
fn legacy_iptables_is_detected() {
    if !net_admin() || std::env::var_os("FW_CHILD").is_some() {
        return;
    }
    need("iptables-legacy", "iptables");
    let ns = namespace("fwleg");
    run_in(&ns, "child_legacy_filter", std::path::Path::new("false"));
    ok(&ns, &["iptables-legacy", "-S", "FORWARD"]);
    run_in(&ns, "child_legacy_filter", std::path::Path::new("true"));
}

#[test]
fn forwarding_is_restored_in_a_namespace() {
    if !net_admin() || std::env::var_os("FW_CHILD").is_some() {
        return;
    }
    let ns = namespace("fwfwd");
    let state = StateDir::new("fwstate");
    assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.tapyard0.route_localnet"), "0");
    run_in(&ns, "child_enable_forwarding", &state.0);
    assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.tapyard0.route_localnet"), "1");
    let record = state.0.join(firewall::HOST_SETTINGS_FILE);
    let first = std::fs::read_to_string(&record).unwrap();
    // The daemon is SIGKILLed (no restore) and starts again: ip_forward is 1 now,
    // but the record still says 0, and the guard is still needed.
    run_in(&ns, "child_enable_forwarding", &state.0);
    assert_eq!(std::fs::read_to_string(&record).unwrap(), first);
    run_in(&ns, "child_restore_forwarding", &state.0);
    assert_eq!(sysctl(&ns, "net.ipv4.ip_forward"), "0");
    assert_eq!(sysctl(&ns, "net.ipv4.conf.tapyard0.route_localnet"), "0");
    assert!(!record.exists());
}

/// A process that is killed on drop unless its output was taken.
struct Reaped(Option<Child>);

impl Reaped {
    /// Waits for it to end; its output.
    fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs an iperf3 client in `ns` to `target`:`port` for a few KiB; whether it worked.
fn iperf_client(ns: &Netns, target: &str, port: &str) -> bool {
    in_ns(ns, &["iperf3", "-c", target, "-p", port, "-n", "64K", "--connect-timeout", "3000"]).status.success()
}

/// A one-shot iperf3 server in `ns` on `port`, printing JSON; its output once a
/// client has come and gone.
fn iperf_server(ns: &Netns, port: &str) -> Reaped {
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "iperf3", "-s", "-1", "-J", "-p", port])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = Reaped(Some(child));
    assert!(
        wait_for(5, || ok(ns, &["ss", "-Hltn", &format!("sport = :{port}")]).contains(port)),
        "iperf3 -s on {port}"
    );
    r
}

/// The client address the server saw.
fn remote_host(server: Reaped) -> String {
    let out = server.output();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.pointer("/start/connected/0/remote_host").and_then(Value::as_str).unwrap_or("").to_string()
}

/// host: the daemon's namespace, with the rules; ctr: stands for tapyard and a
/// container (10.71.0.2) behind the uplink, a veth here; out: another machine
/// on 198.18.0.0/15, reached through the host.
#[test]
fn egress_is_masqueraded_and_published_ports_reach_the_container() {
    if !net_admin() {
        return;
    }
    need("iperf3", "iperf3");
    need("nft", "nftables");
    need("iptables-nft", "iptables");
    let host = Netns::new("fwhost");
    let ctr = Netns::new("fwctr");
    let out = Netns::new("fwout");
    let (h, c, o) = (host.name.as_str(), ctr.name.as_str(), out.name.as_str());
    let peer = name("fwp");
    sh(&["ip", "-n", h, "link", "add", UPLINK, "type", "veth", "peer", "name", &peer, "netns", c]);
    sh(&["ip", "-n", h, "addr", "add", "100.127.255.1/30", "dev", UPLINK]);
    sh(&["ip", "-n", h, "link", "set", UPLINK, "up"]);
    sh(&["ip", "-n", h, "route", "add", "10.71.0.0/24", "via", "100.127.255.2"]);
    sh(&["ip", "-n", c, "addr", "add", "100.127.255.2/30", "dev", &peer]);
    sh(&["ip", "-n", c, "addr", "add", "10.71.0.2/24", "dev", &peer]);
    sh(&["ip", "-n", c, "link", "set", &peer, "up"]);
    sh(&["ip", "-n", c, "route", "add", "default", "via", "100.127.255.1", "src", "10.71.0.2"]);
    let wan = name("fww");
    sh(&["ip", "-n", h, "link", "add", &wan, "type", "veth", "peer", "name", &wan, "netns", o]);
    sh(&["ip", "-n", h, "addr", "add", "198.18.0.1/24", "dev", &wan]);
    sh(&["ip", "-n", h, "link", "set", &wan, "up"]);
    sh(&["ip", "-n", o, "addr", "add", "198.18.0.2/24", "dev", &wan]);
    sh(&["ip", "-n", o, "link", "set", &wan, "up"]);

    // Without forwarding nothing passes: the test below is about the rules.
    sh(&["ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh(&["ip", "netns", "exec", h, "sysctl", "-qw", &format!("net.ipv4.conf.{UPLINK}.route_localnet=1")]);
    // What Docker leaves behind: our accepts must get egress through it.
    sh(&["ip", "netns", "exec", h, "iptables-nft", "-P", "FORWARD", "DROP"]);
    let fw = firewall(&host);
    let mut sp = spec();
    sp.published = vec![Dnat {
        publish: Publish { host_ip: None, host_port: 8080, container_port: 5201, proto: Proto::Tcp },
        container: Ipv4Addr::new(10, 71, 0, 2),
    }];
    fw.apply(&sp).unwrap();

    // Egress: the outside sees the host's address.
    let server = iperf_server(&out, "5201");
    assert!(iperf_client(&ctr, "198.18.0.2", "5201"), "container → outside through the host");
    assert_eq!(remote_host(server), "198.18.0.1", "masqueraded to the host's address");
    let c = fw.counters().unwrap();
    let front = c.egress["front"];
    assert!(front.out.packets > 0 && front.back.packets > 0 && front.connections >= 1, "{front:?}");
    assert!(front.out.bytes > 64 * 1024, "{front:?}");

    // Published port from outside: the container sees the real source.
    let server = iperf_server(&ctr, "5201");
    assert!(iperf_client(&out, "198.18.0.1", "8080"), "outside → host:8080 → container:5201");
    assert_eq!(remote_host(server), "198.18.0.2", "source preserved");

    // From the host itself, through 127.0.0.1 (route_localnet + masquerade).
    let server = iperf_server(&ctr, "5201");
    assert!(iperf_client(&host, "127.0.0.1", "8080"), "host 127.0.0.1:8080 → container");
    assert_eq!(remote_host(server), "100.127.255.1", "masqueraded to the uplink's address");
    // Hairpin: the container reaches its own published port through the host's
    // address, and gets the answers back through the host.
    let server = iperf_server(&ctr, "5201");
    assert!(iperf_client(&ctr, "198.18.0.1", "8080"), "container → host:8080 → container");
    assert_eq!(remote_host(server), "100.127.255.1", "hairpin masqueraded");
    let tcp = HostPort { host_ip: None, host_port: 8080, proto: Proto::Tcp };
    assert!(fw.counters().unwrap().published[&tcp] >= 3);

    // The guard: with it, forwarding that does not touch the uplink stops
    // (out → other through the host); without it, that is not our business.
    let other = Netns::new("fwoth");
    let side = name("fwo");
    sh(&["ip", "-n", h, "link", "add", &side, "type", "veth", "peer", "name", &side, "netns", &other.name]);
    sh(&["ip", "-n", h, "addr", "add", "198.19.0.1/24", "dev", &side]);
    sh(&["ip", "-n", h, "link", "set", &side, "up"]);
    sh(&["ip", "-n", &other.name, "addr", "add", "198.19.0.2/24", "dev", &side]);
    sh(&["ip", "-n", &other.name, "link", "set", &side, "up"]);
    sh(&["ip", "-n", &other.name, "route", "add", "default", "via", "198.19.0.1"]);
    sh(&["ip", "-n", o, "route", "add", "198.19.0.0/24", "via", "198.18.0.1"]);
    sh(&["ip", "netns", "exec", h, "iptables-nft", "-P", "FORWARD", "ACCEPT"]);
    assert!(!out.ping_quick("198.19.0.2"), "guard on: the host forwards nothing of others");
    sp.guard = false;
    fw.apply(&sp).unwrap();
    assert!(out.reaches("198.19.0.2"), "guard off: others' forwarding is left alone");
    sh(&["ip", "netns", "exec", h, "iptables-nft", "-P", "FORWARD", "DROP"]);

    // Without our rules, iptables' DROP policy stops egress.
    fw.remove().unwrap();
    let server = iperf_server(&out, "5201");
    assert!(!iperf_client(&ctr, "198.18.0.2", "5201"), "FORWARD DROP without our accepts");
    drop(server);
}
