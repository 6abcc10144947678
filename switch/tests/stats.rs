//! `tapyard stats` and `daemon --metrics` against a real daemon: counters
//! move by exactly the frames of a ping flow, rates rise during it and fall
//! to zero after, FDB occupancy counts the learned MACs, a dropped frame
//! shows under its reason, the metrics endpoint serves the same numbers in
//! valid Prometheus text format, and bad HTTP clients get 4xx without
//! disturbing anything. The exposition checker here is written
//! independently of the daemon's renderer.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tapyard_switch::control::metrics;
use tapyard_switch::control::proto::{NetworkStatsInfo, PortStatsInfo, StatsInfo, WorkerStatsInfo};

/// Label names and values.
type Labels = Vec<(String, String)>;

/// A series: metric name and its labels, sorted.
type Series = (String, Labels);

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Parses `{a="x",b="y\"z"}` (after the metric name); returns the labels
/// and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("no {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw newline in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// Checks text exposition format 0.0.4: every line is a HELP, TYPE, other
/// comment or sample line of the grammar; each metric has one HELP and one
/// TYPE, before its samples, and its samples are contiguous; counters end in
/// `_total`; no series twice. Returns every series with its value.
fn check_exposition(text: &str) -> Result<HashMap<Series, f64>, String> {
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashMap::new();
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_metric_name(name) || !help.insert(name.to_string()) {
                return Err(at("bad or repeated HELP".into()));
            }
            if rest.len() > name.len() && rest[name.len() + 1..].contains("\\") {
                // Only \\ and \n escapes are allowed in HELP text.
                let t = &rest[name.len() + 1..];
                let mut it = t.chars();
                while let Some(c) = it.next() {
                    if c == '\\' && !matches!(it.next(), Some('\\' | 'n')) {
                        return Err(at("bad escape in HELP".into()));
                    }
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let v: Vec<&str> = rest.split(' ').collect();
            if v.len() != 2 || !valid_metric_name(v[0]) {
                return Err(at("bad TYPE line".into()));
            }
            if !matches!(v[1], "counter" | "gauge" | "untyped" | "histogram" | "summary") {
                return Err(at(format!("unknown type {}", v[1])));
            }
            if types.insert(v[0].to_string(), v[1].to_string()).is_some() || done.contains(v[0]) {
                return Err(at("TYPE repeated or after the samples".into()));
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..end];
        if !valid_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (mut labels, rest) = if line[end..].starts_with('{') {
            parse_labels(&line[end..]).map_err(at)?
        } else {
            (Vec::new(), &line[end..])
        };
        let fields: Vec<&str> =
            rest.strip_prefix(' ').ok_or_else(|| at("no space before the value".into()))?.split(' ').collect();
        let value: f64 = match fields[0] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
        };
        if fields.len() > 2 || (fields.len() == 2 && fields[1].parse::<i64>().is_err()) {
            return Err(at("bad timestamp".into()));
        }
        let Some(kind) = types.get(name) else { return Err(at("sample without TYPE".into())) };
        if !help.contains(name) {
            return Err(at("sample without HELP".into()));
        }
        if kind == "counter" && !name.ends_with("_total") {
            return Err(at("counter without _total".into()));
        }
        if current.as_deref() != Some(name) {
            if done.contains(name) {
                return Err(at("samples of a metric not together".into()));
            }
            if let Some(c) = current.replace(name.to_string()) {
                done.insert(c);
            }
        }
        labels.sort();
        if series.insert((name.to_string(), labels), value).is_some() {
            return Err(at("the same series twice".into()));
        }
    }
    Ok(series)
}

/// The value of `name` whose labels include all of `want`.
fn value(m: &HashMap<Series, f64>, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = m
        .iter()
        .filter(|((n, l), _)| n == name && want.iter().all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
        .map(|(_, v)| *v)
        .collect();
    assert!(hits.len() <= 1, "{name} {want:?} matches {} series", hits.len());
    hits.first().copied()
}

#[test]
fn the_exposition_of_awkward_names_follows_the_grammar() {
    let mut s = StatsInfo::default();
    for (id, ns) in [(1, "quote\"back\\slash"), (2, "new\nline"), (3, "")] {
        let mut p = PortStatsInfo {
            id,
            network: "n-1.x".into(),
            netns: ns.into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        if ns.is_empty() {
            p.vhost_socket = Some("/run/vm \"1\".sock".into());
        }
        p.counters.rx_packets = 41 + u64::from(id);
        for r in ["runt", "hairpin"] {
            p.counters.drops.insert(r.into(), u64::from(id));
        }
        s.ports.push(p);
    }
    s.networks.push(NetworkStatsInfo { name: "n-1.x".into(), fdb_capacity: 4096, ..Default::default() });
    s.workers = (0..2).map(|i| WorkerStatsInfo { index: i, busy_ns: 123, ..Default::default() }).collect();
    let text = metrics::render(&s);
    let m = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&m, "tapyard_port_rx_packets_total", &[("netns", "quote\"back\\slash")]), Some(42.0));
    assert_eq!(value(&m, "tapyard_port_rx_packets_total", &[("netns", "new\nline")]), Some(43.0));
    assert_eq!(value(&m, "tapyard_port_drops_total", &[("port", "3"), ("reason", "hairpin")]), Some(3.0));
    assert_eq!(value(&m, "tapyard_port_rx_packets_total", &[("socket", "/run/vm \"1\".sock")]), Some(44.0));
    assert_eq!(value(&m, "tapyard_network_fdb_capacity", &[("network", "n-1.x")]), Some(4096.0));
    assert_eq!(value(&m, "tapyard_worker_busy_seconds_total", &[("worker", "1")]), Some(123e-9));
    // The checker itself rejects what it must.
    for bad in [
        "x_total 1\n",
        "# HELP x_total h\n# TYPE x_total counter\nx_total{a=\"b} 1\n",
        "# HELP x h\n# TYPE x counter\nx 1\n",
        "# HELP x h\n# TYPE x gauge\n# HELP y h\n# TYPE y gauge\nx 1\ny 1\nx{a=\"1\"} 2\n",
        "# HELP x h\n# TYPE x gauge\nx{a=\"\\t\"} 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "{bad:?} should be rejected");
    }
}

/// A TCP port free on loopback now (the daemon binds it a moment later).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Sends `request` raw and returns the status code, headers and body.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8(resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> HashMap<Series, f64> {
    let (code, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(code, 200, "{head}\n{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    check_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

fn stats(d: &Daemon) -> Value {
    d.json(&["stats"])
}

fn port_of<'a>(s: &'a Value, netns: &str) -> &'a Value {
    s["ports"].as_array().unwrap().iter().find(|p| p["netns"] == netns).unwrap_or_else(|| panic!("{netns} in {s}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Two namespaces on one network without IPv6 and with permanent ARP
/// entries, so that a ping flow is the only traffic and counts are exact.
fn quiet_pair(d: &Daemon, net: &str, tag: &str) -> (Netns, Netns) {
    d.ok(&["network", "create", net, "--ipam", "none"]);
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    for (ns, ip) in [(&a, "10.83.0.1/24"), (&b, "10.83.0.2/24")] {
        assert!(ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
        assert!(ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]));
        d.ok(&["connect", net, &ns.name, "--ip", ip]);
    }
    let mac = |ns: &Netns| d.port(&ns.name)["mac"].as_str().unwrap().to_string();
    let (ma, mb) = (mac(&a), mac(&b));
    assert!(a.run(&["ip", "neigh", "replace", "10.83.0.2", "lladdr", &mb, "dev", "eth0", "nud", "permanent"]));
    assert!(b.run(&["ip", "neigh", "replace", "10.83.0.1", "lladdr", &ma, "dev", "eth0", "nud", "permanent"]));
    (a, b)
}

#[test]
fn a_ping_flow_moves_the_counters_exactly_and_the_rates_rise_and_fall() {
    if !net_admin() {
        return;
    }
    let addr = free_port();
    let d = Daemon::start_with("flow", None, &["--uplink", "none", "--metrics", &addr.to_string()]);
    let net = name("flow");
    let (a, b) = quiet_pair(&d, &net, "flow");
    // One ping first: both MACs learned, any frames of the interfaces coming up are over.
    assert!(a.reaches("10.83.0.2"));
    let settled = wait_for(5, || {
        let s1 = stats(&d);
        std::thread::sleep(Duration::from_millis(300));
        let s2 = stats(&d);
        s1["ports"] == s2["ports"]
    });
    assert!(settled, "the ports stay quiet without the flow: {}", stats(&d));
    let before = stats(&d);

    const N: u64 = 300;
    let mut ping = Command::new("ip")
        .args(["netns", "exec", &a.name, "ping", "-q", "-n", "-i", "0.01", "-c", &N.to_string(), "10.83.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rising = wait_for(4, || {
        let s = stats(&d);
        let (pa, pb) = (port_of(&s, &a.name), port_of(&s, &b.name));
        u(&pa["rates"]["rx_pps"]) > 0
            && u(&pb["rates"]["tx_pps"]) > 0
            && u(&pa["rates"]["rx_bps"]) > 0
            && u(&s["networks"][0]["rates"]["rx_pps"]) > 0
            && s["workers"].as_array().unwrap().iter().any(|w| u(&w["frames_ps"]) > 0)
    });
    let during = stats(&d);
    let status = ping.wait().unwrap();
    assert!(rising, "rates rise during the flow: {during}");
    assert!(status.success(), "every ping answered");
    let falling = wait_for(4, || {
        let s = stats(&d);
        s["ports"].as_array().unwrap().iter().all(|p| p["rates"].as_object().unwrap().values().all(|v| v == 0))
            && s["workers"].as_array().unwrap().iter().all(|w| w["frames_ps"] == 0)
    });
    let after = stats(&d);
    assert!(falling, "rates fall to zero once the flow stops: {after}");

    // Exactly N requests from a to b and N replies back.
    let delta = |ns: &str, k: &str| u(&port_of(&after, ns)["counters"][k]) - u(&port_of(&before, ns)["counters"][k]);
    assert_eq!(delta(&a.name, "rx_packets"), N, "requests read from a");
    assert_eq!(delta(&b.name, "tx_packets"), N, "requests written to b");
    assert_eq!(delta(&b.name, "rx_packets"), N, "replies read from b");
    assert_eq!(delta(&a.name, "tx_packets"), N, "replies written to a");
    // 98-byte frames: 14 Ethernet + 20 IPv4 + 8 ICMP + 56 data.
    assert_eq!(delta(&a.name, "rx_bytes"), N * 98);
    // The network sums its ports; every frame read was read by some worker.
    let n = &after["networks"][0];
    assert_eq!(n["name"], net.as_str());
    let ports: Vec<&Value> = after["ports"].as_array().unwrap().iter().collect();
    assert_eq!(u(&n["rx_packets"]), ports.iter().map(|p| u(&p["counters"]["rx_packets"])).sum::<u64>());
    let frames: u64 = after["workers"].as_array().unwrap().iter().map(|w| u(&w["frames"])).sum();
    assert_eq!(frames, u(&n["rx_packets"]), "worker frames = frames read from ports: {after}");
    assert!(after["workers"].as_array().unwrap().iter().any(|w| u(&w["busy_ns"]) > 0));
    // Samples are due a second apart; one taken late on a loaded machine
    // makes its interval longer and the next one shorter. One tick, not
    // two, and not zero.
    let interval = u(&after["interval_ms"]);
    assert!((200..2000).contains(&interval), "rates are over about a second: {after}");

    // FDB occupancy: the two MACs, one on each port (ports' shares are refreshed each second).
    assert_eq!(u(&n["fdb_entries"]), 2);
    assert_eq!(u(&n["fdb_capacity"]), 4096);
    let shares = wait_for(3, || {
        let s = stats(&d);
        u(&port_of(&s, &a.name)["counters"]["fdb_entries"]) == 1
            && u(&port_of(&s, &b.name)["counters"]["fdb_entries"]) == 1
    });
    assert!(shares, "one entry per port: {}", stats(&d));

    // The metrics endpoint serves the same numbers (nothing moves now).
    let m = scrape(addr);
    let s = stats(&d);
    for ns in [&a.name, &b.name] {
        let p = port_of(&s, ns);
        let id = p["id"].to_string();
        for k in ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"] {
            let got = value(&m, &format!("tapyard_port_{k}_total"), &[("port", &id), ("netns", ns), ("network", &net)]);
            assert_eq!(got, Some(u(&p["counters"][k]) as f64), "{k} of {ns}");
        }
    }
    assert_eq!(value(&m, "tapyard_network_fdb_entries", &[("network", &net)]), Some(2.0));
    assert_eq!(value(&m, "tapyard_network_ports", &[("network", &net)]), Some(2.0));
    let wf: f64 =
        (0..2).map(|w| value(&m, "tapyard_worker_frames_total", &[("worker", &w.to_string())]).unwrap()).sum();
    assert_eq!(wf, frames as f64);
    assert_eq!(value(&m, "tapyard_punt_queue_capacity", &[]), Some(tapyard_switch::punt::PUNT_DEPTH as f64));
    drop((a, b));
}

#[test]
fn a_dropped_frame_shows_under_its_reason_and_bad_requests_are_refused() {
    if !net_admin() {
        return;
    }
    need("python3", "python3");
    let addr = free_port();
    let d = Daemon::start_with("drop", None, &["--uplink", "none", "--metrics", &addr.to_string()]);
    let net = name("drop");
    let (a, _b) = quiet_pair(&d, &net, "drop");
    // Seven frames from a multicast source MAC: dropped as bad_src_mac.
    let script = r"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for _ in range(7):
    s.send(b'\xff' * 6 + bytes([1, 0, 0x5e, 0, 0, 1]) + b'\x88\xb5' + bytes(46))
";
    assert!(a.run(&["python3", "-c", script]), "python3 raw-socket sender failed");
    let counted = wait_for(3, || port_of(&stats(&d), &a.name)["counters"]["drops"]["bad_src_mac"] == 7);
    let s = stats(&d);
    assert!(counted, "seven bad_src_mac drops: {s}");
    assert_eq!(s["networks"][0]["drops"]["bad_src_mac"], 7, "the network sums its ports' drops");
    let m = scrape(addr);
    let id = port_of(&s, &a.name)["id"].to_string();
    assert_eq!(value(&m, "tapyard_port_drops_total", &[("port", &id), ("reason", "bad_src_mac")]), Some(7.0));
    assert_eq!(value(&m, "tapyard_port_drops_total", &[("port", &id), ("reason", "runt")]), Some(0.0));

    // The table names the drop too; a network filter keeps only that network.
    let text = d.ok(&["stats", &net]);
    assert!(text.contains("bad_src_mac=7"), "{text}");
    let only = d.json(&["stats", &net]);
    assert!(only["ports"].as_array().unwrap().iter().all(|p| p["network"] == net.as_str()));
    // A missing network is a clear error, exit status 3 (not found).
    let out = d.cli(&["stats", "nosuchnet"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network named \"nosuchnet\""), "{out:?}");

    // Bad HTTP requests get 4xx.
    assert_eq!(http(addr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(addr, b"GET /metricsx HTTP/1.1\r\n\r\n").0, 404);
    let (code, head, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    assert_eq!(http(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").0, 400, "TLS to a plain port");
    assert_eq!(http(addr, b"BREW /metrics HTCPCP/1.0\r\n\r\n").0, 505);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(http(addr, &huge).0, 431, "an endless header is cut off");
    let (code, head, body) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((code, body.as_str()), (200, ""), "{head}");

    // Silent clients hold no one up: with more of them than the server
    // serves at once, the extra ones get 503, the control socket and a
    // scrape on a fresh connection still answer, and the silent ones get
    // 408 when their time is up.
    let idle: Vec<TcpStream> = (0..metrics::MAX_CONNECTIONS + 2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let refused = wait_for(3, || http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").0 == 503);
    assert!(refused, "connections past the limit are refused with 503");
    d.ok(&["network", "ls"]);
    let mut timed_out = 0;
    for mut c in idle {
        c.set_read_timeout(Some(metrics::HEAD_TIMEOUT + Duration::from_secs(5))).unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        timed_out += usize::from(r.starts_with("HTTP/1.1 408 "));
    }
    assert!(timed_out >= metrics::MAX_CONNECTIONS - 1, "silent clients get 408: {timed_out}");
    assert!(wait_for(3, || http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").0 == 200), "served again once they left");
    assert!(d.log().lines().all(|l| !l.contains("panicked")), "{}", d.log());
}

#[test]
fn watch_repeats_until_interrupted_and_exits_zero() {
    if !net_admin() {
        return;
    }
    let d = Daemon::start("watch");
    d.ok(&["network", "create", &name("watch"), "--ipam", "none"]);
    let mut child = Command::new(TAPYARD)
        .arg("--socket")
        .arg(&d.socket)
        .args(["stats", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Not a terminal: plain blocks, no escape sequences; read two of them.
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("punt queue").count() < 2 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stats --watch ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains('\x1b'), "no escape sequences when not on a terminal: {seen:?}");
    assert!(seen.contains(&name("watch")), "{seen}");
    sh(&["kill", "-INT", &child.id().to_string()]);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "Ctrl-C ends --watch with status 0");
    // --json --watch: one JSON object per line.
    let mut child = Command::new(TAPYARD)
        .arg("--socket")
        .arg(&d.socket)
        .args(["stats", "--watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["workers"].as_array().is_some_and(|w| w.len() == 2), "{v}");
    }
    sh(&["kill", "-INT", &child.id().to_string()]);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn watch_on_a_terminal_redraws_in_place() {
    if !net_admin() {
        return;
    }
    need("script", "bsdutils");
    let d = Daemon::start("tty");
    // script(1) gives the CLI a pseudo-terminal; -e returns its exit status.
    let cmd = format!("exec {TAPYARD} --socket {} stats --watch", d.socket.display());
    let mut script = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = script.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\x1b[H").count() < 2 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "stats --watch ended early: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("\x1b[K") && seen.contains("\x1b[J"), "lines and the rest cleared: {seen:?}");
    // The CLI is script's child (exec): interrupt it as Ctrl-C would.
    let pid = Command::new("pgrep").args(["-P", &script.id().to_string()]).output().unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    assert!(!pid.is_empty(), "the CLI under script");
    sh(&["kill", "-INT", &pid]);
    assert_eq!(script.wait().unwrap().code(), Some(0), "Ctrl-C ends --watch with status 0");
}

#[test]
fn a_metrics_address_in_use_stops_the_start_with_a_clear_error() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("tapyard-it-{}", name("inuse")));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(TAPYARD)
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .args(["daemon", "--uplink", "none", "--workers", "1", "--metrics", &addr, "--state-dir"])
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr} for --metrics")), "{err}");
    // A malformed address is the caller's mistake: usage error, status 2.
    let out = Command::new(TAPYARD).args(["daemon", "--metrics", "localhost"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
