//! Soak (issue 15; docs/RELIABILITY.md, "Soak"): connect/disconnect cycles
//! and DHCP lease cycles (DISCOVER, REQUEST, RELEASE from a real client on
//! a real port) must leave the daemon where it was after a warm-up: the
//! same file descriptors and TAP devices (exactly), its RSS within
//! allocator noise (10 MiB), and the lease journal within its compaction
//! bound (the journal is compacted once it outgrows max(64 KiB, the live
//! leases), so its size does not grow with the number of cycles).
//!
//! The default suite runs 300 cycles of each; the 10,000:
//! `TAPYARD_SOAK_CYCLES=10000 cargo test -p tapyard-switch --test soak -- --nocapture`
//! (or scripts/reliability.sh). The numbers are printed.

mod common;

use std::process::Command;
use std::time::Instant;

use common::*;
use serde_json::Value;

/// What is measured of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    rss_kib: u64,
    /// TAP devices in the test's namespaces.
    taps: usize,
    /// Lease journal and its snapshot.
    journal_bytes: u64,
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// TAP devices in namespace `ns` (None: the test's own).
fn taps(ns: Option<&str>) -> Vec<Value> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    let out = c.args(["-d", "-j", "link", "show"]).output().unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links.as_array().unwrap().iter().filter(|l| l["linkinfo"]["info_kind"] == "tun").cloned().collect()
}

fn usage(d: &Daemon, namespaces: &[&Netns]) -> Usage {
    let pid = d.pid();
    let journal_bytes = ["leases.journal", "leases.snapshot"]
        .iter()
        .map(|f| std::fs::metadata(d.state.join(f)).map_or(0, |m| m.len()))
        .sum();
    Usage {
        fds: fds(pid),
        rss_kib: rss_kib(pid),
        taps: namespaces.iter().map(|n| taps(Some(&n.name)).len()).sum(),
        journal_bytes,
    }
}

fn dhcp_cycles(ns: &Netns, n: usize) {
    let script = format!("{}/tests/fixtures/dhcp_client.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", &script, "eth0", &n.to_string(), "--release"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let acks = text.lines().filter(|l| l.starts_with("ACK")).count();
    assert!(out.status.success() && acks == n, "{acks} of {n} DHCP handshakes acknowledged: {text}");
}

#[test]
fn connect_and_lease_cycles_leave_fds_memory_taps_and_journal_at_baseline() {
    if !net_admin() {
        return;
    }
    need("python3", "python3");
    let cycles: usize = std::env::var("TAPYARD_SOAK_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let d = Daemon::start("soak");
    let net = name("soak");
    d.ok(&["network", "create", &net, "--subnet", "10.234.0.0/24"]);
    let (a, c) = (Netns::new("soaka"), Netns::new("soakc"));
    d.ok(&["connect", &net, &c.name]);
    let cycle = |n: usize| {
        for _ in 0..n {
            d.ok(&["connect", &net, &a.name, "--ip", "auto"]);
            d.ok(&["disconnect", &net, &a.name]);
        }
    };
    // Warm-up: threads, pools and tables at their working size.
    cycle(20);
    dhcp_cycles(&c, 20);
    let ns = [&a, &c];
    let mut base = usage(&d, &ns);
    // A connection thread may still be closing after the CLI exited.
    wait_for(5, || {
        base = usage(&d, &ns);
        base.fds == usage(&d, &ns).fds
    });
    let macs: Vec<String> = [d.port(&c.name)["mac"].as_str().unwrap().to_string()].into();

    let t = Instant::now();
    cycle(cycles);
    let connect_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    dhcp_cycles(&c, cycles);
    let dhcp_secs = t.elapsed().as_secs_f64();

    let mut after = usage(&d, &ns);
    let settled = wait_for(5, || {
        after = usage(&d, &ns);
        after.fds == base.fds
    });
    eprintln!(
        "soak: {cycles} connect/disconnect cycles in {connect_secs:.1} s, {cycles} DHCP lease cycles in {dhcp_secs:.1} s\n\
         soak: baseline {base:?}\nsoak: after    {after:?}"
    );
    assert!(settled, "file descriptors: {} after, {} at baseline", after.fds, base.fds);
    assert_eq!(after.taps, base.taps, "TAP devices in the test's namespaces");
    let host: Vec<Value> = taps(None).into_iter().filter(|l| macs.iter().any(|m| l["address"] == m.as_str())).collect();
    assert!(host.is_empty(), "a port's TAP in the host namespace: {host:?}");
    assert!(after.rss_kib <= base.rss_kib + 10 * 1024, "RSS grew from {} KiB to {} KiB", base.rss_kib, after.rss_kib);
    // Each cycle appends a few hundred bytes (without compaction the
    // journal would hold them all); compacted, the files stay within the
    // threshold plus the live leases.
    assert!(
        after.journal_bytes <= base.journal_bytes + tapyard_ipam::store::COMPACT_MIN_BYTES,
        "lease journal grew from {} to {} bytes",
        base.journal_bytes,
        after.journal_bytes
    );
    // And the client's lease was released each time, the port's address freed each time.
    let leases = d.json(&["lease", "ls", &net]);
    let bound = leases.as_array().unwrap().iter().filter(|l| l["state"] == "bound").count();
    assert_eq!(bound, 0, "{leases}");
}
