//! `tapyard bench --dhcp`: DHCP over real frames, tapyard's gateway against
//! ISC's Kea, both driven by ISC's `perfdhcp` in one run (issue 16). The
//! runs interleave: each run measures both servers back to back (their
//! order alternating), so each run gives a ratio of its own on a noisy
//! machine.
//!
//! perfdhcp (Debian `kea-admin`) runs in a client namespace with
//! `perfdhcp -4 -l eth0 -r RATE -p DURATION -W 1000000 -R 60000 SERVER`: four-way
//! exchanges (DISCOVER-OFFER, REQUEST-ACK) from 60,000 simulated clients
//! (MAC addresses), the same 60,000 on both servers. Given the server's
//! address, perfdhcp acts as a relay agent: it sends from UDP port 67 with
//! its own address as `giaddr`, unicast to the server, one port carrying many
//! clients. `-W 1000000` waits 1 s (perfdhcp's drop time) after the period
//! for late replies, so that the exchanges in flight when sending stops are
//! not counted as lost.
//!
//! - tapyard: a daemon (`--uplink none`, in a namespace of its own) with the
//!   network `dh` (10.201.0.0/16, gateway 10.201.0.1, lease time 4000 s,
//!   egress none); the client namespace joins it with `connect dh NS --ip
//!   10.201.0.2/16 --port-security off --storm-limit 0`. A relay-like port
//!   carrying many clients needs both: port security keeps UDP source port 67
//!   for the gateway and would refuse the relay's frames, and storm control
//!   would cap the port's broadcasts at 2,000 a second. Every ACK leaves only
//!   after its lease is fsynced to the daemon's journal (in the run's work
//!   directory); OFFERs leave at once.
//! - Kea: kea-dhcp4 (Debian `kea-dhcp4-server`) with its own defaults (Kea
//!   2.2: single-threaded) in a server namespace joined to the client
//!   namespace by a veth pair (server 10.202.0.1/16, relay 10.202.0.2/16),
//!   UDP sockets (the traffic is relayed), a pool of 65,279 addresses,
//!   valid-lifetime 4000 s, the memfile lease database with `persist: true`
//!   (a CSV file in the work directory, `lfc-interval` 0: no cleanup process),
//!   its log at INFO but the `kea-dhcp4.leases` logger at WARN (at INFO it
//!   writes a line per lease; tapyard logs none).
//!   Kea appends each lease to the CSV file without an fsync per lease, so its
//!   ACKs do not wait for the disk.
//!
//! Each server, in each run, starts fresh (an empty lease database) and
//! climbs the rate ladder (`--dhcp-rates`, offered four-way exchanges per
//! second), `--duration` seconds a step, and stops after two steps in a row
//! whose completion is under 99 % (one alone can be a blip of the load
//! generator). The clients stay the same through the ladder,
//! so from the second step on most of them renew a lease they already hold,
//! on both servers alike. No flat-out step (perfdhcp without `-r`): perfdhcp
//! itself then takes the CPU the server needs on a 2-core machine.
//!
//! | key | measurement |
//! |---|---|
//! | step `achieved_per_s` | ACKs received / `--duration` (perfdhcp's own `Rate:`, which divides by the period plus the 1 s wait, is kept as `perfdhcp_rate`) |
//! | step `completion` | ACKs received / DISCOVERs sent |
//! | step `offer_delay_ms`, `ack_delay_ms` | perfdhcp's average DISCOVER-OFFER and REQUEST-ACK delay |
//! | step `client_rcvbuf_drops` | replies the client namespace's kernel dropped because perfdhcp's socket buffer was full (`RcvbufErrors`, /proc/net/snmp), over the step: the load generator's losses, not the server's |
//! | step `gateway` | tapyard only, over the step: the gateway's `dhcp_offer` and `dhcp_ack`, the network's `gateway_full` drops (frames the workers could not punt: the punt queue was full), and the punt queue's depth after the step |
//! | `sustained_dora_per_s` | per server: the highest `achieved_per_s` among steps with completion >= 99 % (0: none); median, min-max over the runs |
//! | `offer_delay_ms`, `ack_delay_ms` | per server: the delays at the highest offered rate both servers sustained in that run (the server's own highest without Kea); median over the runs |
//! | `ratio` | tapyard / Kea of the `sustained_dora_per_s` medians, min-max of the per-run ratios, `within_noise` when the two servers' min-max ranges overlap |
//!
//! Everything is in [`Lab`]s (namespaces tyd<PID>t... for tapyard,
//! tyd<PID>k... for Kea, one lab per server and run), removed on exit,
//! Ctrl-C and SIGTERM included; servers are waited for by conditions (the
//! daemon answering, Kea's `DHCP4_STARTED` log line, a ping through), never
//! by fixed times.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::align;
use super::runner::log_as;
use super::schema::{fixed, Machine, Stat};
use super::BenchArgs;
use crate::cli::labkit::{self, Lab, SetupError, Tapyard, TapyardMode};
use crate::control::proto::{NetworkCreate, Request};

const TY_NET: &str = "10.201.0.0/16";
const TY_GW: &str = "10.201.0.1";
const TY_RELAY: &str = "10.201.0.2/16";
const TY_NETWORK: &str = "dh";
const KEA_NET: &str = "10.202.0.0/16";
const KEA_SRV: &str = "10.202.0.1";
const KEA_RELAY: &str = "10.202.0.2/16";
const KEA_POOL: &str = "10.202.1.0 - 10.202.255.254";
/// Simulated clients (`perfdhcp -R`).
pub const CLIENTS: u32 = 60_000;
/// Lease time of both servers, seconds.
const LEASE_S: u32 = 4000;
/// The completion a step needs to count as sustained.
pub const SUSTAINED: f64 = 0.99;
/// How long perfdhcp waits for late replies after its period (`-W`, microseconds).
const EXIT_WAIT_US: u32 = 1_000_000;
pub const TAPYARD: &str = "tapyard";
pub const KEA: &str = "kea";

type Res<T> = Result<T, SetupError>;

fn log(msg: &str) {
    log_as("bench dhcp", msg);
}

// ------------------------------------------------------------------ perfdhcp's output

/// One exchange of perfdhcp's final report (`***Statistics for: ...***`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Exchange {
    pub sent: u64,
    pub received: u64,
    pub drops: u64,
    /// None when nothing was received (perfdhcp prints `n/a`).
    pub avg_delay_ms: Option<f64>,
    pub max_delay_ms: Option<f64>,
}

/// perfdhcp's final report, four-way exchanges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Perfdhcp {
    /// `Rate: X 4-way exchanges/second`.
    pub rate: f64,
    pub discover_offer: Exchange,
    pub request_ack: Exchange,
}

/// Reads perfdhcp's final report; an error when the rate or either exchange is missing.
pub fn parse_perfdhcp(text: &str) -> Result<Perfdhcp, String> {
    let mut rate = None;
    let mut ex = [Exchange::default(); 2];
    let mut seen = [false; 2];
    let mut cur: Option<usize> = None;
    for line in text.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("Rate:") {
            rate = r.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
            continue;
        }
        if let Some(name) = line.strip_prefix("***Statistics for: ") {
            cur = match name.trim_end_matches('*') {
                "DISCOVER-OFFER" => Some(0),
                "REQUEST-ACK" => Some(1),
                _ => None,
            };
            if let Some(i) = cur {
                seen[i] = true;
            }
            continue;
        }
        if line.starts_with("***") {
            cur = None;
            continue;
        }
        let (Some(i), Some((key, value))) = (cur, line.split_once(':')) else { continue };
        let first = value.split_whitespace().next().unwrap_or("");
        let count = || first.parse::<u64>().ok();
        // "n/a", "inf" and perfdhcp's odd "avg delay: min delay: n/a" are no delay.
        let ms = || first.parse::<f64>().ok().filter(|x| x.is_finite());
        let e = &mut ex[i];
        match key {
            "sent packets" => e.sent = count().ok_or_else(|| format!("bad line {line:?}"))?,
            "received packets" => e.received = count().ok_or_else(|| format!("bad line {line:?}"))?,
            "drops" => e.drops = count().ok_or_else(|| format!("bad line {line:?}"))?,
            "avg delay" => e.avg_delay_ms = e.avg_delay_ms.or_else(ms),
            "max delay" => e.max_delay_ms = e.max_delay_ms.or_else(ms),
            _ => {}
        }
    }
    let rate = rate.ok_or("no \"Rate:\" line in perfdhcp's output")?;
    if seen != [true, true] {
        return Err("perfdhcp's output lacks the DISCOVER-OFFER or REQUEST-ACK statistics".into());
    }
    Ok(Perfdhcp { rate, discover_offer: ex[0], request_ack: ex[1] })
}

// ------------------------------------------------------------------ results

/// tapyard's gateway over one step (`stats` before and after).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayStep {
    pub dhcp_offer: u64,
    pub dhcp_ack: u64,
    /// Frames the workers could not punt to the gateway: its queue was full.
    pub gateway_full: u64,
    /// The punt queue after the step, and what it holds at most.
    pub punt_queue_depth: u64,
    pub punt_queue_capacity: u64,
}

/// One step of the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub offered_per_s: u32,
    /// ACKs received / the step's seconds.
    pub achieved_per_s: f64,
    /// perfdhcp's `Rate:` (over the period and the 1 s wait).
    pub perfdhcp_rate: f64,
    /// ACKs received / DISCOVERs sent.
    pub completion: f64,
    pub discovers_sent: u64,
    pub offers_received: u64,
    pub requests_sent: u64,
    pub acks_received: u64,
    pub offer_delay_ms: Option<f64>,
    pub ack_delay_ms: Option<f64>,
    pub offer_max_delay_ms: Option<f64>,
    pub ack_max_delay_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStep>,
    /// Replies the client's kernel dropped because perfdhcp's socket buffer
    /// was full (`RcvbufErrors` of /proc/net/snmp's Udp line in the client
    /// namespace, over the step): losses that are the load generator's, not
    /// the server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_rcvbuf_drops: Option<u64>,
}

impl Step {
    pub fn of(offered_per_s: u32, seconds: u32, p: &Perfdhcp) -> Step {
        let (d, a) = (&p.discover_offer, &p.request_ack);
        Step {
            offered_per_s,
            achieved_per_s: r1(a.received as f64 / f64::from(seconds.max(1))),
            perfdhcp_rate: r1(p.rate),
            completion: if d.sent == 0 { 0.0 } else { (a.received as f64 / d.sent as f64 * 1e4).round() / 1e4 },
            discovers_sent: d.sent,
            offers_received: d.received,
            requests_sent: a.sent,
            acks_received: a.received,
            offer_delay_ms: d.avg_delay_ms,
            ack_delay_ms: a.avg_delay_ms,
            offer_max_delay_ms: d.max_delay_ms,
            ack_max_delay_ms: a.max_delay_ms,
            gateway: None,
            client_rcvbuf_drops: None,
        }
    }

    pub fn sustained(&self) -> bool {
        self.completion >= SUSTAINED
    }
}

/// `RcvbufErrors` from the text of /proc/net/snmp (a `Udp:` line of names,
/// then one of values).
fn udp_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One server's climb in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Climb {
    pub server: String,
    pub run: u32,
    pub steps: Vec<Step>,
    /// Why the climb ended early, if it did not end by a step under 99 % or at the top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The highest achieved rate among the steps with completion >= 99 %; 0 when none was.
pub fn sustained(steps: &[Step]) -> f64 {
    steps.iter().filter(|s| s.sustained()).map(|s| s.achieved_per_s).fold(0.0, f64::max)
}

/// The highest offered rate with completion >= 99 % in each of `climbs`.
pub fn common_rate(climbs: &[&[Step]]) -> Option<u32> {
    let first = climbs.first()?;
    first
        .iter()
        .filter(|s| s.sustained())
        .map(|s| s.offered_per_s)
        .filter(|&r| climbs.iter().all(|c| c.iter().any(|s| s.offered_per_s == r && s.sustained())))
        .max()
}

/// Whether the climb stops after `steps`: the last two were not sustained.
/// One failed step does not end it: a blip of the load generator (perfdhcp
/// descheduled while its socket buffer fills) fails a step now and then at
/// rates the server sustains above and below it, on either server.
pub fn stops(steps: &[Step]) -> bool {
    steps.len() >= 2 && steps[steps.len() - 2..].iter().all(|s| !s.sustained())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFigures {
    pub sustained_dora_per_s: Option<Stat>,
    pub offer_delay_ms: Option<Stat>,
    pub ack_delay_ms: Option<Stat>,
    /// Runs in which every step of the ladder was sustained: the server may
    /// go higher, and its figure is a lower bound.
    pub topped_ladder_runs: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// tapyard / Kea of the `sustained_dora_per_s` medians.
    pub sustained: Option<f64>,
    /// min-max of the per-run ratios.
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The two servers' min-max ranges overlap: the ratio is within noise.
    pub within_noise: bool,
}

/// A server's state in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerState {
    /// ok, skipped or failed.
    pub status: String,
    /// How it was set up, or why it was skipped or failed.
    pub setup: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhcpConfig {
    pub duration_s: u32,
    pub runs: u32,
    pub rates_per_s: Vec<u32>,
    pub clients: u32,
    pub sustained_completion: f64,
    pub perfdhcp: String,
    pub perfdhcp_args: String,
    pub kea: String,
    pub tapyard_subnet: String,
    pub kea_subnet: String,
    pub kea_pool: String,
    pub lease_s: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhcpResults {
    pub tool: String,
    pub schema_version: u32,
    pub machine: Machine,
    pub config: DhcpConfig,
    pub errors: u32,
    pub servers: BTreeMap<String, ServerState>,
    pub figures: BTreeMap<String, ServerFigures>,
    pub ratio: Ratio,
    /// Per run: the offered rate the delays were read at (null: none sustained).
    pub delay_rates_per_s: Vec<Option<u32>>,
    pub climbs: Vec<Climb>,
}

/// The figures of the climbs (`runs` runs, a ladder of `rungs` rates): per
/// server, per run, and the ratio tapyard / Kea; the offered rate the delays
/// were read at, per run.
pub fn compute(
    climbs: &[Climb],
    runs: u32,
    rungs: usize,
) -> (BTreeMap<String, ServerFigures>, Ratio, Vec<Option<u32>>) {
    let find = |server: &str, r: u32| climbs.iter().find(|c| c.server == server && c.run == r && !c.steps.is_empty());
    let mut sus: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
    let mut offer: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut ack: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut topped: BTreeMap<&str, u32> = BTreeMap::new();
    let mut delay_rates = vec![];
    for r in 1..=runs {
        let present: Vec<&Climb> = [TAPYARD, KEA].iter().filter_map(|s| find(s, r)).collect();
        let steps: Vec<&[Step]> = present.iter().map(|c| c.steps.as_slice()).collect();
        let at = common_rate(&steps);
        delay_rates.push(at);
        for c in &present {
            let name = if c.server == TAPYARD { TAPYARD } else { KEA };
            sus.entry(name).or_default().push((r, sustained(&c.steps)));
            if c.steps.len() >= rungs && c.steps.iter().all(Step::sustained) {
                *topped.entry(name).or_default() += 1;
            }
            if let Some(s) = at.and_then(|at| c.steps.iter().find(|s| s.offered_per_s == at)) {
                offer.entry(name).or_default().extend(s.offer_delay_ms);
                ack.entry(name).or_default().extend(s.ack_delay_ms);
            }
        }
    }
    let values = |v: &[(u32, f64)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    let mut figures = BTreeMap::new();
    for name in [TAPYARD, KEA] {
        let Some(s) = sus.get(name) else { continue };
        figures.insert(
            name.to_string(),
            ServerFigures {
                sustained_dora_per_s: Stat::of(&values(s)),
                offer_delay_ms: offer.get(name).and_then(|v| Stat::of(v)),
                ack_delay_ms: ack.get(name).and_then(|v| Stat::of(v)),
                topped_ladder_runs: topped.get(name).copied().unwrap_or(0),
            },
        );
    }
    let stat = |n: &str| figures.get(n).and_then(|f: &ServerFigures| f.sustained_dora_per_s.clone());
    let mut ratio = Ratio::default();
    if let (Some(t), Some(k)) = (stat(TAPYARD), stat(KEA)) {
        if k.median > 0.0 {
            ratio.sustained = Some(r2(t.median / k.median));
        }
        let per_run: Vec<f64> = sus[TAPYARD]
            .iter()
            .filter_map(|(r, tv)| sus[KEA].iter().find(|(kr, kv)| kr == r && *kv > 0.0).map(|(_, kv)| tv / kv))
            .collect();
        ratio.min = per_run.iter().copied().reduce(f64::min).map(r2);
        ratio.max = per_run.iter().copied().reduce(f64::max).map(r2);
        ratio.within_noise = t.overlaps(&k);
    }
    (figures, ratio, delay_rates)
}

/// The figures and every run's ladder, as Markdown tables.
pub fn table(r: &DhcpResults) -> String {
    let spread = |s: &Option<Stat>, d: usize| match s {
        None => "-".to_string(),
        Some(s) if s.runs.len() == 1 => fixed(s.median, d),
        Some(s) => format!("{} [{}-{}]", fixed(s.median, d), fixed(s.min, d), fixed(s.max, d)),
    };
    let state = |n: &str| r.servers.get(n).filter(|s| s.status != "ok").map(|s| s.status.clone());
    let cell = |n: &str, f: &dyn Fn(&ServerFigures) -> String| {
        state(n).unwrap_or_else(|| r.figures.get(n).map(f).unwrap_or_else(|| "-".into()))
    };
    let mut rates: Vec<u32> = r.delay_rates_per_s.iter().flatten().copied().collect();
    rates.sort_unstable();
    rates.dedup();
    let at = match rates.as_slice() {
        [] => "none sustained".to_string(),
        [one] => format!("{one}/s"),
        many => format!("{}-{}/s", many[0], many[many.len() - 1]),
    };
    let both = if r.servers.get(KEA).is_some_and(|s| s.status == "ok") { "both sustained" } else { "sustained" };
    let ratio = match r.ratio.sustained {
        Some(x) => {
            let o = |v: Option<f64>| v.map_or("-".to_string(), |v| fixed(v, 2));
            let noise = if r.ratio.within_noise { " ~ (within noise)" } else { "" };
            format!("{}x [{}-{}]{noise}", fixed(x, 2), o(r.ratio.min), o(r.ratio.max))
        }
        None => "-".into(),
    };
    let topped = |n: &str| match r.figures.get(n) {
        Some(f) if f.topped_ladder_runs > 0 => " (top of the ladder)",
        _ => "",
    };
    let mut rows = vec![
        vec!["figure".to_string(), "tapyard".into(), "Kea".into(), "tapyard / Kea [per-run]".into()],
        vec![String::new(); 4],
        vec![
            "sustained DORA/s (completion >= 99 %)".into(),
            cell(TAPYARD, &|f| format!("{}{}", spread(&f.sustained_dora_per_s, 0), topped(TAPYARD))),
            cell(KEA, &|f| format!("{}{}", spread(&f.sustained_dora_per_s, 0), topped(KEA))),
            ratio,
        ],
        vec![
            format!("OFFER delay ms, at {at} ({both})"),
            cell(TAPYARD, &|f| spread(&f.offer_delay_ms, 1)),
            cell(KEA, &|f| spread(&f.offer_delay_ms, 1)),
            "-".into(),
        ],
        vec![
            format!("ACK delay ms, at {at} ({both})"),
            cell(TAPYARD, &|f| spread(&f.ack_delay_ms, 1)),
            cell(KEA, &|f| spread(&f.ack_delay_ms, 1)),
            "-".into(),
        ],
    ];
    for (n, s) in &r.servers {
        if s.status != "ok" {
            rows.push(vec![format!("{n}: {}", s.status), s.setup.clone()]);
        }
    }
    let mut out = align(&rows);
    out +=
        "\nThe ladder (achieved DORA/s, completion %, average OFFER and ACK delay ms; tapyard's gateway_full drops; \
            replies dropped at the client's full socket buffer, the load generator's losses):\n\n";
    let mut rows = vec![
        [
            "run",
            "offered/s",
            "tapyard/s",
            "compl %",
            "OFFER ms",
            "ACK ms",
            "gw_full",
            "client drops",
            "Kea/s",
            "compl %",
            "OFFER ms",
            "ACK ms",
            "client drops",
        ]
        .map(String::from)
        .to_vec(),
        vec![String::new(); 13],
    ];
    let mut errors = vec![];
    let runs = r.climbs.iter().map(|c| c.run).max().unwrap_or(0);
    for run in 1..=runs {
        let climb = |n: &str| r.climbs.iter().find(|c| c.server == n && c.run == run);
        let mut offered: Vec<u32> =
            r.climbs.iter().filter(|c| c.run == run).flat_map(|c| c.steps.iter().map(|s| s.offered_per_s)).collect();
        offered.sort_unstable();
        offered.dedup();
        for rate in offered {
            let mut row = vec![run.to_string(), rate.to_string()];
            for n in [TAPYARD, KEA] {
                let step = climb(n).and_then(|c| c.steps.iter().find(|s| s.offered_per_s == rate));
                let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| fixed(v, 1));
                match step {
                    Some(s) => {
                        row.push(fixed(s.achieved_per_s, 0));
                        row.push(fixed(s.completion * 100.0, 1));
                        row.push(ms(s.offer_delay_ms));
                        row.push(ms(s.ack_delay_ms));
                        if n == TAPYARD {
                            row.push(s.gateway.map_or("-".to_string(), |g| g.gateway_full.to_string()));
                        }
                        row.push(s.client_rcvbuf_drops.map_or("-".to_string(), |d| d.to_string()));
                    }
                    None => row.extend(std::iter::repeat_n("-".to_string(), if n == TAPYARD { 6 } else { 5 })),
                }
            }
            rows.push(row);
        }
        for n in [TAPYARD, KEA] {
            if let Some(e) = climb(n).and_then(|c| c.error.as_ref()) {
                errors.push(format!("run {run}, {n}: {e}"));
            }
        }
    }
    out += &align(&rows);
    for e in errors {
        let _ = writeln!(out, "{e}");
    }
    out
}

// ------------------------------------------------------------------ the servers

struct Dh {
    exe: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    prefix: String,
    dur: u32,
    rates: Vec<u32>,
}

/// One server up for one run: its lab, the client namespace perfdhcp runs
/// in, the server's address, and tapyard's daemon.
struct Rig {
    lab: Lab,
    client: String,
    server_ip: &'static str,
    daemon: Option<Tapyard>,
    /// Kea's log file (copied into logs/ when the run is over).
    kea_log: Option<PathBuf>,
}

/// `ping -c 1 -W 1 IP` in `ns` answered.
fn pings(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// kea-dhcp4's configuration: `iface` in the server namespace, UDP sockets,
/// the memfile database persisted to `leases`, its log to `log`.
fn kea_config(iface: &str, leases: &Path, log: &Path) -> serde_json::Value {
    serde_json::json!({
        "Dhcp4": {
            "interfaces-config": { "interfaces": [iface], "dhcp-socket-type": "udp" },
            "lease-database": {
                "type": "memfile",
                "persist": true,
                "name": leases.to_string_lossy(),
                "lfc-interval": 0
            },
            "valid-lifetime": LEASE_S,
            "subnet4": [{ "subnet": KEA_NET, "pools": [{ "pool": KEA_POOL }] }],
            // INFO for the startup lines (DHCP4_STARTED); the leases logger,
            // which writes a line per lease at INFO, at WARN: a log line per
            // exchange would slow Kea down, and tapyard logs none.
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "output_options": [{ "output": log.to_string_lossy() }],
                    "severity": "INFO"
                },
                {
                    "name": "kea-dhcp4.leases",
                    "output_options": [{ "output": log.to_string_lossy() }],
                    "severity": "WARN"
                }
            ]
        }
    })
}

/// A counter of tapyard's `stats` for the network `dh`: a gateway counter, or a drop reason.
fn counter(stats: &serde_json::Value, group: &str, key: &str) -> u64 {
    stats["networks"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == TY_NETWORK))
        .and_then(|n| n[group][key].as_u64())
        .unwrap_or(0)
}

impl Dh {
    fn lab(&self, server: &str, r: u32) -> Res<Lab> {
        let letter = if server == TAPYARD { "t" } else { "k" };
        Lab::new(
            &format!("{}{letter}", self.prefix),
            &self.work.join(format!("run-{server}-{r}")),
            &self.logs.join(format!("{server}.{r}.setup.log")),
            None,
        )
    }

    fn setup_tapyard(&self, r: u32) -> Res<Rig> {
        let mut lab = self.lab(TAPYARD, r)?;
        let (d, c) = (lab.name("d"), lab.name("c"));
        lab.add_netns(&d)?;
        lab.add_netns(&c)?;
        let ty = Tapyard {
            exe: self.exe.clone(),
            mode: TapyardMode::Switched,
            workers: None,
            daemon_log: self.logs.join(format!("tapyard.{r}.daemon.log")),
            netns: Some(d),
            uplink: false,
        };
        ty.start(&mut lab, &[])?;
        ty.call(
            &lab,
            &Request::NetworkCreate(NetworkCreate {
                name: TY_NETWORK.into(),
                subnet: Some(TY_NET.into()),
                lease_secs: Some(LEASE_S),
                egress: Some("none".into()),
                ..Default::default()
            }),
        )?;
        ty.call(
            &lab,
            &Request::Connect {
                network: TY_NETWORK.into(),
                netns: c.clone(),
                ifname: Some("eth0".into()),
                mac: None,
                ip: Some(TY_RELAY.into()),
                offload: None,
                publish: vec![],
                owner: None,
                port_security: Some(false),
                storm_limit: Some(0),
                kind: None,
            },
        )?;
        if !lab.wait_for(Duration::from_secs(10), Duration::from_millis(100), || pings(&c, TY_GW))? {
            return Err(SetupError::Fail(format!("the client namespace cannot ping the gateway {TY_GW}")));
        }
        Ok(Rig { lab, client: c, server_ip: TY_GW, daemon: Some(ty), kea_log: None })
    }

    fn setup_kea(&self, r: u32) -> Res<Rig> {
        let mut lab = self.lab(KEA, r)?;
        let (s, c) = (lab.name("s"), lab.name("c"));
        lab.add_netns(&s)?;
        lab.add_netns(&c)?;
        lab.ip(&["-n", &s, "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", &c])?;
        lab.addr_up(&s, "srv0", &format!("{KEA_SRV}/16"))?;
        lab.addr_up(&c, "eth0", KEA_RELAY)?;
        let dir = lab.dir().to_path_buf();
        let (conf, log) = (dir.join("kea-dhcp4.json"), dir.join("kea-dhcp4.log"));
        let text = serde_json::to_string_pretty(&kea_config("srv0", &dir.join("leases4.csv"), &log))
            .map_err(|e| SetupError::Fail(e.to_string()))?;
        fs::write(&conf, text).map_err(|e| SetupError::Fail(format!("{}: {e}", conf.display())))?;
        let mut cmd = lab.in_ns(&s, "kea-dhcp4", true);
        cmd.arg("-c").arg(&conf).env("KEA_PIDFILE_DIR", &dir).env("KEA_LOCKFILE_DIR", &dir);
        let pid = lab.spawn(&mut cmd, &self.logs.join(format!("kea.{r}.stdout.log")), "kea-dhcp4")?;
        let mut gone = false;
        let started = lab.wait_for(Duration::from_secs(15), Duration::from_millis(50), || {
            gone = !labkit::alive(pid);
            gone || fs::read_to_string(&log).is_ok_and(|l| l.contains("DHCP4_STARTED"))
        })?;
        let _ = fs::copy(&log, self.logs.join(format!("kea.{r}.log")));
        if gone || !started {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let why = text.lines().rev().find(|l| l.contains("ERROR") || l.contains("FATAL")).unwrap_or("no message");
            let what = if gone { "exited" } else { "did not log DHCP4_STARTED within 15 s" };
            return Err(SetupError::Fail(format!("kea-dhcp4 {what}: {why}")));
        }
        if !lab.wait_for(Duration::from_secs(10), Duration::from_millis(100), || pings(&c, KEA_SRV))? {
            return Err(SetupError::Fail(format!("the client namespace cannot ping Kea at {KEA_SRV}")));
        }
        Ok(Rig { lab, client: c, server_ip: KEA_SRV, daemon: None, kea_log: Some(log) })
    }

    /// tapyard's stats for the network, or Null.
    fn stats(rig: &Rig) -> serde_json::Value {
        rig.daemon
            .as_ref()
            .and_then(|ty| ty.call(&rig.lab, &Request::Stats { network: Some(TY_NETWORK.into()) }).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `RcvbufErrors` of the client namespace's UDP statistics.
    fn rcvbuf_errors(rig: &Rig) -> Option<u64> {
        let text = rig.lab.run(rig.lab.in_ns(&rig.client, "cat", false).arg("/proc/net/snmp")).ok()?;
        udp_rcvbuf_errors(&text)
    }

    /// One step: perfdhcp at `rate` for the step's seconds.
    fn step(&self, rig: &Rig, server: &str, r: u32, rate: u32) -> Res<Result<Step, String>> {
        let out = self.logs.join(format!("{server}.{r}.{rate}.perfdhcp.txt"));
        let before = Self::stats(rig);
        let rcvbuf_before = Self::rcvbuf_errors(rig);
        let (rate_s, period, wait) = (rate.to_string(), self.dur.to_string(), EXIT_WAIT_US.to_string());
        let clients = CLIENTS.to_string();
        let text = super::runner::fg_in(
            &rig.lab,
            &rig.client,
            &out,
            Duration::from_secs(u64::from(self.dur) + 30),
            "perfdhcp",
            &["-4", "-l", "eth0", "-r", &rate_s, "-p", &period, "-W", &wait, "-R", &clients, rig.server_ip],
        )?;
        let p = match parse_perfdhcp(&text) {
            Ok(p) => p,
            Err(e) => {
                let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
                return Ok(Err(format!("perfdhcp at {rate}/s: {e} (its last line: {last})")));
            }
        };
        let mut step = Step::of(rate, self.dur, &p);
        step.client_rcvbuf_drops = rcvbuf_before.zip(Self::rcvbuf_errors(rig)).map(|(b, a)| a.saturating_sub(b));
        if rig.daemon.is_some() {
            let after = Self::stats(rig);
            let delta = |g: &str, k: &str| counter(&after, g, k).saturating_sub(counter(&before, g, k));
            step.gateway = Some(GatewayStep {
                dhcp_offer: delta("gateway_counters", "dhcp_offer"),
                dhcp_ack: delta("gateway_counters", "dhcp_ack"),
                gateway_full: delta("drops", "gateway_full"),
                punt_queue_depth: after["punt_queue"]["depth"].as_u64().unwrap_or(0),
                punt_queue_capacity: after["punt_queue"]["capacity"].as_u64().unwrap_or(0),
            });
        }
        Ok(Ok(step))
    }

    /// A server's climb in run `r`: set up, the ladder, torn down.
    fn climb(&self, server: &str, r: u32) -> Res<Climb> {
        log(&format!("run {r}: setting up {server}"));
        let rig = if server == TAPYARD { self.setup_tapyard(r)? } else { self.setup_kea(r)? };
        let mut climb = Climb { server: server.into(), run: r, steps: vec![], error: None };
        for &rate in &self.rates {
            match self.step(&rig, server, r, rate)? {
                Ok(s) => {
                    let gw = s.gateway.map_or(String::new(), |g| {
                        format!(
                            ", gateway_full {}, punt queue {}/{}",
                            g.gateway_full, g.punt_queue_depth, g.punt_queue_capacity
                        )
                    });
                    log(&format!(
                        "  run {r} {server} {rate}/s: {:.0} DORA/s, completion {:.1} %, OFFER {} ms, ACK {} ms{gw}",
                        s.achieved_per_s,
                        s.completion * 100.0,
                        s.offer_delay_ms.map_or("-".into(), |v| fixed(v, 1)),
                        s.ack_delay_ms.map_or("-".into(), |v| fixed(v, 1)),
                    ));
                    climb.steps.push(s);
                    if stops(&climb.steps) {
                        break;
                    }
                }
                Err(e) => {
                    log(&format!("  run {r} {server}: {e}"));
                    climb.error = Some(e);
                    break;
                }
            }
        }
        if let Some(l) = &rig.kea_log {
            let _ = fs::copy(l, self.logs.join(format!("kea.{r}.log")));
        }
        if let Some(ty) = &rig.daemon {
            if let Ok(v) = ty.call(&rig.lab, &Request::Stats { network: Some(TY_NETWORK.into()) }) {
                let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                let _ = fs::write(self.logs.join(format!("tapyard.{r}.stats.json")), text);
            }
        }
        Ok(climb)
    }
}

/// A server that failed in some runs keeps the figures of the others (the
/// ladder's notes say which runs failed); one that never climbed a step has
/// failed, for the first reason it gave.
fn settle(servers: &mut BTreeMap<String, ServerState>, climbs: &[Climb]) {
    for (name, s) in servers.iter_mut().filter(|(_, s)| s.status == "ok") {
        let mine = || climbs.iter().filter(|c| &c.server == name);
        if !mine().any(|c| !c.steps.is_empty()) {
            let why = mine().find_map(|c| c.error.clone()).unwrap_or_else(|| "not measured".into());
            *s = ServerState { status: "failed".into(), setup: why };
        }
    }
}

/// The version perfdhcp or kea-dhcp4 reports with `-v`.
fn version(prog: &str) -> String {
    let v = super::runner::first_line(prog, &["-v"]);
    let v = v.trim().trim_start_matches("VERSION:").trim();
    if v.is_empty() {
        "unknown".into()
    } else {
        v.into()
    }
}

/// Runs the DHCP benchmark; the exit status (0: no errors).
pub fn run(args: &BenchArgs) -> anyhow::Result<i32> {
    let die = |m: &str| {
        eprintln!("tapyard bench --dhcp: {m}");
        Ok(1)
    };
    if !super::runner::is_root() {
        return die("needs root: it creates network namespaces and veth pairs");
    }
    let missing: Vec<&str> = ["ip", "ping"].into_iter().filter(|t| !labkit::have(t)).collect();
    if !missing.is_empty() {
        return die(&format!("missing tools: {} (Debian: iproute2 iputils-ping)", missing.join(" ")));
    }
    if !labkit::have("perfdhcp") {
        return die("perfdhcp not found (Debian package kea-admin; scripts/setup.sh --bench installs it)");
    }
    let kea_missing = (!labkit::have("kea-dhcp4"))
        .then_some("kea-dhcp4 not found (Debian package kea-dhcp4-server; scripts/setup.sh --bench installs it)");
    labkit::install_interrupt_flag()?;
    let work = super::runner::work_dir()?;
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    let exe = std::env::current_exe()?;
    let machine = super::runner::machine(&exe, true);
    let mut rates = args.dhcp_rates.clone();
    rates.sort_unstable();
    rates.dedup();
    let dh = Dh {
        exe,
        work: work.clone(),
        logs: logs.clone(),
        prefix: format!("tyd{}", std::process::id()),
        dur: args.duration,
        rates: rates.clone(),
    };
    let finish = |code: i32| {
        if args.keep {
            log(&format!("work directory kept: {}", work.display()));
        } else {
            let _ = fs::remove_dir_all(&work);
        }
        Ok(code)
    };
    log(&format!(
        "machine: {} CPUs, kernel {}; {} run{} of a ladder of {} rates x {} s",
        machine.nproc,
        machine.kernel,
        args.runs,
        if args.runs == 1 { "" } else { "s" },
        rates.len(),
        args.duration
    ));
    let mut servers: BTreeMap<String, ServerState> = BTreeMap::new();
    let ty_setup = format!(
        "tapyard daemon (--uplink none), network {TY_NETWORK} {TY_NET} (gateway {TY_GW}, lease {LEASE_S} s), perfdhcp's namespace connected with --ip {TY_RELAY} --port-security off --storm-limit 0"
    );
    let kea_setup = format!(
        "kea-dhcp4 {} (its defaults: single-threaded), veth to perfdhcp's namespace ({KEA_SRV}/16, relay {KEA_RELAY}), UDP sockets, memfile persist=true, pool {KEA_POOL}, valid-lifetime {LEASE_S} s",
        version("kea-dhcp4")
    );
    servers.insert(TAPYARD.into(), ServerState { status: "ok".into(), setup: ty_setup });
    match kea_missing {
        Some(why) => {
            log(&format!("Kea skipped: {why}; measuring tapyard alone"));
            servers.insert(KEA.into(), ServerState { status: "skipped".into(), setup: why.into() });
        }
        None => {
            servers.insert(KEA.into(), ServerState { status: "ok".into(), setup: kea_setup });
        }
    }
    let mut errors = 0;
    let mut climbs = vec![];
    for r in 1..=args.runs {
        // alternate which server goes first, so neither always runs on a warmer (or busier) machine
        let order = if r % 2 == 1 { [TAPYARD, KEA] } else { [KEA, TAPYARD] };
        for server in order {
            if servers[server].status == "skipped" {
                continue;
            }
            match dh.climb(server, r) {
                Ok(c) => {
                    if c.error.is_some() {
                        errors += 1;
                    }
                    climbs.push(c);
                }
                Err(SetupError::Interrupted) => return finish(130),
                Err(e) => {
                    log(&format!("  run {r}: {server} failed: {e}"));
                    errors += 1;
                    climbs.push(Climb { server: server.into(), run: r, steps: vec![], error: Some(e.to_string()) });
                }
            }
        }
    }
    settle(&mut servers, &climbs);
    let (figures, ratio, delay_rates_per_s) = compute(&climbs, args.runs, rates.len());
    let results = DhcpResults {
        tool: "tapyard bench --dhcp".into(),
        schema_version: 1,
        machine,
        config: DhcpConfig {
            duration_s: args.duration,
            runs: args.runs,
            rates_per_s: rates,
            clients: CLIENTS,
            sustained_completion: SUSTAINED,
            perfdhcp: version("perfdhcp"),
            perfdhcp_args: format!("-4 -l eth0 -r RATE -p {} -W {EXIT_WAIT_US} -R {CLIENTS} SERVER", args.duration),
            kea: if kea_missing.is_some() { "not installed".into() } else { version("kea-dhcp4") },
            tapyard_subnet: TY_NET.into(),
            kea_subnet: KEA_NET.into(),
            kea_pool: KEA_POOL.into(),
            lease_s: LEASE_S,
        },
        errors,
        servers,
        figures,
        ratio,
        delay_rates_per_s,
        climbs,
    };
    let md = || {
        let m = &results.machine;
        let mut md = format!("# tapyard bench --dhcp, {}\n\n", m.date);
        let _ = writeln!(md, "{} CPUs ({}), kernel {}, tapyard {};", m.nproc, m.cpu, m.kernel, m.tapyard_rev);
        let _ = writeln!(
            md,
            "perfdhcp {} `{}`, {} run{}, each server climbing {} s a step until completion drops under 99 %;",
            results.config.perfdhcp,
            results.config.perfdhcp_args,
            args.runs,
            if args.runs == 1 { "" } else { "s" },
            args.duration
        );
        md += "medians [min-max over the runs]; the ratio of the medians [min-max of the per-run ratios].\n\n";
        md += &table(&results);
        md += "\nServers:\n\n";
        for (name, s) in &results.servers {
            let _ = writeln!(md, "- {name} ({}): {}", s.status, s.setup);
        }
        let _ = writeln!(md, "\nErrors: {}. perfdhcp's output, setup logs, Kea's log, tapyard's stats: logs/.", errors);
        md
    };
    super::report::write_and_print(args, &results, &logs, "bench dhcp", md, table)?;
    finish(if errors == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfdhcp_output_with_drops() {
        let p = parse_perfdhcp(include_str!("testdata/perfdhcp-kea-4000.txt")).unwrap();
        assert_eq!(p.rate, 1803.7);
        let (d, a) = (p.discover_offer, p.request_ack);
        assert_eq!((d.sent, d.received, d.drops), (11995, 7632, 4363));
        assert_eq!((a.sent, a.received, a.drops), (7632, 7220, 412));
        assert_eq!((d.avg_delay_ms, d.max_delay_ms), (Some(26.894), Some(757.693)));
        assert_eq!((a.avg_delay_ms, a.max_delay_ms), (Some(19.062), Some(742.611)));
        let s = Step::of(4000, 3, &p);
        assert_eq!(s.achieved_per_s, 2406.7); // 7220 ACKs in 3 s
        assert_eq!(s.completion, 0.6019); // 7220 / 11995
        assert!(!s.sustained() && !stops(std::slice::from_ref(&s)));
        assert!(stops(&[s.clone(), s]), "two failed steps in a row end the climb");
    }

    #[test]
    fn client_socket_buffer_drops_from_proc_net_snmp() {
        let snmp = "Icmp: InMsgs InErrors\nIcmp: 3 0\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    Udp: 116042 0 2276 118320 2276 0 0 0 0\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
                    UdpLite: 0 0 0 0 7 0 0 0 0\n";
        assert_eq!(udp_rcvbuf_errors(snmp), Some(2276));
        assert_eq!(udp_rcvbuf_errors("Udp: InDatagrams\nUdp: 5\n"), None);
        assert_eq!(udp_rcvbuf_errors("Udp: RcvbufErrors\n"), None);
    }

    #[test]
    fn perfdhcp_output_without_replies() {
        let p = parse_perfdhcp(include_str!("testdata/perfdhcp-no-reply.txt")).unwrap();
        assert_eq!(p.rate, 0.0);
        assert_eq!((p.discover_offer.received, p.discover_offer.drops), (0, 99));
        assert_eq!(p.discover_offer.avg_delay_ms, None, "n/a and inf are no delay");
        assert_eq!(p.request_ack, Exchange::default());
        assert_eq!(Step::of(100, 1, &p).completion, 0.0);
        assert!(parse_perfdhcp("Error: could not open socket").is_err());
        let cut =
            include_str!("testdata/perfdhcp-kea-4000.txt").split("***Statistics for: REQUEST-ACK").next().unwrap();
        assert!(parse_perfdhcp(cut).is_err(), "both exchanges are needed");
    }

    fn step(offered: u32, achieved: f64, completion: f64, delay: f64) -> Step {
        Step {
            offered_per_s: offered,
            achieved_per_s: achieved,
            perfdhcp_rate: achieved,
            completion,
            discovers_sent: 0,
            offers_received: 0,
            requests_sent: 0,
            acks_received: 0,
            offer_delay_ms: Some(delay),
            ack_delay_ms: Some(delay * 2.0),
            offer_max_delay_ms: None,
            ack_max_delay_ms: None,
            gateway: None,
            client_rcvbuf_drops: None,
        }
    }

    #[test]
    fn the_highest_sustained_step_counts() {
        let ladder = [step(1000, 999.0, 1.0, 1.0), step(2000, 1990.0, 0.995, 2.0), step(4000, 3500.0, 0.9, 9.0)];
        // 4000/s achieved more, but completed under 99 %
        assert_eq!(sustained(&ladder), 1990.0);
        assert_eq!(sustained(&ladder[2..]), 0.0, "nothing sustained");
        assert_eq!(sustained(&[]), 0.0);
        // exactly 99 % is sustained; a sustained step may achieve less than a lower one
        let odd = [step(1000, 1000.0, 1.0, 1.0), step(2000, 980.0, 0.99, 1.0)];
        assert_eq!(sustained(&odd), 1000.0);
        assert!(!stops(&odd));
        assert!(!stops(&ladder), "one failed step does not end a climb");
        let kea = [step(1000, 1000.0, 1.0, 0.5), step(2000, 2000.0, 0.98, 0.5)];
        assert_eq!(common_rate(&[&ladder, &kea]), Some(1000));
        assert_eq!(common_rate(&[&ladder]), Some(2000));
        assert_eq!(common_rate(&[&ladder[2..], &kea]), None);
        assert_eq!(common_rate(&[]), None);
    }

    #[test]
    fn a_server_fails_only_if_no_run_measured_it() {
        let ok = || ServerState { status: "ok".into(), setup: "how".into() };
        let mut servers: BTreeMap<String, ServerState> = [(TAPYARD.into(), ok()), (KEA.into(), ok())].into();
        let failed = |server: &str, run: u32| Climb {
            server: server.into(),
            run,
            steps: vec![],
            error: Some(format!("no ping in run {run}")),
        };
        let mut measured = failed(TAPYARD, 2);
        (measured.steps, measured.error) = (vec![step(1000, 1000.0, 1.0, 1.0)], None);
        settle(&mut servers, &[failed(TAPYARD, 1), measured, failed(KEA, 1), failed(KEA, 2)]);
        assert_eq!(servers[TAPYARD], ok());
        assert_eq!((servers[KEA].status.as_str(), servers[KEA].setup.as_str()), ("failed", "no ping in run 1"));
    }

    #[test]
    fn figures_ratio_and_noise() {
        let c = |server: &str, run: u32, steps: Vec<Step>| Climb { server: server.into(), run, steps, error: None };
        let climbs = vec![
            c(
                TAPYARD,
                1,
                vec![step(1000, 1000.0, 1.0, 1.0), step(2000, 2000.0, 0.999, 3.0), step(4000, 2100.0, 0.5, 9.0)],
            ),
            c(KEA, 1, vec![step(1000, 1000.0, 1.0, 0.5), step(2000, 2000.0, 0.995, 0.7), step(4000, 4000.0, 1.0, 1.0)]),
            c(KEA, 2, vec![step(1000, 1000.0, 1.0, 0.5), step(2000, 2000.0, 0.99, 0.8), step(4000, 3000.0, 0.7, 5.0)]),
            c(TAPYARD, 2, vec![step(1000, 1000.0, 0.97, 4.0)]),
        ];
        let (f, ratio, at) = compute(&climbs, 2, 3);
        let t = &f[TAPYARD];
        // run 1: 2000; run 2: nothing sustained, 0
        assert_eq!(t.sustained_dora_per_s.as_ref().unwrap().runs, [2000.0, 0.0]);
        assert_eq!(f[KEA].sustained_dora_per_s.as_ref().unwrap().runs, [4000.0, 2000.0]);
        assert_eq!((f[KEA].topped_ladder_runs, t.topped_ladder_runs), (1, 0));
        // delays at the highest rate both sustained: 2000/s in run 1, none in run 2
        assert_eq!(at, [Some(2000), None]);
        assert_eq!(t.offer_delay_ms.as_ref().unwrap().runs, [3.0]);
        assert_eq!(f[KEA].ack_delay_ms.as_ref().unwrap().runs, [1.4]);
        // medians 1000 and 3000; per run 0.5 and 0
        assert_eq!(ratio.sustained, Some(0.33));
        assert_eq!((ratio.min, ratio.max), (Some(0.0), Some(0.5)));
        assert!(ratio.within_noise, "0-2000 overlaps 2000-4000");

        // Kea skipped: tapyard's delays at its own highest sustained rate, no ratio
        let alone: Vec<Climb> = climbs.iter().filter(|c| c.server == TAPYARD).cloned().collect();
        let (f, ratio, at) = compute(&alone, 2, 3);
        assert!(!f.contains_key(KEA));
        assert_eq!(at, [Some(2000), None]);
        assert_eq!(ratio, Ratio::default());
    }

    #[test]
    fn table_shows_figures_ladder_and_skips() {
        let c = |server: &str, steps: Vec<Step>| Climb { server: server.into(), run: 1, steps, error: None };
        let mut ty = vec![step(1000, 1000.0, 1.0, 1.0), step(2000, 1500.0, 0.75, 30.0)];
        ty[1].gateway = Some(GatewayStep { gateway_full: 1234, ..Default::default() });
        ty[1].client_rcvbuf_drops = Some(17);
        let climbs = vec![c(TAPYARD, ty), c(KEA, vec![step(1000, 1000.0, 1.0, 0.5), step(2000, 2000.0, 1.0, 0.6)])];
        let (figures, ratio, delay_rates_per_s) = compute(&climbs, 1, 2);
        let state = |status: &str, setup: &str| ServerState { status: status.into(), setup: setup.into() };
        let mut r = DhcpResults {
            tool: "t".into(),
            schema_version: 1,
            machine: Machine {
                nproc: 2,
                kernel: "k".into(),
                cpu: "c".into(),
                date: "d".into(),
                tapyard_rev: "r".into(),
                tapyard_version: "v".into(),
                tapyard_binary: "b".into(),
            },
            config: DhcpConfig {
                duration_s: 1,
                runs: 1,
                rates_per_s: vec![1000, 2000],
                clients: CLIENTS,
                sustained_completion: SUSTAINED,
                perfdhcp: "2.2.0".into(),
                perfdhcp_args: String::new(),
                kea: "2.2.0".into(),
                tapyard_subnet: TY_NET.into(),
                kea_subnet: KEA_NET.into(),
                kea_pool: KEA_POOL.into(),
                lease_s: LEASE_S,
            },
            errors: 0,
            servers: [(TAPYARD.to_string(), state("ok", "ty")), (KEA.to_string(), state("ok", "kea"))].into(),
            figures,
            ratio,
            delay_rates_per_s,
            climbs,
        };
        let t = table(&r);
        let cells = |start: &str| -> Vec<String> {
            let row = t.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no row {start:?}:\n{t}"));
            row.split('|').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
        };
        assert_eq!(
            cells("| sustained"),
            ["sustained DORA/s (completion >= 99 %)", "1000", "2000 (top of the ladder)", "0.50x [0.50-0.50]"]
        );
        assert_eq!(cells("| OFFER delay")[..3], ["OFFER delay ms, at 1000/s (both sustained)", "1.0", "0.5"]);
        assert_eq!(
            cells("| 1   | 2000"),
            ["1", "2000", "1500", "75.0", "30.0", "60.0", "1234", "17", "2000", "100.0", "0.6", "1.2", "-"]
        );
        serde_json::to_string(&r).unwrap();
        // Kea skipped: said so, tapyard alone
        r.servers.insert(KEA.into(), state("skipped", "kea-dhcp4 not found (Debian package kea-dhcp4-server)"));
        r.climbs.retain(|c| c.server == TAPYARD);
        (r.figures, r.ratio, r.delay_rates_per_s) = compute(&r.climbs, 1, 2);
        let t = table(&r);
        let row = t.lines().find(|l| l.starts_with("| kea: skipped")).unwrap_or_else(|| panic!("{t}"));
        assert!(row.contains("| kea-dhcp4 not found (Debian package kea-dhcp4-server) |"), "{t}");
        assert!(t.contains("| OFFER delay ms, at 1000/s (sustained) | 1.0     | skipped |"), "{t}");
    }
}
