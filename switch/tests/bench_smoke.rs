//! `tapyard bench` end to end, briefly: the Linux bridge and tapyard (switched)
//! are set up, measured (TCP one stream with the switch's CPU per GB, ping)
//! and torn down, and the JSON and the report hold positive figures for both.
//! Bad arguments are refused with a message.
//!
//! The benchmark needs uid 0 (real root, or root of a user namespace with a
//! private /run/netns, as scripts/test.sh and scripts/test-rootless.sh run
//! the integration tests: it works in both) and iperf3 and ping, which
//! scripts/setup.sh installs. Without them the test fails and names the
//! package: it never passes without measuring.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::TAPYARD;

/// The namespaces the benchmark names its own (tyb<PID>a/b/s).
fn bench_namespaces() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("tyb"))
        .map(str::to_string)
        .collect()
}

fn figure(path: &serde_json::Value, key: &str) -> f64 {
    path["figures"][key].as_f64().unwrap_or_else(|| panic!("{} has no {key}: {path:#}", path["name"]))
}

#[test]
fn bench_measures_bridge_and_tapyard_and_cleans_up() {
    if !common::net_admin() {
        return;
    }
    for (tool, package) in [("iperf3", "iperf3"), ("ping", "iputils-ping")] {
        common::need(tool, package);
    }
    // Fails with the usual message unless namespaces can be made here.
    let probe = common::Netns::new("benchprobe");
    drop(probe);

    let report = std::env::temp_dir().join(format!("tapyard-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&report);
    let started = Instant::now();
    let child = Command::new(TAPYARD)
        .args(["bench", "--against", "bridge", "--paths", "switched", "--tests", "tcp1,ping"])
        .args(["--duration", "1", "--runs", "1", "--pings", "20", "--json", "--report"])
        .arg(&report)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tapyard bench");
    // Its namespaces and links are named tyb<PID>...: the other tests here
    // run benchmarks of their own at the same time.
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for tapyard bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tapyard bench failed ({}):\n{stderr}", out.status);
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}:\n{stderr}", started.elapsed());

    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["machine"]["nproc"].as_u64().map(|n| n > 0), Some(true), "{:#}", v["machine"]);
    let paths = v["paths"].as_array().expect("paths");
    let find =
        |name: &str| paths.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name} row: {v:#}")).clone();
    let bridge = find("bridge");
    let tapyard = find("tapyard");
    for p in [&bridge, &tapyard] {
        assert_eq!(p["status"], "ok", "{p:#}\n{stderr}");
        for key in ["tcp1_gbps", "ping_p50_us", "ping_p99_us"] {
            assert!(figure(p, key) > 0.0, "{} {key} = {}", p["name"], p["figures"][key]);
        }
        assert!(figure(p, "ping_p99_us") >= figure(p, "ping_p50_us"), "{p:#}");
        // not asked for: no figure, no row left out
        assert!(p["figures"]["udp64_kpps"].is_null(), "{p:#}");
    }
    // The bridge has no switch process; tapyard's daemon does the work.
    assert!(bridge["figures"]["cpu_s_per_gb"].is_null(), "{bridge:#}");
    assert!(figure(&tapyard, "cpu_s_per_gb") > 0.0, "{tapyard:#}");
    assert_eq!(tapyard["ratio_to_bridge"]["tcp1_gbps"].as_f64().map(|r| r > 0.0), Some(true), "{tapyard:#}");
    assert_eq!(bridge["ratio_to_bridge"]["tcp1_gbps"], 1.0);
    assert!(paths.iter().all(|p| p["name"] == "bridge" || p["name"] == "tapyard"), "{v:#}");

    // The report: the same JSON, the table, and the logs.
    let md = std::fs::read_to_string(report.join("results.md")).expect("results.md");
    assert!(md.contains("| bridge") && md.contains("| tapyard") && md.contains("kernel:"), "{md}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("results.json")).expect("results.json")).unwrap();
    assert_eq!(saved["paths"], v["paths"]);
    assert!(
        saved["chart"].as_str().is_some_and(|c| c == "chart.png" || c.starts_with("skipped: ")),
        "{}",
        saved["chart"]
    );
    assert!(report.join("logs/tapyard.daemon.log").exists());
    let _ = std::fs::remove_dir_all(&report);

    // Nothing left behind.
    let ours = format!("tyb{pid}");
    let left: Vec<String> = bench_namespaces().into_iter().filter(|n| n.starts_with(&ours)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.lines().any(|l| l.contains(&format!(": {ours}"))), "links left behind:\n{links}");
}

#[test]
fn bench_refuses_bad_arguments() {
    for (args, says) in [
        (&["--against", "nope"][..], "nope"),
        (&["--against", "bridge,nope"], "nope"),
        (&["--duration", "0"], "--duration"),
        (&["--duration", "soon"], "--duration"),
        (&["--runs", "0"], "--runs"),
        (&["--tests", "tcp9"], "tcp9"),
        (&["--against", "none", "--paths", "none"], "nothing to measure"),
        (&["--dhcp", "--egress"], "--egress"),
        (&["--dhcp", "--dhcp-rates", "0"], "--dhcp-rates"),
        (&["--dhcp-rates", "1000"], "--dhcp"),
    ] {
        let out = Command::new(TAPYARD).arg("bench").args(args).output().expect("run tapyard bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: expected {says:?} in: {stderr}");
    }
}

/// Processes whose command line names `needle` (the run's work directory:
/// the daemon's socket and the peers' pid files are in it).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// SIGTERM while the tapyard daemon forwards: the run ends with 130 and its
/// guards remove the namespaces, links, daemon, servers and work directory.
#[test]
fn bench_cleans_up_when_terminated() {
    if !common::net_admin() {
        return;
    }
    common::need("iperf3", "iperf3");
    let child = Command::new(TAPYARD)
        .args(["bench", "--against", "none", "--paths", "switched", "--tests", "tcp1", "--duration", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tapyard bench");
    let pid = child.id();
    let work = format!("tapyard-bench.{pid}.");
    // The daemon is up and iperf3 is measuring through it (its output file is there).
    let work_dirs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&work))
            .map(|e| e.path())
            .collect()
    };
    let measuring = common::wait_for(30, || {
        processes_naming(&work).iter().any(|c| c.contains(" daemon "))
            && work_dirs().iter().any(|d| d.join("logs/tapyard.tcp1_gbps.1.json").exists())
    });
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let out = child.wait_with_output().expect("wait for tapyard bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(measuring, "the benchmark never reached the measurement:\n{stderr}");
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let ours = |n: &String| n.starts_with(&format!("tyb{pid}"));
    assert!(!bench_namespaces().iter().any(ours), "namespaces left behind:\n{stderr}");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&format!(": tyb{pid}")), "links left behind:\n{links}");
    assert_eq!(processes_naming(&work), Vec::<String>::new(), "processes left behind");
    assert_eq!(work_dirs(), Vec::<std::path::PathBuf>::new(), "work directory left behind");
}

/// Every other data path (vde_switch, both Open vSwitch rows, tapyard routed
/// and busy-polling) comes up, carries pings, and goes away with everything
/// it made. A peer that is not installed is skipped, and says which package
/// it needs; one that is installed must work.
#[test]
fn bench_builds_every_backend_and_cleans_up() {
    if !common::net_admin() {
        return;
    }
    common::need("iperf3", "iperf3");
    let before = bench_namespaces();
    let child = Command::new(TAPYARD)
        .args(["bench", "--against", "vde,ovs", "--paths", "routed,busy", "--tests", "ping"])
        .args(["--duration", "1", "--runs", "1", "--pings", "20", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tapyard bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for tapyard bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tapyard bench failed ({}):\n{stderr}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let names: Vec<&str> = v["paths"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["vde", "ovs", "ovs-tso", "tapyard-routed", "tapyard-busy"], "{v:#}");
    for p in v["paths"].as_array().unwrap() {
        let installed = match p["name"].as_str() {
            Some("vde") => installed_tool("vde_switch"),
            Some("ovs" | "ovs-tso") => installed_tool("ovs-vswitchd") && installed_tool("ovsdb-server"),
            _ => true,
        };
        if installed {
            assert_eq!(p["status"], "ok", "{p:#}\n{stderr}");
            assert!(figure(p, "ping_p50_us") > 0.0, "{p:#}");
        } else {
            assert_eq!(p["status"], "skipped", "{p:#}");
            assert!(p["reason"].as_str().is_some_and(|r| r.contains("Debian package")), "{p:#}");
        }
    }
    let ours = |n: &String| n.starts_with(&format!("tyb{pid}"));
    assert!(!bench_namespaces().difference(&before).any(ours), "namespaces left behind");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&format!(": tyb{pid}")), "links left behind");
    assert_eq!(processes_naming(&format!("tapyard-bench.{pid}.")), Vec::<String>::new(), "processes left behind");
}

fn installed_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `bench --dhcp`, one run of one short step: perfdhcp gets its exchanges
/// answered by tapyard's gateway and by Kea, the JSON holds both climbs, and
/// the namespaces (tyd<PID>...), servers and work directory are gone after.
#[test]
fn bench_dhcp_measures_tapyard_and_kea_and_cleans_up() {
    if !common::net_admin() {
        return;
    }
    common::need("perfdhcp", "kea-admin");
    common::need("kea-dhcp4", "kea-dhcp4-server");
    let child = Command::new(TAPYARD)
        .args(["bench", "--dhcp", "--duration", "1", "--runs", "1", "--dhcp-rates", "200", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tapyard bench --dhcp");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for tapyard bench --dhcp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["schema_version"], 1);
    for server in ["tapyard", "kea"] {
        assert_eq!(v["servers"][server]["status"], "ok", "{:#}\n{stderr}", v["servers"]);
        let climb = v["climbs"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["server"] == server))
            .unwrap_or_else(|| panic!("no {server} climb: {v:#}"));
        let step = &climb["steps"][0];
        assert_eq!(step["offered_per_s"], 200, "{climb:#}");
        // A light load on either server: most exchanges complete (not all: the machine may be busy).
        assert!(step["acks_received"].as_u64().is_some_and(|n| n > 0), "{server}: no ACK: {climb:#}\n{stderr}");
        assert!(step["completion"].as_f64().is_some_and(|c| c > 0.5), "{server}: {climb:#}\n{stderr}");
        if server == "tapyard" {
            let gw = &step["gateway"];
            assert!(gw["dhcp_ack"].as_u64().is_some_and(|n| n > 0), "the gateway's counters: {climb:#}");
        } else {
            assert!(step.get("gateway").is_none(), "{climb:#}");
        }
    }
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let ours = |n: &String| n.starts_with(&format!("tyd{pid}"));
    let left: Vec<String> = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    assert!(!left.iter().any(ours), "namespaces left behind: {left:?}");
    assert_eq!(processes_naming(&format!("tapyard-bench.{pid}.")), Vec::<String>::new(), "processes left behind");
}
