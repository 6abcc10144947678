//! The control plane driven through [`Daemon::handle`], with no TAP and no
//! namespace: networks, routers, routes, reservations and vhost-user ports
//! (a unix socket) need no privilege, so these run as any user. TAP ports
//! are covered by the privileged tests in switch/tests/.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::proto::*;
use super::{wait_for_epoch, Config, Daemon};

/// A daemon on its own state directory, stopped and removed on drop.
struct TestDaemon {
    d: Arc<Daemon>,
    dir: PathBuf,
}

impl TestDaemon {
    fn start(name: &str) -> TestDaemon {
        let dir = std::env::temp_dir().join(format!("tapyard-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        let d = Daemon::start(config(&dir)).expect("daemon starts without privileges");
        TestDaemon { d, dir }
    }

    /// Stops this daemon and starts another on the same state directory.
    fn restart(self) -> TestDaemon {
        self.restart_with(|_| {})
    }

    /// Stops this daemon, runs `between` on the state directory, and starts another on it.
    fn restart_with(mut self, between: impl FnOnce(&std::path::Path)) -> TestDaemon {
        self.d.shutdown();
        let dir = std::mem::take(&mut self.dir);
        between(&dir);
        let d = Daemon::start(config(&dir)).expect("daemon restarts");
        TestDaemon { d, dir }
    }

    fn ok(&self, req: Request) -> serde_json::Value {
        let r = self.d.handle(req.clone());
        match r {
            Ok(reply) => serde_json::to_value(reply).expect("a reply encodes"),
            Err(e) => panic!("{req:?} failed: {e}"),
        }
    }

    fn err(&self, req: Request) -> ErrorKind {
        match self.d.handle(req.clone()) {
            Ok(r) => panic!("{req:?} should fail, got {r:?}"),
            Err(e) => {
                assert!(!e.message.is_empty());
                e.kind
            }
        }
    }

    fn create(&self, name: &str, subnet: Option<&str>) -> serde_json::Value {
        self.ok(Request::NetworkCreate(NetworkCreate {
            name: name.into(),
            subnet: subnet.map(String::from),
            ..Default::default()
        }))
    }

    fn vhost(&self, network: &str, sock: &str) -> Result<Reply, ApiError> {
        self.d.handle(Request::ConnectVhost {
            network: network.into(),
            socket: self.dir.join(sock).display().to_string(),
            client: false,
            queues: None,
            mac: None,
            socket_mode: None,
            socket_group: None,
            port_security: None,
            storm_limit: None,
        })
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.d.shutdown();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config(dir: &std::path::Path) -> Config {
    Config { workers: 2, ..Config::new(dir.join("tapyard.sock"), dir.to_path_buf()) }
}

fn create_req(name: &str, f: impl FnOnce(&mut NetworkCreate)) -> Request {
    let mut a = NetworkCreate { name: name.into(), ..Default::default() };
    f(&mut a);
    Request::NetworkCreate(a)
}

#[test]
fn network_create_rejects_bad_arguments_with_their_class() {
    let t = TestDaemon::start("netargs");
    use ErrorKind::*;
    let cases: Vec<(Request, ErrorKind)> = vec![
        (create_req("", |_| {}), BadRequest),
        (create_req("-x", |_| {}), BadRequest),
        (create_req("a b", |_| {}), BadRequest),
        (create_req("n", |a| a.subnet = Some("10.1.0.0/33".into())), BadRequest),
        (create_req("n", |a| a.subnet = Some("10.1.0.0".into())), BadRequest),
        (create_req("n", |a| a.mtu = Some(67)), BadRequest),
        (create_req("n", |a| a.mtu = Some(65_536)), BadRequest),
        (create_req("n", |a| a.ageing_secs = Some(0)), BadRequest),
        (create_req("n", |a| a.fdb_capacity = Some(0)), BadRequest),
        (create_req("n", |a| a.lease_secs = Some(59)), BadRequest),
        (create_req("n", |a| a.ipam = Some("dhcp".into())), BadRequest),
        (
            create_req("n", |a| {
                a.ipam = Some("none".into());
                a.subnet = Some("10.1.0.0/24".into())
            }),
            BadRequest,
        ),
        (create_req("n", |a| a.gateway = Some("10.1.0.1".into())), BadRequest),
        (
            create_req("n", |a| {
                a.subnet = Some("10.1.0.0/24".into());
                a.ip_range = Some("10.2.0.0/28".into())
            }),
            BadRequest,
        ),
        (
            create_req("n", |a| {
                a.subnet = Some("10.1.0.0/24".into());
                a.aux_addresses = vec!["router".into()]
            }),
            BadRequest,
        ),
    ];
    for (req, kind) in cases {
        assert_eq!(t.err(req.clone()), kind, "{req:?}");
    }
    // Nothing above was created.
    assert_eq!(t.ok(Request::NetworkLs), json!([]));
    // The edges of the MTU range are accepted.
    t.ok(create_req("lo", |a| a.mtu = Some(68)));
    t.ok(create_req("hi", |a| a.mtu = Some(65_535)));
}

#[test]
fn names_and_subnets_clash_as_conflicts_and_unknown_names_are_not_found() {
    let t = TestDaemon::start("clash");
    let v = t.create("blue", Some("10.20.0.0/24"));
    assert_eq!((v["name"].as_str(), v["gateway"].as_str()), (Some("blue"), Some("10.20.0.1")));
    assert_eq!(t.err(create_req("blue", |_| {})), ErrorKind::Conflict);
    assert_eq!(t.err(create_req("green", |a| a.subnet = Some("10.20.0.128/25".into()))), ErrorKind::Conflict);
    // Without --subnet: the next free subnet of the default pools.
    let auto = t.create("green", None);
    assert!(auto["subnet"].as_str().is_some_and(|s| s.starts_with("172.")), "{auto}");
    for req in [
        Request::NetworkInspect { name: "nope".into() },
        Request::NetworkRm { name: "nope".into(), force: true },
        Request::PortLs { network: Some("nope".into()) },
        Request::FdbShow { network: Some("nope".into()) },
        Request::FdbFlush { network: Some("nope".into()) },
        Request::LeaseLs { network: Some("nope".into()) },
        Request::RouterInspect { name: "nope".into() },
        Request::RouteLs { router: Some("nope".into()) },
    ] {
        assert_eq!(t.err(req.clone()), ErrorKind::NotFound, "{req:?}");
    }
    assert_eq!(t.ok(Request::FdbFlush { network: None }), json!({ "flushed": 0 }));
    assert_eq!(t.ok(Request::NetworkRm { name: "green".into(), force: false }), {
        json!({ "removed": "green", "ports_removed": 0, "detached_from": null })
    });
}

#[test]
fn router_attach_and_detach_follow_the_rules() {
    let t = TestDaemon::start("router");
    t.create("a", Some("10.30.1.0/24"));
    t.create("b", Some("10.30.2.0/24"));
    t.ok(create_req("l2", |a| a.ipam = Some("none".into())));
    t.ok(create_req("inside", |a| {
        a.subnet = Some("10.30.3.0/24".into());
        a.internal = true
    }));
    t.ok(Request::RouterCreate { name: "r1".into() });
    t.ok(Request::RouterCreate { name: "r2".into() });
    assert_eq!(t.err(Request::RouterCreate { name: "r1".into() }), ErrorKind::Conflict);
    let attach = |r: &str, n: &str| Request::RouterAttach { router: r.into(), network: n.into() };
    let detach = |r: &str, n: &str| Request::RouterDetach { router: r.into(), network: n.into() };
    let v = t.ok(attach("r1", "a"));
    assert_eq!(v["networks"], json!(["a"]));
    assert_eq!(v["routes"], json!([{ "router": "r1", "prefix": "10.30.1.0/24", "via": null, "network": "a" }]));
    t.ok(attach("r1", "b"));
    assert_eq!(t.err(attach("r2", "a")), ErrorKind::Conflict, "one router per network");
    assert_eq!(t.err(attach("r1", "l2")), ErrorKind::BadRequest, "nothing to route");
    assert_eq!(t.err(attach("r1", "inside")), ErrorKind::Conflict, "--internal");
    assert_eq!(t.err(attach("nope", "a")), ErrorKind::NotFound);
    assert_eq!(t.err(attach("r1", "nope")), ErrorKind::NotFound);
    assert_eq!(t.err(detach("r2", "a")), ErrorKind::NotFound, "not attached there");

    // Static routes: the next hop must be in an attached network.
    let add = |p: &str, via: &str| Request::RouteAdd { router: "r1".into(), prefix: p.into(), via: via.into() };
    assert_eq!(t.err(add("10.50.0.0/16", "10.99.0.1")), ErrorKind::BadRequest);
    assert_eq!(t.err(add("10.50.0.0/99", "10.30.1.9")), ErrorKind::BadRequest);
    assert_eq!(t.err(add("10.50.0.0/16", "not-an-ip")), ErrorKind::BadRequest);
    // A prefix is stored truncated to its length.
    let v = t.ok(add("10.50.7.0/16", "10.30.1.9"));
    assert!(v["routes"]
        .as_array()
        .unwrap()
        .contains(&json!({ "router": "r1", "prefix": "10.50.0.0/16", "via": "10.30.1.9", "network": "a" })));
    let del = |p: &str| Request::RouteDel { router: "r1".into(), prefix: p.into() };
    assert_eq!(t.err(del("10.60.0.0/16")), ErrorKind::NotFound);
    assert_eq!(t.ok(Request::RouteLs { router: Some("r2".into()) }), json!([]));
    assert_eq!(t.ok(Request::RouteLs { router: None }).as_array().map(Vec::len), Some(3));
    t.ok(del("10.50.0.0/16"));

    // A network attached to a router is busy; --force detaches it.
    assert_eq!(t.err(Request::NetworkRm { name: "b".into(), force: false }), ErrorKind::Busy);
    let v = t.ok(Request::NetworkRm { name: "b".into(), force: true });
    assert_eq!(v, json!({ "removed": "b", "ports_removed": 0, "detached_from": "r1" }));
    assert_eq!(t.ok(Request::RouterInspect { name: "r1".into() })["networks"], json!(["a"]));
    assert_eq!(t.ok(Request::RouterRm { name: "r1".into() }), json!({ "removed": "r1" }));
    assert_eq!(t.ok(Request::NetworkInspect { name: "a".into() })["router"], json!(null));
}

#[test]
fn waiting_for_adoption_returns_only_once_every_worker_has_the_epoch() {
    let workers: Vec<Arc<AtomicU64>> = vec![Arc::new(AtomicU64::new(7)), Arc::new(AtomicU64::new(6))];
    let slow = workers[1].clone();
    // The second worker adopts epoch 7 a while later (a worker busy with a burst).
    let bump = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        slow.store(7, Ordering::Release);
    });
    assert!(wait_for_epoch(workers.iter().map(|a| &**a), 7, Duration::from_secs(5)));
    assert_eq!(workers[1].load(Ordering::Acquire), 7, "returned before the slow worker adopted");
    bump.join().unwrap();
    // A worker that never adopts: false once the timeout passes.
    let stuck = [AtomicU64::new(3)];
    assert!(!wait_for_epoch(stuck.iter(), 4, Duration::from_millis(20)));
    // No workers, or all already there: at once.
    assert!(wait_for_epoch(std::iter::empty(), 9, Duration::ZERO));
}

#[test]
fn removals_are_in_force_on_every_worker_when_the_reply_comes() {
    let t = TestDaemon::start("adopt");
    t.create("a", Some("10.31.1.0/24"));
    t.ok(Request::RouterCreate { name: "r".into() });
    t.ok(Request::RouterAttach { router: "r".into(), network: "a".into() });
    // Each request, and whether it takes something away: then commit waits
    // until every worker runs without it.
    let steps = [
        (Request::RouteAdd { router: "r".into(), prefix: "10.77.0.0/16".into(), via: "10.31.1.5".into() }, true),
        (Request::RouteDel { router: "r".into(), prefix: "10.77.0.0/16".into() }, true),
        (Request::RouterDetach { router: "r".into(), network: "a".into() }, true),
        (Request::RouterAttach { router: "r".into(), network: "a".into() }, false),
        (Request::RouterRm { name: "r".into() }, true),
        (create_req("b", |a| a.subnet = Some("10.31.2.0/24".into())), false),
        (Request::NetworkRm { name: "b".into(), force: false }, true),
    ];
    for (req, removes) in steps {
        let before = t.d.adoption_waits.load(Ordering::Relaxed);
        t.ok(req.clone());
        let waited = t.d.adoption_waits.load(Ordering::Relaxed) > before;
        assert_eq!(waited, removes, "{req:?}");
        let epoch = t.d.lock().epoch;
        if removes {
            assert!(t.d.workers.iter().all(|w| w.adopted.load(Ordering::Acquire) >= epoch), "{req:?}");
        }
    }
}

#[test]
fn reservations_are_checked_and_listed() {
    let t = TestDaemon::start("reserve");
    t.create("a", Some("10.32.0.0/24"));
    t.ok(create_req("l2", |a| a.ipam = Some("none".into())));
    let reserve =
        |n: &str, mac: &str, ip: &str| Request::NetworkReserve { network: n.into(), mac: mac.into(), ip: ip.into() };
    assert_eq!(t.err(reserve("a", "zz:00:00:00:00:01", "10.32.0.9")), ErrorKind::BadRequest);
    assert_eq!(t.err(reserve("a", "02:00:00:00:00:01", "10.33.0.9")), ErrorKind::Conflict, "outside the subnet");
    assert_eq!(t.err(reserve("a", "02:00:00:00:00:01", "10.32.0.1")), ErrorKind::Conflict, "the gateway");
    assert_eq!(t.err(reserve("l2", "02:00:00:00:00:01", "10.32.0.9")), ErrorKind::BadRequest);
    assert_eq!(t.err(reserve("nope", "02:00:00:00:00:01", "10.32.0.9")), ErrorKind::NotFound);
    let v = t.ok(reserve("a", "02:00:00:00:00:01", "10.32.0.9"));
    assert_eq!(v, json!({ "network": "a", "mac": "02:00:00:00:00:01", "ip": "10.32.0.9" }));
    let n = t.ok(Request::NetworkInspect { name: "a".into() });
    assert_eq!(n["reservations"], json!({ "02:00:00:00:00:01": "10.32.0.9" }));
    assert_eq!(t.err(reserve("a", "02:00:00:00:00:02", "10.32.0.9")), ErrorKind::Conflict, "taken");
}

#[test]
fn vhost_ports_share_one_allocator_and_one_worker_per_network() {
    let t = TestDaemon::start("ports");
    t.create("a", Some("10.34.1.0/24"));
    t.create("b", Some("10.34.2.0/24"));
    let port = |r: Result<Reply, ApiError>| match r {
        Ok(Reply::Port(p)) => *p,
        other => panic!("expected a port, got {other:?}"),
    };
    let p1 = port(t.vhost("a", "a1.sock"));
    let p2 = port(t.vhost("a", "a2.sock"));
    let p3 = port(t.vhost("b", "b1.sock"));
    assert_eq!((p1.id, p2.id, p3.id), (1, 2, 3));
    // Ports of one network share a worker; another network goes to the least loaded one.
    assert_eq!(p1.worker, p2.worker);
    assert_ne!(p3.worker, p1.worker);
    assert!(p1.vhost.as_ref().is_some_and(|v| v.mode == "server" && !v.connected));
    // Clashes and bad arguments, before anything is recorded.
    assert_eq!(t.vhost("b", "a1.sock").unwrap_err().kind, ErrorKind::Conflict, "socket in use");
    let relative = Request::ConnectVhost {
        network: "a".into(),
        socket: "rel.sock".into(),
        client: false,
        queues: None,
        mac: None,
        socket_mode: None,
        socket_group: None,
        port_security: None,
        storm_limit: None,
    };
    assert_eq!(t.err(relative), ErrorKind::BadRequest);
    let too_many = Request::ConnectVhost {
        network: "a".into(),
        socket: t.dir.join("q.sock").display().to_string(),
        client: false,
        queues: Some(3),
        mac: None,
        socket_mode: None,
        socket_group: None,
        port_security: None,
        storm_limit: None,
    };
    assert_eq!(t.err(too_many), ErrorKind::BadRequest, "more queue pairs than workers");
    let client_mode = Request::ConnectVhost {
        network: "a".into(),
        socket: t.dir.join("c.sock").display().to_string(),
        client: true,
        queues: None,
        mac: None,
        socket_mode: Some("0600".into()),
        socket_group: None,
        port_security: None,
        storm_limit: None,
    };
    assert_eq!(t.err(client_mode), ErrorKind::BadRequest, "--socket-mode with --client");
    let vhost_ids = |v: serde_json::Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
    };
    assert_eq!(vhost_ids(t.ok(Request::PortLs { network: None })), [1, 2, 3]);

    // The lowest free id is reused; a network with ports is busy.
    let sock = |s: &str| t.dir.join(s).display().to_string();
    let v = t.ok(Request::DisconnectVhost { network: "a".into(), socket: sock("a1.sock") });
    assert_eq!(v, json!({ "disconnected": 1 }));
    assert_eq!(t.err(Request::DisconnectVhost { network: "a".into(), socket: sock("a1.sock") }), ErrorKind::NotFound);
    let p4 = port(t.vhost("a", "a3.sock"));
    assert_eq!((p4.id, p4.worker), (1, p2.worker));
    assert_eq!(t.err(Request::NetworkRm { name: "a".into(), force: false }), ErrorKind::Busy);
    let v = t.ok(Request::NetworkRm { name: "a".into(), force: true });
    assert_eq!(v, json!({ "removed": "a", "ports_removed": 2, "detached_from": null }));
    assert_eq!(vhost_ids(t.ok(Request::PortLs { network: None })), [3]);
}

#[test]
fn a_restart_restores_networks_routers_and_vhost_ports() {
    let t = TestDaemon::start("restore");
    t.create("a", Some("10.35.1.0/24"));
    t.ok(Request::RouterCreate { name: "r".into() });
    t.ok(Request::RouterAttach { router: "r".into(), network: "a".into() });
    let before = match t.vhost("a", "v.sock") {
        Ok(Reply::Port(p)) => *p,
        other => panic!("expected a port, got {other:?}"),
    };
    let t = t.restart();
    let nets = t.ok(Request::NetworkLs);
    assert_eq!(nets.as_array().map(Vec::len), Some(1));
    assert_eq!((nets[0]["name"].as_str(), nets[0]["router"].as_str()), (Some("a"), Some("r")));
    let ports = t.ok(Request::PortLs { network: Some("a".into()) });
    assert_eq!(ports.as_array().map(Vec::len), Some(1));
    assert_eq!((ports[0]["mac"].as_str(), ports[0]["id"].as_u64()), (Some(before.mac.as_str()), Some(1)));
    assert_eq!(ports[0]["vhost"]["socket"], json!(t.dir.join("v.sock").display().to_string()));
}

#[test]
fn ping_reports_the_daemon_and_shutdown_says_stopping() {
    let t = TestDaemon::start("ping");
    let v = t.ok(Request::Ping);
    assert_eq!((v["protocol"].as_u64(), v["workers"].as_u64()), (Some(u64::from(PROTOCOL_VERSION)), Some(2)));
    assert_eq!(v["state_dir"], json!(t.dir.display().to_string()));
    assert_eq!(t.ok(Request::Shutdown), json!({ "stopping": true }));
}

/// The error of a failed request: its kind and message.
fn failure(r: Result<Reply, ApiError>) -> ApiError {
    match r {
        Ok(r) => panic!("should fail, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn publishing_needs_a_network_with_egress_and_a_good_spec() {
    let t = TestDaemon::start("pubargs");
    t.create("e", Some("10.36.1.0/24"));
    t.ok(create_req("l2", |a| a.ipam = Some("none".into())));
    t.ok(create_req("int", |a| {
        a.subnet = Some("10.36.2.0/24".into());
        a.internal = true
    }));
    let publish = |network: &str, spec: &str| {
        t.d.handle(Request::PortPublish {
            network: network.into(),
            netns: "nowhere".into(),
            ifname: None,
            spec: spec.into(),
        })
    };
    for net in ["l2", "int"] {
        let e = failure(publish(net, "8080:80"));
        assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
        assert!(e.message.contains(&format!("network \"{net}\" has no egress; published ports need one")), "{e}");
    }
    let e = failure(publish("e", "8080:80/sctp"));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("sctp"), "{e}");
    // This daemon has no uplink (`--uplink none`): nothing can be published.
    let e = failure(publish("e", "8080:80"));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
    assert!(e.message.contains("the daemon runs with --uplink none"), "{e}");
    let e = failure(t.d.handle(Request::PortUnpublish {
        network: "e".into(),
        netns: "nowhere".into(),
        ifname: None,
        spec: "0.0.0.0:8080->80/tcp".into(),
    }));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // A bad spec refuses the connect before the namespace is even looked at.
    let e = failure(t.d.handle(Request::Connect {
        network: "e".into(),
        netns: "nowhere".into(),
        ifname: None,
        mac: None,
        ip: None,
        offload: None,
        publish: vec!["8080:80".into(), "8080:0".into()],
        owner: None,
        port_security: None,
        storm_limit: None,
        kind: None,
    }));
    assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
    assert!(e.message.contains("\"8080:0\""), "the bad spec is named: {e}");
    assert_eq!(t.ok(Request::PortLs { network: None }), json!([]));
}

/// A free TCP port on 127.0.0.1, found by binding port 0 (free again once
/// this returns; another program taking it in between is unlikely).
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn bind_fails(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

#[test]
fn a_restart_reserves_published_ports_again_or_keeps_them_inactive() {
    use super::publish::{Proto, Publish};
    let t = TestDaemon::start("pubrestore");
    t.create("a", Some("10.36.3.0/24"));
    let mac = match t.vhost("a", "v.sock") {
        Ok(Reply::Port(p)) => p.mac.clone(),
        other => panic!("expected a port, got {other:?}"),
    };
    // Published ports as a daemon left them in state.json: one whose host
    // port is free at the restart, one another program took meanwhile.
    let lo = Some(std::net::Ipv4Addr::LOCALHOST);
    let free = Publish { host_ip: lo, host_port: free_tcp_port(), container_port: 80, proto: Proto::Tcp };
    let thief = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken =
        Publish { host_ip: lo, host_port: thief.local_addr().unwrap().port(), container_port: 81, proto: Proto::Tcp };
    let t = t.restart_with(|dir| {
        let path = super::persist::state_path(dir);
        let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        state["ports"][0]["publish"] = serde_json::to_value([free, taken]).unwrap();
        std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    });
    let ports = t.ok(Request::PortLs { network: None });
    let published = ports[0]["publish"].as_array().cloned().unwrap_or_default();
    assert_eq!(published.len(), 2, "{ports}");
    let of = |p: &Publish| published.iter().find(|x| x["host_port"] == p.host_port).cloned().unwrap_or_default();
    // Held again, but the port has no address yet.
    assert_eq!(of(&free)["state"], "waiting", "{ports}");
    assert!(bind_fails(free.host_port), "the daemon holds {} again", free.host_port);
    // Kept, inactive, with the reason.
    assert_eq!(of(&taken)["state"], "inactive", "{ports}");
    let why = of(&taken)["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains(&format!("host port 127.0.0.1:{}/tcp is already in use", taken.host_port)), "{why}");
    let saved = std::fs::read_to_string(super::persist::state_path(&t.dir)).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let saved: std::collections::BTreeSet<Publish> =
        serde_json::from_value(saved["ports"][0]["publish"].clone()).unwrap();
    assert_eq!(saved, [free, taken].into(), "both kept");
    // No address: nothing to forward. With one (a lease for its MAC): the
    // held publish is forwarded to it, the inactive one is not.
    assert_eq!(t.d.dnat_targets(&t.d.lock()), []);
    let mac: crate::wire::MacAddr = mac.parse().unwrap();
    let addr = t.d.ipam().allocate_port("a", mac.0, super::unix_now()).unwrap();
    assert_eq!(t.d.dnat_targets(&t.d.lock()), [(free, addr)]);
    let ports = t.ok(Request::PortLs { network: None });
    let states: Vec<(u64, &str)> = ports[0]["publish"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["host_port"].as_u64()?, p["state"].as_str()?)))
        .collect();
    assert!(states.contains(&(u64::from(free.host_port), "active")), "{ports}");
    assert!(states.contains(&(u64::from(taken.host_port), "inactive")), "{ports}");
    // The other program gone, the next restart holds both.
    drop(thief);
    let t = t.restart();
    let ports = t.ok(Request::PortLs { network: None });
    let states: Vec<&str> =
        ports[0]["publish"].as_array().unwrap().iter().filter_map(|p| p["state"].as_str()).collect();
    assert_eq!(states.len(), 2);
    assert!(!states.contains(&"inactive"), "{ports}");
    assert!(bind_fails(free.host_port) && bind_fails(taken.host_port));
    // Removing the network removes the port and releases its host ports.
    t.ok(Request::NetworkRm { name: "a".into(), force: true });
    assert!(!bind_fails(free.host_port) && !bind_fails(taken.host_port), "released with the port");
}
