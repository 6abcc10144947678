//! The daemon's life cycle and the CLI contract: restarts after SIGKILL,
//! clean stops, the socket lock, errors, and the lab smoke test.

mod common;

use std::process::Command;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sigkill_then_restart_brings_networks_and_ports_back() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("kill");
    let net = name("kill");
    d.ok(&["network", "create", &net, "--subnet", "10.82.0.0/24", "--mtu", "1400"]);
    let a = Netns::new("killa");
    let b = Netns::new("killb");
    d.ok(&["connect", &net, &a.name, "--ip", "10.82.0.11"]);
    d.ok(&["connect", &net, &b.name, "--ip", "10.82.0.12"]);
    assert!(a.reaches("10.82.0.12"));
    let mac_before = d.json(&["port", "ls"])[0]["mac"].clone();

    assert_eq!(d.signal("KILL"), None);
    // The TAPs are persistent: the interfaces stay in the namespaces, configured.
    assert!(a.has_link("eth0"), "the interface outlives a killed daemon");
    assert!(a.run(&["sh", "-c", "ip -4 addr show dev eth0 | grep -q 10.82.0.11/24"]));
    assert!(!a.ping_quick("10.82.0.12"), "nothing forwards while the daemon is down");
    assert!(exists(&d.socket), "SIGKILL leaves the socket file behind");

    d.spawn();
    assert!(d.log().contains("stale socket"), "the stale socket should be noticed and replaced");
    let nets = d.json(&["network", "ls"]);
    assert_eq!(nets[0]["name"], net.as_str());
    assert_eq!(nets[0]["mtu"], 1400);
    assert_eq!(nets[0]["subnet"], "10.82.0.0/24");
    let ports = d.json(&["port", "ls"]);
    assert_eq!(ports.as_array().unwrap().len(), 2, "ports reattached: {ports}");
    assert_eq!(ports[0]["mac"], mac_before, "same MAC after restart");
    assert!(d.log().contains("reattached to its surviving interface"), "{}", d.log());
    assert!(a.has_link("eth0"));
    assert!(a.run(&["sh", "-c", "ip link show dev eth0 | grep -q 'mtu 1400'"]));
    assert!(a.reaches("10.82.0.12"), "traffic flows again after restart");
}

#[test]
fn sigterm_keeps_taps_removes_socket_and_exits_zero() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("term");
    let net = name("term");
    d.ok(&["network", "create", &net]);
    let a = Netns::new("terma");
    d.ok(&["connect", &net, &a.name]);
    assert!(a.has_link("eth0"));
    assert_eq!(d.signal("TERM"), Some(0));
    assert!(!exists(&d.socket), "socket must be removed");
    assert!(a.has_link("eth0"), "a clean stop keeps the interface for the next start");
    // A namespace deleted while the daemon was down is not reattached, and
    // the daemon says so instead of failing.
    a.delete();
    d.spawn();
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());
    assert!(d.log().contains("namespace is gone"));
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("two");
    let out = Command::new(TAPYARD)
        .arg("--socket")
        .arg(&d.socket)
        .args(["daemon", "--uplink", "none", "--state-dir"])
        .arg(d.dir.join("other-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    // The first one is unharmed.
    d.ok(&["network", "ls"]);
    let mode = std::fs::metadata(&d.socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
}

#[test]
fn cli_errors_are_clear_and_change_nothing() {
    if !common::net_admin() {
        return;
    }
    let d = Daemon::start("err");
    let net = name("err");
    d.ok(&["network", "create", &net, "--subnet", "10.83.0.0/24"]);
    let cases: &[(&[&str], &str)] = &[
        (&["network", "create", &net], "already exists"),
        (&["network", "create", "x", "--subnet", "10.83.0.0/16"], "overlaps"),
        (&["network", "create", "x", "--subnet", "10.0.0.0/33"], "invalid subnet"),
        (&["network", "create", "x", "--subnet", "10.84.0.0/24", "--gateway", "10.85.0.1"], "not a usable host"),
        (&["network", "create", "x", "--mtu", "20"], "MTU"),
        (&["network", "create", "bad name"], "invalid network name"),
        (&["network", "inspect", "nope"], "no network named"),
        (&["connect", "nope", "whatever"], "no network named \"nope\""),
        (&["connect", &net, "ty-no-such-namespace"], "not found"),
        (&["connect", &net, "x", "--mac", "zz:00:00:00:00:00"], "invalid MAC"),
        (&["connect", &net, "x", "--ifname", "a/b"], "invalid interface name"),
        (&["connect", &net, "x", "--ip", "10.83.0.300"], "invalid address"),
        (&["port", "ls", "nope"], "no network named"),
        (&["fdb", "show", "nope"], "no network named"),
    ];
    for (args, want) in cases {
        let out = d.cli(args);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(want), "{args:?}: stderr {:?} lacks {want:?}", stderr(&out));
    }
    // Address checks need a real namespace to get that far.
    let ns = Netns::new("erra");
    for (ip, want) in [("10.99.0.2", "not in subnet"), ("10.83.0.1", "gateway"), ("10.83.0.2/16", "does not match")] {
        let out = d.cli(&["connect", &net, &ns.name, "--ip", ip]);
        assert!(stderr(&out).contains(want), "--ip {ip}: {}", stderr(&out));
    }
    d.ok(&["connect", &net, &ns.name, "--ip", "10.83.0.2"]);
    let out = d.cli(&["connect", &net, &ns.name, "--ip", "10.83.0.3"]);
    assert!(stderr(&out).contains("already has eth0"), "{}", stderr(&out));
    // The kernel refuses the interface name (a veth called eth1 is already there):
    // a clear conflict, and no TAP is left behind in the namespace. (The host
    // side is not checked here: tests running in parallel create TAPs there.)
    assert!(ns.run(&["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"]));
    let out = d.cli(&["connect", &net, &ns.name, "--ifname", "eth1", "--ip", "10.83.0.9"]);
    assert!(stderr(&out).contains("already exists") && stderr(&out).contains("--ifname"), "{}", stderr(&out));
    assert!(!ns.run(&["sh", "-c", "ip -o link | grep -q typ"]), "no TAP left in the namespace");
    let ns2 = Netns::new("errb");
    let out = d.cli(&["connect", &net, &ns2.name, "--ip", "10.83.0.2"]);
    assert!(stderr(&out).contains("already assigned"), "{}", stderr(&out));
    // A busy network is not removed without --force.
    let out = d.cli(&["network", "rm", &net]);
    assert!(!out.status.success() && stderr(&out).contains("--force"), "{}", stderr(&out));
    // Nothing above changed the state.
    let nets = d.json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1);
    assert_eq!(d.json(&["port", "ls"]).as_array().unwrap().len(), 1);
    assert!(ns.has_link("eth0") && !ns2.has_link("eth0"));
    d.ok(&["network", "rm", &net, "--force"]);
    assert!(!ns.has_link("eth0"));
    assert!(d.json(&["network", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn cli_without_a_daemon_says_how_to_start_one() {
    let out = Command::new(TAPYARD).args(["--socket", "/nonexistent/tapyard.sock", "network", "ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("tapyard daemon"), "{}", stderr(&out));
    let out = Command::new(TAPYARD).args(["network", "frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_protocol_rejects_malformed_requests_and_keeps_serving() {
    if !common::net_admin() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let d = Daemon::start("proto");
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |line: &str| -> serde_json::Value {
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut resp = String::new();
        r.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    };
    for bad in ["{", "[]", r#"{"op":"explode"}"#, r#"{"op":"network_rm"}"#, "\u{0}\u{1}"] {
        let v = ask(bad);
        assert_eq!(v["ok"], false, "{bad:?}");
        assert_eq!(v["error"]["kind"], "bad_request", "{bad:?}");
    }
    let v = ask(r#"{"op":"ping"}"#);
    assert_eq!(v["ok"], true);
    assert_eq!(v["result"]["protocol"], 1);
    let v = ask(r#"{"op":"network_inspect","name":"nope"}"#);
    assert_eq!(v["error"]["kind"], "not_found");
}

#[test]
fn lab_up_check_passes_and_leaves_nothing_behind() {
    if !common::net_admin() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("lab")));
    let socket = dir.join("tapyard.sock");
    let prefix = format!("t{}", std::process::id());
    let out = Command::new(TAPYARD)
        .arg("--socket")
        .arg(&socket)
        .args(["lab", "up", "--check", "--prefix", &prefix])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Clean up even if the check failed, then assert.
    let leftover: Vec<String> =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{prefix}-")))
            .map(String::from)
            .collect();
    for ns in &leftover {
        let _ = Command::new("ip").args(["netns", "del", ns.split_whitespace().next().unwrap()]).status();
    }
    let daemon_gone = !exists(&socket);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "lab check failed:\n{text}\n{}", stderr(&out));
    assert!(text.contains("lab check passed"), "{text}");
    // The matrix rows: one per namespace, a cell per other namespace.
    let cells: Vec<&str> =
        text.lines().filter(|l| l.contains('·')).flat_map(|l| l.split_whitespace().skip(1)).collect();
    // Four reachable pairs plus four gateways, eight isolated pairs, four diagonal cells.
    assert_eq!(cells.iter().filter(|c| **c == "ok").count(), 8, "four reachable pairs and four gateways:\n{text}");
    assert_eq!(cells.iter().filter(|c| **c == "--").count(), 8, "eight isolated pairs:\n{text}");
    assert_eq!(cells.len(), 20, "{text}");
    assert!(leftover.is_empty(), "lab left namespaces behind: {leftover:?}");
    assert!(daemon_gone, "the daemon the lab started must be stopped");
}

#[test]
fn a_corrupt_state_file_stops_the_daemon_with_a_clear_error() {
    if !common::net_admin() {
        return;
    }
    let mut d = Daemon::start("corrupt");
    d.ok(&["network", "create", &name("corrupt")]);
    assert_eq!(d.signal("TERM"), Some(0));
    let state = d.state.join("state.json");
    let good = std::fs::read(&state).unwrap();
    std::fs::write(&state, &good[..good.len() / 2]).unwrap();
    let out = Command::new(TAPYARD)
        .arg("--socket")
        .arg(&d.socket)
        .args(["daemon", "--uplink", "none", "--state-dir"])
        .arg(&d.state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("state.json") && err.contains("corrupt") && err.contains("move it aside"), "{err}");
    assert!(!exists(&d.socket), "a daemon that failed to start leaves no socket");
    // The file was not touched: restoring it brings the network back.
    assert_eq!(std::fs::read(&state).unwrap(), &good[..good.len() / 2]);
    std::fs::write(&state, &good).unwrap();
    d.spawn();
    assert_eq!(d.json(&["network", "ls"])[0]["name"], name("corrupt").as_str());
}

/// Runs `lab up` (no --check) in the background and waits until it says the lab is up.
fn lab_up_background(socket: &std::path::Path, prefix: &str) -> (std::process::Child, std::path::PathBuf) {
    let out = socket.parent().unwrap().join("lab-up.out");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let child = Command::new(TAPYARD)
        .arg("--socket")
        .arg(socket)
        .args(["lab", "up", "--prefix", prefix])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for(30, || std::fs::read_to_string(&out).unwrap_or_default().contains("The lab is up"));
    assert!(up, "lab up did not come up:\n{}", std::fs::read_to_string(&out).unwrap_or_default());
    (child, out)
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let mut code = None;
    let ok = wait_for(15, || match child.try_wait() {
        Ok(Some(s)) => {
            code = s.code();
            true
        }
        _ => false,
    });
    if !ok {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

#[test]
fn lab_down_from_another_shell_and_ctrl_c_both_remove_the_lab() {
    if !common::net_admin() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("labdn")));
    let socket = dir.join("tapyard.sock");
    for (round, how) in ["lab down", "SIGINT"].iter().enumerate() {
        let prefix = format!("d{}x{round}", std::process::id());
        let (mut child, _) = lab_up_background(&socket, &prefix);
        assert_eq!(lab_namespaces(&prefix).len(), 4);
        // While it runs, the lab is a normal daemon with ports and leases.
        let ports = Command::new(TAPYARD).arg("--socket").arg(&socket).args(["port", "ls", "--json"]).output().unwrap();
        let ports: serde_json::Value = serde_json::from_slice(&ports.stdout).unwrap();
        assert_eq!(ports.as_array().unwrap().len(), 4);
        if *how == "lab down" {
            let out = Command::new(TAPYARD)
                .arg("--socket")
                .arg(&socket)
                .args(["lab", "down", "--prefix", &prefix])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", stderr(&out));
        } else {
            let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
        }
        let code = wait_exit(&mut child);
        let left = lab_namespaces(&prefix);
        for ns in &left {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        assert_eq!(code, Some(0), "{how}: lab up exits 0");
        assert!(left.is_empty(), "{how}: namespaces left behind: {left:?}");
        assert!(wait_for(5, || !exists(&socket)), "{how}: the daemon the lab started is stopped");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reader_that_went_away_ends_the_cli_quietly() {
    if !common::net_admin() {
        return;
    }
    use std::os::fd::FromRawFd;
    let d = Daemon::start("ep");
    d.ok(&["network", "create", "n1", "--ipam", "none"]);
    for args in [&["network", "ls", "--json"][..], &["network", "ls"]] {
        // stdout: a pipe whose read end is already closed, so the first write fails with EPIPE.
        let mut fds = [0; 2];
        // SAFETY: fds is a live array of two ints for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fds[0] is the read end pipe(2) just gave us; nothing else owns it.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is the write end pipe(2) just gave us; the File takes sole ownership.
        let w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
        let out = std::process::Command::new(TAPYARD)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .stdout(w)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
            .wait_with_output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
