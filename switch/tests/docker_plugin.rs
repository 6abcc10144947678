//! `tapyard daemon --docker-plugin`: Docker's plugin protocol driven over
//! the plugin socket with raw HTTP/1.1, in the order dockerd calls it for
//! `docker network create -d tapyard --ipam-driver tapyard`, `docker run`,
//! `docker rm` and `docker network rm`. What dockerd does between the calls
//! (move the TAP Join handed it into the container, rename it, address it;
//! hand it back after Leave) is done here with `ip`. The daemon runs in a
//! namespace of its own, standing in for dockerd's.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A connection to the plugin, kept alive across calls as dockerd's client does.
struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("cannot connect to {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }

    /// POSTs `body` to `/method`; the status and the JSON answer.
    fn post_raw(&mut self, method: &str, body: &str) -> (u16, Value) {
        write!(
            self.w,
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
             Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Length: {}\r\nAccept-Encoding: gzip\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        self.w.flush().unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let (mut len, mut ctype) = (0usize, String::new());
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        assert_eq!(ctype, "application/vnd.docker.plugins.v1.2+json");
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).unwrap();
        (status, serde_json::from_slice(&b).unwrap())
    }

    fn post(&mut self, method: &str, body: Value) -> Value {
        let (status, v) = self.post_raw(method, &body.to_string());
        assert_eq!(status, 200, "{method} {body}: {v}");
        v
    }
}

/// The plugin socket's directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NET: &str = "5f3c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456";

fn ep(n: u8) -> String {
    format!("e{n}{}", "0123456789abcdef".repeat(4).get(2..).unwrap())
}

#[test]
fn docker_plugin_protocol_over_the_socket() {
    if !net_admin() {
        return;
    }
    let host = Netns::new("dkh");
    let c1 = Netns::new("dk1");
    let c2 = Netns::new("dk2");
    let dir = TempDir(std::env::temp_dir().join(format!("tapyard-docker-{}", name("dk"))));
    let sock = dir.0.join("plugins/tapyard.sock");
    let sock_s = sock.display().to_string();
    // dockerd's namespace has a default route of its own (the host's, or
    // rootlesskit's slirp4netns one): Join's TAPs, made there, must leave it.
    sh(&["ip", "-n", &host.name, "link", "add", "up0", "up", "type", "veth", "peer", "name", "up1"]);
    sh(&["ip", "-n", &host.name, "link", "set", "up1", "up"]);
    sh(&["ip", "-n", &host.name, "addr", "add", "198.18.201.2/24", "dev", "up0"]);
    sh(&["ip", "-n", &host.name, "route", "add", "default", "via", "198.18.201.1"]);
    let default_route = || {
        let out = std::process::Command::new("ip").args(["-n", &host.name, "-4", "route", "show", "default"]).output();
        String::from_utf8_lossy(&out.expect("ip route").stdout).trim().to_string()
    };
    let mut d =
        Daemon::start_in("dk", &host.name, &["--uplink", "none", "--docker-plugin", "--docker-plugin-socket", &sock_s]);
    assert!(wait_for(5, || exists(&sock)), "plugin socket never appeared; log:\n{}", d.log());
    let mut c = Client::connect(&sock);

    // docker network create -d tapyard --ipam-driver tapyard --subnet 10.91.0.0/24 N
    assert_eq!(c.post("Plugin.Activate", json!({})), json!({ "Implements": ["NetworkDriver", "IpamDriver"] }));
    assert_eq!(c.post("NetworkDriver.GetCapabilities", json!({}))["Scope"], "local");
    c.post("IpamDriver.GetCapabilities", json!({}));
    let space = c.post("IpamDriver.GetDefaultAddressSpaces", json!({}))["LocalDefaultAddressSpace"].clone();
    let pool = c.post(
        "IpamDriver.RequestPool",
        json!({ "AddressSpace": space, "Pool": "10.91.0.0/24", "SubPool": "", "Options": {}, "V6": false }),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    let gw = c.post(
        "IpamDriver.RequestAddress",
        json!({ "PoolID": pool_id, "Address": "", "Options": { "RequestAddressType": "com.docker.network.gateway" } }),
    );
    assert_eq!(gw["Address"], "10.91.0.1/24");
    c.post(
        "NetworkDriver.CreateNetwork",
        json!({ "NetworkID": NET, "Options": { "com.docker.network.enable_ipv6": false,
                  "com.docker.network.generic": { "tapyard.name": "dockernet" } },
                "IPv4Data": [{ "AddressSpace": space, "Gateway": "10.91.0.1/24", "Pool": "10.91.0.0/24" }], "IPv6Data": [] }),
    );
    let n = d.json(&["network", "inspect", "dockernet"]);
    assert_eq!(n["subnet"], "10.91.0.0/24", "{n}");

    // docker run --network N (twice, the second with --ip 10.91.0.50)
    let mut taps = Vec::new();
    for (i, (ns, want)) in [(&c1, ""), (&c2, "10.91.0.50")].into_iter().enumerate() {
        let e = ep(i as u8);
        let a = c.post("IpamDriver.RequestAddress", json!({ "PoolID": pool_id, "Address": want, "Options": {} }));
        let addr = a["Address"].as_str().unwrap().to_string();
        if !want.is_empty() {
            assert_eq!(addr, format!("{want}/24"), "--ip is honoured");
        }
        let ce = c.post(
            "NetworkDriver.CreateEndpoint",
            json!({ "NetworkID": NET, "EndpointID": e, "Options": {},
                    "Interface": { "Address": addr, "AddressIPv6": "", "MacAddress": "" } }),
        );
        let mac = ce["Interface"]["MacAddress"].as_str().unwrap().to_string();
        let j = c.post(
            "NetworkDriver.Join",
            json!({ "NetworkID": NET, "EndpointID": e, "SandboxKey": format!("/run/netns/{}", ns.name), "Options": {} }),
        );
        assert_eq!(j["Gateway"], "10.91.0.1", "{j}");
        assert_eq!(j["InterfaceName"]["DstPrefix"], "eth");
        let src = j["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
        assert!(host.has_link(&src), "Join's TAP {src} exists in the daemon's namespace when Join returns");
        assert_eq!(
            default_route(),
            "default via 198.18.201.1 dev up0",
            "Join must leave the daemon namespace's default route alone"
        );
        // What dockerd does next: move, rename, address, bring up.
        sh(&["ip", "-n", &host.name, "link", "set", "dev", &src, "netns", &ns.name]);
        sh(&["ip", "-n", &ns.name, "link", "set", "dev", &src, "name", "eth0"]);
        sh(&["ip", "-n", &ns.name, "link", "set", "dev", "eth0", "address", &mac]);
        sh(&["ip", "-n", &ns.name, "addr", "add", &addr, "dev", "eth0"]);
        sh(&["ip", "-n", &ns.name, "link", "set", "dev", "eth0", "up"]);
        // The port record follows the TAP into the container: found when
        // ProgramExternalConnectivity comes after the move (`docker network
        // connect`), or soon after with no call at all (`docker run` makes
        // the namespace and moves the TAP after its last call).
        let in_container = || d.port(&format!("/run/netns/{}", ns.name));
        if i == 0 {
            c.post(
                "NetworkDriver.ProgramExternalConnectivity",
                json!({ "NetworkID": NET, "EndpointID": e, "Options": {} }),
            );
            assert_eq!(in_container()["ifname"], "eth0", "ProgramExternalConnectivity finds the TAP");
        } else {
            assert!(
                wait_for(5, || in_container()["ifname"] == "eth0"),
                "port ls never showed the TAP in the container"
            );
        }
        assert_eq!(in_container()["mac"], mac.as_str());
        let info = c.post("NetworkDriver.EndpointOperInfo", json!({ "NetworkID": NET, "EndpointID": e }));
        assert_eq!(info["Value"]["tapyard.network"], "dockernet");
        taps.push((e, src, addr));
    }
    let ports = d.json(&["port", "ls", "dockernet"]);
    assert_eq!(ports.as_array().map(Vec::len), Some(2), "{ports}");
    assert_eq!(default_route(), "default via 198.18.201.1 dev up0", "the TAPs moved out: the default route stays");
    // The two containers talk through tapyard, over the TAPs Docker moved.
    assert!(c1.reaches("10.91.0.50"), "container 1 cannot reach container 2; log:\n{}", d.log());
    assert!(c2.reaches(taps[0].2.split('/').next().unwrap()), "container 2 cannot reach container 1");

    // A third container, removed while the daemon is down (below).
    let c3 = Netns::new("dk3");
    let e3 = ep(2);
    c.post("IpamDriver.RequestAddress", json!({ "PoolID": pool_id, "Address": "10.91.0.77", "Options": {} }));
    c.post(
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NET, "EndpointID": e3, "Interface": { "Address": "10.91.0.77/24", "MacAddress": "" } }),
    );
    let j = c.post(
        "NetworkDriver.Join",
        json!({ "NetworkID": NET, "EndpointID": e3, "SandboxKey": format!("/run/netns/{}", c3.name) }),
    );
    let src3 = j["InterfaceName"]["SrcName"].as_str().unwrap().to_string();
    sh(&["ip", "-n", &host.name, "link", "set", "dev", &src3, "netns", &c3.name]);
    let c3_ns = format!("/run/netns/{}", c3.name);
    assert!(wait_for(5, || !d.port(&c3_ns).is_null()), "the third port never followed its TAP");

    // A tapyard restart: the ports come back in the containers, where Docker
    // put them; the removed container's endpoint and address are forgotten.
    drop(c);
    assert_eq!(d.signal("TERM"), Some(0));
    c3.delete();
    d.spawn();
    let maps: Value = serde_json::from_slice(&std::fs::read(d.state.join("docker.json")).unwrap()).unwrap();
    assert!(
        maps["endpoints"].get(&e3).is_none(),
        "the removed container's endpoint is forgotten: {maps}\nlog:\n{}",
        d.log()
    );
    let held = maps["pools"][&pool_id]["addresses"].as_array().cloned().unwrap_or_default();
    assert!(!held.contains(&json!("10.91.0.77")), "its address is back in the pool: {maps}");
    assert!(wait_for(5, || exists(&sock)), "plugin socket after restart; log:\n{}", d.log());
    let mut c = Client::connect(&sock);
    // The address can be handed out and used again.
    let again =
        c.post("IpamDriver.RequestAddress", json!({ "PoolID": pool_id, "Address": "10.91.0.77", "Options": {} }));
    assert_eq!(again["Address"], "10.91.0.77/24");
    c.post("IpamDriver.ReleaseAddress", json!({ "PoolID": pool_id, "Address": "10.91.0.77" }));
    assert_eq!(d.port(&format!("/run/netns/{}", c1.name))["ifname"], "eth0", "{}", d.log());
    assert!(c1.reaches("10.91.0.50"), "containers talk again after a restart; log:\n{}", d.log());
    // A killed daemon: the TAPs stay in the containers and are taken back as they are.
    drop(c);
    assert_eq!(d.signal("KILL"), None);
    d.spawn();
    assert!(wait_for(5, || UnixStream::connect(&sock).is_ok()), "plugin socket after a kill; log:\n{}", d.log());
    let mut c = Client::connect(&sock);
    assert!(d.log().contains("port reattached to its surviving interface"), "{}", d.log());
    assert!(c1.reaches("10.91.0.50"), "containers talk again after a kill; log:\n{}", d.log());

    // Malformed and unknown calls on the same connection: errors, and the connection still serves.
    let (st, v) = c.post_raw("NetworkDriver.Join", "{not json");
    assert_eq!(st, 500);
    assert!(v["Err"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    let (st, v) = c.post_raw("NetworkDriver.Frobnicate", "{}");
    assert_eq!(st, 404, "{v}");

    // docker rm: container 1's interface handed back (down, under SrcName);
    // container 2's still inside it when DeleteEndpoint comes.
    for (i, (e, src, addr)) in taps.iter().enumerate() {
        c.post("NetworkDriver.RevokeExternalConnectivity", json!({ "NetworkID": NET, "EndpointID": e }));
        c.post("NetworkDriver.Leave", json!({ "NetworkID": NET, "EndpointID": e }));
        if i == 0 {
            sh(&["ip", "-n", &c1.name, "link", "set", "dev", "eth0", "down"]);
            sh(&["ip", "-n", &c1.name, "link", "set", "dev", "eth0", "name", src]);
            sh(&["ip", "-n", &c1.name, "link", "set", "dev", src, "netns", &host.name]);
        }
        c.post("NetworkDriver.DeleteEndpoint", json!({ "NetworkID": NET, "EndpointID": e }));
        let ip = addr.split('/').next().unwrap();
        c.post("IpamDriver.ReleaseAddress", json!({ "PoolID": pool_id, "Address": ip }));
    }
    assert!(wait_for(5, || !host.has_link(&taps[0].1)), "the handed-back TAP is removed");
    assert!(wait_for(5, || !c2.has_link("eth0")), "the TAP left in the container is removed too");
    assert_eq!(d.json(&["port", "ls", "dockernet"]), json!([]));
    drop(c);

    // A restart keeps the maps: the network, the pool and the gateway are still known.
    assert_eq!(d.signal("TERM"), Some(0));
    assert!(!exists(&sock), "a clean stop removes the plugin socket");
    d.spawn();
    assert!(wait_for(5, || exists(&sock)), "plugin socket after restart; log:\n{}", d.log());
    let mut c = Client::connect(&sock);
    let (st, _) = c.post_raw("IpamDriver.RequestPool", &json!({ "Pool": "10.91.0.0/24" }).to_string());
    assert_eq!(st, 500, "the pool is still taken after a restart");
    c.post("NetworkDriver.DeleteNetwork", json!({ "NetworkID": NET }));
    assert!(
        !d.cli(&["network", "inspect", "dockernet"]).status.success(),
        "docker network rm removes the tapyard network"
    );
    c.post("IpamDriver.ReleaseAddress", json!({ "PoolID": pool_id, "Address": "10.91.0.1" }));
    c.post("IpamDriver.ReleasePool", json!({ "PoolID": pool_id }));
    let maps: Value = serde_json::from_slice(&std::fs::read(d.state.join("docker.json")).unwrap()).unwrap();
    assert_eq!(maps, json!({ "pools": {}, "networks": {}, "endpoints": {} }), "nothing left in the maps");
}
