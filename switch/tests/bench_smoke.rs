//! `tapyard bench` end to end, briefly: the Linux bridge and tapyard (switched)
//! are set up, measured (TCP one stream with the switch's CPU per GB, ping)
//! and torn down, and the JSON and the report hold positive figures for both.
//! Bad arguments are refused with a message.
//!
//! The benchmark needs uid 0 (real root, or root of a user namespace with a
//! private /run/netns, as scripts/test.sh and scripts/test-rootless.sh run
//! the integration tests: it works in both) and iperf3 and jq, which
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
    for (tool, package) in [("iperf3", "iperf3"), ("jq", "jq"), ("ping", "iputils-ping"), ("bash", "bash")] {
        common::need(tool, package);
    }
    // Fails with the usual message unless namespaces can be made here.
    let probe = common::Netns::new("benchprobe");
    drop(probe);

    let before = bench_namespaces();
    let report = std::env::temp_dir().join(format!("tapyard-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&report);
    let started = Instant::now();
    let out = Command::new(TAPYARD)
        .args(["bench", "--against", "bridge", "--paths", "switched", "--tests", "tcp1,ping"])
        .args(["--duration", "1", "--runs", "1", "--pings", "20", "--json", "--report"])
        .arg(&report)
        .output()
        .expect("run tapyard bench");
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
    let after = bench_namespaces();
    assert!(after.is_subset(&before), "namespaces left behind: {:?}", after.difference(&before).collect::<Vec<_>>());
    let links = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.lines().any(|l| l.contains(": tyb")), "links left behind:\n{links}");
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
    ] {
        let out = Command::new(TAPYARD).arg("bench").args(args).output().expect("run tapyard bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: expected {says:?} in: {stderr}");
    }
}
