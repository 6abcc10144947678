//! `tapyard bench --vhost`: the vhost-user benchmark. DPDK testpmd plays the
//! VMs (virtio-user frontends, `--no-huge`), tapyard the switch; everything
//! is measured in one run, so ratios mean something on a noisy machine.
//! Figures (medians of `--runs` runs of `--duration` seconds):
//!
//! | key | measurement |
//! |---|---|
//! | `ceiling_mpps` | DPDK's own loop, no switch: testpmd txonly (virtio-user) into testpmd rxonly (vhost PMD), 64-byte frames |
//! | `vhost_mpps` | testpmd txonly -> tapyard vhost-user port -> tapyard vhost-user port -> testpmd rxonly: frames per second the receiver got |
//! | `vhost_in_mpps` | the same run: frames per second tapyard took from the sender |
//! | `tap_mpps` | testpmd txonly -> tapyard vhost-user port -> TAP port -> a container's kernel (frames its interface counted); the container never sends, so the frames are flooded (unknown unicast) and the sender's port has no storm limit |
//! | `loop_mpps` | one testpmd, two virtio-user ports, mac forwarding in a loop through two tapyard vhost-user ports |
//! | `tcp_vm_ct_gbps`, `tcp_ct_vm_gbps` | iperf3 TCP, 1 stream, from a kernel stack behind a DPDK virtio-user port (testpmd io: net_tap <-> net_virtio_user, the "VM") to a container on a TAP port, and back (-R) |
//! | `tcp_ct_ct_gbps` | the same between two containers on TAP ports, for reference |
//!
//! Lcores: the ceiling's receiver polls core 1 and its sender core 0; the
//! tapyard runs keep that layout, the daemon runs one worker. Rates read from
//! counters are divided by the time measured between the two reads (the
//! former vhost.sh divided by `--duration` - 2, which was 0 at 2 s).
//!
//! testpmd is started and stopped here ([`Testpmd`], a guard: SIGINT, so it
//! prints its totals, then SIGKILL after 5 s; its EAL runtime directory
//! removed); `scripts/testpmd.sh` (embedded) is used only to ask whether
//! testpmd and its PMDs are installed. The daemons, namespaces and sockets
//! are a [`Lab`] per measurement.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::runner::{iso_utc, log_as};
use super::schema::{median, round3};
use super::BenchArgs;
use crate::cli::labkit::{self, Lab, SetupError, Tapyard, TapyardMode};
use crate::control::proto::{NetworkCreate, Request};

const MAC_A: &str = "02:00:00:00:0a:01";
const MAC_B: &str = "02:00:00:00:0a:02";
const APT: &str = "dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23";
const MEM_MB: &str = "256";
const MBUFS: &str = "8192";

type Res<T> = Result<T, SetupError>;
/// One measurement of one run.
type Step = fn(&mut Vh, u32) -> Res<()>;

fn log(msg: &str) {
    log_as("bench vhost", msg);
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostResults {
    pub tool: String,
    pub schema_version: u32,
    pub machine: VhostMachine,
    pub config: VhostConfig,
    /// Medians, rounded to 3 decimals, of every key measured.
    pub figures: BTreeMap<String, f64>,
    pub ratios: VhostRatios,
    pub runs: BTreeMap<String, Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostMachine {
    pub nproc: u32,
    pub kernel: String,
    pub date: String,
    pub tapyard_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostConfig {
    pub duration_s: u32,
    pub runs: u32,
    pub frame_bytes: u32,
    pub workers: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostRatios {
    pub vhost_to_ceiling: Option<f64>,
    pub vhost_to_tap: Option<f64>,
    pub loop_to_ceiling: Option<f64>,
    pub vm_ct_tcp_to_ct_ct: Option<f64>,
}

/// Medians and ratios of the samples (key, value), in the order measured.
pub fn compute(samples: &[(String, f64)]) -> (BTreeMap<String, f64>, VhostRatios, BTreeMap<String, Vec<f64>>) {
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (k, v) in samples {
        runs.entry(k.clone()).or_default().push(*v);
    }
    let figures: BTreeMap<String, f64> =
        runs.iter().filter_map(|(k, v)| median(v).map(|m| (k.clone(), round3(m)))).collect();
    let ratio = |a: &str, b: &str| match (figures.get(a), figures.get(b)) {
        (Some(x), Some(y)) if *y != 0.0 => Some((x / y * 100.0).round() / 100.0),
        _ => None,
    };
    let ratios = VhostRatios {
        vhost_to_ceiling: ratio("vhost_mpps", "ceiling_mpps"),
        vhost_to_tap: ratio("vhost_mpps", "tap_mpps"),
        loop_to_ceiling: ratio("loop_mpps", "ceiling_mpps"),
        vm_ct_tcp_to_ct_ct: ratio("tcp_vm_ct_gbps", "tcp_ct_ct_gbps"),
    };
    (figures, ratios, runs)
}

/// The table vhost.sh printed: label, value, unit.
pub fn table(r: &VhostResults) -> String {
    let v = |k: &str| r.figures.get(k).map_or("-".to_string(), |x| x.to_string());
    let o = |x: Option<f64>| x.map_or("-".to_string(), |x| x.to_string());
    let rows: Vec<(String, String, &str)> = vec![
        ("DPDK vhost <-> virtio-user, no switch (ceiling)".into(), v("ceiling_mpps"), "Mpps"),
        ("testpmd -> tapyard (vhost-user -> vhost-user) -> testpmd".into(), v("vhost_mpps"), "Mpps"),
        ("  of which tapyard took from the sender".into(), v("vhost_in_mpps"), "Mpps"),
        ("testpmd -> tapyard (vhost-user -> TAP) -> container".into(), v("tap_mpps"), "Mpps"),
        ("testpmd loop through two tapyard vhost-user ports".into(), v("loop_mpps"), "Mpps"),
        ("TCP, virtio-user VM -> container".into(), v("tcp_vm_ct_gbps"), "Gbit/s"),
        ("TCP, container -> virtio-user VM".into(), v("tcp_ct_vm_gbps"), "Gbit/s"),
        ("TCP, container -> container (TAP ports)".into(), v("tcp_ct_ct_gbps"), "Gbit/s"),
        ("ratio vhost/ceiling".into(), o(r.ratios.vhost_to_ceiling), "(target >= 0.5)"),
        ("ratio vhost/TAP".into(), o(r.ratios.vhost_to_tap), "(target >= 5)"),
        ("ratio loop/ceiling".into(), o(r.ratios.loop_to_ceiling), ""),
    ];
    rows.iter().map(|(l, v, u)| format!("{l:<62} {v:>10}  {u}\n")).collect()
}

// ------------------------------------------------------------------ testpmd

/// testpmd's per-second `Rx-pps` samples of `port`, in order.
pub fn rx_pps_samples(log: &str, port: u32) -> Vec<f64> {
    let mut cur: Option<u32> = None;
    let mut out = vec![];
    for l in log.lines() {
        if l.contains("NIC statistics for port") {
            let f: Vec<&str> = l.split_whitespace().collect();
            cur = f.iter().position(|w| *w == "port").and_then(|i| f.get(i + 1)).and_then(|p| p.parse().ok());
        } else if let Some(rest) = l.trim_start().strip_prefix("Rx-pps:") {
            if cur == Some(port) {
                if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// The median Rx-pps of port 0 after the first `skip` samples (ramp-up).
pub fn rx_pps(log: &str, skip: usize) -> Option<f64> {
    let s = rx_pps_samples(log, 0);
    median(s.get(skip..).unwrap_or(&[])).map(f64::floor)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A frontend: `--vdev net_virtio_user0,path=SOCKET`.
    Virtio,
    /// A backend: `--vdev net_vhost0,iface=SOCKET,queues=1,client=0`.
    Vhost,
}

/// A running testpmd; stopped (SIGINT, then SIGKILL after 5 s) on drop.
struct Testpmd {
    child: Option<Child>,
    prefix: String,
    log: PathBuf,
}

struct PmdSpec<'a> {
    name: &'a str,
    role: Role,
    mode: &'a str,
    sock: &'a Path,
    lcores: &'a str,
    log: PathBuf,
    devargs: &'a str,
    app: &'a [&'a str],
    eal_extra: Vec<String>,
    /// Run it in this namespace (its net_tap interface is made there).
    netns: Option<&'a str>,
}

impl Testpmd {
    fn start(lab: &Lab, s: PmdSpec<'_>) -> Res<Testpmd> {
        let mut vdev = match s.role {
            Role::Virtio => format!("net_virtio_user0,path={}", s.sock.display()),
            Role::Vhost => format!("net_vhost0,iface={},queues=1,client=0", s.sock.display()),
        };
        if !s.devargs.is_empty() {
            vdev = format!("{vdev},{}", s.devargs);
        }
        // Unique per run: two testpmds with one prefix share (and corrupt) EAL state.
        let prefix = format!("{}-{}", s.name, std::process::id());
        let mut cmd = match s.netns {
            Some(ns) => lab.in_ns(ns, "dpdk-testpmd", false),
            None => Command::new("dpdk-testpmd"),
        };
        let main = s.lcores.split(',').next().unwrap_or("0");
        cmd.args(["-l", s.lcores, "--main-lcore", main, "--no-huge", "-m", MEM_MB, "--no-pci", "--file-prefix"]);
        cmd.arg(&prefix).arg("--vdev").arg(&vdev).args(&s.eal_extra);
        cmd.arg("--").arg(format!("--total-num-mbufs={MBUFS}")).arg(format!("--forward-mode={}", s.mode));
        cmd.args(["-a", "--stats-period", "1"]).args(s.app);
        lab.note(&format!("+ {cmd:?} > {}", s.log.display()));
        let f = fs::File::create(&s.log).map_err(|e| SetupError::Fail(format!("{}: {e}", s.log.display())))?;
        let f2 = f.try_clone().map_err(|e| SetupError::Fail(e.to_string()))?;
        use std::os::unix::process::CommandExt;
        // stdin from /dev/null: with --stats-period testpmd never reads it and runs until SIGINT.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| SetupError::Fail(format!("cannot run dpdk-testpmd: {e}")))?;
        let mut t = Testpmd { child: Some(child), prefix, log: s.log.clone() };
        // EAL init of 256 MiB without hugepages takes 1-2 s; wait for forwarding to start.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&t.log).unwrap_or_default();
            if text.contains("packet forwarding - ports=") && !text.contains("packet forwarding - ports=0") {
                return Ok(t);
            }
            let dead = t.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if dead || text.contains("packet forwarding - ports=0") || Instant::now() > deadline {
                t.stop();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                return Err(SetupError::Fail(format!(
                    "testpmd {} did not start forwarding: {}",
                    s.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )));
            }
            lab.pause(Duration::from_millis(100))?;
        }
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        if matches!(c.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
        }
        let _ = c.wait();
        // EAL's runtime files of this instance.
        let _ = fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------ the runs

struct Vh {
    exe: PathBuf,
    work: PathBuf,
    logs: PathBuf,
    prefix: String,
    dur: u32,
    samples: Vec<(String, f64)>,
}

fn ratio_rate(a: f64, b: f64, secs: f64) -> f64 {
    round3((b - a) / secs / 1e6)
}

impl Vh {
    fn lab(&self) -> Res<Lab> {
        Lab::new(&self.prefix, &self.work.join("run"), &self.logs.join("setup.log"), None)
    }
    fn ty(&self) -> Tapyard {
        Tapyard {
            exe: self.exe.clone(),
            mode: TapyardMode::Switched,
            workers: Some(1),
            daemon_log: self.logs.join("daemon.log"),
            netns: None,
            uplink: false,
        }
    }
    fn rec(&mut self, key: &str, v: f64) {
        self.samples.push((key.to_string(), v));
    }
    fn net(&self, ty: &Tapyard, lab: &Lab, name: &str, subnet: Option<&str>) -> Res<()> {
        let ipam = if subnet.is_none() { Some("none".to_string()) } else { None };
        ty.call(
            lab,
            &Request::NetworkCreate(NetworkCreate {
                name: name.into(),
                subnet: subnet.map(Into::into),
                ipam,
                ..Default::default()
            }),
        )?;
        Ok(())
    }
    fn vhost_port(&self, ty: &Tapyard, lab: &Lab, net: &str, sock: &Path, mac: &str) -> Res<()> {
        self.vhost_port_storm(ty, lab, net, sock, mac, None)
    }
    /// A vhost-user port with storm control `storm_limit` (`None`: the daemon's).
    fn vhost_port_storm(
        &self,
        ty: &Tapyard,
        lab: &Lab,
        net: &str,
        sock: &Path,
        mac: &str,
        storm_limit: Option<u32>,
    ) -> Res<()> {
        ty.call(
            lab,
            &Request::ConnectVhost {
                network: net.into(),
                socket: sock.to_string_lossy().into_owned(),
                client: false,
                queues: None,
                mac: Some(mac.into()),
                socket_mode: None,
                socket_group: None,
                port_security: None,
                storm_limit,
            },
        )?;
        Ok(())
    }
    fn tap_port(&self, ty: &Tapyard, lab: &Lab, net: &str, ns: &str, ip: Option<&str>) -> Res<()> {
        ty.call(
            lab,
            &Request::Connect {
                network: net.into(),
                netns: ns.into(),
                ifname: None,
                mac: None,
                ip: ip.map(Into::into),
                offload: None,
                publish: vec![],
                owner: None,
                port_security: None,
                storm_limit: None,
                kind: None,
            },
        )?;
        Ok(())
    }
    fn ports(&self, ty: &Tapyard, lab: &Lab) -> Res<Vec<serde_json::Value>> {
        let v = ty.call(lab, &Request::PortLs { network: None })?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }
    /// rx_packets of the vhost-user port on `sock`.
    fn port_rx(&self, ty: &Tapyard, lab: &Lab, sock: &Path) -> Res<f64> {
        let s = sock.to_string_lossy();
        self.ports(ty, lab)?
            .iter()
            .find(|p| p["vhost"]["socket"].as_str() == Some(&s))
            .and_then(|p| p["counters"]["rx_packets"].as_f64())
            .ok_or_else(|| SetupError::Fail(format!("no vhost-user port on {s}")))
    }
    fn save_ports(&self, ty: &Tapyard, lab: &Lab, name: &str) {
        if let Ok(p) = self.ports(ty, lab) {
            let _ = fs::write(self.logs.join(name), serde_json::to_string_pretty(&p).unwrap_or_default());
        }
    }
    /// Counter reads `secs` apart after 2 s of ramp-up: (first, second, seconds between).
    fn two_reads<T>(&self, lab: &Lab, mut read: impl FnMut() -> Res<T>) -> Res<(T, T, f64)> {
        lab.pause(Duration::from_secs(2))?;
        let t0 = Instant::now();
        let a = read()?;
        lab.pause(Duration::from_secs(u64::from(self.dur.saturating_sub(2).max(1))))?;
        let b = read()?;
        Ok((a, b, t0.elapsed().as_secs_f64()))
    }

    fn ceiling(&mut self, r: u32) -> Res<()> {
        let lab = self.lab()?;
        let sock = lab.dir().join("ceil.sock");
        let mut be = Testpmd::start(&lab, self.spec("ceilbe", Role::Vhost, "rxonly", &sock, "0,1", r, "", &[]))?;
        let peer = format!("--eth-peer=0,{MAC_B}");
        let app = ["--txpkts=64", peer.as_str()];
        let mac = format!("mac={MAC_A}");
        let mut fe = Testpmd::start(&lab, self.spec("ceilfe", Role::Virtio, "txonly", &sock, "1,0", r, &mac, &app))?;
        lab.pause(Duration::from_secs(u64::from(self.dur)))?;
        be.stop();
        fe.stop();
        let pps = rx_pps(&be.log_text(), 2).unwrap_or(0.0);
        self.rec("ceiling_mpps", round3(pps / 1e6));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn spec<'a>(
        &self,
        name: &'a str,
        role: Role,
        mode: &'a str,
        sock: &'a Path,
        lcores: &'a str,
        run: u32,
        devargs: &'a str,
        app: &'a [&'a str],
    ) -> PmdSpec<'a> {
        PmdSpec {
            name,
            role,
            mode,
            sock,
            lcores,
            log: self.logs.join(format!("{name}.{run}.log")),
            devargs,
            app,
            eal_extra: vec![],
            netns: None,
        }
    }

    fn vhost(&mut self, r: u32) -> Res<()> {
        let mut lab = self.lab()?;
        let ty = self.ty();
        ty.start(&mut lab, &[])?;
        let (a, b) = (lab.dir().join("a.sock"), lab.dir().join("b.sock"));
        self.net(&ty, &lab, "bn", None)?;
        self.vhost_port(&ty, &lab, "bn", &a, MAC_A)?;
        self.vhost_port(&ty, &lab, "bn", &b, MAC_B)?;
        let (ma, mb) = (format!("mac={MAC_A}"), format!("mac={MAC_B}"));
        let peer = format!("--eth-peer=0,{MAC_B}");
        let app = ["--txpkts=64", peer.as_str()];
        let mut rx = Testpmd::start(&lab, self.spec("vhrx", Role::Virtio, "rxonly", &b, "0,1", r, &mb, &[]))?;
        let mut tx = Testpmd::start(&lab, self.spec("vhtx", Role::Virtio, "txonly", &a, "1,0", r, &ma, &app))?;
        let (a0, a1, secs) = self.two_reads(&lab, || self.port_rx(&ty, &lab, &a))?;
        rx.stop();
        tx.stop();
        self.save_ports(&ty, &lab, &format!("vhost-ports.{r}.json"));
        let pps = rx_pps(&rx.log_text(), 2).unwrap_or(0.0);
        self.rec("vhost_mpps", round3(pps / 1e6));
        self.rec("vhost_in_mpps", ratio_rate(a0, a1, secs));
        Ok(())
    }

    fn tap(&mut self, r: u32) -> Res<()> {
        let mut lab = self.lab()?;
        let ty = self.ty();
        ty.start(&mut lab, &[])?;
        let ct = lab.name("ct");
        lab.add_netns(&ct)?;
        self.net(&ty, &lab, "tn", None)?;
        self.tap_port(&ty, &lab, "tn", &ct, None)?;
        let ctmac = self
            .ports(&ty, &lab)?
            .iter()
            .find(|p| p["netns"].as_str() == Some(&ct))
            .and_then(|p| p["mac"].as_str().map(str::to_string))
            .ok_or_else(|| SetupError::Fail("the container's port has no MAC".into()))?;
        let a = lab.dir().join("a.sock");
        // The container never sends, so its MAC stays unknown and every frame
        // to it is flooded: without this, storm control (issue 15, 2,000
        // flooded frames a second by default) would be what this measures.
        self.vhost_port_storm(&ty, &lab, "tn", &a, MAC_A, Some(0))?;
        let ma = format!("mac={MAC_A}");
        let peer = format!("--eth-peer=0,{ctmac}");
        let app = ["--txpkts=64", peer.as_str()];
        let mut tx = Testpmd::start(&lab, self.spec("taptx", Role::Virtio, "txonly", &a, "1,0", r, &ma, &app))?;
        let kernel_rx = || -> Res<f64> {
            let out = lab.ip(&["-n", &ct, "-j", "-s", "link", "show", "eth0"])?;
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            v[0]["stats64"]["rx"]["packets"]
                .as_f64()
                .ok_or_else(|| SetupError::Fail("no rx counter on the container's eth0".into()))
        };
        let (k0, k1, secs) = self.two_reads(&lab, kernel_rx)?;
        tx.stop();
        self.save_ports(&ty, &lab, &format!("tap-ports.{r}.json"));
        self.rec("tap_mpps", ratio_rate(k0, k1, secs));
        Ok(())
    }

    fn looped(&mut self, r: u32) -> Res<()> {
        let mut lab = self.lab()?;
        let ty = self.ty();
        ty.start(&mut lab, &[])?;
        let (a, b) = (lab.dir().join("a.sock"), lab.dir().join("b.sock"));
        self.net(&ty, &lab, "ln", None)?;
        self.vhost_port(&ty, &lab, "ln", &a, MAC_A)?;
        self.vhost_port(&ty, &lab, "ln", &b, MAC_B)?;
        // One testpmd, both ports, forwarding lcore 1; mac mode rewrites the MACs so
        // tapyard learns each port where it is; --tx-first puts the frames in flight.
        let (p0, p1) = (format!("--eth-peer=0,{MAC_B}"), format!("--eth-peer=1,{MAC_A}"));
        let app = [p0.as_str(), p1.as_str(), "--tx-first", "--burst=64"];
        let ma = format!("mac={MAC_A}");
        let mut spec = self.spec("loop", Role::Virtio, "mac", &a, "0,1", r, &ma, &app);
        spec.eal_extra = vec!["--vdev".into(), format!("net_virtio_user1,path={},mac={MAC_B}", b.display())];
        let mut pmd = Testpmd::start(&lab, spec)?;
        let read = || -> Res<f64> { Ok(self.port_rx(&ty, &lab, &a)? + self.port_rx(&ty, &lab, &b)?) };
        let (x0, x1, secs) = self.two_reads(&lab, read)?;
        pmd.stop();
        self.rec("loop_mpps", ratio_rate(x0, x1, secs));
        Ok(())
    }

    /// One TCP stream of `--duration` seconds from `from` to the one-off server on `ct`; 0 when it failed.
    fn iperf(&self, lab: &mut Lab, ct: &str, from: &str, extra: &[&str], out: &str) -> Res<f64> {
        let mut srv = lab.in_ns(ct, "iperf3", false);
        srv.args(["-s", "-p", "5399", "--one-off"]);
        lab.spawn(&mut srv, &self.logs.join("iperf3-server.log"), "iperf3 server")?;
        let listening = || {
            Command::new("ip")
                .args(["netns", "exec", ct, "ss", "-ltn"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(":5399 "))
        };
        lab.wait_for(Duration::from_secs(5), Duration::from_millis(100), listening)?;
        let dur = self.dur.to_string();
        let mut c = lab.in_ns(from, "iperf3", false);
        c.args(["-c", "10.93.0.2", "-p", "5399", "-t", &dur, "-J"]).args(extra);
        let text = lab.run(&mut c).unwrap_or_default();
        let _ = fs::write(self.logs.join(out), &text);
        Ok(super::measure::iperf(&text).map(|r| round3(r.gbps())).unwrap_or(0.0))
    }

    fn tcp(&mut self, r: u32) -> Res<()> {
        let mut lab = self.lab()?;
        let ty = self.ty();
        ty.start(&mut lab, &[])?;
        let (ct, c2, vm) = (lab.name("ct"), lab.name("c2"), lab.name("vm"));
        for ns in [&ct, &c2, &vm] {
            lab.add_netns(ns)?;
        }
        self.net(&ty, &lab, "vn", Some("10.93.0.0/24"))?;
        self.tap_port(&ty, &lab, "vn", &ct, Some("10.93.0.2/24"))?;
        self.tap_port(&ty, &lab, "vn", &c2, Some("10.93.0.3/24"))?;
        let v = lab.dir().join("v.sock");
        self.vhost_port(&ty, &lab, "vn", &v, MAC_A)?;
        // The "VM": a kernel stack in its namespace behind DPDK, net_tap <->
        // net_virtio_user forwarded by testpmd (io), which runs in that
        // namespace so that its TAP is made there.
        let ma = format!("mac={MAC_A}");
        let mut spec = self.spec("vmbr", Role::Virtio, "io", &v, "0,1", r, &ma, &[]);
        spec.eal_extra = vec!["--vdev".into(), format!("net_tap0,iface=vmeth0,mac={MAC_A}")];
        spec.netns = Some(&vm);
        let mut br = Testpmd::start(&lab, spec)?;
        lab.addr_up(&vm, "vmeth0", "10.93.0.50/24")?;
        let reached =
            lab.run(lab.in_ns(&vm, "ping", false).args(["-c", "3", "-i", "0.2", "-W", "2", "-q", "10.93.0.2"]));
        if reached.is_err() {
            log("  the VM cannot ping the container yet");
        }
        let g = self.iperf(&mut lab, &ct, &vm, &[], &format!("tcp-vm-ct.{r}.json"))?;
        self.rec("tcp_vm_ct_gbps", g);
        let g = self.iperf(&mut lab, &ct, &vm, &["-R"], &format!("tcp-ct-vm.{r}.json"))?;
        self.rec("tcp_ct_vm_gbps", g);
        let g = self.iperf(&mut lab, &ct, &c2, &[], &format!("tcp-ct-ct.{r}.json"))?;
        self.rec("tcp_ct_ct_gbps", g);
        br.stop();
        self.save_ports(&ty, &lab, &format!("tcp-ports.{r}.json"));
        Ok(())
    }
}

/// Runs the vhost-user benchmark; the exit status.
pub fn run(args: &BenchArgs, files: &super::Files) -> anyhow::Result<i32> {
    let die = |m: &str| {
        eprintln!("tapyard bench --vhost: {m}");
        Ok(1)
    };
    // At least 2 s: the first two samples are ramp-up.
    let dur = args.duration.max(2);
    for t in ["ip", "iperf3"] {
        if !labkit::have(t) {
            return die(&format!("missing {t}; install with scripts/setup.sh"));
        }
    }
    let work = super::runner::work_dir()?;
    let logs = work.join("logs");
    fs::create_dir_all(&logs)?;
    files.write(&work)?;
    let finish = |code: i32| {
        if args.keep {
            log(&format!("kept {}", work.display()));
        } else {
            let _ = fs::remove_dir_all(&work);
        }
        Ok(code)
    };
    // testpmd.sh knows where Debian puts DPDK's PMDs; ask it, nothing more.
    let available = Command::new("bash")
        .arg("-c")
        .arg(". \"$1\" && testpmd_available")
        .arg("testpmd.sh")
        .arg(work.join("testpmd.sh"))
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        let _ = finish(1);
        return die(&format!("dpdk-testpmd with the virtio-user and vhost PMDs is missing; apt-get install {APT}"));
    }
    labkit::install_interrupt_flag()?;
    let nproc = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let dpdk = Command::new("pkg-config")
        .args(["--modversion", "libdpdk"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    log(&format!("machine: {nproc} CPUs, kernel {kernel}; {} x {dur} s; DPDK {dpdk}", args.runs));
    let mut vh = Vh {
        exe: std::env::current_exe()?,
        work: work.clone(),
        logs: logs.clone(),
        prefix: format!("tyv{}", std::process::id()),
        dur,
        samples: vec![],
    };
    let n = args.runs;
    for r in 1..=n {
        let steps: [(&str, Step); 5] = [
            ("DPDK's own loop (ceiling)", Vh::ceiling),
            ("testpmd -> tapyard -> testpmd", Vh::vhost),
            ("testpmd -> tapyard -> TAP", Vh::tap),
            ("testpmd loop through tapyard", Vh::looped),
            ("TCP, VM (virtio-user) <-> container", Vh::tcp),
        ];
        for (what, step) in steps {
            log(&format!("run {r}/{n}: {what}"));
            match step(&mut vh, r) {
                Ok(()) => {}
                Err(SetupError::Interrupted) => {
                    log("interrupted: cleaned up");
                    return finish(130);
                }
                Err(e) => {
                    eprintln!("tapyard bench --vhost: {e}; see {} (--keep keeps it)", logs.display());
                    return finish(1);
                }
            }
        }
    }
    let (figures, ratios, runs) = compute(&vh.samples);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let results = VhostResults {
        tool: "tapyard bench --vhost".into(),
        schema_version: 1,
        machine: VhostMachine {
            nproc,
            kernel: kernel.clone(),
            date: iso_utc(now),
            tapyard_version: format!("tapyard {}", env!("CARGO_PKG_VERSION")),
        },
        config: VhostConfig { duration_s: dur, runs: n, frame_bytes: 64, workers: 1 },
        figures,
        ratios,
        runs,
    };
    let md = || {
        format!(
            "# tapyard bench --vhost, {}\n\n{nproc} CPUs, kernel {kernel}, {n} run{} x {dur} s, medians; 64-byte frames; daemon --workers 1.\n\n```\n{}```\n",
            results.machine.date,
            if n == 1 { "" } else { "s" },
            table(&results)
        )
    };
    super::report::write_and_print(args, &results, &logs, "bench vhost", md, table)?;
    finish(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn testpmd_rx_pps_of_port_0_after_ramp_up() {
        let log = "\
  ######################## NIC statistics for port 0  ########################
  RX-packets: 10  RX-missed: 0  RX-bytes:  640
  Throughput (since last show)
  Rx-pps:          100          Rx-bps:        51200
  Tx-pps:            0          Tx-bps:            0
  ######################## NIC statistics for port 1  ########################
  Rx-pps:       999999          Rx-bps:            0
  ######################## NIC statistics for port 0  ########################
  Rx-pps:          200          Rx-bps:            0
  ######################## NIC statistics for port 0  ########################
  Rx-pps:       600000          Rx-bps:            0
  ######################## NIC statistics for port 0  ########################
  Rx-pps:       610001          Rx-bps:            0
";
        assert_eq!(rx_pps_samples(log, 0), [100.0, 200.0, 600000.0, 610001.0]);
        assert_eq!(rx_pps_samples(log, 1), [999999.0]);
        // the first two are ramp-up; the median of two is their mean, as an integer
        assert_eq!(rx_pps(log, 2), Some(605000.0));
        assert_eq!(rx_pps(log, 9), None);
    }

    #[test]
    fn vhost_figures_and_ratios() {
        let s: Vec<(String, f64)> = [
            ("ceiling_mpps", 4.0),
            ("vhost_mpps", 2.0),
            ("tap_mpps", 0.4),
            ("ceiling_mpps", 6.0),
            ("vhost_mpps", 2.5),
            ("tap_mpps", 0.5),
            ("ceiling_mpps", 5.0),
            ("vhost_mpps", 3.0),
            ("tap_mpps", 0.0),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        let (f, r, runs) = compute(&s);
        assert_eq!(f["ceiling_mpps"], 5.0);
        assert_eq!(f["vhost_mpps"], 2.5);
        assert_eq!(runs["tap_mpps"], [0.4, 0.5, 0.0]);
        assert_eq!(r.vhost_to_ceiling, Some(0.5));
        assert_eq!(r.vhost_to_tap, Some(6.25));
        assert_eq!(r.loop_to_ceiling, None);
        let res = VhostResults {
            tool: "tapyard bench --vhost".into(),
            schema_version: 1,
            machine: VhostMachine { nproc: 2, kernel: "k".into(), date: "d".into(), tapyard_version: "v".into() },
            config: VhostConfig { duration_s: 2, runs: 3, frame_bytes: 64, workers: 1 },
            figures: f,
            ratios: r,
            runs,
        };
        let t = table(&res);
        assert!(t.lines().next().unwrap().ends_with("         5  Mpps"), "{t}");
        assert!(t.contains("ratio loop/ceiling") && t.contains("-  \n"), "{t}");
    }
}
