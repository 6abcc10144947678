//! CNI conformance of `tapyard-cni`: the plugin invoked as a runtime does
//! (`env -i` with the CNI_* variables, the network config on stdin), its
//! results checked against SPEC.md's rules and compared with what Debian's
//! reference `bridge` + `host-local` plugins (`containernetworking-plugins`)
//! return for the same request, delegation to `host-local`, chaining with
//! the reference `portmap`, concurrent ADDs and GC. Reference plugins run
//! in a "host" namespace of the test's own (docs REAL-PEERS §3), so their
//! bridge, veths and iptables rules never touch the real host.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{name, need, net_admin, sh, stop_child, wait_for, Daemon, Netns};
use serde_json::{json, Value};

const REF: &str = "/usr/lib/cni";

fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tapyard-cni"))
}

fn need_reference() {
    need("/usr/lib/cni/bridge", "containernetworking-plugins");
}

/// One call of a plugin exactly as a runtime makes it: a clean
/// environment, the CNI_* variables, the config on stdin; run inside `ns`
/// if given. Returns the exit status and stdout.
struct Call<'a> {
    cmd: &'a str,
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    in_ns: Option<&'a str>,
}

impl Call<'_> {
    fn run(&self, plugin: &Path, stdin: &str) -> (i32, String) {
        let mut c = match self.in_ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "env", "-i"]);
                c
            }
            None => {
                let mut c = Command::new("env");
                c.arg("-i");
                c
            }
        };
        c.arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(format!("CNI_COMMAND={}", self.cmd))
            .arg(format!("CNI_CONTAINERID={}", self.id))
            .arg(format!("CNI_NETNS={}", self.netns))
            .arg(format!("CNI_IFNAME={}", self.ifname))
            .arg("CNI_ARGS=IgnoreUnknown=1")
            .arg(format!("CNI_PATH={REF}"))
            .arg(plugin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn call<'a>(cmd: &'a str, id: &'a str, ns: &'a Netns, ifname: &'a str) -> Call<'a> {
    Call { cmd, id, netns: ns_path(ns), ifname, in_ns: None }
}

/// `/run/netns/NAME`, leaked (a few bytes per namespace of a test
/// process) so that every field of `Call` is a `&str` and `Call { cmd:
/// "DEL", ..add }` copies rather than moves.
fn ns_path(ns: &Netns) -> &'static str {
    Box::leak(format!("/run/netns/{}", ns.name).into_boxed_str())
}

/// Our config for network `net` on daemon `d`.
fn config(d: &Daemon, net: &str, version: &str, ipam: Value) -> Value {
    json!({"cniVersion": version, "name": net, "type": "tapyard-cni",
        "socket": d.socket.to_str().unwrap(), "ipam": ipam})
}

fn with_prev(conf: &Value, prev: &Value) -> String {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c.to_string()
}

/// A successful ADD's result.
fn add_ok(c: &Call, plugin: &Path, conf: &str) -> Value {
    let (code, out) = c.run(plugin, conf);
    assert_eq!(code, 0, "ADD failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ADD printed no JSON ({e}): {out}"))
}

/// An error exit: its error JSON, checked for the spec's shape.
fn fails(c: &Call, plugin: &Path, conf: &str) -> Value {
    let (code, out) = c.run(plugin, conf);
    assert_ne!(code, 0, "{} should have failed: {out}", c.cmd);
    let e: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no error JSON ({e}): {out}"));
    assert!(e["code"].is_u64() && e["msg"].is_string(), "error JSON as SPEC.md \"Error\": {e}");
    e
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

/// SPEC.md "Success" rules for a result: version as configured, every
/// `ips[].interface` an index into `interfaces`, pointing at an interface
/// in `sandbox` with a MAC, CIDR addresses, a gateway inside the subnet.
/// Returns the sandbox interface.
fn valid_result(r: &Value, version: &str, sandbox: &str, ifname: &str) -> Value {
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifs = r["interfaces"].as_array().unwrap_or_else(|| panic!("interfaces is a list: {r}"));
    let ips = r["ips"].as_array().unwrap_or_else(|| panic!("ips is a list: {r}"));
    assert!(!ips.is_empty(), "{r}");
    let mut found = None;
    for ip in ips {
        let i = ip["interface"].as_u64().unwrap_or_else(|| panic!("ips[].interface is an index: {r}")) as usize;
        let itf = ifs.get(i).unwrap_or_else(|| panic!("ips[].interface {i} out of range: {r}"));
        assert_eq!(itf["sandbox"], sandbox, "the address is on the container's interface: {r}");
        assert_eq!(itf["name"], ifname, "{r}");
        let mac = itf["mac"].as_str().unwrap_or_else(|| panic!("a sandbox interface has a mac (podman needs it): {r}"));
        assert_eq!(mac.split(':').filter(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()).count(), 6, "{r}");
        let (addr, prefix) = ip["address"].as_str().unwrap().split_once('/').expect("a CIDR address");
        let addr: std::net::Ipv4Addr = addr.parse().unwrap();
        let prefix: u32 = prefix.parse().unwrap();
        let gw: std::net::Ipv4Addr = ip["gateway"].as_str().expect("a gateway").parse().unwrap();
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        assert_eq!(u32::from(addr) & mask, u32::from(gw) & mask, "the gateway is on the subnet: {r}");
        found = Some(itf.clone());
    }
    for rt in r["routes"].as_array().unwrap_or_else(|| panic!("routes is a list: {r}")) {
        assert!(rt["dst"].is_string(), "{r}");
    }
    assert!(r["dns"].is_object(), "{r}");
    found.unwrap()
}

/// The reference `bridge` + `host-local` ADD result for the same request
/// (then deleted again), made in a host namespace of the test's own.
fn reference_result(subnet: &str) -> Value {
    let host = Netns::new("cnirh");
    let ctr = Netns::new("cnirc");
    let dir = TempDir::new("cniref");
    let conf = json!({"cniVersion": "1.0.0", "name": name("rnet"), "type": "bridge", "bridge": "rcni0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": subnet, "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": dir.0.to_str().unwrap()}});
    let c = Call { in_ns: Some(&host.name), ..call("ADD", "ref-ctr", &ctr, "eth0") };
    let r = add_ok(&c, &Path::new(REF).join("bridge"), &conf.to_string());
    let del = Call { cmd: "DEL", ..c };
    assert_eq!(del.run(&Path::new(REF).join("bridge"), &with_prev(&conf, &r)).0, 0);
    r
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tapyard-it-{}", name(tag)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports the daemon has on `net`.
fn ports(d: &Daemon, net: &str) -> Vec<Value> {
    d.json(&["port", "ls"]).as_array().unwrap().iter().filter(|p| p["network"] == net).cloned().collect()
}

/// Addresses of the network's pool in use (the gateway's included).
fn pool_used(d: &Daemon, net: &str) -> u64 {
    d.json(&["network", "inspect", net])["pool_used"].as_u64().unwrap()
}

#[test]
fn add_check_del_match_the_reference_plugins() {
    if !net_admin() {
        return;
    }
    need_reference();
    let d = Daemon::start("cni");
    let net = name("cnet");
    let ctr = Netns::new("cnic");
    let conf = config(&d, &net, "1.0.0", json!({"type": "tapyard", "subnet": "198.18.40.0/24"}));
    let p = plugin();
    let add = call("ADD", "ctr-0001", &ctr, "eth0");
    let r = add_ok(&add, &p, &conf.to_string());
    let itf = valid_result(&r, "1.0.0", ns_path(&ctr), "eth0");
    assert_eq!(r["ips"][0]["gateway"], "198.18.40.1", "{r}");
    assert!(
        r["routes"].as_array().unwrap().iter().any(|rt| rt["dst"] == "0.0.0.0/0"),
        "a default route, as the reference's: {r}"
    );

    // Field by field against the reference plugins' result.
    let reference = reference_result("198.18.41.0/24");
    let ref_itf = valid_result(&reference, "1.0.0", reference["interfaces"][2]["sandbox"].as_str().unwrap(), "eth0");
    assert_eq!(keys(&r), keys(&reference), "the same top-level keys as bridge: {r} vs {reference}");
    for k in keys(&reference) {
        assert_eq!(type_of(&r[&k]), type_of(&reference[&k]), "{k}: {r} vs {reference}");
    }
    assert_eq!(keys(&itf), keys(&ref_itf), "the sandbox interface has the reference's keys");
    assert_eq!(keys(&r["ips"][0]), keys(&reference["ips"][0]), "ips[] has the reference's keys");
    for k in keys(&reference["routes"][0]) {
        assert!(r["routes"][0].get(&k).is_some(), "routes[] has the reference's {k}: {r}");
    }

    // As the result says: address, MAC, default route; the gateway answers.
    let addr = r["ips"][0]["address"].as_str().unwrap();
    let shown = Command::new("ip").args(["-n", &ctr.name, "addr", "show", "eth0"]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(addr) && shown.contains(itf["mac"].as_str().unwrap()), "{shown}");
    assert!(ctr.reaches("198.18.40.1"), "the container pings the gateway");
    let port = ports(&d, &net);
    assert_eq!(port.len(), 1);
    assert_eq!(port[0]["owner"], "ctr-0001", "port ls shows the container id: {}", port[0]);
    assert_eq!(port[0]["port_security"], true, "on by default: {}", port[0]);
    let used = pool_used(&d, &net);

    // CHECK: silent success, then the reference's failure after a flush.
    let check = Call { cmd: "CHECK", ..add };
    assert_eq!(check.run(&p, &with_prev(&conf, &r)), (0, String::new()));
    // A second ADD for the same interface fails.
    let e = fails(&add, &p, &conf.to_string());
    assert_eq!(e["code"], 999, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("eth0"), "{e}");
    sh(&["ip", "-n", &ctr.name, "addr", "flush", "dev", "eth0"]);
    let e = fails(&check, &p, &with_prev(&conf, &r));
    assert_eq!(e["code"], 999, "{e}");
    assert_eq!(e["msg"], format!("Failed to match addr {addr} on interface eth0"), "{e}");

    // DEL, DEL again, and DEL after the namespace is gone: all silent successes.
    let del = Call { cmd: "DEL", ..add };
    assert_eq!(del.run(&p, &with_prev(&conf, &r)), (0, String::new()));
    assert!(ports(&d, &net).is_empty(), "DEL removed the port");
    assert!(!ctr.has_link("eth0"), "and the interface");
    assert_eq!(del.run(&p, &with_prev(&conf, &r)), (0, String::new()), "DEL is idempotent");
    let gone = Netns::new("cnig");
    let add2 = call("ADD", "ctr-0002", &gone, "eth0");
    let mut open = conf.clone();
    open["portSecurity"] = json!(false);
    let r2 = add_ok(&add2, &p, &open.to_string());
    let p2 = ports(&d, &net);
    assert_eq!(p2[0]["port_security"], false, "\"portSecurity\": false turns it off: {}", p2[0]);
    gone.delete();
    let del2 = Call { cmd: "DEL", ..add2 };
    assert_eq!(del2.run(&p, &with_prev(&conf, &r2)), (0, String::new()), "DEL with the namespace gone");
    assert!(ports(&d, &net).is_empty(), "its port is gone too");
    // Both addresses are free again in tapyard's IPAM.
    assert_eq!(pool_used(&d, &net), used - 1, "DEL released the addresses: {}", d.ok(&["lease", "ls"]));
}

#[test]
fn version_and_bad_input_answer_the_spec_errors() {
    if !net_admin() {
        return;
    }
    let p = plugin();
    // podman's first call: CNI_NETNS=dummy, only a version on stdin.
    let v = Call { cmd: "VERSION", id: "", netns: "dummy", ifname: "dummy", in_ns: None };
    let (code, out) = v.run(&p, r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0, "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    let versions = out["supportedVersions"].as_array().unwrap();
    assert!(versions.contains(&json!("1.0.0")) && versions.contains(&json!("1.1.0")), "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");

    let ctr = Netns::new("cnib");
    let add = call("ADD", "ctr-bad", &ctr, "eth0");
    let e = fails(&add, &p, r#"{"cniVersion":"1.0.0","name":"x","type":"tapyard-cni""#);
    assert_eq!(e["code"], 6, "truncated JSON: {e}");
    let e = fails(&add, &p, r#"{"cniVersion":"0.2.0","name":"x","type":"tapyard-cni"}"#);
    assert_eq!(e["code"], 1, "a version it does not speak: {e}");
    let e = fails(&add, &p, r#"{"cniVersion":"1.0.0","name":"x","mtu":"big"}"#);
    assert_eq!(e["code"], 7, "a wrong field type: {e}");
    let no_env = Call { id: "", ..add };
    assert_eq!(fails(&no_env, &p, r#"{"cniVersion":"1.0.0","name":"x"}"#)["code"], 4);
    let e = fails(&add, &p, r#"{"cniVersion":"1.0.0","name":"x","socket":"/nonexistent/t.sock"}"#);
    assert_eq!(e["code"], 11, "no daemon: try again later: {e}");
    let status = Call { cmd: "STATUS", ..add };
    assert_eq!(fails(&status, &p, r#"{"cniVersion":"1.1.0","name":"x","socket":"/nonexistent/t.sock"}"#)["code"], 50);
    let d = Daemon::start("cnis");
    let conf = config(&d, "x", "1.1.0", json!({"type": "tapyard"}));
    assert_eq!(status.run(&p, &conf.to_string()), (0, String::new()), "STATUS with the daemon up");
}

#[test]
fn delegates_to_host_local_and_releases_its_address() {
    if !net_admin() {
        return;
    }
    need_reference();
    let d = Daemon::start("cnih");
    let net = name("hnet");
    let data = TempDir::new("cnihl");
    let ctr = Netns::new("cnih");
    let conf = config(
        &d,
        &net,
        "1.0.0",
        json!({"type": "host-local", "subnet": "198.18.42.0/24", "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data.0.to_str().unwrap()}),
    );
    let p = plugin();
    let add = call("ADD", "ctr-hl", &ctr, "eth0");
    let r = add_ok(&add, &p, &conf.to_string());
    valid_result(&r, "1.0.0", ns_path(&ctr), "eth0");
    let addr = r["ips"][0]["address"].as_str().unwrap();
    assert_eq!(addr, "198.18.42.2/24", "host-local's first address: {r}");
    assert_eq!(r["ips"][0]["gateway"], "198.18.42.1");
    let file = data.0.join(&net).join("198.18.42.2");
    let held = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert!(held.starts_with("ctr-hl"), "host-local holds it for the container: {held}");
    let port = ports(&d, &net);
    assert_eq!((port[0]["ip"].as_str(), port[0]["ip_source"].as_str()), (Some(addr), Some("static")));
    assert!(ctr.reaches("198.18.42.1"), "the container pings the gateway");
    let check = Call { cmd: "CHECK", ..add };
    assert_eq!(check.run(&p, &with_prev(&conf, &r)), (0, String::new()));
    let del = Call { cmd: "DEL", ..add };
    assert_eq!(del.run(&p, &with_prev(&conf, &r)), (0, String::new()));
    assert!(!file.exists(), "DEL released host-local's address");
    assert!(ports(&d, &net).is_empty());
    assert_eq!(del.run(&p, &with_prev(&conf, &r)), (0, String::new()), "DEL is idempotent");
}

/// A process the test started, stopped (by its pid) on drop.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            stop_child(c, "KILL");
        }
    }
}

#[test]
fn chains_with_portmap() {
    if !net_admin() {
        return;
    }
    need_reference();
    need("iptables", "iptables");
    // The daemon and both plugins in a host namespace of the test's own,
    // with an uplink: portmap's DNAT there reaches the container through it.
    let host = Netns::new("cnipmh");
    let d = Daemon::start_in("cnipm", &host.name, &[]);
    let net = name("pnet");
    let ctr = Netns::new("cnipmc");
    let conf = config(&d, &net, "1.0.0", json!({"type": "tapyard", "subnet": "198.18.43.0/24"}));
    let p = plugin();
    let add = Call { in_ns: Some(&host.name), ..call("ADD", "ctr-pm", &ctr, "eth0") };
    let r = add_ok(&add, &p, &conf.to_string());
    let pm_conf = json!({"cniVersion": "1.0.0", "name": net, "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}});
    let portmap = Path::new(REF).join("portmap");
    let (code, out) = add.run(&portmap, &with_prev(&pm_conf, &r));
    assert_eq!(code, 0, "portmap accepted our result: {out}");
    let chained: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(chained["ips"], r["ips"], "portmap passed our result on");

    // The DNAT works: a TCP server in the container, reached from the host
    // at a local address of its own on the host port.
    sh(&["ip", "-n", &host.name, "addr", "add", "198.18.43.250/32", "dev", "lo"]);
    let server = Command::new("ip")
        .args(["netns", "exec", &ctr.name, "python3", "-c"])
        .arg(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',80))\ns.listen()\nwhile True:\n c,_=s.accept()\n c.sendall(b'tapyard')\n c.close()\n",
        )
        .spawn()
        .unwrap();
    let _server = Proc(Some(server));
    let fetch = || {
        Command::new("ip")
            .args(["netns", "exec", &host.name, "python3", "-c"])
            .arg(
                "import socket\ns=socket.create_connection(('198.18.43.250',18080),timeout=1)\n\
                 print(s.recv(100).decode())",
            )
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "tapyard")
    };
    assert!(wait_for(10, fetch), "the host port reaches the container through portmap's DNAT");

    // DEL in reverse order.
    let del = Call { cmd: "DEL", ..add };
    assert_eq!(del.run(&portmap, &with_prev(&pm_conf, &chained)).0, 0);
    assert_eq!(del.run(&p, &with_prev(&conf, &chained)), (0, String::new()));
    assert!(ports(&d, &net).is_empty());
}

#[test]
fn twenty_concurrent_adds_get_distinct_addresses() {
    if !net_admin() {
        return;
    }
    let d = Daemon::start("cnic20");
    let net = name("cnet20");
    let conf = config(&d, &net, "1.0.0", json!({"type": "tapyard", "subnet": "198.18.44.0/24"})).to_string();
    let namespaces: Vec<Netns> = (0..20).map(|i| Netns::new(&format!("cc{i}"))).collect();
    let p = plugin();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (conf, p) = (&conf, &p);
                s.spawn(move || {
                    let id = format!("ctr-{i}");
                    add_ok(&Call { cmd: "ADD", id: &id, netns: ns_path(ns), ifname: "eth0", in_ns: None }, p, conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<&str> = results.iter().map(|r| r["ips"][0]["address"].as_str().unwrap()).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 20, "distinct addresses: {addrs:?}");
    assert_eq!(ports(&d, &net).len(), 20);
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("ctr-{i}");
        let del = Call { cmd: "DEL", id: &id, netns: ns_path(ns), ifname: "eth0", in_ns: None };
        assert_eq!(del.run(&p, &with_prev(&serde_json::from_str(&conf).unwrap(), &results[i])).0, 0);
    }
    assert!(ports(&d, &net).is_empty());
}

#[test]
fn gc_removes_attachments_not_in_the_valid_list() {
    if !net_admin() {
        return;
    }
    let d = Daemon::start("cnigc");
    let net = name("gcnet");
    let conf = config(&d, &net, "1.1.0", json!({"type": "tapyard", "subnet": "198.18.45.0/24"}));
    let (keep, stale) = (Netns::new("gck"), Netns::new("gcs"));
    let p = plugin();
    let r = add_ok(&call("ADD", "ctr-keep", &keep, "eth0"), &p, &conf.to_string());
    valid_result(&r, "1.1.0", ns_path(&keep), "eth0");
    add_ok(&call("ADD", "ctr-stale", &stale, "eth0"), &p, &conf.to_string());
    // A port the CLI made (no owner) is not the plugin's to collect.
    let cli_ns = Netns::new("gcc");
    d.ok(&["connect", &net, &cli_ns.name, "--ip", "auto"]);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    let call_gc = Call { cmd: "GC", id: "", netns: "", ifname: "", in_ns: None };
    assert_eq!(call_gc.run(&p, &gc.to_string()), (0, String::new()));
    let left: Vec<Value> = ports(&d, &net).into_iter().map(|p| p["owner"].clone()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&json!("ctr-keep")) && left.contains(&Value::Null), "{left:?}");
    assert!(wait_for(5, || !stale.has_link("eth0")), "the stale interface is gone");
    assert!(keep.has_link("eth0"));
}

#[test]
fn port_kind_afxdp_gives_the_container_an_af_xdp_port() {
    if !net_admin() {
        return;
    }
    if !common::initial_userns() {
        let _ = writeln!(
            std::io::stderr(),
            "port_kind_afxdp_gives_the_container_an_af_xdp_port: skipped: AF_XDP needs root in the host's user namespace"
        );
        return;
    }
    let d = Daemon::start("cnix");
    let net = name("cnix");
    let ctr = Netns::new("cnixc");
    let mut conf = config(&d, &net, "1.0.0", json!({"type": "tapyard", "subnet": "198.18.44.0/24"}));
    conf["portKind"] = json!("afxdp");
    let p = plugin();
    let add = call("ADD", "ctr-x001", &ctr, "eth0");
    let r = add_ok(&add, &p, &conf.to_string());
    assert_eq!(r["ips"][0]["gateway"], "198.18.44.1", "{r}");
    let port = &ports(&d, &net)[0];
    let switch_end = port["afxdp"]["switch_ifname"].as_str().unwrap_or_else(|| panic!("an AF_XDP port: {port}"));
    assert!(ctr.reaches("198.18.44.1"), "the gateway answers through the AF_XDP port");
    let del = Call { cmd: "DEL", ..add };
    let (code, out) = del.run(&p, &conf.to_string());
    assert_eq!(code, 0, "DEL: {out}");
    assert!(ports(&d, &net).is_empty());
    let gone = !Command::new("ip").args(["link", "show", "dev", switch_end]).output().unwrap().status.success();
    assert!(gone, "DEL deleted the veth");
    // A kind the plugin does not know is the config's error, not a TAP.
    conf["portKind"] = json!("macvlan");
    let e = fails(&call("ADD", "ctr-x002", &ctr, "eth1"), &p, &conf.to_string());
    assert!(e["msg"].as_str().unwrap().contains("macvlan"), "{e}");
}
