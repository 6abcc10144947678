//! The control socket under abuse and access control (issue 15, "The
//! control socket"; docs/PROTOCOL.md, "Who may connect" and "Limits"):
//! - a thousand idle connections, clients trickling a byte a second, a
//!   client sending malformed JSON, one sending 16 MiB without a newline and
//!   one that never reads its replies, all at once, while `tapyard port ls`
//!   answers within 100 ms and two namespaces ping each other;
//! - a connection beyond the limit closes the longest-idle one;
//! - a user other than root and the daemon's is refused, even through a
//!   socket whose mode lets it in; with `--socket-group` its members are not.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The bound on `tapyard port ls` (the whole CLI run) under abuse.
const BOUND: Duration = Duration::from_millis(100);
/// Runs measured with and without abuse; the worst of a round must stay within [`BOUND`].
const TRIES: usize = 20;
/// Rounds of [`TRIES`] runs under abuse, at most (see the test).
const ROUNDS: usize = 3;

fn stats(socket: &Path) -> serde_json::Value {
    let out = Command::new(TAPYARD).arg("--socket").arg(socket).args(["stats", "--json"]).output().unwrap();
    assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["control_socket"].clone()
}

/// Runs `tapyard port ls --json` and returns how long the whole run took
/// and what it listed.
fn timed_port_ls(socket: &Path) -> (Duration, serde_json::Value) {
    let t = Instant::now();
    let out = Command::new(TAPYARD).arg("--socket").arg(socket).args(["port", "ls", "--json"]).output().unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "port ls failed: {}", String::from_utf8_lossy(&out.stderr));
    (took, serde_json::from_slice(&out.stdout).unwrap())
}

/// One `port_ls` request on a fresh connection from this process: the
/// daemon's part of [`timed_port_ls`], without starting a process.
fn timed_request(socket: &Path) -> Duration {
    let t = Instant::now();
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(b"{\"op\":\"port_ls\"}\n").unwrap();
    let line = read_line(&s);
    let took = t.elapsed();
    assert!(line.starts_with("{\"ok\":true"), "{line}");
    took
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn read_line(s: &UnixStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// The abusers, each on its own thread until `stop`.
struct Abuse {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<String>>,
    _idle: Vec<UnixStream>,
    malformed_replies: Arc<AtomicU64>,
}

impl Abuse {
    fn start(socket: &Path) -> Abuse {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        // A thousand clients that connect and send nothing.
        let idle: Vec<UnixStream> = (0..1000).map(|_| UnixStream::connect(socket).unwrap()).collect();
        // Clients trickling a request a byte a second: the daemon must
        // close them at the request deadline, not keep them forever.
        for _ in 0..4 {
            let (socket, stop) = (socket.to_path_buf(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                let req = format!("{{\"op\":\"port_ls\"{}}}\n", " ".repeat(40));
                for b in req.bytes() {
                    if s.write_all(&[b]).is_err() {
                        return format!("closed: {}", read_line(&s));
                    }
                    if stop.load(Ordering::Relaxed) {
                        // One more byte tells whether the daemon closed it meanwhile.
                        if s.write_all(b" ").is_err() {
                            return format!("closed: {}", read_line(&s));
                        }
                        return "stopped before the daemon closed it".into();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                "sent a whole request a byte a second".into()
            }));
        }
        // Malformed JSON, over and over on one connection: answered, and the connection goes on.
        let malformed_replies = Arc::new(AtomicU64::new(0));
        {
            let (socket, stop, n) = (socket.to_path_buf(), stop.clone(), malformed_replies.clone());
            threads.push(std::thread::spawn(move || {
                let s = UnixStream::connect(&socket).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                while !stop.load(Ordering::Relaxed) {
                    if w.write_all(b"{\"op\": not json\n").is_err() {
                        return "the malformed-JSON connection was closed".into();
                    }
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return "the malformed-JSON connection was closed".into();
                    }
                    if !line.contains("malformed request") {
                        return format!("unexpected reply to malformed JSON: {line}");
                    }
                    n.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                "ok".into()
            }));
        }
        // 16 MiB without a newline, again and again: refused, closed.
        {
            let (socket, stop) = (socket.to_path_buf(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let junk = vec![b'x'; 16 << 20];
                let mut refused = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = UnixStream::connect(&socket).unwrap();
                    let _ = s.write_all(&junk);
                    let line = read_line(&s);
                    if !line.contains("request longer than") {
                        return format!("16 MiB line: unexpected reply {line:?}");
                    }
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                format!("refused {refused}")
            }));
        }
        // A client pipelining requests and never reading the replies.
        {
            let (socket, stop) = (socket.to_path_buf(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.set_nonblocking(true).unwrap();
                let reqs = b"{\"op\":\"ping\"}\n".repeat(50_000);
                let mut sent = 0;
                while sent < reqs.len() {
                    match s.write(&reqs[sent..]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return format!("non-reader: {e}"),
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                drop(s);
                "ok".into()
            }));
        }
        Abuse { stop, threads, _idle: idle, malformed_replies }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

#[test]
fn port_ls_answers_within_100ms_while_the_socket_is_abused() {
    if !common::net_admin() {
        return;
    }
    // The test holds over a thousand connections; so may the daemon (it
    // raises its own soft limit at start).
    let nofile = tapyard_switch::port::sys::raise_nofile_limit().unwrap();
    assert!(nofile >= 1200, "this test needs 1200 open files; the hard limit is {nofile}");
    let d = Daemon::start("abuse");
    let net = name("abuse");
    d.ok(&["network", "create", &net, "--subnet", "10.87.0.0/24"]);
    let a = Netns::new("abusea");
    let b = Netns::new("abuseb");
    d.ok(&["connect", &net, &a.name, "--ip", "10.87.0.11"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.87.0.12"]);
    assert!(a.reaches("10.87.0.12"));

    let baseline: Vec<Duration> = (0..TRIES).map(|_| timed_port_ls(&d.socket).0).collect();
    let baseline_direct: Vec<Duration> = (0..TRIES).map(|_| timed_request(&d.socket)).collect();

    let abuse = Abuse::start(&d.socket);
    // Everything is in place: every idle connection accepted, a malformed
    // line answered, a 16 MiB line refused, the non-reader's replies stuck.
    assert!(
        wait_for(10, || {
            let s = stats(&d.socket);
            s["connections"].as_u64() >= Some(1000)
                && s["refused"]["too_large"].as_u64() >= Some(1)
                && abuse.malformed_replies.load(Ordering::Relaxed) >= 1
        }),
        "the abuse did not get going: {}\n{}",
        stats(&d.socket),
        d.log()
    );
    // Rounds of TRIES runs; the worst run of a round must be within the
    // bound. A busy machine (two cores shared with compilers) can stall any
    // one process past it, so a round that does not make it is measured
    // again, up to ROUNDS times; a daemon that blocks behind its abusers
    // fails every round.
    let mut rounds = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..ROUNDS {
        direct.extend((0..TRIES).map(|_| timed_request(&d.socket)));
        let mut runs = Vec::new();
        for _ in 0..TRIES {
            let (took, ports) = timed_port_ls(&d.socket);
            assert_eq!(ports.as_array().map(Vec::len), Some(2), "port ls lists both ports: {ports}");
            runs.push(took);
        }
        rounds.push(summary(runs));
        if rounds.last().unwrap().1 <= BOUND {
            break;
        }
    }
    d.ok(&["network", "ls"]);
    assert!(a.ping_quick("10.87.0.12"), "the data path forwards while the socket is abused");
    let s = stats(&d.socket);
    assert!(s["connections"].as_u64() >= Some(1000), "measured while every abuser was still connected: {s}");
    let (base_med, base_max) = summary(baseline);
    eprintln!(
        "port ls, {TRIES} runs a round: without abuse median {base_med:?} max {base_max:?}; with 1000 idle, \
         4 trickling, malformed-JSON, 16 MiB and non-reading clients (median, max) by round: {rounds:?}; \
         the request alone (no process start), without abuse {:?}, with {:?}",
        summary(baseline_direct),
        summary(direct)
    );
    let (med, max) = *rounds.last().unwrap();
    assert!(
        max <= BOUND,
        "port ls took up to {max:?} under abuse in each of {ROUNDS} rounds (last median {med:?}; without abuse \
         median {base_med:?}, max {base_max:?})"
    );

    // The daemon closes what it must, and counts it: the silent and the
    // trickling clients at the request deadline (10 s), the non-reader at
    // the write deadline (10 s).
    assert!(
        wait_for(20, || {
            let s = stats(&d.socket);
            s["refused"]["request_timeout"].as_u64() >= Some(1004) && s["refused"]["write_timeout"].as_u64() >= Some(1)
        }),
        "timeouts not counted: {}",
        stats(&d.socket)
    );
    let outcomes = abuse.stop();
    for t in &outcomes[..4] {
        assert!(t.contains("closed") && t.contains("no complete request within 10 s"), "a trickling client: {t}");
    }
    assert_eq!(outcomes[4], "ok", "the malformed-JSON client");
    assert!(outcomes[5].starts_with("refused "), "the 16 MiB client: {}", outcomes[5]);
    assert_eq!(outcomes[6], "ok", "the non-reader");
    let s = stats(&d.socket);
    assert!(s["refused"]["malformed"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["refused"]["forbidden"], 0, "{s}");
    assert!(wait_for(5, || stats(&d.socket)["connections"].as_u64() <= Some(1)), "{}", stats(&d.socket));
    assert_eq!(timed_port_ls(&d.socket).1.as_array().map(Vec::len), Some(2));
}

/// A daemon under an open-file limit of 128 (soft and hard), so its
/// connection limit is 64; stopped on drop.
struct SmallDaemon {
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl SmallDaemon {
    fn start(tag: &str) -> SmallDaemon {
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name(tag)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("run/tapyard.sock");
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new("prlimit")
            .arg("--nofile=128:128")
            .arg(TAPYARD)
            .arg("--socket")
            .arg(&socket)
            .args(["daemon", "--uplink", "none", "--workers", "1", "--state-dir"])
            .arg(dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = SmallDaemon { dir, socket, child: Some(child) };
        assert!(
            wait_for(10, || Command::new(TAPYARD)
                .arg("--socket")
                .arg(&d.socket)
                .args(["network", "ls"])
                .output()
                .is_ok_and(|o| o.status.success())),
            "daemon did not answer: {}",
            std::fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default()
        );
        d
    }
}

impl Drop for SmallDaemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn beyond_the_connection_limit_the_longest_idle_connection_makes_room() {
    if !common::net_admin() {
        return;
    }
    need("prlimit", "util-linux");
    let d = SmallDaemon::start("limit");
    assert_eq!(stats(&d.socket)["max_connections"], 64, "half of 128 open files");
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(UnixStream::connect(&d.socket).unwrap());
    }
    let (_, ports) = timed_port_ls(&d.socket);
    assert_eq!(ports, serde_json::json!([]));
    let s = stats(&d.socket);
    assert!(s["refused"]["evicted"].as_u64() >= Some(36), "{s}");
    assert!(s["connections"].as_u64() <= Some(64), "{s}");
    assert_eq!(s["refused"]["busy"], 0, "{s}");
    let first = read_line(&conns[0]);
    assert!(first.contains("\"busy\"") && first.contains("waited longest"), "the oldest was told why: {first}");
    // The newest connection is still served.
    let last = conns.last_mut().unwrap();
    last.write_all(b"{\"op\":\"ping\"}\n").unwrap();
    assert!(read_line(last).contains("\"ok\":true"));
}

/// A throwaway user (and group of its own) and a second group, removed on drop.
struct Stranger {
    user: String,
    uid: u32,
    gid: u32,
    group: String,
    group_gid: u32,
}

fn id_of(args: &[&str]) -> u32 {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().rsplit(':').find(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())).unwrap().parse().unwrap()
}

impl Stranger {
    fn new(tag: &str) -> Stranger {
        let user = name(&format!("{tag}u"));
        let group = name(&format!("{tag}g"));
        // Removed first, in case a killed run left them.
        let _ = Command::new("userdel").arg(&user).stderr(Stdio::null()).status();
        let _ = Command::new("groupdel").arg(&group).stderr(Stdio::null()).status();
        sh(&["groupadd", &group]);
        let mut s = Stranger { user: user.clone(), uid: 0, gid: 0, group: group.clone(), group_gid: 0 };
        sh(&["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", &user]);
        s.uid = id_of(&["id", "-u", &user]);
        s.gid = id_of(&["id", "-g", &user]);
        s.group_gid = id_of(&["getent", "group", &group]);
        s
    }

    /// Runs the CLI as this user, with `groups` as its supplementary groups
    /// and `gid` as its primary one.
    fn cli(&self, socket: &Path, gid: u32, groups: &[u32], args: &[&str]) -> Output {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid)).arg(format!("--regid={gid}"));
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.arg(format!("--groups={}", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")));
        }
        c.arg("--").arg(TAPYARD).arg("--socket").arg(socket).args(args).output().unwrap()
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).status();
        let _ = Command::new("groupdel").arg(&self.group).stderr(Stdio::null()).status();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn only_root_the_daemons_user_and_the_socket_group_may_use_the_socket() {
    if !common::net_admin() {
        return;
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    if tapyard_switch::cli::rootless::in_user_namespace() {
        // The rootless pass (scripts/test-rootless.sh): one uid is mapped,
        // so there is no second user to refuse; the modes still hold.
        let d = Daemon::start("sockown");
        assert_eq!(mode(&d.socket), 0o600);
        let d = Daemon::start_with("sockgrp", None, &["--uplink", "none", "--socket-group", "0"]);
        let md = std::fs::metadata(&d.socket).unwrap();
        assert_eq!((md.mode() & 0o7777, md.gid()), (0o660, 0), "socket mode and group");
        d.ok(&["network", "ls"]);
        eprintln!("only_root_the_daemons_user_and_the_socket_group_may_use_the_socket: a second user is tried in the initial user namespace only");
        return;
    }
    need("setpriv", "util-linux");
    need("useradd", "passwd");
    let who = Stranger::new("sock");

    // Without --socket-group: 0600 in a 0700 directory. Loosened by hand to
    // let anyone connect, the peer check still keeps the stranger out.
    let d = Daemon::start("sockown");
    assert_eq!(mode(&d.socket), 0o600);
    let dir = d.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = who.cli(&d.socket, who.gid, &[], &["network", "ls"]);
    assert!(!out.status.success(), "a stranger was let in");
    let e = stderr(&out);
    assert!(e.contains("may not use this socket") && e.contains(&format!("uid {}", who.uid)), "{e}");
    let s = stats(&d.socket);
    assert_eq!(s["refused"]["forbidden"], 1, "{s}");
    d.ok(&["network", "ls"]);

    // With --socket-group: 0660, the group's, in a directory the group may pass.
    let d = Daemon::start_with("sockgrp", None, &["--uplink", "none", "--socket-group", &who.group]);
    let md = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((md.mode() & 0o7777, md.gid()), (0o660, who.group_gid), "socket mode and group");
    let dir = std::fs::metadata(d.socket.parent().unwrap()).unwrap();
    assert_eq!((dir.mode() & 0o7777, dir.gid()), (0o750, who.group_gid), "the directory the daemon made");
    let supplementary = who.cli(&d.socket, who.gid, &[who.group_gid], &["network", "ls"]);
    assert!(supplementary.status.success(), "a member (supplementary group): {}", stderr(&supplementary));
    let primary = who.cli(&d.socket, who.group_gid, &[], &["network", "ls"]);
    assert!(primary.status.success(), "a member (primary group): {}", stderr(&primary));
    let outsider = who.cli(&d.socket, who.gid, &[], &["network", "ls"]);
    assert!(!outsider.status.success(), "not a member: let in");
    // The mode already stops it (connect: permission denied); loosened, the
    // peer check does.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(d.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let outsider = who.cli(&d.socket, who.gid, &[], &["network", "ls"]);
    assert!(stderr(&outsider).contains("may not use this socket"), "{}", stderr(&outsider));
    let s = stats(&d.socket);
    assert_eq!(s["refused"]["forbidden"], 1, "{s}");
    assert!(s["requests"].as_u64() >= Some(2), "{s}");
    // A group that does not exist is a clear error at start.
    let out = Command::new(TAPYARD)
        .arg("--socket")
        .arg(d.dir.join("other.sock"))
        .args(["daemon", "--uplink", "none", "--socket-group", &name("nosuchgroup")])
        .output()
        .unwrap();
    assert!(!out.status.success() && stderr(&out).contains("no such group"), "{}", stderr(&out));
}

#[test]
fn pipelined_requests_are_answered_in_order_without_starving_anyone() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("pipe");
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut reqs = b"x\n".repeat(10_000);
    reqs.extend_from_slice(b"{\"op\":\"ping\"}\n");
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&reqs).is_ok())
    };
    // Another client is served while the daemon works through them.
    d.ok(&["network", "ls"]);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    for i in 0..10_000 {
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("malformed request"), "reply {i}: {line}");
    }
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true") && line.contains("\"protocol\""), "{line}");
    assert!(writer.join().unwrap());
    assert_eq!(stats(&d.socket)["refused"]["malformed"], 10_000);
    s.write_all(b"{\"op\":\"ping\"}\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "the connection goes on: {line}");
}
