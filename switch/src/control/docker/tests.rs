//! The plugin's endpoints driven through [`Plugin::handle`] with the JSON
//! bodies dockerd sends, good, malformed and unknown, on a daemon with no
//! TAP (so as any user); Join, which makes a TAP, is covered by
//! switch/tests/docker_plugin.rs. And the HTTP request reader.

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::control::proto::{Reply, Request};
use crate::control::Config;

struct T {
    d: Arc<Daemon>,
    p: Plugin,
    dir: PathBuf,
}

fn config(dir: &Path) -> Config {
    Config {
        default_pools: vec!["10.213.0.0/16"
            .parse::<Ipv4Net>()
            .map(|base| tapyard_ipam::DefaultPool { base, size: 24 })
            .expect("valid")],
        ..Config::new(dir.join("tapyard.sock"), dir.to_path_buf())
    }
}

impl T {
    fn start(tag: &str) -> T {
        let dir = std::env::temp_dir().join(format!("tapyard-docker-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("state dir");
        let d = Daemon::start(config(&dir)).expect("daemon starts");
        let p = Plugin::open(d.clone()).expect("plugin opens");
        T { d, p, dir }
    }

    fn restart(mut self) -> T {
        self.d.shutdown();
        let dir = std::mem::take(&mut self.dir);
        let d = Daemon::start(config(&dir)).expect("daemon restarts");
        let p = Plugin::open(d.clone()).expect("plugin reopens");
        T { d, p, dir }
    }

    fn call(&self, method: &str, body: Value) -> Answer {
        self.p.handle(&format!("/{method}"), body.to_string().as_bytes())
    }

    fn ok(&self, method: &str, body: Value) -> Value {
        let a = self.call(method, body.clone());
        assert_eq!(a.status, 200, "{method} {body} failed: {}", a.body);
        a.body
    }

    /// A failing call: HTTP 500, `Err` (and `Error` for IPAM) with the reason.
    fn err(&self, method: &str, body: &[u8]) -> String {
        let a = self.p.handle(&format!("/{method}"), body);
        assert_eq!(a.status, 500, "{method} {} should fail, got {}", String::from_utf8_lossy(body), a.body);
        let m = a.body["Err"].as_str().expect("an Err text").to_string();
        assert!(!m.is_empty());
        if method.starts_with("IpamDriver.") {
            assert_eq!(a.body["Error"].as_str(), Some(m.as_str()), "IPAM errors carry Error too");
        }
        m
    }

    fn networks(&self) -> Vec<Value> {
        match self.d.handle(Request::NetworkLs) {
            Ok(r @ Reply::Networks(_)) => {
                serde_json::to_value(r).expect("encodes").as_array().cloned().unwrap_or_default()
            }
            other => panic!("network ls: {other:?}"),
        }
    }

    fn inspect(&self, name: &str) -> Value {
        serde_json::to_value(self.d.handle(Request::NetworkInspect { name: name.into() }).expect("network exists"))
            .expect("encodes")
    }
}

impl Drop for T {
    fn drop(&mut self) {
        self.d.shutdown();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const NET: &str = "0b1e5c0ffee0123456789abcdef0123456789abcdef0123456789abcdef01234";
const EP: &str = "e9d1c0ffee0123456789abcdef0123456789abcdef0123456789abcdef012345";

fn create_net(t: &T, pool: &str, gw: &str, generic: Value) {
    t.ok(
        "NetworkDriver.CreateNetwork",
        json!({
            "NetworkID": NET,
            "Options": { "com.docker.network.generic": generic },
            "IPv4Data": [{ "AddressSpace": "tapyard-local", "Pool": pool, "Gateway": gw, "AuxAddresses": null }],
            "IPv6Data": [],
        }),
    );
}

#[test]
fn activate_and_capabilities() {
    let t = T::start("activate");
    assert_eq!(t.ok("Plugin.Activate", json!({})), json!({ "Implements": ["NetworkDriver", "IpamDriver"] }));
    assert_eq!(t.ok("NetworkDriver.GetCapabilities", json!({}))["Scope"], "local");
    assert_eq!(t.ok("IpamDriver.GetCapabilities", json!({}))["RequiresMACAddress"], false);
    let spaces = t.ok("IpamDriver.GetDefaultAddressSpaces", json!({}));
    assert!(spaces["LocalDefaultAddressSpace"].is_string());
    // dockerd's activation body is empty.
    assert_eq!(t.p.handle("/Plugin.Activate", b"").status, 200);
    for m in ["NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete"] {
        t.ok(m, json!({ "DiscoveryType": 1, "DiscoveryData": {} }));
    }
    t.ok("NetworkDriver.AllocateNetwork", json!({ "NetworkID": NET, "Options": {} }));
    t.ok("NetworkDriver.FreeNetwork", json!({ "NetworkID": NET }));
}

#[test]
fn unknown_methods_are_404_with_err() {
    let t = T::start("unknown");
    for m in ["/NetworkDriver.Nope", "/Plugin.Nope", "/", "", "/IpamDriver.requestpool"] {
        let a = t.p.handle(m, b"{}");
        assert_eq!(a.status, 404, "{m}");
        assert!(a.body["Err"].as_str().is_some_and(|s| !s.is_empty()), "{m}: {}", a.body);
    }
}

#[test]
fn malformed_bodies_are_errors_and_make_nothing() {
    let t = T::start("malformed");
    let before = t.networks().len();
    let bad: &[&[u8]] = &[b"", b"{", b"[]", b"null", b"\"x\"", b"{\"NetworkID\": 5}", b"\xff\xfe"];
    for m in [
        "NetworkDriver.CreateNetwork",
        "NetworkDriver.DeleteNetwork",
        "NetworkDriver.CreateEndpoint",
        "NetworkDriver.EndpointOperInfo",
        "NetworkDriver.DeleteEndpoint",
        "NetworkDriver.Join",
        "NetworkDriver.Leave",
        "NetworkDriver.ProgramExternalConnectivity",
        "NetworkDriver.RevokeExternalConnectivity",
        "NetworkDriver.DiscoverNew",
        "NetworkDriver.DiscoverDelete",
        "NetworkDriver.AllocateNetwork",
        "NetworkDriver.FreeNetwork",
        "IpamDriver.RequestPool",
        "IpamDriver.ReleasePool",
        "IpamDriver.RequestAddress",
        "IpamDriver.ReleaseAddress",
    ] {
        for b in bad {
            // RequestPool takes every field as optional: `{}` asks for any subnet.
            if m == "IpamDriver.RequestPool" && b.starts_with(b"{\"") {
                continue;
            }
            t.err(m, b);
        }
    }
    // Well-formed JSON with wrong values.
    for (m, b) in [
        ("IpamDriver.RequestPool", json!({ "Pool": "10.1.0.0/33" })),
        ("IpamDriver.RequestPool", json!({ "Pool": "10.1.0.1/24" })),
        ("IpamDriver.RequestPool", json!({ "Pool": "10.1.0.0/24", "SubPool": "10.2.0.0/25" })),
        ("IpamDriver.RequestPool", json!({ "Pool": "fd00::/64", "V6": true })),
        ("IpamDriver.RequestAddress", json!({ "PoolID": "nope", "Address": "" })),
        ("IpamDriver.ReleasePool", json!({ "PoolID": "nope" })),
        ("NetworkDriver.CreateNetwork", json!({ "NetworkID": "../etc", "IPv4Data": [] })),
        ("NetworkDriver.CreateNetwork", json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "x" }] })),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "10.9.0.0/24" }, { "Pool": "10.8.0.0/24" }] }),
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "10.9.0.0/24" }],
                    "Options": { "com.docker.network.generic": { "tapyard.mtu": "9" } } }),
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "10.9.0.0/24" }],
                    "Options": { "com.docker.network.generic": { "tapyard.nope": "1" } } }),
        ),
        (
            "NetworkDriver.CreateNetwork",
            json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "10.9.0.0/24" }],
                    "Options": { "com.docker.network.generic": "mtu=9" } }),
        ),
        ("NetworkDriver.CreateEndpoint", json!({ "NetworkID": NET, "EndpointID": EP })),
        ("NetworkDriver.Join", json!({ "NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x" })),
        ("NetworkDriver.DeleteNetwork", json!({ "NetworkID": NET })),
    ] {
        t.err(m, b.to_string().as_bytes());
    }
    assert_eq!(t.networks().len(), before, "a failed call leaves no network behind");
    assert_eq!(*t.p.lock(), Maps::default(), "nor anything in the maps");
}

#[test]
fn ipam_pools_and_addresses() {
    let t = T::start("ipam");
    let p = t.ok("IpamDriver.RequestPool", json!({ "AddressSpace": "tapyard-local", "Pool": "10.77.0.0/24", "SubPool": "10.77.0.128/25", "Options": {}, "V6": false }));
    assert_eq!(p["Pool"], "10.77.0.0/24");
    let id = p["PoolID"].as_str().expect("an id").to_string();
    let m = t.err("IpamDriver.RequestPool", json!({ "Pool": "10.77.0.0/16" }).to_string().as_bytes());
    assert!(m.contains("overlaps"), "{m}");
    // No subnet: the next free one of the default pools.
    let any = t.ok(
        "IpamDriver.RequestPool",
        json!({ "AddressSpace": "tapyard-local", "Pool": "", "SubPool": "", "Options": null, "V6": false }),
    );
    let any_pool: Ipv4Net = any["Pool"].as_str().expect("a pool").parse().expect("CIDR");
    assert!("10.213.0.0/16".parse::<Ipv4Net>().expect("valid").contains(&any_pool), "{any_pool}");
    let any2 = t.ok("IpamDriver.RequestPool", json!({}));
    assert_ne!(any2["Pool"], any["Pool"], "a second pool is another subnet");

    let gw = json!({ "PoolID": id, "Address": "", "Options": { "RequestAddressType": "com.docker.network.gateway" } });
    assert_eq!(t.ok("IpamDriver.RequestAddress", gw)["Address"], "10.77.0.1/24");
    // Containers take from the --ip-range.
    let a = t.ok("IpamDriver.RequestAddress", json!({ "PoolID": id, "Address": "", "Options": null }));
    assert_eq!(a["Address"], "10.77.0.128/24");
    let b = t.ok("IpamDriver.RequestAddress", json!({ "PoolID": id }));
    assert_eq!(b["Address"], "10.77.0.129/24");
    // --ip: honoured, once.
    let c = t.ok("IpamDriver.RequestAddress", json!({ "PoolID": id, "Address": "10.77.0.7" }));
    assert_eq!(c["Address"], "10.77.0.7/24");
    for taken in ["10.77.0.7", "10.77.0.1", "10.77.0.0", "10.77.0.255", "10.78.0.7", "x"] {
        t.err("IpamDriver.RequestAddress", json!({ "PoolID": id, "Address": taken }).to_string().as_bytes());
    }
    t.ok("IpamDriver.ReleaseAddress", json!({ "PoolID": id, "Address": "10.77.0.128" }));
    t.err("IpamDriver.ReleaseAddress", json!({ "PoolID": id, "Address": "10.77.0.128" }).to_string().as_bytes());
    let again = t.ok("IpamDriver.RequestAddress", json!({ "PoolID": id, "Address": "" }));
    assert_eq!(again["Address"], "10.77.0.128/24", "a released address is handed out again");

    // The maps survive a restart: the pool is still taken, its addresses too.
    let t = t.restart();
    t.err("IpamDriver.RequestPool", json!({ "Pool": "10.77.0.0/24" }).to_string().as_bytes());
    t.err("IpamDriver.RequestAddress", json!({ "PoolID": id, "Address": "10.77.0.7" }).to_string().as_bytes());
    t.ok("IpamDriver.ReleasePool", json!({ "PoolID": id }));
    t.ok("IpamDriver.RequestPool", json!({ "Pool": "10.77.0.0/24" }));
}

#[test]
fn networks_and_endpoints() {
    let t = T::start("nets");
    let generic = json!({ "tapyard.mtu": "9000", "tapyard.name": "blue", "tapyard.port-security": "off" });
    t.ok("IpamDriver.RequestPool", json!({ "Pool": "10.78.0.0/24", "SubPool": "10.78.0.0/25" }));
    create_net(&t, "10.78.0.0/24", "10.78.0.1/24", generic);
    let n = t.inspect("blue");
    assert_eq!(n["subnet"], "10.78.0.0/24", "{n}");
    assert_eq!(n["gateway"], "10.78.0.1");
    assert_eq!(n["mtu"], 9000);
    assert_eq!(n["port_security"], false, "-o tapyard.port-security=off is the network's default: {n}");
    assert_eq!(n["ip_range"], "10.78.0.0/25", "tapyard's pool brings its --ip-range: {n}");
    // The same id again, or a clashing name: refused, nothing changed.
    t.err(
        "NetworkDriver.CreateNetwork",
        json!({ "NetworkID": NET, "IPv4Data": [{ "Pool": "10.79.0.0/24" }] }).to_string().as_bytes(),
    );

    // Endpoints: the MAC is answered only when Docker gave none.
    let e = t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NET, "EndpointID": EP, "Interface": { "Address": "10.78.0.5/24", "AddressIPv6": "", "MacAddress": "" }, "Options": {} }),
    );
    let mac = e["Interface"]["MacAddress"].as_str().expect("a MAC answered");
    assert!(mac.parse::<MacAddr>().is_ok(), "{mac}");
    assert!(e["Interface"].get("Address").is_none(), "Docker's address is not answered back: {e}");
    let ep2 = format!("{}2", &EP[..EP.len() - 1]);
    let e2 = t.ok(
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NET, "EndpointID": ep2, "Interface": { "Address": "10.78.0.6/24", "MacAddress": "02:42:0a:4e:00:06" } }),
    );
    assert_eq!(e2, json!({}));
    // Its MAC again on the same network: refused.
    t.err(
        "NetworkDriver.CreateEndpoint",
        json!({ "NetworkID": NET, "EndpointID": "ab", "Interface": { "MacAddress": "02:42:0a:4e:00:06" } })
            .to_string()
            .as_bytes(),
    );
    let info = t.ok("NetworkDriver.EndpointOperInfo", json!({ "NetworkID": NET, "EndpointID": EP }));
    assert_eq!(info["Value"]["tapyard.network"], "blue");
    t.ok("NetworkDriver.ProgramExternalConnectivity", json!({ "NetworkID": NET, "EndpointID": EP, "Options": {} }));
    t.ok("NetworkDriver.RevokeExternalConnectivity", json!({ "NetworkID": NET, "EndpointID": EP }));
    t.ok("NetworkDriver.Leave", json!({ "NetworkID": NET, "EndpointID": EP }));
    // Unsupported published ports are refused with the reason.
    let m = t.err(
        "NetworkDriver.ProgramExternalConnectivity",
        json!({ "NetworkID": NET, "EndpointID": EP, "Options": { "com.docker.network.portmap": [
            { "Proto": 132, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080 } ] } })
        .to_string()
        .as_bytes(),
    );
    assert!(m.contains("132"), "{m}");

    // A restart keeps the maps: the endpoints and the network are known.
    let t = t.restart();
    t.ok("NetworkDriver.DeleteEndpoint", json!({ "NetworkID": NET, "EndpointID": EP }));
    t.err("NetworkDriver.DeleteEndpoint", json!({ "NetworkID": NET, "EndpointID": EP }).to_string().as_bytes());
    t.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": NET }));
    assert!(t.d.handle(Request::NetworkInspect { name: "blue".into() }).is_err(), "the network is gone");
    assert!(t.p.lock().endpoints.is_empty(), "its endpoints are forgotten");
}

#[test]
fn network_options_internal_name_and_no_ipam() {
    let t = T::start("opts");
    t.ok(
        "NetworkDriver.CreateNetwork",
        json!({ "NetworkID": NET, "Options": { "com.docker.network.internal": true, "com.docker.network.generic": {} },
                "IPv4Data": [{ "Pool": "10.80.0.0/24", "Gateway": "10.80.0.1/24", "AuxAddresses": { "r": "10.80.0.9/24" } }] }),
    );
    let n = t.inspect(&format!("docker-{}", &NET[..12]));
    assert_eq!(n["internal"], true, "{n}");
    assert_eq!(n["egress"], "none", "{n}");
    assert_eq!(n["aux_addresses"]["r"], "10.80.0.9", "{n}");
    t.ok("NetworkDriver.DeleteNetwork", json!({ "NetworkID": NET }));
    // Docker's null IPAM: a network without addressing.
    t.ok("NetworkDriver.CreateNetwork", json!({ "NetworkID": NET, "IPv4Data": [] }));
    let n = t.inspect(&format!("docker-{}", &NET[..12]));
    assert!(n["subnet"].is_null(), "{n}");
}

fn read_all(input: &[u8]) -> Vec<Result<Option<HttpRequest>, String>> {
    let mut r = BufReader::new(input);
    let mut out = Vec::new();
    loop {
        let x = read_request(&mut r);
        let stop = !matches!(x, Ok(Some(_)));
        out.push(x);
        if stop {
            return out;
        }
    }
}

#[test]
fn http_requests_are_read_one_after_another() {
    let wire = b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n{}\
POST /IpamDriver.RequestPool HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"P\r\n2;x=y\r\n\":\r\n2\r\n1}\r\n0\r\n\r\n\
GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    let got = read_all(wire);
    let reqs: Vec<&HttpRequest> = got.iter().filter_map(|r| r.as_ref().ok().and_then(Option::as_ref)).collect();
    assert_eq!(reqs.len(), 3, "{got:?}");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str(), &reqs[0].body[..]),
        ("POST", "/Plugin.Activate", &b"{}"[..])
    );
    assert_eq!(&reqs[1].body[..], b"{\"P\":1}");
    assert!(!reqs[1].close);
    assert!(reqs[2].close && reqs[2].body.is_empty());
    assert!(matches!(got.last(), Some(Ok(None))), "a clean end");
}

#[test]
fn bad_http_is_an_error_not_a_panic() {
    for wire in [
        &b"POST\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nno colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x",
    ] {
        let got = read_all(wire);
        assert!(got.last().is_some_and(Result::is_err), "{:?}: {got:?}", String::from_utf8_lossy(wire));
    }
    let long = format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert!(read_all(long.as_bytes()).last().is_some_and(Result::is_err));
}

#[test]
fn responses_carry_the_plugin_content_type() {
    let mut out = Vec::new();
    write_response(&mut out, &Answer { status: 500, body: json!({ "Err": "no" }) }, false).expect("writes");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"), "{text}");
    assert!(text.contains("Content-Type: application/vnd.docker.plugins.v1.2+json\r\n"));
    assert!(text.ends_with("\r\n\r\n{\"Err\":\"no\"}"), "{text}");
}

#[test]
fn port_bindings_become_publish_specs() {
    let b = |v: Value| serde_json::from_value::<PortBinding>(v).expect("a binding").spec();
    let spec = |v: Value| b(v).expect("supported");
    assert_eq!(
        spec(json!({ "Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080 })),
        ":8080:80/tcp"
    );
    assert_eq!(
        spec(json!({ "Proto": 17, "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353 })),
        "127.0.0.1:5353:53/udp"
    );
    // -p 80: the kernel picks the host port.
    assert_eq!(spec(json!({ "Proto": 6, "Port": 80, "HostPort": 0, "HostPortEnd": 0 })), ":0:80/tcp");
    for s in [":8080:80/tcp", "127.0.0.1:5353:53/udp", ":0:80/tcp"] {
        assert!(crate::control::publish::parse(s).is_ok(), "{s} parses as a -p spec");
    }
    assert!(b(json!({ "Proto": 132, "Port": 80, "HostPort": 80 })).is_err(), "SCTP");
    assert!(b(json!({ "Proto": 6, "Port": 80, "HostPort": 8000, "HostPortEnd": 8010 })).is_err(), "a host range");
}
