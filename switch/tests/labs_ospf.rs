//! The routing lab of examples/ospf.toml with real routing daemons: three
//! BIRD routers (Debian `bird2`) learn their routes over OSPF across
//! tapyard links; h1 reaches h3 over the direct link r1-r3; cutting that
//! link with `port set ... --down` (carrier loss on r1's side) makes OSPF
//! move the traffic through r2, and `--up` brings it back.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{name, need, net_admin, wait_for, Daemon, TAPYARD};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(TAPYARD).arg("--socket").arg(socket).args(args).output().unwrap()
}

fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = cli(socket, args);
    assert!(out.status.success(), "tapyard {args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// Brings the lab down (and its files away) even when the test fails.
struct Guard {
    socket: std::path::PathBuf,
    lab: String,
    dir: std::path::PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = cli(&self.socket, &["lab", "down", &self.lab]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ospf_converges_and_reroutes_when_a_link_is_cut() {
    if !net_admin() {
        return;
    }
    need("bird", "bird2");
    let d = Daemon::start("ospf");
    // The example, under a name of this test's own (several runs never collide).
    let lab = format!("o{}", std::process::id() % 100_000);
    let dir = std::env::temp_dir().join(format!("tapyard-ospf-{}", name("f")));
    std::fs::create_dir_all(dir.join("ospf")).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let topo = std::fs::read_to_string(examples.join("ospf.toml")).unwrap();
    assert!(topo.contains("name = \"ospf\""), "the example names its lab");
    std::fs::write(dir.join("ospf.toml"), topo.replace("name = \"ospf\"", &format!("name = \"{lab}\""))).unwrap();
    std::fs::copy(examples.join("ospf/bird.conf"), dir.join("ospf/bird.conf")).unwrap();
    let g = Guard { socket: d.socket.clone(), lab: lab.clone(), dir: dir.clone() };
    cli_ok(&d.socket, &["lab", "up", dir.join("ospf.toml").to_str().unwrap()]);

    let exec = |node: &str, cmd: &[&str]| {
        let mut args = vec!["lab", "exec", &lab, node, "--"];
        args.extend_from_slice(cmd);
        cli(&d.socket, &args)
    };
    let h1_reaches_h3 = || exec("h1", &["ping", "-c", "1", "-W", "1", "10.61.3.10"]).status.success();
    let r1_route = || text(&exec("r1", &["ip", "route", "get", "10.61.3.10"]).stdout);
    let log = |what: &str| {
        format!(
            "{what}\nr1: {}\nr3 routes: {}\nlab status: {}",
            r1_route(),
            text(&exec("r3", &["ip", "route"]).stdout),
            text(&cli(&d.socket, &["lab", "status", &lab]).stdout)
        )
    };

    // Converged: h1 reaches h3, r1 over the direct link (eth2 to r3).
    assert!(wait_for(60, h1_reaches_h3), "{}", log("OSPF did not converge"));
    assert!(wait_for(20, || r1_route().contains("dev eth2")), "{}", log("r1 does not use the direct link"));

    // Cut r1-r3 on r1's side: r1 sees carrier loss at once.
    let link = format!("{lab}-r1r3");
    let r1 = format!("{lab}-r1");
    cli_ok(&d.socket, &["port", "set", &link, &r1, "--ifname", "eth2", "--down"]);
    let carrier = || text(&Command::new("ip").args(["-n", &r1, "link", "show", "eth2"]).output().unwrap().stdout);
    assert!(wait_for(5, || carrier().contains("NO-CARRIER")), "no carrier loss on r1's eth2: {}", carrier());
    // OSPF moves the traffic through r2 (r1's eth1), both ways (r3 notices
    // the dead neighbour after its dead interval).
    assert!(wait_for(30, || r1_route().contains("dev eth1")), "{}", log("r1 did not reroute through r2"));
    assert!(wait_for(30, h1_reaches_h3), "{}", log("h1 does not reach h3 through r2"));
    let r2_before = port_rx(&d.socket, &format!("{lab}-r2"));
    assert!(exec("h1", &["ping", "-c", "5", "-i", "0.2", "-W", "1", "10.61.3.10"]).status.success());
    assert!(port_rx(&d.socket, &format!("{lab}-r2")) >= r2_before + 10, "the pings did not cross r2");

    // Back up: the direct link again.
    cli_ok(&d.socket, &["port", "set", &link, &r1, "--ifname", "eth2", "--up"]);
    assert!(wait_for(30, || r1_route().contains("dev eth2")), "{}", log("r1 did not return to the direct link"));
    assert!(wait_for(30, h1_reaches_h3), "{}", log("h1 does not reach h3 after the link came back"));

    drop(g);
    let left = text(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout);
    assert!(!left.lines().any(|l| l.starts_with(&format!("{lab}-"))), "namespaces left: {left}");
    let birds = text(&Command::new("pgrep").args(["-af", &format!("lab-{lab}.d/")]).output().unwrap().stdout);
    assert!(birds.lines().all(|l| l.contains("pgrep")), "bird left running: {birds}");
}

/// Frames tapyard delivered to r2 on its two links, summed.
fn port_rx(socket: &Path, netns: &str) -> u64 {
    let ports: serde_json::Value = serde_json::from_str(&cli_ok(socket, &["port", "ls", "--json"])).unwrap();
    ports
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["netns"] == netns)
        .map(|p| p["counters"]["tx_packets"].as_u64().unwrap_or(0))
        .sum()
}
