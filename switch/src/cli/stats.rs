//! `tapyard stats [--json] [--watch] [NETWORK]`: the daemon's `stats`
//! snapshot as tables with human units (or JSON), once or every second.
//!
//! `--watch` on a terminal redraws in place (cursor home, each line
//! cleared to its end, the rest of the screen cleared: no flicker); when
//! stdout is not a terminal it prints one block per second, separated by a
//! blank line (`--json --watch`: one JSON object per line). Ctrl-C (or
//! SIGTERM) ends it with status 0.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::Client;
use super::table::render as table;
use crate::control::proto::{RatesInfo, Request, StatsInfo};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Only this network: its ports, the network and its router (workers
    /// and the punt queue are always shown).
    pub network: Option<String>,
    /// Print JSON (the full snapshot) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until Ctrl-C (in place on a terminal).
    #[arg(long)]
    pub watch: bool,
}

/// How often `--watch` refreshes: the daemon's sample interval.
const REFRESH: Duration = Duration::from_secs(1);

pub fn run(args: StatsArgs, socket: &Path) -> anyhow::Result<i32> {
    let req = Request::Stats { network: args.network.clone() };
    let mut client = Client::connect(socket)?;
    if !args.watch {
        let s: StatsInfo = client.call(&req)?;
        if args.json {
            super::print_json(&s);
        } else {
            super::out(render(&s).trim_end_matches('\n'));
        }
        return Ok(0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let tty = std::io::stdout().is_terminal();
    while !stop.load(Ordering::Relaxed) {
        let s: StatsInfo = client.call(&req)?;
        if args.json {
            super::out(&serde_json::to_string(&s)?);
        } else if tty {
            // Home, then every line cleared to its end, then the rest of the screen.
            let title = format!("tapyard stats (every {} s; Ctrl-C to stop)\n\n", REFRESH.as_secs());
            let body: String = (title + &render(&s)).lines().map(|l| format!("{l}\x1b[K\n")).collect();
            super::out(&format!("\x1b[H{}\x1b[J", body.trim_end_matches('\n')));
        } else {
            super::out(&render(&s));
        }
        let next = Instant::now() + REFRESH;
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(0)
}

/// The snapshot as tables: ports, networks, routers, workers.
pub fn render(s: &StatsInfo) -> String {
    let mut out = String::new();
    let rates = |r: &RatesInfo| {
        (format!("{} {}", pps(r.rx_pps), bps(r.rx_bps)), format!("{} {}", pps(r.tx_pps), bps(r.tx_bps)))
    };
    let ports: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|p| {
            let (rx, tx) = rates(&p.rates);
            let c = &p.counters;
            let (ns, ifname) = match &p.vhost_socket {
                Some(sock) => ("vhost-user".to_string(), sock.clone()),
                None if p.uplink => ("(uplink)".to_string(), p.ifname.clone()),
                None => (p.netns.clone(), p.ifname.clone()),
            };
            vec![
                p.id.to_string(),
                p.network.clone(),
                ns,
                ifname,
                format!("{}/{}", c.rx_packets, bytes(c.rx_bytes)),
                format!("{}/{}", c.tx_packets, bytes(c.tx_bytes)),
                rx,
                tx,
                drops(&c.drops),
                c.fdb_entries.to_string(),
            ]
        })
        .collect();
    out += &table(
        &["PORT", "NETWORK", "NETNS", "IF", "RX PKTS/BYTES", "TX PKTS/BYTES", "RX RATE", "TX RATE", "DROPS", "FDB"],
        &ports,
    );
    out.push('\n');
    let nets: Vec<Vec<String>> = s
        .networks
        .iter()
        .map(|n| {
            let (rx, tx) = rates(&n.rates);
            vec![
                n.name.clone(),
                n.ports.to_string(),
                format!("{}/{}", n.rx_packets, bytes(n.rx_bytes)),
                format!("{}/{}", n.tx_packets, bytes(n.tx_bytes)),
                rx,
                tx,
                drops(&n.drops),
                format!("{}/{}", n.fdb_entries, n.fdb_capacity),
                n.leases.to_string(),
                n.router.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out += &table(
        &[
            "NETWORK",
            "PORTS",
            "RX PKTS/BYTES",
            "TX PKTS/BYTES",
            "RX RATE",
            "TX RATE",
            "DROPS",
            "FDB",
            "LEASES",
            "ROUTER",
        ],
        &nets,
    );
    if !s.routers.is_empty() {
        out.push('\n');
        let routers: Vec<Vec<String>> = s
            .routers
            .iter()
            .map(|r| {
                let get = |k: &str| r.counters.get(k).copied().unwrap_or(0).to_string();
                let others: Vec<String> = r
                    .counters
                    .iter()
                    .filter(|(k, v)| *k != "routed" && **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                vec![
                    r.name.clone(),
                    r.networks.join(","),
                    get("routed"),
                    pps(r.routed_pps),
                    if others.is_empty() { "0".into() } else { others.join(",") },
                ]
            })
            .collect();
        out += &table(&["ROUTER", "NETWORKS", "ROUTED", "RATE", "PUNTS/ERRORS"], &routers);
    }
    out.push('\n');
    let workers: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.index.to_string(),
                w.ports.to_string(),
                w.frames.to_string(),
                pps(w.frames_ps),
                format!("{:.1}%", w.busy_ppm as f64 / 10_000.0),
                w.bursts.to_string(),
                w.turns.to_string(),
                w.pending.to_string(),
            ]
        })
        .collect();
    out += &table(&["WORKER", "PORTS", "FRAMES", "RATE", "BUSY", "BURSTS", "TURNS", "PENDING"], &workers);
    out.push('\n');
    let interval =
        if s.interval_ms == 0 { "no rates yet".to_string() } else { format!("{:.2} s", s.interval_ms as f64 / 1000.0) };
    out += &format!(
        "punt queue {}/{}; rates over the last {interval}, sampled {:.1} s ago\n",
        s.punt_queue.depth,
        s.punt_queue.capacity,
        s.sample_age_ms as f64 / 1000.0
    );
    let c = &s.control_socket;
    let refused: Vec<String> =
        c.refused.by_reason().iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
    out += &format!(
        "control socket: {} connections of {}, {} requests; refused or closed: {}\n",
        c.connections,
        c.max_connections,
        c.requests,
        if refused.is_empty() { "none".to_string() } else { refused.join(",") }
    );
    out
}

/// Non-zero drops as `reason=n,...`, or `0`.
fn drops(d: &std::collections::BTreeMap<String, u64>) -> String {
    let v: Vec<String> = d.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
    if v.is_empty() {
        "0".into()
    } else {
        v.join(",")
    }
}

/// `n` with an SI prefix (k, M, G, T) and `unit`: three significant digits
/// from 1 k up, as is below.
fn si(n: u64, unit: &str) -> String {
    const PREFIXES: [&str; 5] = ["", "k", "M", "G", "T"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < PREFIXES.len() {
        v /= 1000.0;
        i += 1;
    }
    match i {
        0 => format!("{n} {unit}"),
        _ if v >= 100.0 => format!("{v:.0} {}{unit}", PREFIXES[i]),
        _ if v >= 10.0 => format!("{v:.1} {}{unit}", PREFIXES[i]),
        _ => format!("{v:.2} {}{unit}", PREFIXES[i]),
    }
}

/// Packets per second: `0 pps`, `950 pps`, `12.3 kpps`, `1.48 Mpps`.
pub fn pps(n: u64) -> String {
    si(n, "pps")
}

/// Bits per second: `0 bit/s`, `8.10 Mbit/s`, `9.41 Gbit/s`.
pub fn bps(n: u64) -> String {
    si(n, "bit/s")
}

/// Bytes, SI: `512 B`, `1.20 kB`, `3.4 GB`.
pub fn bytes(n: u64) -> String {
    si(n, "B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(pps(0), "0 pps");
        assert_eq!(pps(999), "999 pps");
        assert_eq!(pps(12_345), "12.3 kpps");
        assert_eq!(pps(1_480_000), "1.48 Mpps");
        assert_eq!(bps(8_100_000), "8.10 Mbit/s");
        assert_eq!(bps(941_000_000), "941 Mbit/s");
        assert_eq!(bytes(1_200), "1.20 kB");
        assert_eq!(bytes(u64::MAX), "18446744 TB");
    }

    #[test]
    fn tables_show_every_section() {
        let mut s = StatsInfo::default();
        s.ports.push(crate::control::proto::PortStatsInfo {
            id: 3,
            network: "front".into(),
            netns: "web".into(),
            ifname: "eth0".into(),
            rates: RatesInfo { rx_pps: 2000, rx_bps: 16_000_000, ..Default::default() },
            ..Default::default()
        });
        s.ports[0].counters.drops.insert("runt".into(), 2);
        s.workers.push(Default::default());
        let text = render(&s);
        for want in [
            "PORT",
            "NETWORK",
            "WORKER",
            "front",
            "web",
            "2.00 kpps 16.0 Mbit/s",
            "runt=2",
            "punt queue 0/0",
            "no rates yet",
            "control socket: 0 connections of 0, 0 requests; refused or closed: none",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
