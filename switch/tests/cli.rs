//! The command line as a new user meets it: usage lines, exit statuses
//! (README, "Exit status"), options that do not apply, and what `port ls`
//! and the daemon's files show.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Output, Stdio};

use common::*;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The CLI against a socket nobody listens on: for errors found before any request.
fn offline(args: &[&str]) -> Output {
    Command::new(TAPYARD).args(["--socket", "/nonexistent/tapyard.sock"]).args(args).output().unwrap()
}

fn usage_line(help: &str) -> String {
    help.lines().skip_while(|l| !l.starts_with("Usage:")).take(2).collect::<Vec<_>>().join("\n")
}

#[test]
fn connect_and_disconnect_usage_puts_the_network_first() {
    for verb in ["connect", "disconnect"] {
        let out = offline(&[verb, "--help"]);
        assert!(out.status.success());
        let usage = usage_line(&stdout(&out));
        assert!(usage.contains(&format!("tapyard {verb} [OPTIONS] <NETWORK> <NETNS>")), "{verb}: {usage}");
        assert!(usage.contains("<NETWORK> --vhost-user <SOCKET>"), "{verb}: {usage}");
        assert!(!usage.contains("<NETNS|"), "{verb}: {usage}");
    }
}

#[test]
fn route_add_without_via_shows_the_usage_and_exits_2() {
    for args in [&["route", "add", "r", "10.50.0.0/16"][..], &["route", "add", "r", "10.50.0.0/16", "thru", "10.0.0.1"]]
    {
        let out = offline(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("tapyard route add <ROUTER> <PREFIX> via <IP>"), "{args:?}: {err}");
        assert!(!err.contains("VIA_KW"), "{args:?}: {err}");
    }
}

#[test]
fn options_that_do_not_apply_are_refused_with_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["connect", "net", "ns", "--queues", "2", "--client"], "--client, --queues apply only with --vhost-user"),
        (&["connect", "net", "ns", "--socket-mode", "0600"], "--socket-mode applies only with --vhost-user"),
        (
            &["connect", "net", "--vhost-user", "/tmp/x.sock", "--ifname", "e1", "--ip", "10.0.0.2"],
            "--ifname, --ip apply to a TAP port",
        ),
        (&["connect", "net", "--vhost-user", "/tmp/x.sock", "--offload", "off"], "--offload applies to a TAP port"),
        (&["connect", "net", "--vhost-user", "/tmp/x.sock", "--client", "--socket-group", "0"], "--socket-group"),
    ];
    for (args, want) in cases {
        let out = offline(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {:?} lacks {want:?}", stderr(&out));
    }
}

#[test]
fn help_names_the_default_socket_for_other_users() {
    let out = offline(&["--help"]);
    let help = stdout(&out);
    assert!(help.contains("$XDG_RUNTIME_DIR/tapyard/tapyard.sock"), "{help}");
    assert!(help.contains("tapyard-UID/tapyard.sock"), "{help}");
    assert!(help.contains("[here: /run/tapyard/tapyard.sock]"), "{help}");
}

#[test]
fn swapped_connect_arguments_are_named_not_sent_to_ip_netns_add() {
    let d = Daemon::start("swap");
    let net = name("swap");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let ns = Netns::new("swapns");
    for verb in ["connect", "disconnect"] {
        let out = d.cli(&[verb, &ns.name, &net]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(err.contains(&format!("try `tapyard {verb} {net} {}`", ns.name)), "{verb}: {err}");
        assert!(!err.contains("ip netns add"), "{verb}: {err}");
    }
    // A first argument that is no network (nor the second one): not found, and the order is named.
    let out = d.cli(&["connect", &ns.name, "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a network namespace") && stderr(&out).contains("NETWORK NETNS"),
        "{}",
        stderr(&out)
    );
    assert!(d.json(&["port", "ls"]).as_array().unwrap().is_empty());
}

#[test]
fn exit_statuses_follow_the_readme() {
    let d = Daemon::start("exit");
    let net = name("exit");
    d.ok(&["network", "create", &net, "--subnet", "10.86.0.0/24"]);
    let ns = Netns::new("exitns");
    let bad: &[&[&str]] = &[
        &["network", "create", "x", "--subnet", "10.0.0.0/33"],
        &["network", "create", "x", "--subnet", "10.87.0.0/24", "--gateway", "10.87.0.300"],
        &["network", "create", "bad name"],
        &["connect", &net, &ns.name, "--mac", "zz:00:00:00:00:00"],
        &["connect", &net, &ns.name, "--ip", "10.86.0.300"],
        &["network", "reserve", &net, "nomac", "10.86.0.9"],
        &["connect", &net, "--vhost-user", "/tmp/x.sock", "--socket-mode", "999"],
    ];
    for args in bad {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = d.cli(&["network", "inspect", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = d.cli(&["network", "create", &net]);
    assert_eq!(out.status.code(), Some(1), "a conflict is neither bad arguments nor not found: {}", stderr(&out));
    assert!(ns.has_link("lo") && !ns.has_link("eth0"), "nothing was connected");
}

#[test]
fn network_rm_force_detaches_the_network_from_its_router() {
    let d = Daemon::start("rmr");
    let (a, b, r) = (name("rmra"), name("rmrb"), name("rmrr"));
    d.ok(&["network", "create", &a, "--subnet", "10.88.0.0/24"]);
    d.ok(&["network", "create", &b, "--subnet", "10.89.0.0/24"]);
    d.ok(&["router", "create", &r]);
    d.ok(&["router", "attach", &r, &a]);
    d.ok(&["router", "attach", &r, &b]);
    let out = d.cli(&["network", "rm", &a]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("`tapyard router detach {r} {a}`")), "{}", stderr(&out));
    d.ok(&["network", "rm", &a, "--force"]);
    let routers = d.json(&["router", "ls"]);
    assert_eq!(routers[0]["networks"], serde_json::json!([b]), "{routers}");
    let nets = d.json(&["network", "ls"]);
    assert_eq!(nets.as_array().unwrap().len(), 1, "{nets}");
}

#[test]
fn vhost_user_sockets_get_the_mode_and_group_asked_for_and_keep_them_across_a_restart() {
    // A group other than ours where the whole gid range is mapped (real
    // root); in a user namespace that maps only root (the rootless pass)
    // gid 0 is the one group a file can be given.
    let full_map = std::fs::read_to_string("/proc/self/gid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    let gid: u32 = if full_map { 4242 } else { 0 };
    if !full_map {
        eprintln!("note: gids other than 0 are not mapped here; --socket-group is checked with gid 0");
    }
    let gid_arg = gid.to_string();
    let mut d = Daemon::start("vmode");
    let net = name("vmode");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let plain = d.dir.join("plain.sock");
    let shared = d.dir.join("shared.sock");
    d.ok(&["connect", &net, "--vhost-user", plain.to_str().unwrap()]);
    d.ok(&[
        "connect",
        &net,
        "--vhost-user",
        shared.to_str().unwrap(),
        "--socket-mode",
        "0666",
        "--socket-group",
        &gid_arg,
    ]);
    let check = |d: &Daemon| {
        let md = std::fs::metadata(&plain).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o660, "default: owner and group may connect");
        let md = std::fs::metadata(&shared).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o666);
        assert_eq!(md.gid(), gid);
        let ports = d.json(&["port", "ls"]);
        let p = ports.as_array().unwrap().iter().find(|p| p["vhost"]["socket"] == shared.to_str().unwrap()).unwrap();
        assert_eq!(p["vhost"]["socket_mode"], "0666", "{p}");
        assert_eq!(p["vhost"]["socket_gid"], gid, "{p}");
        // Absent, like the other absent fields: null, not "".
        assert!(p["netns"].is_null() && p["ifname"].is_null(), "{p}");
    };
    check(&d);
    // Nobody connected yet: the log says the port listens, not that it is connected.
    assert!(d.log().contains("vhost-user port listening"), "{}", d.log());
    assert!(!d.log().contains("vhost-user port connected"), "{}", d.log());
    assert_eq!(d.signal("TERM"), Some(0));
    d.spawn();
    check(&d);
    let out = d.cli(&["connect", &net, "--vhost-user", "/tmp/x.sock", "--socket-group", "ty-no-such-group"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no such group"), "{}", stderr(&out));
}

#[test]
fn port_ls_shows_the_worker_of_each_queue() {
    let d = Daemon::start("wq");
    let net = name("wq");
    d.ok(&["network", "create", &net, "--ipam", "none"]);
    let ns = Netns::new("wqns");
    d.ok(&["connect", &net, &ns.name]);
    let p = d.port(&ns.name);
    // The harness runs two workers: a TAP gets a queue per worker.
    assert_eq!(p["queues"], 2, "{p}");
    assert_eq!(p["workers"], serde_json::json!([0, 1]), "{p}");
    let table = d.ok(&["port", "ls"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert!(header.contains(&"WORKERS"), "{table}");
    assert!(lines.next().unwrap().split_whitespace().any(|c| c == "0,1"), "{table}");
}

#[test]
fn port_ls_shows_the_address_dhcp_leased_to_the_port() {
    let d = Daemon::start("dhip");
    let net = name("dhip");
    d.ok(&["network", "create", &net, "--subnet", "10.91.0.0/24"]);
    let ns = Netns::new("dhipns");
    d.ok(&["connect", &net, &ns.name]);
    assert!(d.port(&ns.name)["ip"].is_null(), "no address before DHCP");
    let fixture = format!("{}/tests/fixtures/udhcpc.sh", env!("CARGO_MANIFEST_DIR"));
    let bound = ns.run(&["udhcpc", "-f", "-q", "-n", "-i", "eth0", "-s", &fixture, "-t", "5", "-T", "1"]);
    assert!(bound, "udhcpc got no lease; daemon log:\n{}", d.log());
    let leases = d.json(&["lease", "ls"]);
    let leased = leases[0]["ip"].as_str().unwrap().to_string();
    let p = d.port(&ns.name);
    assert_eq!(p["ip"], format!("{leased}/24"), "{p}");
    assert_eq!(p["ip_source"], "dhcp", "{p}");
    assert!(d.ok(&["port", "ls"]).contains(&format!("{leased}/24")));
}

#[test]
fn a_clean_stop_leaves_no_lock_file_beside_the_socket() {
    let mut d = Daemon::start("lock");
    let lock = std::path::PathBuf::from(format!("{}.lock", d.socket.display()));
    assert!(exists(&lock), "held while running");
    assert_eq!(d.signal("TERM"), Some(0));
    assert!(!exists(&d.socket));
    assert!(!exists(&lock), "the lock file must go with the socket");
    // And a new daemon starts on the same socket.
    d.spawn();
    assert!(exists(&lock));
}

#[test]
fn an_explicit_socket_without_state_dir_keeps_its_state_beside_it() {
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("sdir")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("mine.sock");
    let child = Command::new(TAPYARD)
        .env("TAPYARD_SOCKET", &socket)
        .args(["daemon", "--uplink", "none", "--workers", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| Command::new(TAPYARD).env("TAPYARD_SOCKET", &socket).args(args).output().unwrap();
    let up = wait_for(10, || cli(&["network", "ls"]).status.success());
    let created = up && cli(&["network", "create", &name("sdir"), "--ipam", "none"]).status.success();
    stop_child(child, "TERM");
    let state = dir.join("mine.state/state.json");
    let saved = std::fs::read_to_string(&state).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up && created, "the daemon on {} did not serve", socket.display());
    assert!(saved.contains(&name("sdir")), "state not beside the socket in {}: {saved:?}", state.display());
}

#[test]
fn a_daemon_without_cap_net_admin_says_how_to_get_it() {
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("ncap")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("run/tapyard.sock");
    let log = dir.join("daemon.log");
    // Root without CAP_NET_ADMIN: dropped from the bounding set, so exec does not grant it.
    let child = Command::new("setpriv")
        .args(["--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"])
        .arg(TAPYARD)
        .arg("--socket")
        .arg(&socket)
        .args(["daemon", "--uplink", "none", "--workers", "1", "--state-dir"])
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| Command::new(TAPYARD).arg("--socket").arg(&socket).args(args).output().unwrap();
    let up = wait_for(10, || cli(&["network", "ls"]).status.success());
    let ns = Netns::new("ncapns");
    let net = name("ncap");
    let connect = up.then(|| {
        cli(&["network", "create", &net, "--ipam", "none"]);
        cli(&["connect", &net, &ns.name])
    });
    stop_child(child, "TERM");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up, "daemon did not start:\n{text}");
    assert!(text.contains("CAP_NET_ADMIN") && text.contains("unshare --user"), "no warning at start:\n{text}");
    let out = connect.unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unshare --user --map-root-user --net --mount"), "{}", stderr(&out));
}

#[test]
fn fdb_flush_counts_in_words() {
    let d = Daemon::start("plural");
    let net = name("plural");
    d.ok(&["network", "create", &net, "--subnet", "10.92.0.0/24"]);
    let ns = Netns::new("pluralns");
    d.ok(&["connect", &net, &ns.name, "--ip", "10.92.0.2"]);
    // One station: its MAC is the table's only entry once it has sent a frame.
    assert!(ns.reaches("10.92.0.1"));
    assert!(wait_for(5, || d.json(&["fdb", "show"]).as_array().unwrap().len() == 1), "{}", d.json(&["fdb", "show"]));
    assert_eq!(d.ok(&["fdb", "flush", &net]).trim(), "flushed 1 entry");
}
