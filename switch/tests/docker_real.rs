//! tapyard as the network and IPAM driver of a real `dockerd` (Debian's
//! docker.io 20.10), with containers from an image imported offline from
//! busybox-static (docs/docker.md, REAL-PEERS §3c).
//!
//! dockerd and the tapyard daemon share a network namespace made by the
//! test (dockerd's "host"): dockerd is started with `nsenter --net` (not
//! `ip netns exec`, whose private /sys hides the cgroup mounts dockerd
//! needs), its own data root, exec root, pid file and API socket under a
//! temporary directory, and `--bridge none --iptables=false
//! --ip-forward=false`, so the machine's forwarding, FORWARD policy and
//! bridge-netfilter settings are never touched (the test checks that). The
//! plugin's socket is /run/docker/plugins/NAME.sock with a NAME unique to
//! the test process, where every dockerd looks.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;
use serde_json::Value;

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's client: a newer one in /usr/local/bin may shadow it and negotiate another API.
const DOCKER: &str = "/usr/bin/docker";

/// A dockerd started by the test: its containers removed and it stopped on drop.
struct Dockerd {
    dir: PathBuf,
    netns: String,
    child: Option<Child>,
}

impl Dockerd {
    fn start(dir: &Path, netns: &str) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let mut d = Dockerd { dir: dir.to_path_buf(), netns: netns.to_string(), child: None };
        d.spawn();
        d
    }

    /// Starts dockerd and waits until it answers.
    fn spawn(&mut self) {
        let dir = self.dir.clone();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dockerd.log")).unwrap();
        // Its own configuration: without one, dockerd keeps its trust key
        // in /etc/docker/key.json, which a dockerd of an earlier test (as
        // the machine's root) leaves unreadable to the rootless pass.
        let config = dir.join("daemon.json");
        let key = dir.join("key.json");
        std::fs::write(&config, serde_json::json!({"deprecated-key-path": key}).to_string()).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(DOCKERD)
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--bridge", "none", "--iptables=false", "--ip-forward=false", "--ip-masq=false", "--group", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let d = self;
        let ready = wait_for(60, || {
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited ({st}); log:\n{}", d.log());
            }
            d.cli(&["info"]).status.success()
        });
        assert!(ready, "dockerd did not answer; log:\n{}", d.log());
    }

    /// Stops dockerd (which stops its containers: Leave and DeleteEndpoint
    /// for each) and starts it again.
    fn restart(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child_within(c, 30);
        }
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\ndockerd log (end):\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log().lines().rev().take(15).collect::<Vec<_>>().join("\n")
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Whether `docker exec NAME ARGS...` succeeds.
    fn exec(&self, name: &str, args: &[&str]) -> bool {
        let mut a = vec!["exec", name];
        a.extend_from_slice(args);
        self.cli(&a).status.success()
    }

    fn ip_of(&self, name: &str, network: &str) -> String {
        self.ok(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"), name])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Running containers make dockerd's stop slow (~13 s): remove them first.
        let ids = self.cli(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.cli(&["rm", "-f", id]);
        }
        if let Some(c) = self.child.take() {
            stop_child_within(c, 30);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, then up to `secs` for the child to exit, then SIGKILL.
fn stop_child_within(mut c: Child, secs: u64) {
    let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    if !wait_for(secs, || c.try_wait().ok().flatten().is_some()) {
        let _ = c.kill();
    }
    let _ = c.wait();
}

/// A tapyard daemon in dockerd's network namespace, entered with `nsenter
/// --net` as dockerd is: the harness's `ip netns exec` would give it a
/// mount namespace of its own, where the containers' namespace files
/// (bind mounts dockerd makes later) never appear.
struct Tapyard {
    dir: PathBuf,
    netns: String,
    flags: Vec<String>,
    socket: PathBuf,
    state: PathBuf,
    child: Option<Child>,
}

impl Tapyard {
    fn start(tag: &str, netns: &str, flags: &[&str]) -> Tapyard {
        let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name(tag)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (socket, state) = (dir.join("tapyard.sock"), dir.join("state"));
        let flags = flags.iter().map(|f| f.to_string()).collect();
        let mut t = Tapyard { dir, netns: netns.to_string(), flags, socket, state, child: None };
        t.spawn();
        t
    }

    /// Starts the daemon process and waits until it answers.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(TAPYARD)
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon")
            .args(&self.flags)
            .args(["--workers", "2", "--state-dir"])
            .arg(&self.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = self;
        let up = wait_for(10, || {
            if let Some(st) = t.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tapyard exited ({st}); log:\n{}", t.log());
            }
            t.cli(&["network", "ls"]).status.success()
        });
        assert!(up, "tapyard did not answer; log:\n{}", t.log());
    }

    /// Stops the daemon cleanly (SIGTERM) and starts it again on the same state.
    fn restart(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child_within(c, 10);
        }
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(TAPYARD).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(out.status.success(), "tapyard {a:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Tapyard {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child_within(c, 10);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a file on drop.
struct RmOnDrop(PathBuf);

impl Drop for RmOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The host settings Docker is known to leave changed (REAL-PEERS §3c).
fn host_settings() -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|_| "absent".into());
    let forward = Command::new("iptables").args(["-S", "FORWARD", "1"]).output().map(|o| o.stdout).unwrap_or_default();
    vec![
        read("/proc/sys/net/ipv4/ip_forward"),
        read("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        String::from_utf8_lossy(&forward).into_owned(),
    ]
}

/// A tiny root filesystem around busybox-static, imported as image `bb`.
fn import_image(d: &Dockerd, dir: &Path) {
    let ldd = Command::new("ldd").arg("/bin/busybox").output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(text.contains("not a dynamic"), "/bin/busybox is not static: install busybox-static ({text})");
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let sock = format!("unix://{}", d.dir.join("docker.sock").display());
    let import = format!(
        "tar -C '{}' -c . | {DOCKER} -H '{sock}' import -c 'ENV PATH=/bin' -c 'CMD [\"/bin/sh\"]' - bb",
        root.display()
    );
    sh(&["sh", "-c", &import]);
}

#[test]
fn docker_networks_on_tapyard() {
    if !net_admin() {
        return;
    }
    assert!(
        Path::new(DOCKERD).exists() && Path::new(DOCKER).exists(),
        "run scripts/setup.sh (Debian package docker.io)"
    );
    need("nsenter", "util-linux");
    need("nft", "nftables");
    let before = host_settings();
    let host = Netns::new("dkr");
    let plugin = name("dkp");
    std::fs::create_dir_all("/run/docker/plugins").unwrap();
    let sock = RmOnDrop(PathBuf::from(format!("/run/docker/plugins/{plugin}.sock")));
    let sock_s = sock.0.display().to_string();
    let dir = std::env::temp_dir().join(format!("tapyard-dockerd-{}", name("d")));
    let api = dir.join("docker.sock").display().to_string();
    let mut t = Tapyard::start(
        "dkr",
        &host.name,
        &["--docker-plugin", "--docker-plugin-socket", &sock_s, "--docker-host", &api],
    );
    let mut d = Dockerd::start(&dir, &host.name);
    import_image(&d, &dir);

    // Two networks: red with an --ip-range, a --gateway and an --aux-address;
    // blue --internal, its subnet chosen by tapyard.
    d.ok(&[
        "network",
        "create",
        "-d",
        &plugin,
        "--ipam-driver",
        &plugin,
        "--subnet",
        "10.94.0.0/24",
        "--ip-range",
        "10.94.0.128/25",
        "--gateway",
        "10.94.0.254",
        "--aux-address",
        "router=10.94.0.128",
        "-o",
        "tapyard.name=red",
        "red",
    ]);
    d.ok(&[
        "network",
        "create",
        "-d",
        &plugin,
        "--ipam-driver",
        &plugin,
        "--internal",
        "-o",
        "tapyard.name=blue",
        "blue",
    ]);
    let blue = t.json(&["network", "inspect", "blue"]);
    assert_eq!(blue["egress"], "none", "--internal: no egress: {blue}");
    // No --subnet: tapyard's IPAM took one of the daemon's default pools (172.16.0.0/12 first).
    let blue_net: String = blue["subnet"].as_str().unwrap_or_default().to_string();
    assert!(blue_net.starts_with("172.") && blue_net.ends_with("/16"), "{blue}");
    let red = t.json(&["network", "inspect", "red"]);
    assert_eq!(red["ip_range"], "10.94.0.128/25", "{red}");
    assert_eq!(red["gateway"], "10.94.0.254", "{red}");
    assert_eq!(red["aux_addresses"]["router"], "10.94.0.128", "{red}");

    // Containers: only in the initial user namespace. In the rootless pass
    // of scripts/test.sh (a user namespace) a rootful dockerd makes networks
    // but cannot start containers (runc mounts devpts with gid 5, unmapped
    // there). Docker's own rootless mode (rootlesskit, subordinate ids) runs
    // containers: scripts/test-docker-rootless.sh tests that.
    if initial_userns() {
        // Three containers on red (one with --ip, one publishing a port), one on blue.
        run(&d, "a1", &["--network", "red"], &["sleep", "600"]);
        run(
            &d,
            "a2",
            &["--network", "red", "--ip", "10.94.0.50", "--mac-address", "02:42:0a:5e:00:32", "--sysctl", BCAST],
            &["sleep", "600"],
        );
        run(
            &d,
            "a3",
            &["--network", "red", "-p", "18080:80", "--sysctl", BCAST],
            &["httpd", "-f", "-p", "80", "-h", "/etc"],
        );
        run(&d, "b1", &["--network", "blue"], &["sleep", "600"]);
        let red_ips: Vec<String> = ["a1", "a2", "a3"].iter().map(|c| d.ip_of(c, "red")).collect();
        assert_eq!(red_ips[1], "10.94.0.50", "--ip is honoured");
        assert!(
            red_ips
                .iter()
                .filter(|ip| *ip != "10.94.0.50")
                .all(|ip| ip.starts_with("10.94.0.1") && *ip != "10.94.0.128"),
            "{red_ips:?}: from the --ip-range"
        );
        let b1 = d.ip_of("b1", "blue");

        // Every pair on red talks, and each reaches the gateway.
        for (i, from) in ["a1", "a2", "a3"].iter().enumerate() {
            for (j, ip) in red_ips.iter().enumerate() {
                if i != j {
                    assert!(
                        d.exec(from, &["ping", "-c", "1", "-W", "3", ip]),
                        "{from} cannot reach {ip}; log:\n{}",
                        t.log()
                    );
                }
            }
            assert!(d.exec(from, &["ping", "-c", "1", "-W", "3", "10.94.0.254"]), "{from} cannot reach the gateway");
        }
        // A tapyard restart: the containers keep their networking (their
        // ports are re-created inside them, where Docker put the TAPs).
        assert!(
            wait_for(5, || t
                .json(&["port", "ls", "red"])
                .as_array()
                .is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["ifname"] == "eth0"))),
            "port ls: {}\nlog:\n{}",
            t.json(&["port", "ls", "red"]),
            t.log()
        );
        t.restart();
        assert!(
            d.exec("a1", &["ping", "-c", "1", "-W", "3", &red_ips[1]]),
            "after a tapyard restart; log:\n{}",
            t.log()
        );
        // A dockerd restart: it stops the containers (their ports go), keeps
        // the networks (no new CreateNetwork: tapyard's maps hold them), and
        // `docker start` brings them back on them with their addresses.
        d.restart();
        assert!(
            wait_for(5, || t.json(&["port", "ls", "red"]) == Value::Array(vec![])),
            "ports of stopped containers stay"
        );
        d.ok(&["start", "a1", "a2", "a3", "b1"]);
        assert!(
            d.exec("a1", &["ping", "-c", "1", "-W", "3", "10.94.0.50"]),
            "after a dockerd restart; log:\n{}",
            t.log()
        );
        // The ports are tapyard's, shown where Docker put them.
        assert!(
            wait_for(5, || {
                let ports = t.json(&["port", "ls", "red"]);
                let ports = ports.as_array().cloned().unwrap_or_default();
                ports.len() == 3
                    && ports
                        .iter()
                        .all(|p| p["ifname"] == "eth0" && p["netns"].as_str().is_some_and(|n| n.contains("/netns/")))
            }),
            "port ls: {}",
            t.json(&["port", "ls", "red"])
        );
        let a2_port = t
            .json(&["port", "ls", "red"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["mac"] == "02:42:0a:5e:00:32")
            .cloned();
        assert!(a2_port.is_some(), "--mac-address is the port's MAC");
        // port ls names each port's container, asked of dockerd's API.
        let named = |p: &Value| p["container"]["name"].as_str().map(str::to_string);
        assert!(
            wait_for(10, || {
                let mut names: Vec<_> =
                    t.json(&["port", "ls", "red"]).as_array().unwrap_or(&vec![]).iter().filter_map(named).collect();
                names.sort();
                names == ["a1", "a2", "a3"]
            }),
            "port ls does not name the containers: {}\nlog:\n{}",
            t.json(&["port", "ls", "red"]),
            t.log()
        );
        let table = String::from_utf8_lossy(&t.cli(&["port", "ls", "red"]).stdout).into_owned();
        assert!(
            table.lines().any(|l| l.split_whitespace().nth(2) == Some("a1")),
            "NETNS shows the container:\n{table}"
        );
        // One to many: a ping to red's broadcast address is answered by both
        // others (they answer broadcast echoes: BCAST).
        let bcast = d.cli(&["exec", "a1", "ping", "-c", "3", "-W", "3", "10.94.0.255"]);
        let text = String::from_utf8_lossy(&bcast.stdout).into_owned();
        for ip in &red_ips[1..] {
            assert!(text.contains(&format!("from {ip}:")), "no answer from {ip} to a broadcast ping:\n{text}");
        }
        // Two networks stay apart.
        assert!(!d.exec("a1", &["ping", "-c", "1", "-W", "1", &b1]), "red reached blue");
        // -p 18080:80 through tapyard's published ports, from dockerd's host.
        assert!(
            wait_for(5, || host_cmd(&host, &["busybox", "wget", "-q", "-O-", "http://127.0.0.1:18080/passwd"])
                .contains("root:")),
            "the published port does not answer; log:\n{}",
            t.log()
        );
        // docker network connect: a second interface, on blue.
        d.ok(&["network", "connect", "blue", "a1"]);
        assert!(d.exec("a1", &["ping", "-c", "1", "-W", "3", &b1]), "after network connect, a1 reaches b1");

        // Docker's own IPAM with tapyard's network driver.
        d.ok(&["network", "create", "-d", &plugin, "--subnet", "10.96.0.0/24", "-o", "tapyard.name=green", "green"]);
        assert_eq!(t.json(&["network", "inspect", "green"])["subnet"], "10.96.0.0/24");
        run(&d, "g1", &["--network", "green"], &["sleep", "600"]);
        assert!(
            d.exec("g1", &["ping", "-c", "1", "-W", "3", "10.96.0.1"]),
            "Docker's IPAM: g1 cannot reach the gateway"
        );
        d.ok(&["rm", "-f", "g1"]);
        d.ok(&["network", "rm", "green"]);

        // 100 docker run --rm cycles (issue 13's figure) leak no address, port or TAP.
        for _ in 0..100 {
            d.ok(&["run", "--rm", "--network", "red", "bb", "true"]);
        }
        let maps: Value = serde_json::from_slice(&std::fs::read(t.state.join("docker.json")).unwrap()).unwrap();
        let mut handed_out: Vec<String> = maps["pools"]["10.94.0.0/24"]["addresses"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        handed_out.sort();
        let mut expected: Vec<String> = red_ips.iter().cloned().chain(["10.94.0.128".to_string()]).collect();
        expected.sort();
        assert_eq!(handed_out, expected, "only a1, a2, a3 and the aux address hold addresses: {maps}");
        assert!(wait_for(5, || t.json(&["port", "ls", "red"]).as_array().map(Vec::len) == Some(3)), "ports leaked");

        // docker rm and docker network rm leave nothing behind.
        for c in ["a1", "a2", "a3", "b1"] {
            d.ok(&["rm", "-f", c]);
        }
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "docker_real: in a user namespace: networks only, no containers (a rootful dockerd cannot start them here)"
        );
    }
    assert!(wait_for(5, || t.json(&["port", "ls"]) == Value::Array(vec![])), "ports left: {}", t.json(&["port", "ls"]));
    d.ok(&["network", "rm", "red", "blue"]);
    let nets = t.json(&["network", "ls"]);
    assert_eq!(nets, Value::Array(vec![]), "tapyard networks left: {nets}");
    let maps: Value = serde_json::from_slice(&std::fs::read(t.state.join("docker.json")).unwrap()).unwrap();
    assert_eq!(maps, serde_json::json!({ "pools": {}, "networks": {}, "endpoints": {} }));
    let links = host_cmd(&host, &["ip", "-br", "link"]);
    assert!(!links.lines().any(|l| l.starts_with("ty")), "TAPs left in dockerd's namespace:\n{links}");
    drop(d);
    assert_eq!(host_settings(), before, "the machine's forwarding settings are unchanged");
}

/// Containers answer echo requests sent to a broadcast address (Linux ignores them by default).
const BCAST: &str = "net.ipv4.icmp_echo_ignore_broadcasts=0";

/// `docker run -d --cap-add NET_RAW --name NAME EXTRA... bb CMD...`
fn run(d: &Dockerd, name: &str, extra: &[&str], cmd: &[&str]) {
    let mut a = vec!["run", "-d", "--cap-add", "NET_RAW", "--name", name];
    a.extend_from_slice(extra);
    a.push("bb");
    a.extend_from_slice(cmd);
    d.ok(&a);
}

/// Whether this process is in the initial user namespace (its uid map is the identity of all ids).
fn initial_userns() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Runs a command in `ns` and returns its stdout (empty on failure).
fn host_cmd(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip").args(["netns", "exec", &ns.name]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
