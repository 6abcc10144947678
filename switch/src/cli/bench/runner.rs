//! The system benchmark's runner: for each data path in turn, two network
//! namespaces A and B joined by that path (a [`labkit::Backend`]), the same
//! measurements from A to B, and the samples collected for
//! [`schema::compute`]. Measuring every path in one run makes ratios between
//! them meaningful on a noisy machine.
//!
//! What each figure is, exactly (docs/PERFORMANCE.md has the same table):
//!
//! | key | measurement |
//! |---|---|
//! | `tcp1_gbps` | iperf3 TCP, 1 stream: Gbit/s received |
//! | `tcp4_gbps` | iperf3 TCP, 4 streams (`-P 4`): Gbit/s received |
//! | `udp64_kpps` | `iperf3 -u -l 18 -b 0` (60-byte frames, 64 with FCS): (packets - lost) / seconds |
//! | `loss_pct` | `iperf3 -u -l 18` offered at the rate the bridge received in this run: % not received |
//! | `ping_p50_us`, `ping_p99_us` | ICMP echo every `--ping-interval` (`ping -i`): RTT percentiles (nearest rank) |
//! | `pingpong_p50_us`, `pingpong_p99_us` | 64-byte UDP request/response back to back (sockperf ping-pong, or the python3 fallback `pingpong.py`): RTT percentiles |
//! | `cpu_s_per_gb` | CPU seconds (utime + stime, /proc/PID/stat) of the switch process(es) during the 1-stream TCP test, per GB received; none for the bridge |
//!
//! Every figure is the median of `--runs` runs. Addresses are in
//! 198.18.0.0/15 (RFC 2544's benchmarking range) with no default route:
//! nothing leaves A and B. Everything is named tyb<PID>... and removed by the
//! [`labkit::Lab`] guard, on error and Ctrl-C included.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::measure;
use super::report;
use super::schema::{self, Config, Machine, RawPath, Results, Status};
use super::{Baseline, BenchArgs, TapyardPath, Test};
use crate::cli::labkit::{self, Backend, Endpoint, Lab, SetupError, TapyardMode};

pub const INSTALL_HINT: &str = "install with `scripts/setup.sh --bench`";
const IPERF_PORT: &str = "5201";
const PP_PORT: &str = "11111";
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// `[bench HH:MM:SS] msg` on stderr.
pub fn log(msg: &str) {
    log_as("bench", msg);
}

/// `[TAG HH:MM:SS] msg` on stderr (UTC).
pub fn log_as(tag: &str, msg: &str) {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    eprintln!("[{tag} {:02}:{:02}:{:02}] {msg}", s / 3600 % 24, s / 60 % 60, s % 60);
}

/// The UTC date and time of `secs` since the epoch, ISO 8601 (Howard
/// Hinnant's days-to-civil algorithm).
pub fn iso_utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The ping-pong tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingPong {
    Sockperf,
    /// bench/system/pingpong.py; true when chosen by TAPYARD_BENCH_PINGPONG.
    Python(bool),
}

/// What one invocation measures, resolved from the flags.
pub struct Plan {
    pub paths: Vec<&'static str>,
    pub tests: Vec<Test>,
    pub duration: u32,
    pub runs: u32,
    pub pings: u32,
    pub ping_interval: f64,
    pub workers: Option<u32>,
    pub nice: Option<i32>,
    pub pingpong: Option<PingPong>,
}

impl Plan {
    pub fn has(&self, t: Test) -> bool {
        self.tests.contains(&t)
    }
}

/// The data paths to measure, in the fixed order of the tables.
pub fn paths(against: &[Baseline], ty: &[TapyardPath]) -> Vec<&'static str> {
    let mut out = vec![];
    if against.contains(&Baseline::Bridge) {
        out.push("bridge");
    }
    if against.contains(&Baseline::Vde) {
        out.push("vde");
    }
    if against.contains(&Baseline::Ovs) {
        out.extend(["ovs", "ovs-tso"]);
    }
    if ty.contains(&TapyardPath::Switched) {
        out.push("tapyard");
    }
    if ty.contains(&TapyardPath::Routed) {
        out.push("tapyard-routed");
    }
    if ty.contains(&TapyardPath::Busy) {
        out.push("tapyard-busy");
    }
    if ty.contains(&TapyardPath::Afxdp) {
        out.push("tapyard-afxdp");
    }
    if ty.contains(&TapyardPath::Steer) {
        out.push("tapyard-steer");
    }
    out
}

struct Run<'a> {
    plan: &'a Plan,
    exe: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    prefix: String,
    clk_tck: f64,
    errors: u32,
    bridge_kpps: Option<f64>,
    raw: Vec<RawPath>,
}

/// A UDP measurement of 60-byte frames (18-byte payloads): udp, at no rate
/// limit, and loss, at the rate the Linux bridge reached.
struct UdpTest<'a> {
    /// In the names of the raw iperf3 files and in error messages.
    name: &'a str,
    /// iperf3's -b (0: unlimited).
    rate: &'a str,
    /// The run's figure; None when iperf3 reported no packet counts.
    figure: fn(&measure::IperfResult) -> Option<f64>,
    /// The figure's key, and the key of the rate iperf3 offered.
    key: &'a str,
    offered_key: &'a str,
    /// The progress line of run i with figure v.
    line: &'a dyn Fn(u32, f64) -> String,
}

/// Exit: the run was interrupted (130), after cleaning up.
pub struct Interrupted;

fn bail_early(msg: &str) -> i32 {
    eprintln!("tapyard bench: {msg}");
    1
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn first_line(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn git_rev(src: &str) -> String {
    let rev = first_line("git", &["-C", src, "rev-parse", "--short=12", "HEAD"]);
    if rev.is_empty() {
        return "unknown".into();
    }
    let dirty = Command::new("git")
        .args(["-C", src, "status", "--porcelain", "--untracked-files=no"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{rev}+uncommitted")
    } else {
        rev
    }
}

fn pp_label(pp: Option<PingPong>) -> String {
    match pp {
        Some(PingPong::Sockperf) => {
            let v = Command::new("sockperf")
                .arg("--version")
                .output()
                .map(|o| {
                    let t = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    t.split_once("version ")
                        .map(|(_, r)| r.split([' ', ',', '\n']).next().unwrap_or("").to_string())
                        .unwrap_or_default()
                })
                .unwrap_or_default();
            format!("sockperf {v} ping-pong, 64-byte messages")
        }
        Some(PingPong::Python(true)) => {
            "python3 (pingpong.py, chosen by TAPYARD_BENCH_PINGPONG), 64-byte messages".into()
        }
        Some(PingPong::Python(false)) => {
            format!("python3 fallback (pingpong.py; sockperf not installed, {INSTALL_HINT}), 64-byte messages")
        }
        None => format!("none: neither sockperf nor python3 found, {INSTALL_HINT}"),
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if it does not answer).
pub fn clk_tck() -> f64 {
    first_line("getconf", &["CLK_TCK"]).trim().parse::<f64>().unwrap_or(100.0)
}

/// The machine, and the tapyard measured (its revision and version only
/// when a tapyard path runs, as bench.sh wrote them).
pub fn machine(exe: &Path, need_ty: bool) -> Machine {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().into())
        })
        .unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpu,
        date: iso_utc(now),
        tapyard_rev: if need_ty { git_rev(super::SOURCE_TREE) } else { "unknown".into() },
        tapyard_version: if need_ty { format!("tapyard {}", env!("CARGO_PKG_VERSION")) } else { String::new() },
        tapyard_binary: exe.to_string_lossy().into_owned(),
    }
}

/// Runs `prog args` in `ns` (niced as the lab says), output into `out`,
/// killed after `limit` (as `timeout(1)` did) or on a signal; returns the output.
pub fn fg_in(
    lab: &Lab,
    ns: &str,
    out: &Path,
    limit: Duration,
    prog: &str,
    args: &[&str],
) -> Result<String, SetupError> {
    let f = fs::File::create(out).map_err(|e| SetupError::Fail(format!("cannot create {}: {e}", out.display())))?;
    let ferr = f.try_clone().map_err(|e| SetupError::Fail(e.to_string()))?;
    let mut child = lab
        .in_ns(ns, prog, true)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(ferr)
        .spawn()
        .map_err(|e| SetupError::Fail(format!("cannot run {prog}: {e}")))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(SetupError::Fail(format!("waiting for {prog}: {e}"))),
        }
        if labkit::interrupted() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A Ctrl-C from the terminal ends the tool too: its output is not a measurement.
    if labkit::interrupted() {
        return Err(SetupError::Interrupted);
    }
    Ok(fs::read_to_string(out).unwrap_or_default())
}

pub fn work_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    for n in 0..100u32 {
        let dir = base.join(format!("tapyard-bench.{pid}.{:06x}", (nanos + n) & 0xff_ffff));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}

/// Runs the benchmark the flags describe; the exit status (0: every path
/// that was not skipped measured without errors; 1: errors; 130: interrupted).
pub fn run(args: &BenchArgs, files: &super::Files) -> anyhow::Result<i32> {
    let against = super::dedup(&args.against);
    let ty = super::dedup(&args.paths);
    let tests = super::dedup(&args.tests);
    let plan_paths = paths(&against, &ty);
    let need_ty = ty != [TapyardPath::Nothing];

    if !is_root() {
        return Ok(bail_early(
            "needs root: it creates network namespaces, veth pairs, TAPs and bridges \
(or run it as uid 0 of a user namespace: unshare --user --map-root-user --net --mount, with a tmpfs on /run and /run/netns)",
        ));
    }
    let missing: Vec<&str> =
        ["ip", "iperf3", "ping", "ss", "timeout"].into_iter().filter(|t| !labkit::have(t)).collect();
    if !missing.is_empty() {
        return Ok(bail_early(&format!(
            "missing tools: {}; {INSTALL_HINT} (Debian: iproute2 iperf3 iputils-ping coreutils)",
            missing.join(" ")
        )));
    }
    let exe = std::env::current_exe()?;
    let pingpong = if !tests.contains(&Test::Pingpong) {
        None
    } else if std::env::var("TAPYARD_BENCH_PINGPONG").is_ok_and(|v| v == "python3") {
        Some(PingPong::Python(true))
    } else if labkit::have("sockperf") {
        Some(PingPong::Sockperf)
    } else if labkit::have("python3") {
        log(&format!(
            "sockperf not found: 64-byte ping-pong by the python3 fallback (bench/system/pingpong.py); {INSTALL_HINT}"
        ));
        Some(PingPong::Python(false))
    } else {
        None
    };
    let plan = Plan {
        paths: plan_paths,
        tests: tests.clone(),
        duration: args.duration,
        runs: args.runs,
        pings: args.pings,
        ping_interval: args.ping_interval,
        workers: args.workers,
        nice: args.nice,
        pingpong,
    };
    labkit::install_interrupt_flag()?;

    let work = work_dir()?;
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    files.write(&work)?;
    let clk_tck = clk_tck();
    let machine = machine(&exe, need_ty);
    let (nproc, kernel) = (machine.nproc, machine.kernel.clone());
    let config = Config {
        against: against.iter().map(super::value_name).collect(),
        paths: ty.iter().map(super::value_name).collect(),
        tests: tests.iter().map(super::value_name).collect(),
        duration_s: plan.duration,
        runs: plan.runs,
        pings: plan.pings,
        ping_interval_s: plan.ping_interval,
        workers: plan.workers,
        nice: plan.nice,
        iperf3: first_line("iperf3", &["--version"]),
        pingpong_tool: pp_label(plan.pingpong),
    };
    log(&format!(
        "machine: {nproc} CPUs, kernel {kernel}; paths: {}; tests: {}; {} x {} s; {} pings",
        plan.paths.join(" "),
        config.tests.join(","),
        plan.runs,
        plan.duration,
        plan.pings
    ));

    let mut r = Run {
        plan: &plan,
        exe,
        work: work.clone(),
        logs: logs.clone(),
        prefix: format!("tyb{}", std::process::id()),
        clk_tck,
        errors: 0,
        bridge_kpps: None,
        raw: vec![],
    };
    let mut interrupted = false;
    for p in plan.paths.clone() {
        if r.run_path(p).is_err() {
            interrupted = true;
            break;
        }
    }
    let finish = |code: i32| {
        if args.keep {
            log(&format!("work directory kept: {}", work.display()));
        } else {
            let _ = fs::remove_dir_all(&work);
        }
        code
    };
    if interrupted || labkit::interrupted() {
        log("interrupted: cleaned up");
        return Ok(finish(130));
    }

    let mut results = Results {
        tool: "tapyard bench".into(),
        schema_version: schema::SCHEMA_VERSION,
        machine,
        config,
        bridge_udp64_kpps: r.bridge_kpps,
        errors: r.errors,
        figures: schema::FIGURES.iter().map(Into::into).collect(),
        paths: schema::compute(&r.raw),
        chart: None,
    };
    let view = report::View { plan: &plan, bridge_kpps: r.bridge_kpps };
    if let Some(dir) = &args.report {
        report::write(dir, &mut results, &view, &work, &logs)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", report::render_md(&results, &view));
    }
    if r.errors > 0 {
        log(&format!("{} error(s): see the notes above", r.errors));
        return Ok(finish(1));
    }
    Ok(finish(0))
}

impl Run<'_> {
    fn backend(&self, name: &str) -> Box<dyn Backend> {
        let ty = |mode| {
            Box::new(labkit::Tapyard {
                exe: self.exe.clone(),
                mode,
                workers: self.plan.workers,
                daemon_log: self.logs.join(format!("{name}.daemon.log")),
                netns: None,
                uplink: false,
            }) as Box<dyn Backend>
        };
        match name {
            "bridge" => Box::new(labkit::LinuxBridge),
            "vde" => Box::new(labkit::Vde),
            "ovs" => Box::new(labkit::Ovs { tso: false }),
            "ovs-tso" => Box::new(labkit::Ovs { tso: true }),
            "tapyard-routed" => ty(TapyardMode::Routed),
            "tapyard-busy" => ty(TapyardMode::Busy),
            "tapyard-afxdp" => ty(TapyardMode::Afxdp),
            "tapyard-steer" => ty(TapyardMode::Steer),
            _ => ty(TapyardMode::Switched),
        }
    }

    /// Builds, measures and removes one path; Err only when interrupted.
    fn run_path(&mut self, name: &'static str) -> Result<(), Interrupted> {
        let mut backend = self.backend(name);
        log(&format!("=== {name}: {}", backend.title()));
        let setup_log = self.logs.join(format!("{name}.setup.log"));
        let mut raw = RawPath::new(name);
        let mut lab = match Lab::new(&self.prefix, &self.work.join("run"), &setup_log, self.plan.nice) {
            Ok(l) => l,
            Err(e) => {
                raw.status = Status::Failed;
                raw.reason = Some(e.to_string());
                self.errors += 1;
                self.raw.push(raw);
                return Ok(());
            }
        };
        let (ns_a, ns_b) = (lab.name("a"), lab.name("b"));
        let built = lab.add_netns(&ns_a).and_then(|()| lab.add_netns(&ns_b)).and_then(|()| {
            let ends = [
                Endpoint { netns: ns_a.clone(), addr: IP_A, prefix_len: 24 },
                Endpoint { netns: ns_b.clone(), addr: IP_B, prefix_len: 24 },
            ];
            backend.up(&mut lab, &ends)
        });
        let seg = match built {
            Ok(seg) => seg,
            Err(SetupError::Interrupted) => return Err(Interrupted),
            Err(e) => {
                let (status, reason) = match e {
                    SetupError::Skip(r) => (Status::Skipped, r),
                    // the peers are measured when they can start; tapyard and the bridge must work
                    SetupError::Fail(r) if name == "vde" || name.starts_with("ovs") => {
                        (Status::Skipped, format!("could not start: {r}"))
                    }
                    SetupError::Fail(r) => (Status::Failed, r),
                    SetupError::Interrupted => unreachable!("handled above"),
                };
                log(&format!("  {}: {reason}", if status == Status::Failed { "failed" } else { "skipped" }));
                if status == Status::Failed {
                    self.errors += 1;
                }
                raw.status = status;
                raw.reason = Some(reason);
                self.keep_peer_logs(&lab, name);
                self.raw.push(raw);
                return Ok(());
            }
        };
        raw.setup = Some(seg.setup.clone());
        let target = seg.addrs.get(1).copied().unwrap_or(IP_B).to_string();
        let result = self.measure(&mut lab, &mut raw, &seg.switch_pids, &ns_a, &ns_b, &target);
        self.keep_peer_logs(&lab, name);
        drop(lab);
        match result {
            Err(SetupError::Interrupted) => return Err(Interrupted),
            Err(e) => {
                raw.status = Status::Failed;
                raw.reason = Some(e.to_string());
                raw.samples.clear();
                self.errors += 1;
                log(&format!("  failed: {e}"));
            }
            Ok(()) => log(&format!("=== {name} done")),
        }
        if name == "bridge" {
            self.bridge_kpps = schema::median(&raw.values("udp64_kpps"))
                .map(|k| (k * 10.0).round() / 10.0)
                .filter(|_| raw.status == Status::Ok);
        }
        self.raw.push(raw);
        Ok(())
    }

    /// The peers' own logs (Open vSwitch), for the report.
    fn keep_peer_logs(&self, lab: &Lab, name: &str) {
        if let Ok(dir) = fs::read_dir(lab.dir()) {
            for e in dir.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if f.ends_with(".log") {
                    let _ = fs::copy(e.path(), self.logs.join(format!("{name}.{f}")));
                }
            }
        }
    }

    fn note(&mut self, raw: &mut RawPath, msg: String) {
        log(&format!("  note: {msg}"));
        raw.notes.push(msg);
    }

    fn err(&mut self, raw: &mut RawPath, msg: String) {
        self.errors += 1;
        self.note(raw, format!("error: {msg}"));
    }

    fn fg(
        &self,
        lab: &Lab,
        ns: &str,
        out: &Path,
        limit: Duration,
        prog: &str,
        args: &[&str],
    ) -> Result<String, SetupError> {
        fg_in(lab, ns, out, limit, prog, args)
    }

    fn sw_ticks(pids: &[u32]) -> u64 {
        pids.iter().filter_map(|&p| labkit::cpu_ticks(p)).sum()
    }

    fn listening(ns: &str, flag: &str, port: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ss", flag])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!(":{port} ")))
    }

    fn measure(
        &mut self,
        lab: &mut Lab,
        raw: &mut RawPath,
        sw: &[u32],
        ns_a: &str,
        ns_b: &str,
        target: &str,
    ) -> Result<(), SetupError> {
        let name = raw.name.clone();
        let reach = |lab: &Lab| {
            lab.wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
                Command::new("ip")
                    .args(["netns", "exec", ns_a, "ping", "-n", "-c", "1", "-W", "1", "-q", target])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        };
        if !reach(lab)? {
            return Err(SetupError::Fail(format!("A cannot ping B ({target}) after setup")));
        }
        self.describe(lab, sw, ns_a, ns_b);
        let plan = self.plan;
        let server_log = self.logs.join(format!("{name}.iperf3-server.log"));
        lab.spawn(lab.in_ns(ns_b, "iperf3", true).args(["-s", "-p", IPERF_PORT]), &server_log, "iperf3 server")?;
        lab.wait_for(Duration::from_secs(5), Duration::from_millis(100), || Self::listening(ns_b, "-ltn", IPERF_PORT))?;
        let mut pp_ok = false;
        if plan.has(Test::Pingpong) {
            if let Some(pp) = plan.pingpong {
                let (log, mut cmd) = match pp {
                    PingPong::Sockperf => {
                        let mut c = lab.in_ns(ns_b, "sockperf", true);
                        c.args(["sr", "-i", target, "-p", PP_PORT]);
                        (self.logs.join(format!("{name}.sockperf-server.log")), c)
                    }
                    PingPong::Python(_) => {
                        let mut c = lab.in_ns(ns_b, "python3", true);
                        c.arg(self.work.join("pingpong.py")).args(["server", target, PP_PORT]);
                        (self.logs.join(format!("{name}.pingpong-server.log")), c)
                    }
                };
                lab.spawn(&mut cmd, &log, "ping-pong server")?;
                pp_ok = lab.wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
                    Self::listening(ns_b, "-lun", PP_PORT)
                })?;
                if !pp_ok {
                    let tool = if pp == PingPong::Sockperf { "sockperf" } else { "python3" };
                    self.err(raw, format!("the ping-pong server ({tool}) did not start"));
                }
            }
        }
        // ARP and MAC learning before the first measurement
        let _ = Command::new("ip")
            .args(["netns", "exec", ns_a, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-q", target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();

        if plan.has(Test::Tcp1) {
            self.test_tcp(lab, raw, sw, ns_a, target, 1, "tcp1_gbps")?;
        }
        if plan.has(Test::Tcp4) {
            self.test_tcp(lab, raw, sw, ns_a, target, 4, "tcp4_gbps")?;
        }
        // the bridge's UDP rate is the offered rate of every path's loss test
        if plan.has(Test::Udp) || (name == "bridge" && plan.has(Test::Loss)) {
            self.test_udp(lab, raw, ns_a, target)?;
        }
        if name == "bridge" {
            self.bridge_kpps = schema::median(&raw.values("udp64_kpps")).map(|k| (k * 10.0).round() / 10.0);
        }
        if plan.has(Test::Loss) {
            self.test_loss(lab, raw, ns_a, target)?;
        }
        if plan.has(Test::Ping) {
            self.test_ping(lab, raw, ns_a, target)?;
        }
        if plan.has(Test::Pingpong) {
            match plan.pingpong {
                Some(pp) if pp_ok => self.test_pingpong(lab, raw, ns_a, target, pp)?,
                Some(_) => {}
                None => {
                    self.note(raw, format!("pingpong: skipped, neither sockperf nor python3 found, {INSTALL_HINT}"))
                }
            }
        }
        if sw.is_empty() {
            self.note(raw, "cpu: the bridge forwards in kernel softirq context, no switch process to account".into());
        }
        Ok(())
    }

    /// The setup log's tail: links, addresses, routes and offloads of A and B.
    fn describe(&self, lab: &Lab, sw: &[u32], ns_a: &str, ns_b: &str) {
        let pids: Vec<String> = sw.iter().map(u32::to_string).collect();
        lab.note(&format!(
            "switch pids: {}",
            if pids.is_empty() { "none (kernel)".to_string() } else { pids.join(" ") }
        ));
        for args in [
            vec!["-n", ns_a, "-d", "link", "show"],
            vec!["-n", ns_a, "addr", "show"],
            vec!["-n", ns_a, "route", "show"],
            vec!["-n", ns_b, "-d", "link", "show"],
        ] {
            let _ = lab.ip(&args);
        }
        if labkit::have("ethtool") {
            for ns in [ns_a, ns_b] {
                let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output();
                let ifn = out.ok().and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter_map(|l| l.split(": ").nth(1))
                        .map(|n| n.split('@').next().unwrap_or(n).to_string())
                        .find(|n| n != "lo")
                });
                if let Some(ifn) = ifn {
                    lab.note(&format!("offloads of {ifn} in {ns}:"));
                    let o = Command::new("ip").args(["netns", "exec", ns, "ethtool", "-k", &ifn]).output();
                    if let Ok(o) = o {
                        for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| {
                            [
                                "tx-checksumming:",
                                "tcp-segmentation-offload:",
                                "generic-segmentation-offload:",
                                "generic-receive-offload:",
                            ]
                            .iter()
                            .any(|k| l.starts_with(k))
                        }) {
                            lab.note(l);
                        }
                    }
                }
            }
        }
    }

    fn iperf(
        &self,
        lab: &Lab,
        ns_a: &str,
        target: &str,
        out: &Path,
        extra: &[&str],
    ) -> Result<Result<measure::IperfResult, String>, SetupError> {
        let dur = self.plan.duration.to_string();
        let mut args = vec!["-c", target, "-p", IPERF_PORT, "-t", &dur, "-J"];
        args.extend_from_slice(extra);
        let limit = Duration::from_secs(u64::from(self.plan.duration) + 30);
        let text = self.fg(lab, ns_a, out, limit, "iperf3", &args)?;
        Ok(measure::iperf(&text))
    }

    #[allow(clippy::too_many_arguments)]
    fn test_tcp(
        &mut self,
        lab: &Lab,
        raw: &mut RawPath,
        sw: &[u32],
        ns_a: &str,
        target: &str,
        streams: u32,
        key: &str,
    ) -> Result<(), SetupError> {
        let stem = key.trim_end_matches("_gbps");
        for i in 1..=self.plan.runs {
            let js = self.logs.join(format!("{}.{key}.{i}.json", raw.name));
            let t0 = Self::sw_ticks(sw);
            let p = streams.to_string();
            let r = match self.iperf(lab, ns_a, target, &js, &["-P", &p])? {
                Ok(r) => r,
                Err(e) => {
                    self.err(raw, format!("{key} run {i}: iperf3 failed: {e}"));
                    continue;
                }
            };
            let t1 = Self::sw_ticks(sw);
            raw.record(key, r.gbps());
            raw.record(&format!("{stem}_retransmits"), r.retransmits());
            let mut cpu = String::new();
            if key == "tcp1_gbps" && !sw.is_empty() && r.received.bytes > 0.0 {
                let c = (t1.saturating_sub(t0) as f64 / self.clk_tck) / (r.received.bytes / 1e9);
                raw.record("cpu_s_per_gb", c);
                cpu = format!(" switch CPU {c:.3} s/GB");
            }
            log(&format!("  {key} run {i}: {:.2} Gbit/s{cpu}", r.gbps()));
        }
        Ok(())
    }

    fn test_udp(&mut self, lab: &Lab, raw: &mut RawPath, ns_a: &str, target: &str) -> Result<(), SetupError> {
        let udp = UdpTest {
            name: "udp",
            rate: "0",
            figure: measure::IperfResult::received_kpps,
            key: "udp64_kpps",
            offered_key: "udp64_offered_kpps",
            line: &|i, v| format!("  udp64 run {i}: {v:.1} kpps received"),
        };
        self.udp_runs(lab, raw, ns_a, target, &udp)
    }

    fn test_loss(&mut self, lab: &Lab, raw: &mut RawPath, ns_a: &str, target: &str) -> Result<(), SetupError> {
        let Some(kpps) = self.bridge_kpps else {
            self.note(
                raw,
                "loss: skipped, the Linux bridge's 64-byte UDP rate was not measured in this run (it needs bridge in --against)"
                    .into(),
            );
            return Ok(());
        };
        let bits = format!("{:.0}", kpps * 1000.0 * 18.0 * 8.0);
        let loss = UdpTest {
            name: "loss",
            rate: &bits,
            figure: measure::IperfResult::loss_pct,
            key: "loss_pct",
            offered_key: "loss_offered_kpps",
            line: &|i, v| format!("  loss run {i}: {v:.3} % of 60-byte frames offered at {kpps:.1} kpps"),
        };
        self.udp_runs(lab, raw, ns_a, target, &loss)
    }

    /// The runs of a [`UdpTest`]: a run iperf3 fails, or reports no packet
    /// counts for, is an error of the path and records nothing.
    fn udp_runs(
        &mut self,
        lab: &Lab,
        raw: &mut RawPath,
        ns_a: &str,
        target: &str,
        t: &UdpTest<'_>,
    ) -> Result<(), SetupError> {
        let name = t.name;
        for i in 1..=self.plan.runs {
            let js = self.logs.join(format!("{}.{name}.{i}.json", raw.name));
            let r = match self.iperf(lab, ns_a, target, &js, &["-u", "-l", "18", "-b", t.rate])? {
                Ok(r) => r,
                Err(e) => {
                    self.err(raw, format!("{name} run {i}: iperf3 failed: {e}"));
                    continue;
                }
            };
            let Some(v) = (t.figure)(&r) else {
                self.err(raw, format!("{name} run {i}: iperf3 reported no packet counts"));
                continue;
            };
            raw.record(t.key, v);
            if let Some(o) = r.offered_kpps() {
                raw.record(t.offered_key, o);
            }
            log(&(t.line)(i, v));
        }
        Ok(())
    }

    fn test_ping(&mut self, lab: &Lab, raw: &mut RawPath, ns_a: &str, target: &str) -> Result<(), SetupError> {
        let limit = Duration::from_secs_f64(f64::from(self.plan.pings) * self.plan.ping_interval + 30.0);
        let (count, interval) = (self.plan.pings.to_string(), self.plan.ping_interval.to_string());
        for i in 1..=self.plan.runs {
            let f = self.logs.join(format!("{}.ping.{i}.txt", raw.name));
            let text =
                self.fg(lab, ns_a, &f, limit, "ping", &["-n", "-c", &count, "-i", &interval, "-W", "1", target])?;
            let rtts = measure::ping_rtts_us(&text);
            if rtts.is_empty() {
                let last = text.lines().last().unwrap_or("").to_string();
                self.err(raw, format!("ping run {i}: no replies ({last})"));
                continue;
            }
            let p50 = schema::percentile(&rtts, 0.50).unwrap_or(f64::NAN);
            let p99 = schema::percentile(&rtts, 0.99).unwrap_or(f64::NAN);
            let lost = f64::from(self.plan.pings) - rtts.len() as f64;
            raw.record("ping_p50_us", p50);
            raw.record("ping_p99_us", p99);
            raw.record("ping_lost", lost);
            log(&format!("  ping run {i}: RTT p50 {p50} us, p99 {p99} us, lost {lost}"));
        }
        Ok(())
    }

    fn test_pingpong(
        &mut self,
        lab: &Lab,
        raw: &mut RawPath,
        ns_a: &str,
        target: &str,
        pp: PingPong,
    ) -> Result<(), SetupError> {
        let limit = Duration::from_secs(u64::from(self.plan.duration) + 30);
        let dur = self.plan.duration.to_string();
        let tool = if pp == PingPong::Sockperf { "sockperf" } else { "python3" };
        for i in 1..=self.plan.runs {
            let f = self.logs.join(format!("{}.pingpong.{i}.txt", raw.name));
            let parsed = match pp {
                PingPong::Sockperf => {
                    let t = self.fg(
                        lab,
                        ns_a,
                        &f,
                        limit,
                        "sockperf",
                        &["pp", "-i", target, "-p", PP_PORT, "-t", &dur, "-m", "64"],
                    )?;
                    measure::sockperf(&t).map(|r| (r, t))
                }
                PingPong::Python(_) => {
                    let script = self.work.join("pingpong.py").to_string_lossy().into_owned();
                    let t =
                        self.fg(lab, ns_a, &f, limit, "python3", &[&script, "client", target, PP_PORT, &dur, "64"])?;
                    measure::pingpong_py(&t).map(|r| (r, t))
                }
            };
            let Some(((p50, p99, n), _)) = parsed else {
                let last = fs::read_to_string(&f).unwrap_or_default().lines().last().unwrap_or("").to_string();
                self.err(raw, format!("pingpong run {i}: {tool} gave no result ({last})"));
                continue;
            };
            raw.record("pingpong_p50_us", p50);
            raw.record("pingpong_p99_us", p99);
            raw.record("pingpong_messages", n.unwrap_or(0) as f64);
            log(&format!("  pingpong ({tool}) run {i}: RTT p50 {p50} us, p99 {p99} us, {} messages", n.unwrap_or(0)));
        }
        Ok(())
    }
}

/// The names of the paths that measured (for the report's tables).
pub fn measured(results: &Results) -> BTreeSet<String> {
    results.paths.iter().filter(|p| p.status == Status::Ok).map(|p| p.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_utc(1_796_624_999), "2026-12-07T06:29:59Z");
    }

    #[test]
    fn path_order_is_fixed() {
        assert_eq!(
            paths(&[Baseline::Ovs, Baseline::Bridge], &[TapyardPath::Busy, TapyardPath::Switched]),
            ["bridge", "ovs", "ovs-tso", "tapyard", "tapyard-busy"]
        );
        assert!(paths(&[Baseline::Nothing], &[TapyardPath::Nothing]).is_empty());
    }
}
