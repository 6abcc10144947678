//! `tapyard bench --egress`: a container reaching beyond its host through
//! NAT, and the outside reaching a port the host publishes for a container,
//! on tapyard and on the classic Docker data path, measured in one run,
//! interleaved run by run, so that the ratios mean something on a noisy
//! machine. Each data path gets namespaces of its own, the same on each:
//!
//! - host: the daemon's namespace (tapyard), or the one with the bridge
//!   (bridge); the kernel's NAT (nftables masquerade, dnat) and ip_forward
//!   live here;
//! - outside: joined to host by a veth pair: host 198.18.0.1/24, outside
//!   198.18.0.2/24 (RFC 2544 benchmarking range, nothing leaves the
//!   machine); no route beyond, so it only ever sees the host's address;
//! - container: tapyard: on the network `eg` (198.19.1.0/24, egress NAT) of a
//!   daemon run in host (its uplink TAP there); bridge: a veth to a Linux
//!   bridge in host that carries the gateway 198.19.2.1/24, ip_forward on,
//!   `masquerade` for the container's subnet, bridge-nf-call-* off.
//!
//! Scenarios and figures (medians of `--runs` runs of `--duration` seconds;
//! the spread is min-max over the runs; ratios tapyard / baseline of the
//! medians, and min-max of the per-run ratios, each run measuring both paths
//! back to back):
//!
//! - egress: iperf3 TCP container -> outside, 1 and 4 streams; target
//!   tapyard >= 0.8 x bridge + NAT;
//! - publish: iperf3 TCP outside -> host 198.18.0.1:8080 -> container:5201:
//!   tapyard `connect --publish 8080:5201` against the bridge with a
//!   Docker-style nft `dnat to` in prerouting; target >= 0.8 x;
//! - rootless: iperf3 TCP container -> outside, tapyard + pasta (the daemon's
//!   uplink through pasta) against pasta alone (the container's namespace
//!   with a pasta of its own, as podman runs it); target >= 0.9 x. Both run
//!   as root here, for the harness's sake, pasta with `--runas 0`;
//! - cpu_s_per_gb: CPU seconds (utime + stime, /proc/PID/stat) of the
//!   tapyard daemon, or of pasta, during the 1-stream tests, per GB received;
//! - machine_cpu1_s_per_gb, machine_cpu4_s_per_gb: the whole machine's busy
//!   CPU seconds (/proc/stat: user, nice, system, irq, softirq) during the 1-
//!   and 4-stream tests, per GB received.
//!
//! Until 2026-12-07 this was bench/system/egress.sh; the results.json fields
//! are the same. Everything is in [`Lab`]s (namespaces tye<PID>...),
//! removed on exit, Ctrl-C and SIGTERM included.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::measure;
use super::runner::log_as;
use super::schema::{fixed, Machine, Stat};
use super::BenchArgs;
use crate::cli::labkit::{self, Lab, SetupError, Tapyard, TapyardMode};
use crate::control::proto::{NetworkCreate, Request};

const HOST_IP: &str = "198.18.0.1";
const OUTSIDE_IP: &str = "198.18.0.2";
const IPERF_PORT: u16 = 5201;
const PUB_PORT: u16 = 8080;
const TY_NET: &str = "198.19.1.0/24";
const TY_CT: &str = "198.19.1.2";
const BR_NET: &str = "198.19.2.0/24";
const BR_GW: &str = "198.19.2.1";
const BR_CT: &str = "198.19.2.2";

type Res<T> = Result<T, SetupError>;

fn log(msg: &str) {
    log_as("bench egress", msg);
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressResults {
    pub tool: String,
    pub schema_version: u32,
    pub machine: Machine,
    pub config: EgressConfig,
    pub errors: u32,
    pub paths: BTreeMap<String, PathState>,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressConfig {
    pub duration_s: u32,
    pub runs: u32,
    pub iperf3: String,
    pub host_ip: String,
    pub outside_ip: String,
    pub tapyard_subnet: String,
    pub bridge_subnet: String,
    pub published_port: u16,
    pub iperf3_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathState {
    pub status: String,
    /// How it was built, or why it failed.
    pub setup: String,
}

/// A path's state in a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub status: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub key: String,
    pub unit: String,
    pub candidate: Option<Stat>,
    pub baseline: Option<Stat>,
    pub ratio: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    pub target: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    pub candidate: String,
    pub baseline: String,
    pub target: f64,
    pub candidate_status: ScenarioStatus,
    pub baseline_status: ScenarioStatus,
    pub figures: Vec<Figure>,
    /// Per path: retransmissions and stalled seconds.
    pub extra: BTreeMap<String, BTreeMap<String, Option<Stat>>>,
}

/// One sample: scenario, path, key, run, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub sc: String,
    pub path: String,
    pub key: String,
    pub run: u32,
    pub v: f64,
}

const TCP_FIGURES: [(&str, &str, bool); 5] = [
    ("tcp1_gbps", "Gbit/s", true),
    ("tcp4_gbps", "Gbit/s", true),
    ("cpu_s_per_gb", "s/GB", false),
    ("machine_cpu1_s_per_gb", "s/GB", false),
    ("machine_cpu4_s_per_gb", "s/GB", false),
];

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A scenario's figures from the samples: candidate and baseline spreads,
/// the ratio of the medians, and min-max of the per-run ratios.
pub fn scenario(
    samples: &[Sample],
    status: &[ScenarioStatus],
    (name, title, cand, base, target): (&str, &str, &str, &str, f64),
) -> Scenario {
    let vals = |path: &str, key: &str| -> Vec<&Sample> {
        samples.iter().filter(|s| s.sc == name && s.path == path && s.key == key).collect()
    };
    let pstat =
        |path: &str| {
            status.iter().find(|s| s.sc.as_deref() == Some(name) && s.path.as_deref() == Some(path)).cloned().unwrap_or(
                ScenarioStatus { sc: None, path: None, status: "skipped".into(), reason: "not measured".into() },
            )
        };
    let figures = TCP_FIGURES
        .iter()
        .map(|&(key, unit, targeted)| {
            let c = vals(cand, key);
            let b = vals(base, key);
            let per_run: Vec<f64> = c
                .iter()
                .flat_map(|x| b.iter().filter(move |y| y.run == x.run && y.v > 0.0).map(move |y| x.v / y.v))
                .collect();
            let cs = Stat::of(&c.iter().map(|s| s.v).collect::<Vec<_>>());
            let bs = Stat::of(&b.iter().map(|s| s.v).collect::<Vec<_>>());
            let ratio = match (&cs, &bs) {
                (Some(c), Some(b)) if b.median != 0.0 => Some(r2(c.median / b.median)),
                _ => None,
            };
            let target = targeted.then_some(target);
            Figure {
                key: key.into(),
                unit: unit.into(),
                candidate: cs,
                baseline: bs,
                ratio,
                ratio_min: per_run.iter().copied().reduce(f64::min).map(r2),
                ratio_max: per_run.iter().copied().reduce(f64::max).map(r2),
                target,
                met: match (target, ratio) {
                    (Some(t), Some(r)) => Some(r >= t),
                    _ => None,
                },
            }
        })
        .collect();
    let mut extra = BTreeMap::new();
    for p in [cand, base] {
        let mut m = BTreeMap::new();
        for k in ["tcp1_retransmits", "tcp4_retransmits", "tcp1_stalled_s", "tcp4_stalled_s"] {
            m.insert(k.to_string(), Stat::of(&vals(p, k).iter().map(|s| s.v).collect::<Vec<_>>()));
        }
        extra.insert(p.to_string(), m);
    }
    Scenario {
        name: name.into(),
        title: title.into(),
        candidate: cand.into(),
        baseline: base.into(),
        target,
        candidate_status: pstat(cand),
        baseline_status: pstat(base),
        figures,
        extra,
    }
}

pub const SCENARIOS: [(&str, &str, &str, &str, f64); 3] = [
    ("egress", "Egress TCP, container -> outside, through NAT", "tapyard", "bridge", 0.8),
    ("publish", "Published port TCP, outside -> host:8080 -> container:5201", "tapyard", "bridge", 0.8),
    ("rootless", "Rootless egress TCP: tapyard + pasta vs pasta alone", "tapyard-pasta", "pasta", 0.9),
];

/// The table egress.sh printed.
pub fn table(r: &EgressResults) -> String {
    let spread = |s: &Option<Stat>, d: usize| match s {
        None => "-".to_string(),
        Some(s) if s.runs.len() == 1 => fixed(s.median, d),
        Some(s) => format!("{} [{}-{}]", fixed(s.median, d), fixed(s.min, d), fixed(s.max, d)),
    };
    let label = |k: &str| match k {
        "tcp1_gbps" => "TCP 1 stream, Gbit/s",
        "tcp4_gbps" => "TCP 4 streams, Gbit/s",
        "cpu_s_per_gb" => "CPU s/GB of the daemon or pasta, 1 stream",
        "machine_cpu1_s_per_gb" => "machine CPU s/GB, 1 stream (lower: better)",
        _ => "machine CPU s/GB, 4 streams (lower: better)",
    };
    let row = |a: &str, b: &str, c: &str, d: &str| format!("{a:<60} {b:<22} {c:<22} {d}\n");
    let mut out = String::new();
    for (i, sc) in r.scenarios.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let base = if sc.baseline == "bridge" { "bridge + NAT".to_string() } else { sc.baseline.clone() };
        out += &row(&sc.title, &sc.candidate, &base, &format!("ratio [per-run], target >= {}", sc.target));
        let cell = |ps: &ScenarioStatus, s: String| if ps.status == "ok" { s } else { ps.status.clone() };
        if sc.candidate_status.status == "ok" || sc.baseline_status.status == "ok" {
            for f in &sc.figures {
                if f.key == "cpu_s_per_gb" && f.candidate.is_none() && f.baseline.is_none() {
                    continue;
                }
                let d = if f.key.ends_with("_s_per_gb") { 3 } else { 2 };
                let b = if f.key == "cpu_s_per_gb" && f.baseline.is_none() && sc.baseline == "bridge" {
                    "(kernel softirq)".to_string()
                } else {
                    cell(&sc.baseline_status, spread(&f.baseline, d))
                };
                let ratio = match f.ratio {
                    Some(x) if f.key != "cpu_s_per_gb" => {
                        let o = |v: Option<f64>| v.map_or("-".to_string(), |v| fixed(v, 2));
                        let met = match f.met {
                            None => "",
                            Some(true) => "  met",
                            Some(false) => "  MISSED",
                        };
                        format!("{} [{}-{}]{met}", fixed(x, 2), o(f.ratio_min), o(f.ratio_max))
                    }
                    _ => "-".into(),
                };
                out += &row(
                    &format!("  {}", label(&f.key)),
                    &cell(&sc.candidate_status, spread(&f.candidate, d)),
                    &b,
                    &ratio,
                );
            }
        }
        for (p, s) in [(&sc.candidate, &sc.candidate_status), (&sc.baseline, &sc.baseline_status)] {
            if s.status != "ok" {
                let _ = writeln!(out, "  {p}: {}: {}", s.status, s.reason);
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the paths

/// One data path: its lab and what its figures need.
struct PathRig {
    name: &'static str,
    /// Prefix of its namespaces: PREFIX + h (host), o (outside), c (container).
    p: String,
    lab: Lab,
    /// The processes whose CPU time is the path's own (daemon, pasta).
    cpu: Vec<u32>,
    daemon: Option<Tapyard>,
}

impl PathRig {
    fn ns(&self, x: &str) -> String {
        format!("{}{x}", self.p)
    }
}

struct Eg {
    exe: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    prefix: String,
    dur: u32,
    errors: u32,
    samples: Vec<Sample>,
    stalls: Vec<String>,
    clk_tck: f64,
}

/// `bash -c 'exec 3<> /dev/tcp/IP/PORT'` in `ns` with a 2 s limit: whether a TCP connection is answered.
fn tcp_answers(ns: &str, ip: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "timeout", "2", "bash", "-c", &format!("exec 3<> /dev/tcp/{ip}/{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn listening(ns: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltn"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")))
}

/// The whole machine's busy time in clock ticks (user, nice, system, irq,
/// softirq of /proc/stat's cpu line; not idle, iowait or steal).
fn machine_ticks() -> u64 {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum()
}

impl Eg {
    fn lab(&self, name: &str, letter: &str) -> Res<(Lab, String)> {
        let p = format!("{}{letter}", self.prefix);
        let lab =
            Lab::new(&p, &self.work.join(format!("run-{name}")), &self.logs.join(format!("{name}.setup.log")), None)?;
        Ok((lab, p))
    }

    /// Namespaces host and outside joined by a veth pair made in place, and the container's.
    fn host_and_outside(lab: &mut Lab, p: &str) -> Res<()> {
        let (h, o) = (format!("{p}h"), format!("{p}o"));
        lab.add_netns(&h)?;
        lab.add_netns(&o)?;
        lab.ip(&["link", "add", "up0", "netns", &h, "type", "veth", "peer", "name", "out0", "netns", &o])?;
        lab.addr_up(&h, "up0", &format!("{HOST_IP}/24"))?;
        lab.addr_up(&o, "out0", &format!("{OUTSIDE_IP}/24"))?;
        lab.add_netns(&format!("{p}c"))?;
        Ok(())
    }

    fn daemon(&self, lab: &mut Lab, ns: &str, name: &str) -> Res<(Tapyard, u32)> {
        let ty = Tapyard {
            exe: self.exe.clone(),
            mode: TapyardMode::Switched,
            workers: None,
            daemon_log: self.logs.join(format!("{name}.daemon.log")),
            netns: Some(ns.to_string()),
            uplink: true,
        };
        let pid = ty.start(lab, &[])?;
        Ok((ty, pid))
    }

    /// Network eg ({TY_NET}, `mtu` or the daemon's default) on the daemon
    /// `ty`, and the container's namespace connected to it at {TY_CT} with
    /// the ports `publish`.
    fn container_on_eg(ty: &Tapyard, lab: &Lab, p: &str, mtu: Option<u32>, publish: Vec<String>) -> Res<()> {
        ty.call(
            lab,
            &Request::NetworkCreate(NetworkCreate {
                name: "eg".into(),
                subnet: Some(TY_NET.into()),
                mtu,
                ..Default::default()
            }),
        )?;
        ty.call(
            lab,
            &Request::Connect {
                network: "eg".into(),
                netns: format!("{p}c"),
                ifname: None,
                mac: None,
                ip: Some(format!("{TY_CT}/24")),
                offload: None,
                publish,
                owner: None,
                port_security: None,
                storm_limit: None,
                kind: None,
            },
        )?;
        Ok(())
    }

    fn setup_tapyard(&self) -> Res<(PathRig, String)> {
        let (mut lab, p) = self.lab("tapyard", "t")?;
        Self::host_and_outside(&mut lab, &p)?;
        let (ty, pid) = self.daemon(&mut lab, &format!("{p}h"), "tapyard")?;
        Self::container_on_eg(&ty, &lab, &p, None, vec![format!("{PUB_PORT}:{IPERF_PORT}")])?;
        let desc = format!(
            "tapyard daemon in namespace host (uplink TAP, kernel masquerade), container on network eg {TY_NET}, --publish {PUB_PORT}:{IPERF_PORT}"
        );
        Ok((PathRig { name: "tapyard", p, lab, cpu: vec![pid], daemon: Some(ty) }, desc))
    }

    fn setup_bridge(&self) -> Res<(PathRig, String)> {
        let (mut lab, p) = self.lab("bridge", "b")?;
        Self::host_and_outside(&mut lab, &p)?;
        let (h, c) = (format!("{p}h"), format!("{p}c"));
        lab.ip(&["-n", &h, "link", "add", "br0", "type", "bridge"])?;
        lab.ip(&["-n", &h, "addr", "add", &format!("{BR_GW}/24"), "dev", "br0"])?;
        lab.ip(&["-n", &h, "link", "set", "br0", "up"])?;
        lab.run(lab.in_ns(&h, "sysctl", false).args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let _ = lab.run(lab.in_ns(&h, "sysctl", false).args([
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ]));
        lab.ip(&["-n", &c, "link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &h])?;
        lab.ip(&["-n", &h, "link", "set", "veth0", "master", "br0", "up"])?;
        lab.addr_up(&c, "eth0", &format!("{BR_CT}/24"))?;
        lab.ip(&["-n", &c, "route", "add", "default", "via", BR_GW])?;
        // Docker's rules, in nftables: masquerade what leaves the bridge's subnet by
        // another interface, and the published port's DNAT in prerouting (replies
        // are un-NATed by conntrack).
        let rules = format!(
            "table ip tyegress {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
             ip daddr {HOST_IP} tcp dport {PUB_PORT} dnat to {BR_CT}:{IPERF_PORT}\n  }}\n  chain post {{\n    \
             type nat hook postrouting priority srcnat;\n    ip saddr {BR_NET} oifname != \"br0\" masquerade\n  }}\n}}\n"
        );
        let file = lab.dir().join("rules.nft");
        fs::write(&file, rules).map_err(|e| SetupError::Fail(format!("{}: {e}", file.display())))?;
        lab.run(lab.in_ns(&h, "nft", false).arg("-f").arg(&file))?;
        let desc = format!(
            "Linux bridge br0 ({BR_GW}/24) in namespace host, veth to the container, ip_forward, nft masquerade and dnat {HOST_IP}:{PUB_PORT} -> {BR_CT}:{IPERF_PORT} (bridge-nf-call-* off)"
        );
        Ok((PathRig { name: "bridge", p, lab, cpu: vec![], daemon: None }, desc))
    }

    /// pasta attached to `target` from `h`: `--config-net`, no port forwarding, as root.
    fn pasta(&self, lab: &mut Lab, h: &str, target: &str, log: &Path) -> Res<u32> {
        if !labkit::have("pasta") {
            return Err(SetupError::Fail("pasta not found (Debian package passt)".into()));
        }
        lab.ip(&["-n", h, "route", "add", "default", "via", OUTSIDE_IP])?;
        let mut c = lab.in_ns(h, "pasta", false);
        c.args(["-f", "-q", "-4", "--runas", "0", "--config-net", "--netns", &format!("/run/netns/{target}")]);
        c.args(["--no-map-gw", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]);
        let pid = lab.spawn(&mut c, log, "pasta")?;
        let configured = || {
            Command::new("ip")
                .args(["-n", target, "-4", "-o", "addr", "show"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| !l.contains(" lo ")))
        };
        if !lab.wait_for(Duration::from_secs(10), Duration::from_millis(100), configured)? {
            let last = fs::read_to_string(log).unwrap_or_default().lines().last().unwrap_or("").to_string();
            return Err(SetupError::Fail(format!("pasta did not configure the namespace {target}: {last}")));
        }
        Ok(pid)
    }

    fn setup_pasta(&self) -> Res<(PathRig, String)> {
        let (mut lab, p) = self.lab("pasta", "p")?;
        if !labkit::have("pasta") {
            return Err(SetupError::Fail("pasta not found (Debian package passt)".into()));
        }
        Self::host_and_outside(&mut lab, &p)?;
        let c = format!("{p}c");
        let pid = self.pasta(&mut lab, &format!("{p}h"), &c, &self.logs.join("pasta.log"))?;
        let ver = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "passt"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "(version unknown)".into());
        let mtu = Command::new("ip")
            .args(["-n", &c, "-o", "link", "show"])
            .output()
            .ok()
            .and_then(|o| {
                let t = String::from_utf8_lossy(&o.stdout).into_owned();
                t.lines().filter(|l| !l.contains(" lo:")).find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.iter().position(|w| *w == "mtu").and_then(|i| f.get(i + 1)).map(|m| m.to_string())
                })
            })
            .unwrap_or_default();
        let desc = format!(
            "pasta {ver} --config-net (MTU {mtu}) into the container's namespace, its host side in namespace host; run as root"
        );
        Ok((PathRig { name: "pasta", p, lab, cpu: vec![pid], daemon: None }, desc))
    }

    fn setup_tapyard_pasta(&self) -> Res<(PathRig, String)> {
        let (mut lab, p) = self.lab("tapyard-pasta", "y")?;
        if !labkit::have("pasta") {
            return Err(SetupError::Fail("pasta not found (Debian package passt)".into()));
        }
        Self::host_and_outside(&mut lab, &p)?;
        let d = format!("{p}d");
        lab.add_netns(&d)?;
        let pasta = self.pasta(&mut lab, &format!("{p}h"), &d, &self.logs.join("tapyard-pasta.pasta.log"))?;
        let (ty, pid) = self.daemon(&mut lab, &d, "tapyard-pasta")?;
        // The MTU pasta gives a namespace (65520), as the baseline's container
        // has: at 1500, pasta's per-packet cost dominates (docs/PERFORMANCE.md).
        Self::container_on_eg(&ty, &lab, &p, Some(65520), vec![])?;
        let desc = format!(
            "tapyard daemon in namespace {d} (uplink TAP, kernel masquerade) with pasta attached to that namespace (same options as the baseline), container on network eg {TY_NET}, MTU 65520 (pasta's); run as root"
        );
        Ok((PathRig { name: "tapyard-pasta", p, lab, cpu: vec![pasta, pid], daemon: Some(ty) }, desc))
    }

    /// Sets a path up, starts its iperf3 servers, waits until everything answers.
    fn bring_up(&self, name: &str) -> Res<(PathRig, String)> {
        log(&format!("setting up {name}"));
        let (mut rig, desc) = match name {
            "tapyard" => self.setup_tapyard(),
            "bridge" => self.setup_bridge(),
            "pasta" => self.setup_pasta(),
            _ => self.setup_tapyard_pasta(),
        }?;
        let (o, c) = (rig.ns("o"), rig.ns("c"));
        let port = IPERF_PORT.to_string();
        for (ns, tag) in [(&o, "outside"), (&c, "container")] {
            let log = self.logs.join(format!("{name}.iperf3-{tag}.log"));
            rig.lab.spawn(rig.lab.in_ns(ns, "iperf3", false).args(["-s", "-p", &port]), &log, "iperf3 server")?;
        }
        let step = Duration::from_millis(100);
        let lab = &rig.lab;
        let why = if !lab.wait_for(Duration::from_secs(10), step, || listening(&o, IPERF_PORT))? {
            Some("the outside's iperf3 server did not listen".to_string())
        } else if !lab.wait_for(Duration::from_secs(10), step, || listening(&c, IPERF_PORT))? {
            Some("the container's iperf3 server did not listen".to_string())
        } else if !lab.wait_for(Duration::from_secs(15), step, || tcp_answers(&c, OUTSIDE_IP, IPERF_PORT))? {
            Some(format!("the container cannot reach the outside ({OUTSIDE_IP}:{IPERF_PORT}) after setup"))
        } else {
            None
        };
        lab.note(&format!("# {desc}"));
        for n in ["h", "o", "c"] {
            lab.note(&format!("## namespace {n}"));
            let _ = lab.ip(&["-n", &rig.ns(n), "-d", "addr", "show"]);
            let _ = lab.ip(&["-n", &rig.ns(n), "route", "show"]);
        }
        lab.note("## nftables in host");
        let _ = lab.run(lab.in_ns(&rig.ns("h"), "nft", false).args(["list", "ruleset"]));
        match why {
            Some(w) => Err(SetupError::Fail(w)),
            None => Ok((rig, desc)),
        }
    }

    fn measure(&mut self, sc: &str, rig: &PathRig, n: u32, r: u32) -> Res<()> {
        let key = format!("tcp{n}_gbps");
        let js = self.logs.join(format!("{sc}.{}.{key}.{r}.json", rig.name));
        let (from, target, port) =
            if sc == "publish" { (rig.ns("o"), HOST_IP, PUB_PORT) } else { (rig.ns("c"), OUTSIDE_IP, IPERF_PORT) };
        let ticks = |pids: &[u32]| pids.iter().filter_map(|&p| labkit::cpu_ticks(p)).sum::<u64>();
        let t0 = ticks(&rig.cpu);
        let m0 = machine_ticks();
        let (dur, port, streams) = (self.dur.to_string(), port.to_string(), n.to_string());
        let text = super::runner::fg_in(
            &rig.lab,
            &from,
            &js,
            Duration::from_secs(u64::from(self.dur) + 30),
            "iperf3",
            &["-c", target, "-p", &port, "-t", &dur, "-P", &streams, "-J"],
        )?;
        let m1 = machine_ticks();
        let res = match measure::iperf(&text) {
            Ok(res) => res,
            Err(e) => {
                self.errors += 1;
                log(&format!("  {sc} {} {key} run {r}: iperf3 failed: {e}", rig.name));
                return Ok(());
            }
        };
        let mut rec = |key: &str, v: f64| {
            self.samples.push(Sample { sc: sc.into(), path: rig.name.into(), key: key.into(), run: r, v })
        };
        let gb = res.received.bytes / 1e9;
        rec(&key, res.gbps());
        rec(&format!("tcp{n}_retransmits"), res.retransmits());
        let stalls = res.stalled_seconds();
        rec(&format!("tcp{n}_stalled_s"), stalls as f64);
        rec(&format!("machine_cpu{n}_s_per_gb"), (m1.saturating_sub(m0) as f64 / self.clk_tck) / gb);
        let mut cpu = String::new();
        if !rig.cpu.is_empty() && n == 1 {
            let t1 = ticks(&rig.cpu);
            let c = (t1.saturating_sub(t0) as f64 / self.clk_tck) / gb;
            rec("cpu_s_per_gb", c);
            cpu = format!(", {} CPU {c:.3} s/GB", rig.name);
        }
        if stalls > 0 {
            self.stalls.push(format!(
                "{sc} {}, {n} stream{}, run {r}: stalled {stalls} of {} s (under 5 % of its best second)",
                rig.name,
                if n == 1 { "" } else { "s" },
                self.dur
            ));
        }
        log(&format!("  {sc} {} {key} run {r}: {:.2} Gbit/s{cpu}", rig.name, res.gbps()));
        Ok(())
    }
}

/// Runs the egress benchmark; the exit status (0: no errors).
pub fn run(args: &BenchArgs, files: &super::Files) -> anyhow::Result<i32> {
    let die = |m: &str| {
        eprintln!("tapyard bench --egress: {m}");
        Ok(1)
    };
    if !super::runner::is_root() {
        return die("needs root: it creates network namespaces, veth pairs, bridges and nftables tables");
    }
    let missing: Vec<&str> =
        ["ip", "iperf3", "nft", "ping", "ss", "timeout", "bash"].into_iter().filter(|t| !labkit::have(t)).collect();
    if !missing.is_empty() {
        return die(&format!(
            "missing tools: {} (Debian: iproute2 iperf3 nftables iputils-ping coreutils bash)",
            missing.join(" ")
        ));
    }
    labkit::install_interrupt_flag()?;
    let work = super::runner::work_dir()?;
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    files.write(&work)?;
    let exe = std::env::current_exe()?;
    let machine = super::runner::machine(&exe, true);
    let mut eg = Eg {
        exe,
        work: work.clone(),
        logs: logs.clone(),
        prefix: format!("tye{}", std::process::id()),
        dur: args.duration,
        errors: 0,
        samples: vec![],
        stalls: vec![],
        clk_tck: super::runner::clk_tck(),
    };
    let finish = |code: i32| {
        if args.keep {
            log(&format!("work directory kept: {}", work.display()));
        } else {
            let _ = fs::remove_dir_all(&work);
        }
        Ok(code)
    };
    log(&format!("machine: {} CPUs, kernel {}; {} x {} s", machine.nproc, machine.kernel, args.runs, args.duration));

    // Every path stays up for the whole run (the runs interleave them).
    let mut rigs: BTreeMap<&str, PathRig> = BTreeMap::new();
    let mut paths: BTreeMap<String, PathState> = BTreeMap::new();
    let mut order_tsv: Vec<(String, String, String)> = vec![];
    for name in ["tapyard", "bridge", "pasta", "tapyard-pasta"] {
        match eg.bring_up(name) {
            Ok((rig, desc)) => {
                paths.insert(name.into(), PathState { status: "ok".into(), setup: desc.clone() });
                order_tsv.push((name.into(), "ok".into(), desc));
                rigs.insert(name, rig);
            }
            Err(SetupError::Interrupted) => return finish(130),
            Err(e) => {
                log(&format!("  {name} failed: {e}"));
                eg.errors += 1;
                paths.insert(name.into(), PathState { status: "failed".into(), setup: e.to_string() });
                order_tsv.push((name.into(), "failed".into(), e.to_string()));
            }
        }
    }
    let st = |sc: &str, path: &str, status: &str, reason: &str| ScenarioStatus {
        sc: Some(sc.into()),
        path: Some(path.into()),
        status: status.into(),
        reason: reason.into(),
    };
    let why = |p: &str| paths.get(p).map(|s| s.setup.clone()).unwrap_or_default();
    let mut status = vec![];
    for p in ["tapyard", "bridge"] {
        status.push(if rigs.contains_key(p) { st("egress", p, "ok", "") } else { st("egress", p, "failed", &why(p)) });
    }
    for p in ["bridge", "tapyard"] {
        if !rigs.contains_key(p) {
            status.push(st("publish", p, "failed", &format!("the {p} path did not come up")));
            continue;
        }
        let o = rigs[p].ns("o");
        let answered = rigs[p]
            .lab
            .wait_for(Duration::from_secs(15), Duration::from_millis(100), || tcp_answers(&o, HOST_IP, PUB_PORT));
        match answered {
            Ok(true) => status.push(st("publish", p, "ok", "")),
            Ok(false) => {
                let w = format!("nothing answers on the published port {HOST_IP}:{PUB_PORT} from the outside");
                log(&format!("  {p}: {w}"));
                eg.errors += 1;
                status.push(st("publish", p, "failed", &w));
            }
            Err(_) => return finish(130),
        }
    }
    for p in ["pasta", "tapyard-pasta"] {
        status.push(if rigs.contains_key(p) {
            st("rootless", p, "ok", "")
        } else {
            st("rootless", p, "failed", &why(p))
        });
    }
    let ok = |sc: &str, p: &str| {
        status.iter().any(|s| s.sc.as_deref() == Some(sc) && s.path.as_deref() == Some(p) && s.status == "ok")
    };
    for r in 1..=args.runs {
        // alternate which path goes first, so neither always runs on a warmer (or busier) machine
        let order = if r % 2 == 1 { ["tapyard", "bridge"] } else { ["bridge", "tapyard"] };
        for sc in ["egress", "publish", "rootless"] {
            for n in [1, 4] {
                for p in order.iter().chain(["pasta", "tapyard-pasta"].iter()) {
                    if !ok(sc, p) {
                        continue;
                    }
                    log(&format!("run {r}/{}: {sc}, {p}, {n} stream{}", args.runs, if n == 1 { "" } else { "s" }));
                    if let Err(SetupError::Interrupted) = eg.measure(sc, &rigs[p], n, r) {
                        return finish(130);
                    }
                }
            }
        }
    }
    if let Some(rig) = rigs.get("tapyard") {
        if let Some(ty) = &rig.daemon {
            if let Ok(v) = ty.call(&rig.lab, &Request::PortLs { network: None }) {
                let _ =
                    fs::write(logs.join("tapyard.ports.json"), serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
    }
    drop(rigs);

    let results = EgressResults {
        tool: "tapyard bench --egress".into(),
        schema_version: 1,
        machine,
        config: EgressConfig {
            duration_s: args.duration,
            runs: args.runs,
            iperf3: super::runner::first_line("iperf3", &["--version"]),
            host_ip: HOST_IP.into(),
            outside_ip: OUTSIDE_IP.into(),
            tapyard_subnet: TY_NET.into(),
            bridge_subnet: BR_NET.into(),
            published_port: PUB_PORT,
            iperf3_port: IPERF_PORT,
        },
        errors: eg.errors,
        paths,
        scenarios: SCENARIOS.iter().map(|s| scenario(&eg.samples, &status, *s)).collect(),
    };
    let md = || {
        let m = &results.machine;
        let mut md = format!("# tapyard bench --egress, {}\n\n", m.date);
        let _ = writeln!(md, "{} CPUs ({}), kernel {}, tapyard {};", m.nproc, m.cpu, m.kernel, m.tapyard_rev);
        let _ = writeln!(
            md,
            "{} run{} x {} s, medians [min-max over the runs]; ratios tapyard / baseline",
            args.runs,
            if args.runs == 1 { "" } else { "s" },
            args.duration
        );
        md += "of the medians [min-max of the per-run ratios, both paths measured back to back in each run].\n\n```\n";
        md += &table(&results);
        md += "```\n\nData paths:\n\n";
        for (name, status, setup) in &order_tsv {
            let _ = writeln!(md, "- {name} ({status}): {setup}");
        }
        md.push('\n');
        if !eg.stalls.is_empty() {
            md += "Stalls (seconds under 5 % of the run's best second):\n\n";
            for s in &eg.stalls {
                let _ = writeln!(md, "- {s}");
            }
            md.push('\n');
        }
        let _ = writeln!(md, "Errors: {}. Raw iperf3 JSON and setup logs: logs/.", eg.errors);
        md
    };
    super::report::write_and_print(args, &results, &logs, "bench egress", md, table)?;
    finish(if eg.errors == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sc: &str, path: &str, key: &str, run: u32, v: f64) -> Sample {
        Sample { sc: sc.into(), path: path.into(), key: key.into(), run, v }
    }

    #[test]
    fn scenario_ratios_and_spread() {
        let samples = vec![
            s("egress", "tapyard", "tcp1_gbps", 1, 8.0),
            s("egress", "bridge", "tcp1_gbps", 1, 10.0),
            s("egress", "bridge", "tcp1_gbps", 2, 12.0),
            s("egress", "tapyard", "tcp1_gbps", 2, 12.0),
            s("egress", "tapyard", "tcp1_retransmits", 1, 3.0),
        ];
        let ok = |p: &str| ScenarioStatus {
            sc: Some("egress".into()),
            path: Some(p.into()),
            status: "ok".into(),
            reason: String::new(),
        };
        let status = vec![ok("tapyard"), ok("bridge")];
        let sc = scenario(&samples, &status, SCENARIOS[0]);
        let f = &sc.figures[0];
        assert_eq!(f.key, "tcp1_gbps");
        assert_eq!(f.candidate.as_ref().unwrap().median, 10.0);
        assert_eq!(f.baseline.as_ref().unwrap().median, 11.0);
        assert_eq!(f.ratio, Some(0.91)); // 10 / 11
        assert_eq!((f.ratio_min, f.ratio_max), (Some(0.8), Some(1.0))); // 8/10, 12/12
        assert_eq!(f.met, Some(true));
        assert!(sc.figures[2].target.is_none() && sc.figures[2].candidate.is_none());
        assert_eq!(sc.extra["tapyard"]["tcp1_retransmits"].as_ref().unwrap().runs, [3.0]);
        assert!(sc.extra["bridge"]["tcp1_retransmits"].is_none());
        // a scenario nobody measured: skipped, not measured
        let pub_sc = scenario(&samples, &status, SCENARIOS[1]);
        assert_eq!(pub_sc.candidate_status.status, "skipped");
        let v = serde_json::to_value(&pub_sc.candidate_status).unwrap();
        assert!(v.get("sc").is_none(), "{v}");
        let r = EgressResults {
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
            config: EgressConfig {
                duration_s: 1,
                runs: 2,
                iperf3: "i".into(),
                host_ip: HOST_IP.into(),
                outside_ip: OUTSIDE_IP.into(),
                tapyard_subnet: TY_NET.into(),
                bridge_subnet: BR_NET.into(),
                published_port: PUB_PORT,
                iperf3_port: IPERF_PORT,
            },
            errors: 0,
            paths: BTreeMap::new(),
            scenarios: vec![sc, pub_sc],
        };
        let t = table(&r);
        assert!(t.contains("  TCP 1 stream, Gbit/s"), "{t}");
        assert!(t.contains("10.00 [8.00-12.00]") && t.contains("0.91 [0.80-1.00]  met"), "{t}");
        assert!(t.contains("\n\nPublished port TCP"), "{t}");
        assert!(t.contains("  tapyard: skipped: not measured"), "{t}");
    }
}
