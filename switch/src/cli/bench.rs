//! `tapyard bench`: the system benchmark users run to compare tapyard with the
//! data paths it competes with, on their own machine, in one run.
//!
//! All of it is Rust: the data paths are [`labkit`] backends (the Linux
//! bridge, vde_switch, Open vSwitch, tapyard) in `Lab` guards; `runner`
//! measures across each with iperf3, ping and sockperf (or the python3
//! ping-pong `bench/system/pingpong.py`, a thin external tool); `measure`
//! reads the tools' output; `schema` holds the results' serde types and
//! computes medians and ratios; `report` writes the tables, results.json,
//! results.md and the chart (gnuplot with `bench/system/chart.gp`). `--vhost`
//! (`vhost`: DPDK testpmd as the VMs), `--egress` (`egress`: NAT,
//! published ports, pasta) and `--dhcp` (`dhcp`: perfdhcp against tapyard's
//! gateway and Kea) are modules of their own. The files they run are
//! embedded so that an installed `tapyard` needs no source tree. What
//! everything measures, and how, is in each module's doc and in
//! docs/PERFORMANCE.md.
//!
//! Signals: SIGINT and SIGTERM set a flag
//! ([`labkit::install_interrupt_flag`]); the run unwinds through the guards,
//! which remove what was made, and the exit status is 130.
//!
//! [`labkit`]: super::labkit
//! [`labkit::install_interrupt_flag`]: super::labkit::install_interrupt_flag

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

const PINGPONG: &str = include_str!("../../../bench/system/pingpong.py");
const CHART: &str = include_str!("../../../bench/system/chart.gp");
const TESTPMD: &str = include_str!("../../../scripts/testpmd.sh");

mod dhcp;
mod egress;
mod measure;
mod report;
mod runner;
pub mod schema;
mod vhost;

/// Where the sources were at build time: the report names their git revision
/// when they are still there.
const SOURCE_TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Data paths to measure beside tapyard, comma-separated: bridge (the Linux kernel
    /// bridge over veth), vde (vde_switch over TAP), ovs (Open vSwitch, userspace
    /// datapath over TAP, without and with userspace TSO), or none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bridge,vde,ovs", value_name = "LIST")]
    pub against: Vec<Baseline>,
    /// tapyard data paths, comma-separated: switched (A and B on one network), routed
    /// (on two networks joined by a router), busy (switched, daemon --poll busy), afxdp
    /// (switched, both ports `connect --kind afxdp`), steer (switched, daemon
    /// --tap-steering cpu); the last two not in the default set; or none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "switched,routed,busy", value_name = "LIST")]
    pub paths: Vec<TapyardPath>,
    /// Seconds of each iperf3 and ping-pong measurement.
    #[arg(long, default_value_t = 5, value_name = "S", value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub duration: u32,
    /// Repetitions of each measurement; every figure is the median.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Measurements, comma-separated: tcp1 (TCP, 1 stream, and the switch's CPU per GB),
    /// tcp4 (4 streams), udp (64-byte frames per second), loss (at the bridge's rate),
    /// ping (ICMP every 2 ms), pingpong (64-byte UDP request/response).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp1,tcp4,udp,loss,ping,pingpong",
        value_name = "LIST"
    )]
    pub tests: Vec<Test>,
    /// Pings per run of the ping test.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub pings: u32,
    /// Seconds between two pings (0.002 to 10).
    #[arg(long, default_value = "0.002", value_name = "S", value_parser = parse_ping_interval)]
    pub ping_interval: f64,
    /// Worker threads of the tapyard daemons [default: the daemon's default].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Nice level of every benchmark process (switches, iperf3, ping, sockperf)
    /// [default: this command's].
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    pub nice: Option<i32>,
    /// Print the results as JSON on stdout instead of the table (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write DIR/results.json, DIR/results.md (tables and machine), DIR/chart.png and DIR/logs/.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Keep the work directory (logs, raw iperf3, ping and sockperf output) and say where it is.
    #[arg(long)]
    pub keep: bool,
    /// Run the vhost-user benchmark instead (docs/PERFORMANCE.md): 64-byte
    /// frames per second from DPDK testpmd through tapyard's vhost-user ports
    /// against DPDK's own vhost <-> virtio-user loop and against a TAP port, and
    /// TCP between a virtio-user VM and a container. Takes --duration, --runs,
    /// --json, --report and --keep.
    #[arg(long, conflicts_with_all = ["against", "paths", "tests", "pings", "ping_interval", "workers", "nice"])]
    pub vhost: bool,
    /// Run the egress benchmark instead (docs/PERFORMANCE.md): TCP from a
    /// container to an outside namespace through tapyard's uplink and the
    /// kernel's NAT against a Linux bridge with the same NAT (Docker's
    /// layout), and to a published port against Docker-style DNAT. Takes
    /// --duration, --runs, --json, --report and --keep.
    #[arg(long, conflicts_with_all = ["against", "paths", "tests", "pings", "ping_interval", "workers", "nice", "vhost"])]
    pub egress: bool,
    /// Run the DHCP benchmark instead (docs/PERFORMANCE.md): ISC's perfdhcp,
    /// as a relay for 60,000 clients, against tapyard's gateway and against
    /// ISC's Kea, each climbing the rate ladder of --dhcp-rates until two
    /// steps in a row complete under 99 % of their exchanges; the highest
    /// sustained rate of each and their ratio. Takes --duration (seconds a step), --runs, --json,
    /// --report and --keep.
    #[arg(long, conflicts_with_all = ["against", "paths", "tests", "pings", "ping_interval", "workers", "nice", "vhost", "egress"])]
    pub dhcp: bool,
    /// The rate ladder of --dhcp: offered four-way exchanges (DORA) a second,
    /// comma-separated, climbed from the lowest.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,3000,4000,6000,8000,10000,12000,14000,16000,20000,25000,30000",
        value_name = "LIST",
        requires = "dhcp",
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub dhcp_rates: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    Bridge,
    Vde,
    Ovs,
    #[value(name = "none")]
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TapyardPath {
    Switched,
    Routed,
    Busy,
    Afxdp,
    Steer,
    #[value(name = "none")]
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Test {
    Tcp1,
    Tcp4,
    Udp,
    Loss,
    Ping,
    Pingpong,
}

fn parse_ping_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.002..=10.0).contains(&v) {
        return Err(format!("{s} is not between 0.002 and 10 seconds"));
    }
    Ok(v)
}

/// The values in the order given, without repeats.
fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for &i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The name a value has on the command line (and in results.json's config).
fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Refuses `none` combined with other values in a list.
fn check_list<T: ValueEnum + PartialEq + Copy>(flag: &str, items: &[T], none: T) -> Result<(), clap::Error> {
    let out = dedup(items);
    if out.len() > 1 && out.contains(&none) {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            format!("{flag}: 'none' cannot be combined with other values"),
        ));
    }
    Ok(())
}

impl BenchArgs {
    /// Checks what clap cannot: `none` alone, and something to measure.
    fn validate(&self) -> Result<(), clap::Error> {
        if self.vhost || self.egress || self.dhcp {
            return Ok(());
        }
        check_list("--against", &self.against, Baseline::Nothing)?;
        check_list("--paths", &self.paths, TapyardPath::Nothing)?;
        if dedup(&self.against) == [Baseline::Nothing] && dedup(&self.paths) == [TapyardPath::Nothing] {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "nothing to measure: --against none and --paths none",
            ));
        }
        Ok(())
    }
}

/// The embedded files.
pub(crate) struct Files;

impl Files {
    const ALL: [(&'static str, &'static str); 3] =
        [("pingpong.py", PINGPONG), ("chart.gp", CHART), ("testpmd.sh", TESTPMD)];

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        for (name, text) in Self::ALL {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// Runs the benchmark; returns its exit status (0: every path that was not
/// skipped measured without errors; 1: errors; 2: bad arguments; 130: interrupted).
pub fn run(args: BenchArgs) -> anyhow::Result<i32> {
    if let Err(e) = args.validate() {
        use clap::CommandFactory;
        let mut cli = super::Cli::command();
        let mut cmd = cli.find_subcommand_mut("bench").cloned().unwrap_or_default().bin_name("tapyard bench");
        e.format(&mut cmd).exit();
    }
    if args.dhcp {
        return dhcp::run(&args);
    }
    if !args.vhost && !args.egress {
        return runner::run(&args, &Files);
    }
    if args.vhost {
        return vhost::run(&args, &Files);
    }
    egress::run(&args, &Files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        a: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let t = T::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        t.a.validate()?;
        Ok(t.a)
    }

    #[test]
    fn defaults_and_lists() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            runner::paths(&a.against, &a.paths),
            ["bridge", "vde", "ovs", "ovs-tso", "tapyard", "tapyard-routed", "tapyard-busy"]
        );
        assert_eq!(dedup(&a.tests).len(), 6);
        let a = parse(&["--against", "ovs,bridge,ovs", "--paths", "none", "--duration", "1", "--json"]).unwrap();
        assert_eq!(dedup(&a.against).iter().map(value_name).collect::<Vec<_>>(), ["ovs", "bridge"]);
        assert_eq!(value_name(&a.paths[0]), "none");
        assert!(a.json);
        assert_eq!(parse(&["--nice", "-5"]).unwrap().nice, Some(-5));
        let v = parse(&["--vhost", "--duration", "4", "--runs", "1", "--json"]).unwrap();
        assert!(v.vhost && v.json && v.duration == 4 && v.runs == 1);
    }

    #[test]
    fn egress_arguments() {
        let e = parse(&["--egress", "--duration", "1", "--runs", "2", "--report", "out/dir", "--keep"]).unwrap();
        assert!(e.egress && e.keep && e.duration == 1 && e.runs == 2);
        assert_eq!(e.report.as_deref(), Some(Path::new("out/dir")));
        let e = parse(&["--egress", "--json"]).unwrap();
        assert!(e.json && e.duration == 5 && e.runs == 3);
        for bad in [
            &["--egress", "--vhost"][..],
            &["--egress", "--against", "bridge"],
            &["--egress", "--paths", "switched"],
            &["--egress", "--tests", "tcp1"],
            &["--egress", "--workers", "1"],
            &["--egress", "--nice", "1"],
            &["--egress", "--pings", "10"],
            &["--egress", "--duration", "0"],
            &["--egress", "--runs", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn dhcp_arguments() {
        let d = parse(&["--dhcp", "--duration", "2", "--runs", "1", "--dhcp-rates", "500,250", "--json"]).unwrap();
        assert!(d.dhcp && d.json && d.duration == 2 && d.runs == 1);
        assert_eq!(d.dhcp_rates, [500, 250]);
        let d = parse(&["--dhcp"]).unwrap();
        assert_eq!(d.dhcp_rates.first(), Some(&1000));
        assert_eq!(d.dhcp_rates.last(), Some(&30000));
        for bad in [
            &["--dhcp", "--vhost"][..],
            &["--dhcp", "--egress"],
            &["--dhcp", "--against", "bridge"],
            &["--dhcp", "--tests", "tcp1"],
            &["--dhcp", "--workers", "1"],
            &["--dhcp", "--dhcp-rates", "0"],
            &["--dhcp", "--dhcp-rates", "fast"],
            &["--dhcp-rates", "1000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn bad_arguments() {
        for bad in [
            &["--against", "nope"][..],
            &["--duration", "0"],
            &["--runs", "0"],
            &["--tests", "tcp9"],
            &["--ping-interval", "0.0001"],
            &["--against", "none,bridge"],
            &["--against", "none", "--paths", "none"],
            &["--vhost", "--against", "bridge"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn embedded_files_are_the_harness() {
        assert!(PINGPONG.contains("def client"));
        assert!(CHART.contains("multiplot"));
        assert!(TESTPMD.contains("testpmd_available()"));
    }
}
