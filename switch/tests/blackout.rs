//! Restart blackout (issue 15; docs/RELIABILITY.md, "Restarts"): two
//! containers ping each other every 10 ms while the daemon is restarted,
//! (a) killed with SIGKILL and started again at once, (b) stopped cleanly
//! with SIGTERM and started again (an upgrade). Lost pings × 10 ms is the
//! blackout; the longest gap between two replies is printed too. The
//! containers' interfaces (ifindex, MAC, addresses, default route) must
//! not change.
//!
//! The default suite runs each mode once and asserts the bound
//! (under 1 s of pings lost each way). The measurement (`TAPYARD_BLACKOUT_RUNS`
//! runs per mode, default 5; median, min and max):
//! `cargo test -p tapyard-switch --test blackout -- --ignored --nocapture`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

const INTERVAL_MS: f64 = 10.0;

/// `ping -D -i 0.01` from `ns` to `to`, its output in `file`.
fn start_ping(ns: &Netns, to: &str, file: &Path) -> Child {
    let out = std::fs::File::create(file).unwrap();
    Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-n", "-D", "-i", "0.01", to])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn replies(file: &Path) -> usize {
    std::fs::read_to_string(file).unwrap_or_default().lines().filter(|l| l.contains("bytes from")).count()
}

/// Stops a ping (SIGINT: it prints its summary) and reads (lost, longest
/// gap between two replies in ms).
fn finish_ping(c: Child, file: &Path) -> (u64, f64) {
    stop_child(c, "INT");
    let text = std::fs::read_to_string(file).unwrap();
    let summary = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u64> = summary.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    let (sent, got) = (nums[0], nums[1]);
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let gap = stamps.windows(2).map(|w| (w[1] - w[0]) * 1000.0).fold(0.0, f64::max);
    // The last request may still be on its way when ping stops.
    (sent.saturating_sub(got).saturating_sub(1), gap)
}

struct Pair {
    d: Daemon,
    a: Netns,
    b: Netns,
}

fn setup(tag: &str) -> Pair {
    let d = Daemon::start(tag);
    let net = name(tag);
    d.ok(&["network", "create", &net, "--subnet", "10.233.0.0/24"]);
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    d.ok(&["connect", &net, &a.name, "--ip", "10.233.0.2/24"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.233.0.3/24"]);
    assert!(a.reaches("10.233.0.3"));
    Pair { d, a, b }
}

/// One restart while both containers ping: (lost a→b, lost b→a, longest gap in ms).
fn one_restart(p: &mut Pair, signal: &str) -> (u64, u64, f64) {
    let (fa, fb) = (p.d.dir.join("ping-a"), p.d.dir.join("ping-b"));
    let pa = start_ping(&p.a, "10.233.0.3", &fa);
    let pb = start_ping(&p.b, "10.233.0.2", &fb);
    assert!(wait_for(10, || replies(&fa) >= 50 && replies(&fb) >= 50), "no steady ping before the restart");
    let before = (replies(&fa), replies(&fb));
    assert_eq!(p.d.signal(signal), if signal == "KILL" { None } else { Some(0) });
    p.d.spawn();
    // Until 100 more replies each way came after the restart (1 s of pings).
    let resumed = wait_for(20, || replies(&fa) >= before.0 + 100 && replies(&fb) >= before.1 + 100);
    let (la, ga) = finish_ping(pa, &fa);
    let (lb, gb) = finish_ping(pb, &fb);
    assert!(resumed, "pings did not resume after SIG{signal}; log:\n{}", p.d.log());
    (la, lb, ga.max(gb))
}

#[test]
fn a_restart_loses_under_a_second_of_pings_and_changes_no_interface() {
    if !net_admin() {
        return;
    }
    let mut p = setup("blk");
    let (ia, ib) = (p.a.link("eth0"), p.b.link("eth0"));
    for signal in ["KILL", "TERM"] {
        let (la, lb, gap) = one_restart(&mut p, signal);
        eprintln!("blackout after SIG{signal}: lost {la} a→b, {lb} b→a (10 ms apart), longest gap {gap:.0} ms");
        assert!(
            (la.max(lb) as f64) * INTERVAL_MS < 1000.0,
            "SIG{signal} and restart lost {la} / {lb} pings (10 ms each); log:\n{}",
            p.d.log()
        );
        assert_eq!(p.a.link("eth0"), ia, "container a's interface after SIG{signal} and restart");
        assert_eq!(p.b.link("eth0"), ib, "container b's interface after SIG{signal} and restart");
    }
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!("median {:.0} ms, min {:.0}, max {:.0}", v[v.len() / 2], v[0], v[v.len() - 1])
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn restart_blackout_measurement() {
    if !net_admin() {
        return;
    }
    let runs: usize = std::env::var("TAPYARD_BLACKOUT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut p = setup("blkm");
    let (ia, ib) = (p.a.link("eth0"), p.b.link("eth0"));
    for signal in ["KILL", "TERM"] {
        let (mut lost, mut gaps) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (la, lb, gap) = one_restart(&mut p, signal);
            lost.push(la.max(lb) as f64 * INTERVAL_MS);
            gaps.push(gap);
            assert_eq!((p.a.link("eth0"), p.b.link("eth0")), (ia.clone(), ib.clone()), "interfaces after SIG{signal}");
        }
        println!("SIG{signal} + restart, {runs} runs: pings lost × 10 ms (worse direction): {}", stats(&mut lost));
        println!("SIG{signal} + restart, {runs} runs: longest gap between replies: {}", stats(&mut gaps));
    }
}
