//! `daemon --metrics ADDR:PORT`: the `stats` snapshot in Prometheus' text
//! exposition format 0.0.4 ([`render`]), served by a small HTTP/1.1 server
//! ([`spawn`]): `GET /metrics` (and `HEAD`), 404 for any other path, 405 for
//! other methods, one request per connection. Opt-in: without the flag no
//! socket is opened. Not authenticated: bind it to loopback or a management
//! network.
//!
//! A client cannot block the daemon or the server: each connection has its
//! own thread (at most [`MAX_CONNECTIONS`] at once, more get 503), the
//! request head is bounded ([`MAX_HEAD`] bytes, else 431) and must arrive
//! within [`HEAD_TIMEOUT`] in total (else 408; a byte every second does not
//! keep a slow client alive), and writes time out. The snapshot is taken
//! with the same locks as a `stats` request, for microseconds.
//!
//! Format (<https://prometheus.io/docs/instrumenting/exposition_formats/>):
//! each metric has one `# HELP` and one `# TYPE` line followed by all its
//! samples; counters end in `_total`; label values escape `\`, `"` and
//! newline; HELP text escapes `\` and newline. Rates are not exported:
//! Prometheus computes them from the counters (`rate()`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::proto::StatsInfo;
use super::Daemon;
use crate::port::vhost::VhostCounters;
use crate::stats::{GatewayStats, RouterStats};

/// Longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// The whole request head must arrive within this.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that cannot be written within this is abandoned.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// The content type of the text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `addr` and serves metrics from a thread of its own.
pub fn spawn(d: Arc<Daemon>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr} for --metrics"))?;
    let local = listener.local_addr().unwrap_or(addr);
    std::thread::Builder::new().name("tapyard-metrics".into()).spawn(move || {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in listener.incoming() {
            let mut stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            };
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                let _ = respond(&mut stream, 503, "Service Unavailable", "too many connections\n", true);
                continue;
            }
            active.fetch_add(1, Ordering::Relaxed);
            let (d, mine) = (d.clone(), active.clone());
            let spawned = std::thread::Builder::new().name("tapyard-metrics-conn".into()).spawn(move || {
                serve(&d, stream);
                mine.fetch_sub(1, Ordering::Relaxed);
            });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!("metrics: cannot start a thread for a connection");
            }
        }
    })?;
    tracing::info!(address = %local, "serving Prometheus metrics at /metrics");
    Ok(())
}

/// What a request head asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics {
        head_only: bool,
    },
    /// An error status and its reason phrase.
    Error(u16, &'static str),
}

/// Reads one request head, answers it, and closes the connection.
fn serve(d: &Daemon, mut stream: TcpStream) {
    let asked = match read_head(&mut stream) {
        Ok(Some(head)) => parse_head(&head),
        Ok(None) => return, // closed before a full head: nobody to answer
        Err(e) => e,
    };
    let _ = match asked {
        Asked::Metrics { head_only } => match d.stats(None) {
            Ok(s) => respond(&mut stream, 200, "OK", &render(&s), head_only),
            Err(e) => respond(&mut stream, 500, "Internal Server Error", &format!("{e}\n"), head_only),
        },
        Asked::Error(405, reason) => {
            let body = "only GET and HEAD\n";
            write_response(&mut stream, 405, reason, "text/plain; charset=utf-8", body, false, "Allow: GET, HEAD\r\n")
        }
        Asked::Error(code, reason) => respond(&mut stream, code, reason, &format!("{code} {reason}\n"), false),
    };
    linger(stream);
}

/// Most unread request bytes discarded before closing, and for how long.
const LINGER_BYTES: usize = 64 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Closes after the response has left: our side is shut for writing, then
/// what the client still sends (a body, an overlong head) is read and thrown
/// away, within bounds. Closing with unread data makes the kernel send a
/// reset, and a client may then lose the response before reading it (the
/// "lingering close" of HTTP servers; RFC 9112 §9.6).
fn linger(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// Reads until the blank line that ends a request head; `None` if the
/// client closed first, an error status for too long or too slow.
fn read_head(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, Asked> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Asked::Error(408, "Request Timeout"));
        }
        let _ = stream.set_read_timeout(Some(left));
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Asked::Error(408, "Request Timeout"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Ok(None),
        };
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(Asked::Error(431, "Request Header Fields Too Large"));
        }
    }
}

/// Where the head ends: after CRLF CRLF (RFC 9112 §2.1), or LF LF, which
/// §2.2 lets a server accept.
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request line (RFC 9112 §3): `METHOD SP TARGET SP HTTP/1.x`.
fn parse_head(head: &[u8]) -> Asked {
    let Ok(text) = std::str::from_utf8(head) else { return Asked::Error(400, "Bad Request") };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Error(400, "Bad Request");
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Asked::Error(505, "HTTP Version Not Supported");
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Asked::Error(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Asked::Error(404, "Not Found");
    }
    match method {
        "GET" => Asked::Metrics { head_only: false },
        "HEAD" => Asked::Metrics { head_only: true },
        _ => Asked::Error(405, "Method Not Allowed"),
    }
}

fn respond(s: &mut TcpStream, code: u16, reason: &str, body: &str, head_only: bool) -> std::io::Result<()> {
    let ctype = if code == 200 { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    write_response(s, code, reason, ctype, body, head_only, "")
}

fn write_response(
    s: &mut TcpStream,
    code: u16,
    reason: &str,
    ctype: &str,
    body: &str,
    head_only: bool,
    extra: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    if !head_only {
        s.write_all(body.as_bytes())?;
    }
    Ok(())
}

/// One metric: its HELP, TYPE and samples, written together.
struct Family {
    name: String,
    help: String,
    kind: &'static str,
    samples: String,
}

/// Metrics in the order they were first added, each written once.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

impl Exposition {
    fn add(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let i = *self.index.entry(name.to_string()).or_insert_with(|| {
            self.families.push(Family { name: name.into(), help: help.into(), kind, samples: String::new() });
            self.families.len() - 1
        });
        let f = &mut self.families[i];
        f.samples.push_str(name);
        // An empty label value is the same as no label (Prometheus data model): leave it out.
        let labels: Vec<_> = labels.iter().filter(|(_, v)| !v.is_empty()).collect();
        if !labels.is_empty() {
            f.samples.push('{');
            for (j, (k, v)) in labels.iter().enumerate() {
                let sep = if j > 0 { "," } else { "" };
                let _ = write!(f.samples, "{sep}{k}=\"{}\"", escape_label(v));
            }
            f.samples.push('}');
        }
        let _ = writeln!(f.samples, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.add(name, "counter", help, labels, value);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.add(name, "gauge", help, labels, value);
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(f.help.trim()));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            out.push_str(&f.samples);
        }
        out
    }
}

/// A label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// HELP text: `\` → `\\`, newline → `\n`.
fn escape_help(v: &str) -> String {
    v.replace('\\', r"\\").replace('\n', r"\n")
}

/// The metrics of one `stats` snapshot (docs/stats.md lists them).
pub fn render(s: &StatsInfo) -> String {
    let mut e = Exposition::default();
    for p in &s.ports {
        let id = p.id.to_string();
        let socket = p.vhost_socket.as_deref().unwrap_or("");
        let l: &[(&str, &str)] =
            &[("network", &p.network), ("port", &id), ("netns", &p.netns), ("ifname", &p.ifname), ("socket", socket)];
        let c = &p.counters;
        e.counter("tapyard_port_rx_packets_total", "Frames received from the port.", l, c.rx_packets);
        e.counter(
            "tapyard_port_rx_bytes_total",
            "Bytes of frames received from the port (Ethernet header on).",
            l,
            c.rx_bytes,
        );
        e.counter("tapyard_port_tx_packets_total", "Frames sent to the port.", l, c.tx_packets);
        e.counter("tapyard_port_tx_bytes_total", "Bytes of frames sent to the port.", l, c.tx_bytes);
        e.counter("tapyard_port_rx_errors_total", "Read errors other than no more frames.", l, c.rx_errors);
        e.counter("tapyard_port_tx_errors_total", "Write errors other than the named drops.", l, c.tx_errors);
        e.counter(
            "tapyard_port_learn_full_total",
            "Source MACs not learned: the network's forwarding table was full (frames still forwarded).",
            l,
            c.learn_full,
        );
        e.counter(
            "tapyard_port_learn_evicted_total",
            "Forwarding entries of this port evicted so a port under its fair share could learn.",
            l,
            c.learn_evicted,
        );
        for (reason, n) in &c.drops {
            let mut lr = l.to_vec();
            lr.push(("reason", reason));
            e.counter(
                "tapyard_port_drops_total",
                "Frames dropped, by reason (docs/ARCHITECTURE.md, Drop reasons).",
                &lr,
                *n,
            );
        }
        e.gauge("tapyard_port_fdb_entries", "Forwarding-table entries learned on this port.", l, c.fdb_entries);
        for (name, v) in &p.vhost_counters {
            let help = VhostCounters::NAMES
                .iter()
                .position(|n| n == name)
                .map(|i| VhostCounters::HELP[i].trim())
                .filter(|h| !h.is_empty())
                .map_or_else(|| format!("vhost-user port counter {name} (docs/stats.md)."), str::to_string);
            e.counter(&format!("tapyard_vhost_{name}_total"), &help, l, *v);
        }
        for (name, v) in &p.afxdp_counters {
            let help = match name.as_str() {
                "rx_ring_full" => "AF_XDP port: frames the kernel dropped because the socket's RX ring was full (the worker fell behind).",
                "rx_fill_ring_empty" => "AF_XDP port: times the kernel found no free buffer in the fill ring.",
                "port_rx_dropped" => "AF_XDP port: frames the port dropped (longer than a buffer, or a bad descriptor).",
                _ => "AF_XDP port: a counter of the kernel's XDP_STATISTICS (docs/stats.md).",
            };
            e.counter(&format!("tapyard_afxdp_{name}_total"), help, l, *v);
        }
    }
    for n in &s.networks {
        let l: &[(&str, &str)] = &[("network", &n.name)];
        e.gauge("tapyard_network_ports", "Ports attached to the network.", l, n.ports as u64);
        e.gauge("tapyard_network_fdb_entries", "Live entries of the network's forwarding table.", l, n.fdb_entries);
        e.gauge(
            "tapyard_network_fdb_capacity",
            "Most entries the network's forwarding table holds.",
            l,
            n.fdb_capacity,
        );
        e.gauge("tapyard_network_leases", "Active DHCP leases and static port addresses of the network.", l, n.leases);
        for (i, name) in RouterStats::NAMES.iter().enumerate() {
            let v = n.route_counters.get(*name).copied().unwrap_or(0);
            let help = format!("Routing, of packets that entered from this network: {}", RouterStats::HELP[i].trim());
            e.counter(&format!("tapyard_network_{name}_total"), &help, l, v);
        }
        for (i, name) in GatewayStats::NAMES.iter().enumerate() {
            let v = n.gateway_counters.get(*name).copied().unwrap_or(0);
            e.counter(&format!("tapyard_gateway_{name}_total"), GatewayStats::HELP[i], l, v);
        }
    }
    for r in &s.routers {
        let l: &[(&str, &str)] = &[("router", &r.name)];
        for (i, name) in RouterStats::NAMES.iter().enumerate() {
            let v = r.counters.get(*name).copied().unwrap_or(0);
            e.counter(&format!("tapyard_router_{name}_total"), RouterStats::HELP[i], l, v);
        }
    }
    for w in &s.workers {
        let idx = w.index.to_string();
        let l: &[(&str, &str)] = &[("worker", &idx)];
        e.counter(
            "tapyard_worker_turns_total",
            "Turns of the worker's loop (one poll and the bursts after it).",
            l,
            w.turns,
        );
        e.counter("tapyard_worker_busy_turns_total", "Turns that found at least one frame.", l, w.busy_turns);
        e.counter("tapyard_worker_bursts_total", "Bursts read (one per port served per turn).", l, w.bursts);
        e.counter("tapyard_worker_frames_total", "Frames read by the worker.", l, w.frames);
        e.add(
            "tapyard_worker_busy_seconds_total",
            "counter",
            "Seconds spent on turns that found frames.",
            l,
            w.busy_ns as f64 / 1e9,
        );
        e.gauge("tapyard_worker_ports", "Ports (or queues of multi-queue ports) the worker reads.", l, w.ports as u64);
        e.gauge(
            "tapyard_worker_pending_ports",
            "Ports with frames left over from a full burst after the worker's last turn.",
            l,
            w.pending,
        );
    }
    e.gauge("tapyard_punt_queue_depth", "Frames waiting for the gateway thread.", &[], s.punt_queue.depth);
    e.gauge("tapyard_punt_queue_capacity", "Most frames the punt queue holds.", &[], s.punt_queue.capacity);
    let cs = &s.control_socket;
    e.gauge(
        "tapyard_control_connections",
        "Control socket connections open (capture streams included).",
        &[],
        cs.connections,
    );
    e.gauge(
        "tapyard_control_connections_max",
        "Most control socket connections held at once.",
        &[],
        cs.max_connections,
    );
    e.gauge("tapyard_control_streams", "Capture streams running on the control socket.", &[], cs.streams);
    e.counter(
        "tapyard_control_accepted_total",
        "Control socket connections accepted (refused ones included).",
        &[],
        cs.accepted,
    );
    e.counter("tapyard_control_requests_total", "Control requests answered (errors included).", &[], cs.requests);
    for (reason, n) in cs.refused.by_reason() {
        e.counter(
            "tapyard_control_refused_total",
            "Control connections refused or closed, and requests rejected, by reason.",
            &[("reason", reason)],
            n,
        );
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::{NetworkStatsInfo, PortStatsInfo, WorkerStatsInfo};

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), r"x\ny");
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }

    #[test]
    fn each_metric_has_help_and_type_once_before_its_samples() {
        let mut s = StatsInfo::default();
        for (id, ns) in [(1, "a\"b"), (2, "c")] {
            let mut p = PortStatsInfo {
                id,
                network: "n".into(),
                netns: ns.into(),
                ifname: "eth0".into(),
                ..Default::default()
            };
            p.counters.rx_packets = 7;
            p.counters.drops.insert("runt".into(), 3);
            if id == 2 {
                p.afxdp_counters.insert("rx_ring_full".into(), 9);
            }
            s.ports.push(p);
        }
        s.networks.push(NetworkStatsInfo { name: "n".into(), ..Default::default() });
        s.workers.push(WorkerStatsInfo { busy_ns: 1_500_000_000, ..Default::default() });
        s.control_socket.refused.forbidden = 2;
        s.control_socket.connections = 5;
        let text = render(&s);
        assert!(text.contains("tapyard_control_refused_total{reason=\"forbidden\"} 2\n"), "{text}");
        assert!(text.contains("tapyard_control_refused_total{reason=\"malformed\"} 0\n"), "every reason, always");
        assert!(text.contains("tapyard_control_connections 5\n"), "{text}");
        assert_eq!(text.matches("# TYPE tapyard_port_rx_packets_total counter\n").count(), 1);
        assert_eq!(text.matches("# HELP tapyard_port_rx_packets_total ").count(), 1);
        assert!(
            text.contains(
                "tapyard_port_rx_packets_total{network=\"n\",port=\"1\",netns=\"a\\\"b\",ifname=\"eth0\"} 7\n"
            ),
            "{text}"
        );
        assert!(text.contains(",reason=\"runt\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE tapyard_afxdp_rx_ring_full_total counter\n"), "{text}");
        assert!(text.contains("tapyard_afxdp_rx_ring_full_total{network=\"n\",port=\"2\""), "{text}");
        assert!(text.contains("tapyard_worker_busy_seconds_total{worker=\"0\"} 1.5\n"), "{text}");
        // Samples of a metric follow its TYPE line without another metric in between.
        let lines: Vec<&str> = text.lines().collect();
        let t = lines.iter().position(|l| *l == "# TYPE tapyard_port_rx_packets_total counter").unwrap();
        assert!(
            lines[t + 1].starts_with("tapyard_port_rx_packets_total{")
                && lines[t + 2].starts_with("tapyard_port_rx_packets_total{")
        );
        for name in GatewayStats::NAMES {
            assert!(text.contains(&format!("# TYPE tapyard_gateway_{name}_total counter")), "{name}");
        }
        assert!(
            GatewayStats::HELP.iter().chain(RouterStats::HELP).all(|h| !h.trim().is_empty()),
            "every counter has a doc"
        );
    }

    #[test]
    fn requests_get_the_status_they_deserve() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Asked::Metrics { head_only: false });
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics { head_only: false });
        assert_eq!(parse_head(b"HEAD /metrics HTTP/1.1\r\n\r\n"), Asked::Metrics { head_only: true });
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::Error(404, "Not Found"));
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::Error(405, "Method Not Allowed"));
        assert_eq!(parse_head(b"GET /metrics HTTP/2.0\r\n\r\n"), Asked::Error(505, "HTTP Version Not Supported"));
        assert_eq!(parse_head(b"garbage\r\n\r\n"), Asked::Error(400, "Bad Request"));
        assert_eq!(parse_head(b"GET  /metrics HTTP/1.1\r\n\r\n"), Asked::Error(400, "Bad Request"));
        assert_eq!(parse_head(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Asked::Error(400, "Bad Request"));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
