//! Packet capture, the flight recorder and mirror ports against real
//! namespaces (docs/capture.md): pcapng read back by tshark and tcpdump,
//! --count, --snaplen, `-w -`, summary lines, a blocked reader losing
//! capture frames while forwarding goes on, `--recent`, `port mirror`, and
//! bad arguments.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// tshark with a home of the test's own (`dir`): in the rootless re-run
/// (scripts/test-rootless.sh: uid 0 of a user namespace) the real root's
/// ~/.config/wireshark is unreadable and tshark gives up.
fn tshark(dir: &Path) -> Command {
    let mut c = Command::new("tshark");
    c.env("HOME", dir);
    c
}

/// Whether tcpdump can run here. Debian's tcpdump, started as root, always
/// switches to user `tcpdump` (`-Z root` included), which fails in a user
/// namespace that maps only uid 0 (the rootless re-run); the root run reads
/// with tcpdump, the rootless one with tshark only, and says so.
fn tcpdump_runs() -> bool {
    if tapyard_switch::cli::rootless::in_user_namespace() {
        eprintln!("tcpdump not used: it cannot change to user tcpdump in this user namespace (tshark reads instead)");
        return false;
    }
    true
}

/// Namespaces without IPv6, so no router solicitation or neighbour
/// discovery frames come between the test's frames.
fn quiet_netns(tag: &str) -> Netns {
    let n = Netns::new(tag);
    n.no_ipv6();
    n
}

/// A daemon with network `net` (`subnet`) and one namespace per `tags`, each connected as eth0.
fn lab(tag: &str, subnet: &str, tags: &[&str]) -> (Daemon, String, Vec<Netns>) {
    let d = Daemon::start(tag);
    let net = name(tag);
    d.ok(&["network", "create", &net, "--subnet", subnet]);
    let ns: Vec<Netns> = tags.iter().map(|t| quiet_netns(t)).collect();
    for n in &ns {
        d.ok(&["connect", &net, &n.name, "--ip", "auto"]);
    }
    (d, net, ns)
}

fn ip_of(d: &Daemon, ns: &Netns) -> String {
    let p = d.port(&ns.name);
    p["ip"].as_str().unwrap().split('/').next().unwrap().to_string()
}

/// Permanent ARP entries for each other in `a` and `b`, so no ARP frame
/// comes between a test's pings and its `--count`.
fn pin_neighbors(d: &Daemon, a: &Netns, b: &Netns) {
    for (x, y) in [(a, b), (b, a)] {
        let p = d.port(&y.name);
        let (ip, mac) = (ip_of(d, y), p["mac"].as_str().unwrap().to_string());
        sh(&["ip", "-n", &x.name, "neigh", "replace", &ip, "lladdr", &mac, "dev", "eth0", "nud", "permanent"]);
    }
}

/// A running `tapyard capture`, its stderr collected line by line.
struct Capture {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Capture {
    /// Starts `tapyard capture ARGS` (stdout to `stdout`) and waits until it is capturing.
    fn start(d: &Daemon, args: &[&str], stdout: Stdio) -> Capture {
        let mut child = Command::new(TAPYARD)
            .arg("--socket")
            .arg(&d.socket)
            .arg("capture")
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut c = Capture { child: Some(child), lines: rx, seen: Vec::new() };
        assert!(c.wait_line("capturing on", 10), "capture did not start: {:?}\n{}", c.seen, d.log());
        c
    }

    fn wait_line(&mut self, what: &str, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if self.seen.iter().any(|l| l.contains(what)) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return false,
            }
        }
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().unwrap()
    }

    /// Waits for the capture to end by itself; its exit status.
    fn wait(&mut self, secs: u64) -> bool {
        let ok = wait_for(secs, || self.child().try_wait().unwrap().is_some());
        assert!(ok, "the capture did not end within {secs} s: {:?}", self.seen);
        self.child().wait().unwrap().success()
    }

    /// Ctrl-C, then its closing report ("N frames captured ..., M dropped").
    fn interrupt(&mut self) -> String {
        let pid = self.child().id().to_string();
        sh(&["kill", "-INT", &pid]);
        assert!(self.wait_line("dropped", 20), "no closing report: {:?}", self.seen);
        let _ = self.wait(10);
        self.seen.iter().find(|l| l.contains("dropped")).unwrap().clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                stop_child(c, "KILL");
            }
        }
    }
}

/// The number before `word` in `line` ("12 dropped" → 12).
fn number_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| w.starts_with(word)).unwrap_or_else(|| panic!("no {word} in {line:?}"));
    words[i - 1].trim_start_matches('(').parse().unwrap_or_else(|_| panic!("no number before {word} in {line:?}"))
}

/// `tshark -r FILE -T fields -e ...`: one row per frame.
fn tshark_fields(file: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["-r", file, "-T", "fields", "-E", "separator=|"];
    for f in fields {
        args.extend(["-e", f]);
    }
    let out = tshark(Path::new(file).parent().unwrap()).args(&args).output().unwrap();
    assert!(out.status.success(), "tshark -r {file}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.split('|').map(str::to_string).collect()).collect()
}

fn tmp(d: &Daemon, file: &str) -> String {
    d.dir.join(file).display().to_string()
}

#[test]
fn a_ping_captured_on_a_network_reads_back_in_tshark_with_addresses_and_port_names() {
    if !net_admin() {
        return;
    }
    need("tshark", "tshark");
    let (d, net, ns) = lab("cap", "10.93.1.0/24", &["capa", "capb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let (ipa, ipb) = (ip_of(&d, a), ip_of(&d, b));
    let file = tmp(&d, "ping.pcapng");
    let mut cap = Capture::start(&d, &[&net, "-w", &file], Stdio::null());
    assert!(a.run(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", &ipb]), "{ipa} cannot ping {ipb}");
    let report = cap.interrupt();
    assert_eq!(number_before(&report, "dropped"), 0, "{report}");
    let rows = tshark_fields(
        &file,
        &["frame.interface_name", "ip.src", "ip.dst", "icmp.type", "frame.packet_flags_direction"],
    );
    let name_a = format!("{net}/{}/eth0", a.name);
    let name_b = format!("{net}/{}/eth0", b.name);
    // pcapng epb_flags direction: 1 inbound (received by the port), 2 outbound (sent to it).
    let has = |iface: &str, src: &str, dst: &str, ty: &str, dir: u32| {
        let d = |r: &Vec<String>| u32::from_str_radix(r[4].trim_start_matches("0x"), 16).ok();
        rows.iter().filter(|r| r[0] == iface && r[1] == src && r[2] == dst && r[3] == ty && d(r) == Some(dir)).count()
    };
    // Each echo crosses two ports: received by the sender's, sent to the receiver's.
    assert_eq!(has(&name_a, &ipa, &ipb, "8", 1), 2, "requests received on {name_a}: {rows:?}");
    assert_eq!(has(&name_b, &ipa, &ipb, "8", 2), 2, "requests sent to {name_b}: {rows:?}");
    assert_eq!(has(&name_b, &ipb, &ipa, "0", 1), 2, "replies received on {name_b}: {rows:?}");
    assert_eq!(has(&name_a, &ipb, &ipa, "0", 2), 2, "replies sent to {name_a}: {rows:?}");
    // tcpdump reads the same file.
    need("tcpdump", "tcpdump");
    if tcpdump_runs() {
        let out = Command::new("tcpdump").args(["-n", "-r", &file, "icmp"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains(&format!("{ipa} > {ipb}: ICMP echo request")), "{text}");
        assert!(text.contains(&format!("{ipb} > {ipa}: ICMP echo reply")), "{text}");
    }
}

#[test]
fn count_stops_and_snaplen_truncates() {
    if !net_admin() {
        return;
    }
    need("tshark", "tshark");
    let (d, net, ns) = lab("cnt", "10.93.2.0/24", &["cnta", "cntb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let ipb = ip_of(&d, b);
    pin_neighbors(&d, a, b);
    let file = tmp(&d, "count.pcapng");
    let port = format!("{net}/{}", a.name);
    let mut cap = Capture::start(&d, &[&port, "-w", &file, "--count", "3", "--snaplen", "60"], Stdio::null());
    // Five pings: ten frames cross the port; the capture keeps three and ends by itself.
    a.run(&["ping", "-n", "-c", "5", "-i", "0.05", "-s", "300", "-W", "2", &ipb]);
    assert!(cap.wait(10), "capture --count failed: {:?}", cap.seen);
    let rows = tshark_fields(&file, &["frame.cap_len", "frame.len"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows {
        assert_eq!(r[0], "60", "{rows:?}");
        assert!(r[1].parse::<u32>().unwrap() > 300, "{rows:?}");
    }
}

#[test]
fn stdout_pipes_into_tshark_and_tcpdump_and_lines_without_w() {
    if !net_admin() {
        return;
    }
    need("tshark", "tshark");
    need("tcpdump", "tcpdump");
    let (d, net, ns) = lab("pipe", "10.93.3.0/24", &["pipa", "pipb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let (ipa, ipb) = (ip_of(&d, a), ip_of(&d, b));
    pin_neighbors(&d, a, b);
    let port = format!("{}/eth0", a.name);
    let mut readers = vec![vec!["tshark", "-n", "-r", "-"]];
    if tcpdump_runs() {
        readers.push(vec!["tcpdump", "-n", "-r", "-"]);
    }
    for reader in readers {
        let mut cap = Capture::start(&d, &[&port, "-w", "-", "--count", "2"], Stdio::piped());
        let stdout = cap.child().stdout.take().unwrap();
        let mut r = Command::new(reader[0]);
        r.env("HOME", &d.dir);
        let r = r.args(&reader[1..]).stdin(stdout).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        a.run(&["ping", "-n", "-c", "1", "-W", "2", &ipb]);
        assert!(cap.wait(10));
        let out = r.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{reader:?}: {}", String::from_utf8_lossy(&out.stderr));
        let want = if reader[0] == "tshark" { "Echo (ping) request" } else { "ICMP echo request" };
        assert!(text.contains(want) && text.contains(&ipa) && text.contains(&ipb), "{reader:?}: {text}");
    }
    // Without -w: a line per frame.
    let mut cap = Capture::start(&d, &[&port, "--count", "2"], Stdio::piped());
    let mut stdout = cap.child().stdout.take().unwrap();
    a.run(&["ping", "-n", "-c", "1", "-W", "2", &ipb]);
    assert!(cap.wait(10));
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let name = format!("{net}/{}/eth0", a.name);
    assert!(lines[0].contains(&format!("{name} In ")), "{text}");
    assert!(lines[0].contains(&format!("IPv4 {ipa} > {ipb}: ICMP echo request")), "{text}");
    assert!(lines[1].contains(&format!("{name} Out")), "{text}");
    assert!(lines[1].contains(&format!("IPv4 {ipb} > {ipa}: ICMP echo reply")), "{text}");
}

#[test]
fn a_blocked_reader_loses_capture_frames_and_never_slows_forwarding() {
    if !net_admin() {
        return;
    }
    let (d, net, ns) = lab("slow", "10.93.4.0/24", &["slowa", "slowb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let ipb = ip_of(&d, b);
    assert!(a.reaches(&ipb));
    // Nobody reads the capture's stdout: the pipe, the socket and the ring fill up.
    let mut cap = Capture::start(&d, &[&net, "-w", "-"], Stdio::piped());
    let out = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-n", "-q", "-f", "-s", "1000", "-c", "3000", "-w", "60", &ipb])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3000 packets transmitted, 3000 received"), "forwarding suffered: {text}");
    // Now read (and discard) the stream, so the capture can end and report.
    let mut stdout = cap.child().stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let report = cap.interrupt();
    let dropped = number_before(&report, "dropped");
    // 3000 echoes cross two ports each way: 12,000 frames, far more than the
    // ring and the buffers behind it hold.
    assert!(dropped > 1000, "{report}");
    assert!(number_before(&report, "frames") + dropped >= 12_000, "{report}");
}

#[test]
fn recent_writes_the_frames_before_the_capture() {
    if !net_admin() {
        return;
    }
    need("tshark", "tshark");
    let (d, net, ns) = lab("rec", "10.93.5.0/24", &["reca", "recb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let (ipa, ipb) = (ip_of(&d, a), ip_of(&d, b));
    assert!(a.run(&["ping", "-n", "-c", "3", "-i", "0.1", "-W", "2", &ipb]));
    let file = tmp(&d, "recent.pcapng");
    let out = d.cli(&["capture", &format!("{net}/{}/eth0", b.name), "--recent", "-w", &file]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = tshark_fields(&file, &["ip.src", "ip.dst", "icmp.type", "frame.len", "frame.cap_len"]);
    let count = |s: &str, t: &str, ty: &str| rows.iter().filter(|r| r[0] == s && r[1] == t && r[2] == ty).count();
    assert_eq!(count(&ipa, &ipb, "8"), 3, "{rows:?}");
    assert_eq!(count(&ipb, &ipa, "0"), 3, "{rows:?}");
    // Headers only: a 98-byte echo fits whole; the length is the frame's.
    assert!(rows.iter().all(|r| r[4].parse::<u32>().unwrap() <= 128), "{rows:?}");
    let big = tmp(&d, "big.pcapng");
    assert!(a.run(&["ping", "-n", "-c", "1", "-s", "1000", "-W", "2", &ipb]));
    assert!(d.cli(&["capture", &net, "--recent", "-w", &big]).status.success());
    let rows = tshark_fields(&big, &["frame.len", "frame.cap_len"]);
    assert!(rows.iter().any(|r| r[0] == "1042" && r[1] == "128"), "{rows:?}");
    // Off: a clear refusal.
    let d0 = Daemon::start_with("rec0", None, &["--uplink", "none", "--flight-recorder", "0"]);
    let net0 = name("rec0");
    d0.ok(&["network", "create", &net0, "--subnet", "10.93.6.0/24"]);
    let c = quiet_netns("rec0a");
    d0.ok(&["connect", &net0, &c.name]);
    let out = d0.cli(&["capture", &net0, "--recent", "-w", &tmp(&d0, "x.pcapng")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("flight recorder is off"), "{out:?}");
}

#[test]
fn a_mirror_port_gets_copies_of_a_ports_traffic_until_turned_off() {
    if !net_admin() {
        return;
    }
    need("tcpdump", "tcpdump");
    let (d, net, ns) = lab("mir", "10.93.7.0/24", &["mira", "mirb"]);
    let (a, b) = (&ns[0], &ns[1]);
    let (ipa, ipb) = (ip_of(&d, a), ip_of(&d, b));
    // The monitor sits on a network of its own: it sees only what is mirrored.
    let mon_net = name("mirmon");
    d.ok(&["network", "create", &mon_net, "--subnet", "10.93.8.0/24"]);
    let m = quiet_netns("mirm");
    d.ok(&["connect", &mon_net, &m.name]);
    assert!(a.reaches(&ipb));
    let src = format!("{net}/{}", a.name);
    let shown = d.ok(&["port", "mirror", &src, "--to", &format!("{}/eth0", m.name)]);
    assert!(shown.contains("mirrored to"), "{shown}");
    // A sniffer in the monitor: tcpdump, or tshark where tcpdump cannot run.
    let use_tcpdump = tcpdump_runs();
    let sniffer: &[&str] = if use_tcpdump {
        &["tcpdump", "-n", "-l", "-i", "eth0", "-c", "2", "icmp"]
    } else {
        &["tshark", "-n", "-l", "-i", "eth0", "-c", "2", "-f", "icmp"]
    };
    let mut dump = Command::new("ip")
        .args(["netns", "exec", &m.name])
        .args(sniffer)
        .env("HOME", &d.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Each says so on stderr once its socket is open.
    let ready = if use_tcpdump { "listening on" } else { "Capturing on" };
    let mut err = BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(ready) {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(line.contains(ready), "{sniffer:?} did not start: {line}");
    // tshark says so before its capture process has the socket open: ping
    // until the sniffer has its two frames (any two consecutive ICMP
    // frames of the pings are a request and a reply).
    let pinged = wait_for(10, || {
        assert!(a.run(&["ping", "-n", "-c", "1", "-W", "2", &ipb]));
        dump.try_wait().unwrap().is_some()
    });
    assert!(pinged, "{} in the monitor saw nothing", sniffer[0]);
    let mut text = String::new();
    dump.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    // One line per frame: "A > B: ICMP echo request" (tcpdump) or
    // "A → B  ICMP 98 Echo (ping) request" (tshark, columns padded).
    let seen = |src: &str, dst: &str, what: &str| {
        text.lines().any(|l| {
            let arrow = if use_tcpdump { format!("{src} > {dst}:") } else { format!("{src} → {dst} ") };
            let what = if use_tcpdump { format!("ICMP echo {what}") } else { format!("Echo (ping) {what}") };
            l.contains(&arrow) && l.contains(&what)
        })
    };
    assert!(seen(&ipa, &ipb, "request") && seen(&ipb, &ipa, "reply"), "{text}");
    // Off, and off again is an error.
    assert!(d.ok(&["port", "mirror", &src, "--off"]).contains("no longer mirrored"));
    let again = d.cli(&["port", "mirror", &src, "--off"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not mirrored"));
    let mon = d.port(&m.name);
    let before = mon["counters"]["tx_packets"].as_u64().unwrap();
    assert!(a.run(&["ping", "-n", "-c", "3", "-i", "0.1", "-W", "2", &ipb]));
    let after = d.port(&m.name)["counters"]["tx_packets"].as_u64().unwrap();
    assert_eq!(before, after, "copies still reach the monitor after --off");
}

#[test]
fn bad_arguments_get_clear_errors() {
    if !net_admin() {
        return;
    }
    let (d, net, ns) = lab("bad", "10.93.9.0/24", &["bada"]);
    let a = &ns[0];
    let err = |args: &[&str]| {
        let out = d.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(err(&["capture", "nosuchnet"]).contains("no network or port named \"nosuchnet\""));
    assert!(err(&["capture", "9999"]).contains("no port with id 9999"));
    assert!(err(&["capture", &format!("{net}/nosuchns")]).contains("no port"));
    assert!(err(&["capture", "a/b/c/d"]).contains("cannot read \"a/b/c/d\" as a port"));
    assert!(err(&["capture", &net, "--snaplen", "0"]).contains("--snaplen"));
    assert!(err(&["capture", &net, "--count", "0"]).contains("--count"));
    let w = err(&["capture", &net, "-w", "/nonexistent/dir/x.pcapng"]);
    assert!(w.contains("cannot create /nonexistent/dir/x.pcapng"), "{w}");
    let port = format!("{net}/{}", a.name);
    assert!(err(&["port", "mirror", &port, "--to", &port]).contains("cannot mirror to itself"));
    assert!(err(&["port", "mirror", &net, "--to", &port]).contains("is a network, not a port"));
    assert!(err(&["port", "mirror", &port]).contains("--to"));
    assert!(err(&["port", "mirror", &port, "--to", "x/eth0", "--off"]).contains("cannot be used with"));
}
