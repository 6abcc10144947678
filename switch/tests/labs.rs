//! Lab topology files (docs/labs.md) end to end: `lab validate` on good and
//! bad files (messages with file:line:column), `lab up`/`down` leaving
//! nothing behind, two labs at once, `lab exec`, DHCP nodes, a node acting
//! as a router, rollback of a failed `lab up`, and `lab graph`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{name, need, wait_for, Daemon, TAPYARD};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `tapyard --socket SOCKET args...`.
fn lab(socket: &Path, args: &[&str]) -> Output {
    Command::new(TAPYARD).arg("--socket").arg(socket).args(args).output().unwrap()
}

fn lab_ok(socket: &Path, args: &[&str]) -> String {
    let out = lab(socket, args);
    assert!(
        out.status.success(),
        "tapyard {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Named namespaces whose name starts with `prefix-`.
fn namespaces(prefix: &str) -> Vec<String> {
    text(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

/// Processes whose command line contains `marker`.
fn processes(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", marker]).output().unwrap();
    text(&out.stdout).lines().filter(|l| !l.contains("pgrep")).map(String::from).collect()
}

/// A lab that is brought down (and its namespaces deleted) when the test
/// ends, even when it fails.
struct LabGuard {
    socket: PathBuf,
    name: String,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = lab(&self.socket, &["lab", "down", &self.name]);
        for ns in namespaces(&self.name) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// A topology file in a directory of the test's own, removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("tapyard-labfiles-{}", name(tag)));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }

    fn write(&self, file: &str, body: &str) -> PathBuf {
        let p = self.dir.join(file);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The issue's smallest file, verbatim.
const MINIMAL: &str = r#"[networks.front]
subnet = "10.1.0.0/24"
[networks.back]
subnet = "10.2.0.0/24"
[routers.r1]
networks = ["front", "back"]
[nodes.web]
interfaces = [{ network = "front", address = "auto" }]
[nodes.db]
interfaces = [{ network = "back", address = "10.2.0.20/24" }]
[nodes.client]
interfaces = [{ network = "front", address = "dhcp" }]
"#;

#[test]
fn validate_accepts_the_examples_and_names_file_line_and_fix_for_bad_files() {
    let sock = Path::new("/nonexistent/tapyard.sock");
    for f in ["default.toml", "three-tier.toml", "container-router.toml", "lossy-wan.toml"] {
        let p = examples().join(f);
        let out = lab_ok(sock, &["lab", "validate", p.to_str().unwrap()]);
        assert!(out.contains("OK"), "{out}");
    }
    let files = Files::new("val");
    let good = files.write("minimal.toml", MINIMAL);
    let out = lab_ok(sock, &["lab", "validate", good.to_str().unwrap()]);
    assert!(out.contains("lab \"minimal\": 2 networks, 0 links, 1 routers, 3 nodes"), "{out}");
    for (body, want) in [
        ("[networks.a]\nsubnet = \"10.0.0.0/24\"\nsubent = \"x\"\n", ":3:1: unknown field `subent`"),
        ("[nodes.a]\ninterfaces = [{ network = \"nope\" }]\n", ":2:27: node \"a\": no network \"nope\""),
        (
            "[networks.n]\nsubnet = \"10.0.0.0/24\"\n[nodes.a]\ninterfaces = [{ network = \"n\", address = \"10.0.9.9/24\" }]\n",
            ":4:42: network \"n\": 10.0.9.9 is outside the subnet 10.0.0.0/24",
        ),
        (
            "[networks.n]\nsubnet = \"10.0.0.0/24\"\n[nodes.a]\ninterfaces = [{ network = \"n\", address = \"10.0.0.1/24\" }]\n",
            ":4:42: network \"n\": 10.0.0.1 is the gateway",
        ),
        (
            "[networks.n]\nsubnet = \"10.0.0.0/24\"\n[nodes.a]\ninterfaces = [{ network = \"n\", address = \"10.0.0.5/24\" }]\n[nodes.b]\ninterfaces = [{ network = \"n\", address = \"10.0.0.5/24\" }]\n",
            ":6:42: address 10.0.0.5 on network \"n\" is already given to a:eth0",
        ),
        (
            "[networks.n]\n[nodes.a]\ninterfaces = [{ network = \"n\", impair = { loss = \"lots\" } }]\n",
            ":3:50: \"lots\" is not a percentage",
        ),
        ("[nodes.a]\ninterfaces = [{ network = \"n\", ifname = \"waytoolongifname\" }]\n[networks.n]\n", ":2:41: invalid interface name"),
    ] {
        let f = files.write("bad.toml", body);
        let out = lab(sock, &["lab", "validate", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{body}\n{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{}{want}", f.display())), "want {want:?} in:\n{err}");
        assert!(err.contains("nothing was created"), "{err}");
    }
}

#[test]
fn a_bad_file_creates_nothing_not_even_a_daemon() {
    let files = Files::new("badup");
    let f = files.write("bad.toml", "[nodes.a]\ninterfaces = [{ network = \"missing\" }]\n");
    let sock = files.dir.join("run/tapyard.sock");
    let out = lab(&sock, &["lab", "up", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("bad.toml:2:27"), "{}", text(&out.stderr));
    assert!(!files.dir.join("run").exists(), "nothing is made for a bad file");
}

#[test]
fn up_and_down_leave_nothing_behind_and_the_daemon_it_started_stops() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let files = Files::new("clean");
    let prefix = name("cl");
    let marker = format!("9{}1", std::process::id());
    let f = files.write(
        "clean.toml",
        &format!(
            "{MINIMAL}[nodes.srv]\ninterfaces = [{{ network = \"back\", address = \"auto\" }}]\ncommands = [\"sleep {marker}\"]\nexec = [\"test -f clean.toml\"]\n"
        ),
    );
    let sock = files.dir.join("run/tapyard.sock");
    let _guard = LabGuard { socket: sock.clone(), name: prefix.clone() };
    let out = lab_ok(&sock, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    assert!(out.contains(&format!("lab \"{prefix}\" is up: 4 nodes")), "{out}");
    assert_eq!(namespaces(&prefix).len(), 4);
    assert!(!processes(&format!("sleep {marker}")).is_empty(), "the node's command runs");
    let record = files.dir.join(format!("run/lab-{prefix}.json"));
    assert!(record.exists());
    // The record names the processes; they are ours to check afterwards.
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let pids: Vec<u64> = rec["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 2, "udhcpc and the command: {rec}");
    // `lab down` from another shell, by name.
    let out = lab_ok(&sock, &["lab", "down", &prefix]);
    assert!(out.contains("removed"), "{out}");
    assert!(namespaces(&prefix).is_empty(), "namespaces left: {:?}", namespaces(&prefix));
    assert!(processes(&format!("sleep {marker}")).is_empty(), "the command was stopped");
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        assert!(!alive, "process {pid} of the lab still runs");
    }
    assert!(!record.exists(), "the record is removed");
    assert!(wait_for(5, || !sock.exists()), "the daemon the lab started is stopped (its socket is gone)");
    let left: Vec<_> = std::fs::read_dir(files.dir.join("run")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left in the runtime directory: {left:?}");
    // No interface of the lab is left in the host's namespace either.
    let links = text(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout);
    assert!(!links.contains(&prefix), "{links}");
}

#[test]
fn the_minimal_file_works_dhcp_node_gets_an_address_and_routes_through_the_router() {
    if !common::net_admin() {
        return;
    }
    need("udhcpc", "udhcpc");
    let d = Daemon::start("labdhcp");
    let files = Files::new("dhcp");
    let f = files.write("minimal.toml", MINIMAL);
    let prefix = name("dh");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    let st: serde_json::Value =
        serde_json::from_str(&lab_ok(&d.socket, &["lab", "status", &prefix, "--json"])).unwrap();
    let iface =
        |node: &str| st[0]["interfaces"].as_array().unwrap().iter().find(|i| i["node"] == node).cloned().unwrap();
    let client = iface("client")["address"].as_str().unwrap().to_string();
    assert!(client.starts_with("10.1.0.") && client.ends_with("/24"), "client's DHCP address: {client}");
    assert!(iface("web")["address"].as_str().unwrap().starts_with("10.1.0."));
    assert_eq!(iface("db")["address"], "10.2.0.20/24");
    // The address is really on the interface, and the lease is the daemon's.
    let addr = lab_ok(&d.socket, &["lab", "exec", &prefix, "client", "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&client), "{addr}");
    let leases = d.json(&["lease", "ls"]);
    assert!(leases.as_array().unwrap().iter().any(|l| l["hostname"] == "client"), "{leases}");
    // Across the router: client (front) to db (back).
    let out = lab(&d.socket, &["lab", "exec", &prefix, "client", "--", "ping", "-c", "2", "-W", "2", "10.2.0.20"]);
    assert!(out.status.success(), "client -> db through r1: {}", text(&out.stdout));
    // The table names nodes, networks, the router and counters that moved.
    let table = lab_ok(&d.socket, &["lab", "status", &prefix]);
    for w in ["client", "front", "back", "router r1: networks front, back", "dhcp eth0 (running)"] {
        assert!(table.contains(w), "{w:?} in:\n{table}");
    }
    let db = iface("db");
    let moved = lab_ok(&d.socket, &["lab", "status", &prefix, "--json"]);
    let st2: serde_json::Value = serde_json::from_str(&moved).unwrap();
    let db2 = st2[0]["interfaces"].as_array().unwrap().iter().find(|i| i["node"] == "db").cloned().unwrap();
    assert!(db2["rx_packets"].as_u64() >= db["rx_packets"].as_u64(), "counters come from port ls");
    assert!(db2["rx_packets"].as_u64().unwrap() >= 2, "db answered two pings: {db2}");
    let record = d.dir.join(format!("run/lab-{prefix}.json"));
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let udhcpc = rec["processes"][0]["pid"].as_u64().unwrap();
    assert!(std::fs::read_to_string(format!("/proc/{udhcpc}/cmdline")).unwrap().contains("udhcpc"));
    lab_ok(&d.socket, &["lab", "down", &prefix]);
    assert!(namespaces(&prefix).is_empty());
    assert_eq!(d.json(&["network", "ls"]).as_array().unwrap().len(), 0, "the lab's networks are gone");
    assert_eq!(d.json(&["router", "ls"]).as_array().unwrap().len(), 0, "the lab's router is gone");
    let alive = std::fs::read_to_string(format!("/proc/{udhcpc}/stat")).is_ok_and(|s| !s.contains(") Z"));
    assert!(!alive, "the DHCP client is stopped");
}

#[test]
fn two_labs_at_once_from_one_file_and_exec_finds_the_node() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("labtwo");
    let f = examples().join("three-tier.toml");
    let (a, b) = (name("ta"), name("tb"));
    let _ga = LabGuard { socket: d.socket.clone(), name: a.clone() };
    let _gb = LabGuard { socket: d.socket.clone(), name: b.clone() };
    lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &a]);
    // A second copy of the file on other subnets (one daemon refuses
    // overlapping subnets).
    let files = Files::new("two");
    let other = std::fs::read_to_string(&f).unwrap().replace("10.31.", "10.32.");
    let g = files.write("tier2.toml", &other);
    lab_ok(&d.socket, &["lab", "up", g.to_str().unwrap(), "--prefix", &b]);
    assert_eq!(namespaces(&a).len(), 4);
    assert_eq!(namespaces(&b).len(), 4);
    // exec needs the lab's name when two are up.
    let out = lab(&d.socket, &["lab", "exec", "app1", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("several labs are up"), "{}", text(&out.stderr));
    let out = lab_ok(&d.socket, &["lab", "exec", &b, "app1", "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(out.contains("10.32.2.10/24"), "{out}");
    let out = lab(&d.socket, &["lab", "exec", &a, "app1", "--", "ping", "-c", "1", "-W", "2", "10.31.3.10"]);
    assert!(out.status.success(), "app1 -> db1 in lab a: {}", text(&out.stdout));
    let out = lab(&d.socket, &["lab", "exec", &a, "nosuch", "--", "true"]);
    assert!(text(&out.stderr).contains("has no node \"nosuch\""), "{}", text(&out.stderr));
    // Down one: the other keeps working.
    lab_ok(&d.socket, &["lab", "down", &a]);
    assert!(namespaces(&a).is_empty());
    let out = lab(&d.socket, &["lab", "exec", "app1", "--", "ping", "-c", "1", "-W", "2", "10.32.3.10"]);
    assert!(out.status.success(), "lab b after lab a went down (the only lab: no name needed): {}", text(&out.stderr));
    lab_ok(&d.socket, &["lab", "down", g.to_str().unwrap(), "--prefix", &b]);
    assert!(namespaces(&b).is_empty());
}

#[test]
fn a_node_acting_as_a_router_forwards_between_two_networks() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("labcr");
    let prefix = name("cr");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    let f = examples().join("container-router.toml");
    lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    let fwd = lab_ok(&d.socket, &["lab", "exec", &prefix, "gw", "--", "cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(fwd.trim(), "1", "the sysctl is the node's");
    let out = lab(&d.socket, &["lab", "exec", &prefix, "left1", "--", "ping", "-c", "2", "-W", "2", "10.42.2.10"]);
    assert!(out.status.success(), "left1 -> right1 through gw: {}", text(&out.stdout));
    // Without gw's forwarding the path is cut: the test is not passing by accident.
    lab_ok(&d.socket, &["lab", "exec", &prefix, "gw", "--", "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
    let out = lab(&d.socket, &["lab", "exec", &prefix, "left1", "--", "ping", "-c", "1", "-W", "1", "10.42.2.10"]);
    assert!(!out.status.success(), "forwarding off: no path");
}

#[test]
fn three_tier_check_passes_and_leaves_nothing() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("labchk");
    let prefix = name("ck");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    let f = examples().join("three-tier.toml");
    let out = lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix, "--check"]);
    assert!(out.contains("lab check passed"), "{out}");
    let oks = out
        .lines()
        .filter(|l| l.contains('·'))
        .flat_map(|l| l.split_whitespace().skip(1))
        .filter(|c| *c == "ok")
        .count();
    assert_eq!(oks, 4 * 3 + 4, "every pair through the router, and every gateway:\n{out}");
    assert!(namespaces(&prefix).is_empty());
    assert_eq!(d.json(&["network", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn a_failure_halfway_rolls_back_everything() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("labrb");
    let files = Files::new("rb");
    let prefix = name("rb");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    let marker = format!("9{}2", std::process::id());
    // Nodes that start fine (one with a background command), and one whose
    // command cannot run.
    let mut body = String::from("[networks.a]\nsubnet = \"10.61.0.0/24\"\n[networks.b]\nsubnet = \"10.62.0.0/24\"\n[routers.r]\nnetworks = [\"a\", \"b\"]\n");
    for k in 0..6 {
        body += &format!("[nodes.ok{k}]\ninterfaces = [{{ network = \"{}\", address = \"auto\" }}]\ncommands = [\"sleep {marker}\"]\n", if k % 2 == 0 { "a" } else { "b" });
    }
    body += "[nodes.bad]\ninterfaces = [{ network = \"a\", address = \"auto\" }]\ncommands = [\"/nonexistent/server --port 80\"]\n";
    let f = files.write("rb.toml", &body);
    let out = lab(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("node \"bad\"") && err.contains("/nonexistent/server") && err.contains("exited at once"),
        "{err}"
    );
    assert!(namespaces(&prefix).is_empty(), "namespaces left: {:?}", namespaces(&prefix));
    assert!(processes(&format!("sleep {marker}")).is_empty(), "commands left running");
    assert_eq!(d.json(&["network", "ls"]).as_array().unwrap().len(), 0, "networks left");
    assert_eq!(d.json(&["router", "ls"]).as_array().unwrap().len(), 0, "routers left");
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 0, "ports left");
    assert!(!d.dir.join(format!("run/lab-{prefix}.json")).exists(), "the record is removed");
    assert!(!d.dir.join(format!("run/lab-{prefix}.d")).exists(), "the lab's files are removed");

    // A conflict only the daemon knows: a subnet that overlaps a network
    // made outside the lab. The lab's first network is made, then removed.
    d.ok(&["network", "create", &name("taken"), "--subnet", "10.62.0.0/16"]);
    let exec_fail = body.replace("commands = [\"/nonexistent/server --port 80\"]", "exec = [\"false\"]");
    let f = files.write("rb2.toml", &exec_fail);
    let out = lab(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("creating network \"b\""), "{}", text(&out.stderr));
    let nets = d.json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "only the network made outside the lab: {nets}");
    // And a one-shot command that fails, once the subnet is free.
    d.ok(&["network", "rm", &name("taken")]);
    let out = lab(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("exec \"false\" failed"), "{}", text(&out.stderr));
    assert!(namespaces(&prefix).is_empty());
    assert!(processes(&format!("sleep {marker}")).is_empty());
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn graph_writes_dot_and_svg_with_nodes_networks_routers_and_addresses() {
    if !common::net_admin() {
        return;
    }
    need("dot", "graphviz");
    let d = Daemon::start("labgr");
    let prefix = name("gr");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    let f = examples().join("three-tier.toml");
    lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    let files = Files::new("graph");
    let dot = files.dir.join("g.dot");
    lab_ok(&d.socket, &["lab", "graph", &prefix, "-o", dot.to_str().unwrap()]);
    let g = std::fs::read_to_string(&dot).unwrap();
    for w in ["\"node:web1\"", "\"net:db\"", "\"router:core\"", "10.31.3.10/24", "10.31.1.1"] {
        assert!(g.contains(w), "{w} in:\n{g}");
    }
    let svg = files.dir.join("g.svg");
    lab_ok(&d.socket, &["lab", "graph", &prefix, "-o", svg.to_str().unwrap()]);
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("<svg") && s.contains("web1") && s.contains("10.31.2.10/24"), "{s}");
}

#[test]
fn the_daemon_a_lab_started_stays_while_another_lab_uses_it() {
    if !common::net_admin() {
        return;
    }
    let files = Files::new("hand");
    let sock = files.dir.join("run/tapyard.sock");
    let (a, b) = (name("ha"), name("hb"));
    let _ga = LabGuard { socket: sock.clone(), name: a.clone() };
    let _gb = LabGuard { socket: sock.clone(), name: b.clone() };
    let f =
        files.write("one.toml", "[networks.n]\n[nodes.x]\ninterfaces = [{ network = \"n\", address = \"auto\" }]\n");
    let out = lab_ok(&sock, &["lab", "up", f.to_str().unwrap(), "--prefix", &a]);
    assert!(out.contains("started a tapyard daemon"), "{out}");
    let out = lab_ok(&sock, &["lab", "up", f.to_str().unwrap(), "--prefix", &b]);
    assert!(out.contains("using the tapyard daemon"), "{out}");
    let out = lab_ok(&sock, &["lab", "down", &a]);
    assert!(out.contains(&format!("keeps running for lab \"{b}\"")), "{out}");
    assert!(sock.exists());
    let out = lab(&sock, &["lab", "exec", &b, "x", "--", "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(out.status.success() && text(&out.stdout).contains("inet "), "{}", text(&out.stderr));
    lab_ok(&sock, &["lab", "down", &b]);
    assert!(wait_for(5, || !sock.exists()), "the last lab down stops the daemon");
    let left: Vec<_> = std::fs::read_dir(files.dir.join("run")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left: {left:?}");
}

#[test]
fn a_node_given_an_existing_namespace_is_attached_and_the_namespace_stays_after_down() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("labns");
    let prefix = name("ns");
    let _guard = LabGuard { socket: d.socket.clone(), name: prefix.clone() };
    let outside = common::Netns::new("labext");
    let files = Files::new("ns");
    let f = files.write(
        "ext.toml",
        &format!(
            r#"[networks.n]
subnet = "10.47.0.0/24"
[nodes.ext]
netns = "{}"
interfaces = [{{ network = "n", address = "10.47.0.10/24" }}]
[nodes.own]
interfaces = [{{ network = "n", address = "10.47.0.11/24" }}]
"#,
            outside.name
        ),
    );
    // A namespace that does not exist is refused before anything is made.
    let missing = files.write("missing.toml", "[networks.n]\n[nodes.x]\nnetns = \"tapyard-no-such-ns\"\n");
    let out = lab(&d.socket, &["lab", "up", missing.to_str().unwrap(), "--prefix", &prefix]);
    assert!(!out.status.success() && text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    assert!(namespaces(&prefix).is_empty());

    lab_ok(&d.socket, &["lab", "up", f.to_str().unwrap(), "--prefix", &prefix]);
    // `lab exec ext` runs in the given namespace, which has the lab's interface.
    assert!(outside.run(&["ip", "addr", "show", "dev", "eth0"]), "no eth0 in the given namespace");
    let out = lab(&d.socket, &["lab", "exec", &prefix, "ext", "--", "ping", "-c", "1", "-W", "2", "10.47.0.11"]);
    assert!(out.status.success(), "ext -> own: {}", text(&out.stdout));
    let status = lab_ok(&d.socket, &["lab", "status", &prefix, "--json"]);
    assert!(
        status.contains(&format!("\"netns\": \"{}\"", outside.name))
            || status.contains(&format!("\"netns\":\"{}\"", outside.name)),
        "{status}"
    );
    assert_eq!(namespaces(&prefix), [format!("{prefix}-own")], "only the own node's namespace is the lab's");

    lab_ok(&d.socket, &["lab", "down", &prefix]);
    assert!(namespaces(&prefix).is_empty(), "the lab's own namespace is gone");
    let have = text(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout);
    assert!(
        have.lines().any(|l| l.split_whitespace().next() == Some(outside.name.as_str())),
        "the given namespace stays"
    );
    assert!(!outside.run(&["ip", "link", "show", "dev", "eth0"]), "its lab interface is gone");
}
