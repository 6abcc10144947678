//! `tapyard lab`: network labs from topology files (docs/labs.md), and the
//! embedded default lab, tapyard's main job in one command.
//!
//! `lab up [FILE]` builds a lab through the engine ([`engine`]) from a file
//! checked by [`topology`]; without FILE it builds the embedded
//! `examples/default.toml` (two networks, four namespaces), prints who
//! reaches whom, and stays in the foreground until Ctrl-C or `lab down`
//! (`--check`: tears it down after the matrix, exit 0 only if every
//! expectation held). A lab from a file is left running: `lab status`,
//! `lab exec`, `lab graph` and `lab down` find it by name, from any shell,
//! through its record `RUNTIME_DIR/lab-NAME.json`.

#![forbid(unsafe_code)]

/// `println!` for the lab's progress and results, except that a reader who
/// went away (`lab up | head`) does not abort a half-built lab: output is
/// a report, the lab is the job.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` as [`say!`] (no newline).
macro_rules! say_nb {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

pub mod engine;
pub mod topology;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use clap::Subcommand;

use super::BadArgs;
use engine::Record;
use topology::Topology;

/// The default lab, embedded: `lab up` without a file.
pub const DEFAULT_LAB: &str = include_str!("../../../../examples/default.toml");

#[derive(Subcommand, Debug)]
pub enum LabCmd {
    /// Build a lab from a topology file (docs/labs.md), or the embedded
    /// default lab: two networks, four namespaces, a connectivity matrix,
    /// kept until Ctrl-C or `lab down`.
    Up {
        /// The topology file (TOML) [default: the embedded lab, examples/default.toml].
        file: Option<PathBuf>,
        /// Ping every pair, tear the lab down, exit 0 only if every
        /// expectation held (same network or one router: reached; else not).
        #[arg(long)]
        check: bool,
        /// The lab's name, which prefixes its networks, routers and
        /// namespaces [default: the file's `name`, else its stem; `lab` for
        /// the default lab].
        #[arg(long)]
        prefix: Option<String>,
        /// Stay in the foreground until Ctrl-C or `lab down` (always so for
        /// the default lab).
        #[arg(long)]
        foreground: bool,
    },
    /// Remove everything a lab made (and the daemon, if `lab up` started one
    /// and no other lab uses it).
    Down {
        /// A topology file, or a lab's name [default: the one lab that is up].
        target: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// The labs that are up: nodes, interfaces, addresses, networks,
    /// routers, links, counters, processes.
    Status {
        /// A lab's name [default: every lab that is up].
        name: Option<String>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a node's namespace, by the file's names.
    #[command(override_usage = "tapyard lab exec [LAB] <NODE> -- <CMD>...")]
    Exec {
        /// [LAB] NODE: the lab may be left out when one lab is up.
        #[arg(required = true, num_args = 1..=2, value_name = "LAB NODE")]
        target: Vec<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Draw the lab: nodes, networks, routers, addresses (Graphviz).
    Graph {
        /// A lab's name [default: the one lab that is up].
        name: Option<String>,
        /// FILE.svg, .png or .pdf (through Graphviz `dot`), or .dot (the graph text).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a topology file and create nothing: prints its problems, each
    /// as FILE:LINE:COLUMN, or what it would build.
    Validate {
        file: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
    },
}

/// Reads and checks a topology (FILE, or the embedded lab).
pub fn load(file: Option<&Path>, prefix: Option<&str>) -> anyhow::Result<Topology> {
    if let Some(p) = prefix {
        topology::check_lab_name(p).map_err(|e| BadArgs(format!("--prefix: {e}")))?;
    }
    let (text, shown, stem) = match file {
        None => (DEFAULT_LAB.to_string(), "default.toml (embedded)".to_string(), "lab".to_string()),
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            (text, f.display().to_string(), stem)
        }
    };
    topology::parse(&text, &shown, &stem, prefix).map_err(|e| BadArgs(e.to_string()).into())
}

/// The lab a command means: a file's lab, a name, --prefix, or the only one up.
fn resolve(socket: &Path, target: Option<&str>, prefix: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = target {
        if t.ends_with(".toml") || Path::new(t).is_file() {
            return Ok(load(Some(Path::new(t)), prefix)?.name);
        }
        topology::check_lab_name(t).map_err(BadArgs)?;
        return Ok(t.to_string());
    }
    if let Some(p) = prefix {
        return Ok(p.to_string());
    }
    let labs = engine::list_labs(socket);
    match labs.len() {
        0 => Ok("lab".into()),
        1 => Ok(labs[0].clone()),
        _ => Err(BadArgs(format!("several labs are up ({}): name one", labs.join(", "))).into()),
    }
}

fn need_record(socket: &Path, name: &str) -> anyhow::Result<Record> {
    engine::read_record(socket, name)?.ok_or_else(|| {
        super::client::ClientError::Api(crate::control::proto::ApiError::not_found(format!(
            "no lab {name:?} is up (no {}); see `tapyard lab status`",
            engine::record_path(socket, name).display()
        )))
        .into()
    })
}

pub fn run(cmd: LabCmd, socket: &Path) -> anyhow::Result<i32> {
    match cmd {
        LabCmd::Up { file, check, prefix, foreground } => {
            let topo = load(file.as_deref(), prefix.as_deref())?;
            let abs = file.as_deref().map(|f| std::path::absolute(f).unwrap_or(f.to_path_buf()).display().to_string());
            up(socket, topo, abs, check, foreground || file.is_none())
        }
        LabCmd::Down { target, prefix } => {
            let name = resolve(socket, target.as_deref(), prefix.as_deref())?;
            if engine::down(socket, &name)? {
                say!("lab {name:?} removed");
            } else {
                say!("no lab {name:?} is up (no {})", engine::record_path(socket, &name).display());
            }
            Ok(0)
        }
        LabCmd::Status { name, json } => {
            let names = match name {
                Some(n) => vec![n],
                None => engine::list_labs(socket),
            };
            let mut all = vec![];
            for n in &names {
                all.push(engine::status(socket, &need_record(socket, n)?));
            }
            if json {
                super::print_json(&all);
            } else if all.is_empty() {
                super::out("no lab is up");
            } else {
                for s in &all {
                    engine::print_status(s);
                }
            }
            Ok(0)
        }
        LabCmd::Exec { target, cmd } => {
            let (lab, node) = match target.as_slice() {
                [node] => (resolve(socket, None, None)?, node.clone()),
                [lab, node] => (lab.clone(), node.clone()),
                _ => return Err(BadArgs("lab exec [LAB] NODE -- CMD...".into()).into()),
            };
            let rec = need_record(socket, &lab)?;
            if rec.topology.node(&node).is_none() {
                let names: Vec<&str> = rec.topology.nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(BadArgs(format!("lab {lab:?} has no node {node:?} (nodes: {})", names.join(", "))).into());
            }
            super::rootless::exec(socket, &rec.ns_of(&node), &cmd)
        }
        LabCmd::Graph { name, output } => {
            let name = resolve(socket, name.as_deref(), None)?;
            let rec = need_record(socket, &name)?;
            say!("{}", engine::write_graph(&rec, &output)?);
            Ok(0)
        }
        LabCmd::Validate { file, prefix } => {
            let t = load(Some(&file), prefix.as_deref())?;
            let s = topology::summary(&t);
            say!(
                "{}: lab {:?}: {} networks, {} links, {} routers, {} nodes; OK",
                file.display(),
                t.name,
                s["networks"],
                s["links"],
                s["routers"],
                s["nodes"]
            );
            Ok(0)
        }
    }
}

fn up(socket: &Path, topo: Topology, file: Option<String>, check: bool, foreground: bool) -> anyhow::Result<i32> {
    let name = topo.name.clone();
    let opts = engine::UpOptions { file: file.clone(), foreground: foreground && !check, quiet: false };
    let rec = match engine::up(socket, topo, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapyard: building the lab failed: {e:#}");
            return Ok(1);
        }
    };
    let st = engine::status(socket, &rec);
    if st.interfaces.len() <= 24 {
        for i in &st.interfaces {
            say!(
                "  {:<14} {:<10} {} {} {}",
                i.netns,
                rec.host(&i.network),
                i.ifname,
                i.mac.as_deref().unwrap_or("-"),
                i.address.as_deref().unwrap_or("-")
            );
        }
    } else {
        say!("  {} interfaces: `tapyard lab status {name}` lists them", st.interfaces.len());
    }
    if check {
        let ok = matrix(socket, &rec);
        engine::teardown(socket, &rec);
        say!("{}", if ok { "lab check passed" } else { "lab check FAILED" });
        return Ok(if ok { 0 } else { 1 });
    }
    say!();
    if file.is_none() {
        say!("The lab is up. Try:");
        let first = rec.topology.nodes.first().map(|n| rec.ns_of(&n.name)).unwrap_or_default();
        let peer =
            st.interfaces.get(1).and_then(|i| i.address.as_deref()).unwrap_or("").split('/').next().unwrap_or("");
        say!("  ip netns exec {first} ping -c 3 {peer}");
        let gw = rec.gateways.values().next().cloned().unwrap_or_default();
        say!("  ip netns exec {first} ping -c 3 {gw}      # the gateway");
        say!("  tapyard port ls        tapyard fdb show        tapyard network ls");
    } else {
        say!("The lab is up. Try:");
        say!("  tapyard lab status {name}");
        if let Some(n) = rec.topology.nodes.first() {
            say!("  tapyard lab exec {name} {} -- ip -br addr", n.name);
        }
        say!("  tapyard lab graph {name} -o {name}.svg");
    }
    if !foreground {
        say!("`tapyard lab down {name}` removes it.");
        return Ok(0);
    }
    say!("Ctrl-C here, or `tapyard lab down` elsewhere, removes it.");
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    signals.forever().next();
    if engine::record_path(socket, &name).exists() {
        engine::teardown(socket, &rec);
        say!("lab {name:?} removed");
    }
    Ok(0)
}

/// One address a matrix row pings.
struct Target {
    label: String,
    network: String,
    ip: String,
}

/// Pings every node → address pair at once; prints the matrix; true if every
/// expectation held. Expected: reached when the node has an interface in the
/// target's network or in one joined to it by a router; not reached otherwise
/// (nodes are assumed not to forward).
fn matrix(socket: &Path, rec: &Record) -> bool {
    let t = &rec.topology;
    let Ok(host) = engine::Host::new(socket) else { return false };
    // Routing domains: networks joined by a router share one.
    let mut domain: std::collections::HashMap<&str, usize> =
        t.networks.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    for r in &t.routers {
        let d = r.networks.first().and_then(|n| domain.get(n.as_str()).copied());
        if let Some(d) = d {
            let old: Vec<usize> = r.networks.iter().filter_map(|n| domain.get(n.as_str()).copied()).collect();
            for v in domain.values_mut() {
                if old.contains(v) {
                    *v = d;
                }
            }
        }
    }
    let mut targets = vec![];
    for n in &t.nodes {
        let addressed: Vec<_> =
            n.interfaces.iter().filter(|i| rec.addresses.contains_key(&format!("{}:{}", n.name, i.ifname))).collect();
        for i in &addressed {
            let ip = rec.addresses[&format!("{}:{}", n.name, i.ifname)].split('/').next().unwrap_or("").to_string();
            let label =
                if addressed.len() == 1 { rec.ns_of(&n.name) } else { format!("{}:{}", rec.ns_of(&n.name), i.ifname) };
            targets.push((n.name.clone(), Target { label, network: i.network.clone(), ip }));
        }
    }
    let gateway_of = |n: &topology::Node| n.interfaces.iter().find_map(|i| rec.gateways.get(&i.network).cloned());
    let mut jobs = vec![];
    for (r, n) in t.nodes.iter().enumerate() {
        let ns = rec.ns_of(&n.name);
        for (c, (owner, tg)) in targets.iter().enumerate() {
            if owner != &n.name {
                jobs.push((r, Some(c), ping(&host, &ns, &tg.ip)));
            }
        }
        if let Some(gw) = gateway_of(n) {
            jobs.push((r, None, ping(&host, &ns, &gw)));
        }
    }
    let rows = t.nodes.len();
    let mut reach = vec![vec![None; targets.len()]; rows];
    let mut gw_reach = vec![None; rows];
    for (r, c, h) in jobs {
        let ok = h.join().unwrap_or(false);
        match c {
            Some(c) => reach[r][c] = Some(ok),
            None => gw_reach[r] = Some(ok),
        }
    }
    let w = t
        .nodes
        .iter()
        .map(|n| rec.ns_of(&n.name).len())
        .chain(targets.iter().map(|(_, t)| t.label.len()))
        .max()
        .unwrap_or(4)
        .max(6);
    say!();
    say!("Connectivity (row pings column; ok = reached, -- = blocked, as expected; FAIL = not as expected):");
    say_nb!("{:w$}", "", w = w + 2);
    for (_, tg) in &targets {
        say_nb!("{:>w$}", tg.label, w = w + 2);
    }
    say!("{:>9}", "gateway");
    let mut all_ok = true;
    let mut failures = vec![];
    let mut isolated = 0;
    for (r, n) in t.nodes.iter().enumerate() {
        let ns = rec.ns_of(&n.name);
        say_nb!("{:<w$}", ns, w = w + 2);
        for (c, (_, tg)) in targets.iter().enumerate() {
            let cell = match reach[r][c] {
                None => "·".to_string(),
                Some(got) => {
                    let expect =
                        n.interfaces.iter().any(|i| domain.get(i.network.as_str()) == domain.get(tg.network.as_str()));
                    isolated += usize::from(!expect);
                    if got == expect {
                        if got {
                            "ok".into()
                        } else {
                            "--".into()
                        }
                    } else {
                        all_ok = false;
                        failures.push(format!(
                            "{ns} -> {} ({}): {}",
                            tg.label,
                            tg.ip,
                            if expect {
                                "expected to reach, did not"
                            } else {
                                "reached across networks: isolation broken"
                            }
                        ));
                        "FAIL".into()
                    }
                }
            };
            say_nb!("{:>w$}", cell, w = w + 2);
        }
        let gw = match gw_reach[r] {
            Some(true) => "ok".to_string(),
            None => "·".to_string(),
            Some(false) => {
                all_ok = false;
                failures.push(format!("{ns} -> its gateway {}: no answer", gateway_of(n).unwrap_or_default()));
                "FAIL".to_string()
            }
        };
        say!("{gw:>9}");
    }
    for f in &failures {
        say!("  FAIL {f}");
    }
    let all = if all_ok { "All" } else { "Not all" };
    if t.routers.is_empty() {
        say!("{all} pairs on the same network reach each other and their gateway; {isolated} cross-network pairs stay isolated.");
    } else {
        say!("{all} pairs on one network or joined by a router reach each other and their gateway; {isolated} other pairs stay isolated.");
    }
    all_ok
}

/// Pings `ip` from namespace `ns` in a thread: three pings 0.2 s apart, one
/// second to answer; true if any answer came.
fn ping(host: &engine::Host, ns: &str, ip: &str) -> std::thread::JoinHandle<bool> {
    let mut cmd = host.in_ns(ns, &["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", ip]);
    std::thread::spawn(move || cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_lab_is_a_valid_topology() {
        let t = super::load(None, None).unwrap();
        assert_eq!(t.name, "lab");
        assert_eq!(t.nodes.len(), 4);
        let t = super::load(None, Some("p1")).unwrap();
        assert_eq!(t.host("red1"), "p1-red1");
        assert!(super::load(None, Some("bad name")).is_err());
    }

    #[test]
    fn the_examples_are_valid_topologies() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                super::load(Some(&p), None).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 1, "no examples in {}", dir.display());
    }
}
