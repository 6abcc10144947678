//! Published ports: a host port forwarded to a port of a container
//! (`connect --publish`, `port publish|unpublish`), Docker's `-p`.
//!
//! This module owns the types, the parser of Docker's `-p` syntax
//! ([`parse`]) and the host sockets that reserve published ports
//! ([`Reservation`]). The kernel rules that do the forwarding are
//! `firewall`'s; which port publishes what is `ports`'.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// One published port (a range in a `--publish` spec becomes one per port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Publish {
    /// The host address it listens on; none: every address of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for Publish {
    /// As `docker ps` shows it: `0.0.0.0:8080->80/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(f, "{ip}:{}->{}/{}", self.host_port, self.container_port, self.proto)
    }
}

impl Publish {
    /// Whether `self` is what `pattern` (from [`parse`]) names: the same
    /// address, container port and protocol, and the same host port unless
    /// the pattern leaves it to the kernel (0).
    pub fn matches(&self, pattern: &Publish) -> bool {
        self.host_ip == pattern.host_ip
            && self.container_port == pattern.container_port
            && self.proto == pattern.proto
            && (pattern.host_port == 0 || self.host_port == pattern.host_port)
    }

    /// Whether `self` and `other` would listen on the same host port: same
    /// protocol and port, and addresses that overlap (equal, or either one
    /// every address).
    pub fn clashes(&self, other: &Publish) -> bool {
        self.proto == other.proto
            && self.host_port == other.host_port
            && self.host_port != 0
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// `8080/tcp`, or `127.0.0.1:8080/tcp`: the host side, for messages.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}:{}/{}", self.host_port, self.proto),
            None => format!("{}/{}", self.host_port, self.proto),
        }
    }
}

/// Most ports one spec may publish (a range): each holds a socket, so
/// `1-65535:1-65535` would take 65535 descriptors.
pub const MAX_RANGE: usize = 1024;

const SYNTAX: &str = "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], HOST_IP::CONTAINER_PORT or \
                      CONTAINER_PORT, as docker run -p";

/// Parses one `--publish` spec in Docker's `-p` syntax:
/// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`, `HOST_IP::CONTAINER_PORT`,
/// or `CONTAINER_PORT`, where a port may be a range `A-B`. A missing host
/// port (or 0) is left to the kernel (host_port 0 here: [`Reservation::take`]
/// binds port 0 and records what it got), as Docker does. Host and container
/// ranges must have the same length (Docker also takes a host range with a
/// single container port, meaning "any free port of the range": not
/// supported). IPv4 only. `0.0.0.0` is every address, the same as none.
pub fn parse(spec: &str) -> Result<Vec<Publish>, String> {
    let bad = |why: String| format!("invalid --publish {spec:?}: {why}");
    let ipv6 = || bad("IPv6 host addresses are not supported: tapyard publishes ports on IPv4 only".into());
    if spec.is_empty() {
        return Err(bad(SYNTAX.into()));
    }
    if spec.contains('[') || spec.contains(']') {
        return Err(ipv6());
    }
    let (ports, proto) = match spec.split_once('/') {
        Some((ports, proto)) => (ports, parse_proto(proto).map_err(bad)?),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match parts[..] {
        [c] => (None, "", c),
        [h, c] => (None, h, c),
        [ip, h, c] => (Some(ip), h, c),
        // `::1:8080:80`, `fe80::1:80:80`: an IPv6 address split at its colons.
        _ if spec.contains("::") || parts.len() > 3 => return Err(ipv6()),
        _ => return Err(bad(SYNTAX.into())),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(a) if a.is_unspecified() => None,
            Ok(a) if a.is_multicast() || a.is_broadcast() => {
                return Err(bad(format!("{a} is not a unicast address of the host")))
            }
            Ok(a) => Some(a),
            Err(_) if ip.parse::<Ipv6Addr>().is_ok() => return Err(ipv6()),
            Err(_) => return Err(bad(format!("{ip:?} is not an IPv4 address"))),
        },
    };
    if container.is_empty() {
        return Err(bad(format!("the container port is missing; {SYNTAX}")));
    }
    let (c0, c1) = parse_range(container, "container").map_err(bad)?;
    if c0 == 0 {
        return Err(bad("container port 0 is not a port (ports are 1-65535)".into()));
    }
    let n = usize::from(c1 - c0) + 1;
    if n > MAX_RANGE {
        return Err(bad(format!("{container} is {n} ports; at most {MAX_RANGE} per --publish")));
    }
    // None: every host port left to the kernel.
    let host = match host {
        "" | "0" => None,
        h => {
            let (h0, h1) = parse_range(h, "host").map_err(bad)?;
            if h0 == 0 {
                return Err(bad(format!(
                    "host port range {h} starts at 0 (ports are 1-65535; a lone 0 asks for any free port)"
                )));
            }
            let hn = usize::from(h1 - h0) + 1;
            if hn != n {
                return Err(bad(format!(
                    "host ports {h} ({}) and container ports {container} ({}) differ in length; give ranges of \
                     equal length (a host range for one container port, Docker's \"any port of the range\", \
                     is not supported)",
                    plural(hn),
                    plural(n)
                )));
            }
            Some(h0)
        }
    };
    Ok((0..n)
        .map(|i| {
            let i = u16::try_from(i).expect("at most MAX_RANGE ports");
            Publish { host_ip, host_port: host.map_or(0, |h| h + i), container_port: c0 + i, proto }
        })
        .collect())
}

fn plural(n: usize) -> String {
    format!("{n} port{}", if n == 1 { "" } else { "s" })
}

fn parse_proto(p: &str) -> Result<Proto, String> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        "" => Err("the protocol after '/' is missing: tcp or udp".into()),
        "sctp" => Err("sctp is not supported: tapyard publishes tcp and udp".into()),
        _ => Err(format!("unknown protocol {p:?}: expected tcp or udp")),
    }
}

/// `A` or `A-B` with A <= B, each 0-65535.
fn parse_range(s: &str, what: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what} port {p:?} is not a number"));
        }
        p.parse::<u16>().map_err(|_| format!("{what} port {p} is out of range (ports are 1-65535)"))
    };
    match s.split_once('-') {
        None => Ok((port(s)?, port(s)?)),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("{what} port range {s} is reversed (write {b}-{a})"));
            }
            Ok((a, b))
        }
    }
}

/// A published host port, held: tapyard owns a socket bound to it, so no
/// other program takes it while it is published, and an uplink that
/// forwards the ports listening in the daemon's namespace (pasta `-t auto`)
/// forwards it. TCP: bound and listening (nothing is ever accepted: the
/// firewall's DNAT sends the connections to the container before any socket
/// sees them); UDP: bound. Dropping it releases the port.
#[derive(Debug)]
pub struct Reservation {
    /// With the host port the kernel chose when the spec left it open.
    publish: Publish,
    _socket: Socket,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    /// The port it is bound to.
    fn port(&self) -> io::Result<u16> {
        match self {
            Socket::Tcp(l) => l.local_addr().map(|a| a.port()),
            Socket::Udp(s) => s.local_addr().map(|a| a.port()),
        }
    }
}

/// Why a host port cannot be reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// Another socket has it (EADDRINUSE).
    #[error("host port {0} is already in use")]
    InUse(String),
    /// The host address is not one of the host's (EADDRNOTAVAIL).
    #[error("cannot publish on {0}: it is not an address of this host")]
    NotLocal(Ipv4Addr),
    /// A port below `net.ipv4.ip_unprivileged_port_start` without CAP_NET_BIND_SERVICE (EACCES).
    #[error(
        "host port {0} is privileged: the daemon needs CAP_NET_BIND_SERVICE (or root), or lower \
         net.ipv4.ip_unprivileged_port_start"
    )]
    Denied(String),
    #[error("cannot reserve host port {0}: {1}")]
    Other(String, String),
}

impl Reservation {
    /// Binds (and for TCP listens on) `p`'s host address and port in the
    /// calling thread's network namespace, the daemon's. Port 0 takes a
    /// free port from the kernel's ephemeral range (`publish()` tells which).
    pub fn take(p: Publish) -> Result<Reservation, ReserveError> {
        let addr = SocketAddrV4::new(p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), p.host_port);
        let bound = match p.proto {
            // std sets SO_REUSEADDR on a TcpListener (Unix): a port with
            // connections in TIME_WAIT can be published again, while a port
            // another socket listens on is still refused (Linux refuses to
            // bind next to a listener whatever its flags; socket(7)).
            Proto::Tcp => TcpListener::bind(addr).map(Socket::Tcp),
            Proto::Udp => UdpSocket::bind(addr).map(Socket::Udp),
        };
        match bound.and_then(|s| Ok((s.port()?, s))) {
            Ok((port, socket)) => Ok(Reservation { publish: Publish { host_port: port, ..p }, _socket: socket }),
            Err(e) => Err(match e.kind() {
                io::ErrorKind::AddrInUse => ReserveError::InUse(p.host_side()),
                io::ErrorKind::AddrNotAvailable => ReserveError::NotLocal(*addr.ip()),
                io::ErrorKind::PermissionDenied => ReserveError::Denied(p.host_side()),
                _ => ReserveError::Other(p.host_side(), e.to_string()),
            }),
        }
    }

    /// What is published, with the host port actually held.
    pub fn publish(&self) -> Publish {
        self.publish
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ip: Option<[u8; 4]>, host: u16, container: u16, proto: Proto) -> Publish {
        Publish { host_ip: ip.map(Ipv4Addr::from), host_port: host, container_port: container, proto }
    }

    #[test]
    fn docker_forms_parse() {
        use Proto::*;
        assert_eq!(parse("8080:80").unwrap(), vec![p(None, 8080, 80, Tcp)]);
        assert_eq!(parse("8080:80/udp").unwrap(), vec![p(None, 8080, 80, Udp)]);
        assert_eq!(parse("8080:80/TCP").unwrap(), vec![p(None, 8080, 80, Tcp)]);
        assert_eq!(parse("127.0.0.1:8080:80").unwrap(), vec![p(Some([127, 0, 0, 1]), 8080, 80, Tcp)]);
        assert_eq!(parse("0.0.0.0:8080:80").unwrap(), vec![p(None, 8080, 80, Tcp)], "0.0.0.0 is every address");
        assert_eq!(parse("127.0.0.1::80/udp").unwrap(), vec![p(Some([127, 0, 0, 1]), 0, 80, Udp)]);
        assert_eq!(parse("80").unwrap(), vec![p(None, 0, 80, Tcp)]);
        assert_eq!(parse(":80").unwrap(), vec![p(None, 0, 80, Tcp)]);
        assert_eq!(parse("0:80").unwrap(), vec![p(None, 0, 80, Tcp)], "0 asks for any free port");
        assert_eq!(parse("65535:65535").unwrap(), vec![p(None, 65535, 65535, Tcp)]);
        assert_eq!(parse("1:1").unwrap(), vec![p(None, 1, 1, Tcp)]);
    }

    #[test]
    fn ranges_pair_up_port_by_port() {
        let r = parse("8000-8002:9000-9002/udp").unwrap();
        assert_eq!(
            r,
            vec![p(None, 8000, 9000, Proto::Udp), p(None, 8001, 9001, Proto::Udp), p(None, 8002, 9002, Proto::Udp)]
        );
        assert_eq!(parse("10.0.0.1:7-7:8-8").unwrap(), vec![p(Some([10, 0, 0, 1]), 7, 8, Proto::Tcp)]);
        // Container range only: each left to the kernel.
        assert_eq!(parse("80-81").unwrap(), vec![p(None, 0, 80, Proto::Tcp), p(None, 0, 81, Proto::Tcp)]);
        assert_eq!(parse("1-1024:1-1024").unwrap().len(), MAX_RANGE);
    }

    /// Each bad spec is refused with a message containing `why`.
    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let cases = [
            ("", "expected [HOST_IP:]"),
            ("8080:", "container port is missing"),
            ("8080:0", "container port 0"),
            ("0", "container port 0"),
            ("8080:65536", "out of range"),
            ("65536:80", "out of range"),
            ("99999999999:80", "out of range"),
            ("-1:80", "not a number"),
            ("+80:80", "not a number"),
            ("80a:80", "not a number"),
            (" 80:80", "not a number"),
            ("8010-8000:80-90", "reversed"),
            ("80:90-80", "reversed"),
            ("8000-8010:80", "differ in length"),
            ("80:8000-8010", "differ in length"),
            ("8000-8002:9000-9001", "differ in length"),
            ("0-5:0-5", "container port 0"),
            ("0-5:1-6", "starts at 0"),
            ("1-2000:1-2000", "at most 1024"),
            ("80:80/", "protocol after '/' is missing"),
            ("80:80/sctp", "sctp is not supported"),
            ("80:80/icmp", "unknown protocol"),
            ("80:80/tcp/udp", "unknown protocol"),
            ("300.1.1.1:80:80", "not an IPv4 address"),
            ("localhost:80:80", "not an IPv4 address"),
            ("10.0.0:80:80", "not an IPv4 address"),
            ("224.0.0.1:80:80", "not a unicast"),
            ("255.255.255.255:80:80", "not a unicast"),
            ("[::1]:8080:80", "IPv6"),
            ("::1:8080:80", "IPv6"),
            ("::8080:80", "IPv6"),
            ("fe80::1:8080:80", "IPv6"),
            ("1:2:3:4", "IPv6"),
            ("8080-:80", "not a number"),
        ];
        for (spec, why) in cases {
            match parse(spec) {
                Ok(v) => panic!("{spec:?} parsed as {v:?}"),
                Err(e) => {
                    assert!(e.contains(why), "{spec:?}: {e:?} does not say {why:?}");
                    assert!(e.contains(&format!("{spec:?}")), "{spec:?}: {e:?} does not name the spec");
                }
            }
        }
    }

    #[test]
    fn shown_like_docker_ps() {
        assert_eq!(p(None, 8080, 80, Proto::Tcp).to_string(), "0.0.0.0:8080->80/tcp");
        assert_eq!(p(Some([127, 0, 0, 1]), 53, 53, Proto::Udp).to_string(), "127.0.0.1:53->53/udp");
        assert_eq!(p(Some([127, 0, 0, 1]), 53, 53, Proto::Udp).host_side(), "127.0.0.1:53/udp");
        assert_eq!(p(None, 8080, 80, Proto::Tcp).host_side(), "8080/tcp");
    }

    #[test]
    fn clashes_and_matches() {
        let any = p(None, 8080, 80, Proto::Tcp);
        let lo = p(Some([127, 0, 0, 1]), 8080, 81, Proto::Tcp);
        let other = p(Some([127, 0, 0, 2]), 8080, 81, Proto::Tcp);
        assert!(any.clashes(&lo) && lo.clashes(&any), "every address overlaps one");
        assert!(!lo.clashes(&other), "two different addresses do not");
        assert!(!any.clashes(&p(None, 8080, 80, Proto::Udp)), "tcp and udp ports are distinct");
        assert!(!any.clashes(&p(None, 8081, 80, Proto::Tcp)));
        assert!(!p(None, 0, 80, Proto::Tcp).clashes(&p(None, 0, 80, Proto::Tcp)), "0 is not a port yet");
        assert!(any.matches(&p(None, 0, 80, Proto::Tcp)), "an open host port matches any");
        assert!(any.matches(&any));
        assert!(!any.matches(&p(None, 8081, 80, Proto::Tcp)));
        assert!(!any.matches(&p(Some([127, 0, 0, 1]), 8080, 80, Proto::Tcp)));
        assert!(!any.matches(&p(None, 8080, 80, Proto::Udp)));
    }

    #[test]
    fn a_reservation_holds_its_port_until_dropped() {
        for proto in [Proto::Tcp, Proto::Udp] {
            let r = Reservation::take(p(Some([127, 0, 0, 1]), 0, 80, proto)).expect("a free port");
            let held = r.publish();
            assert_ne!(held.host_port, 0, "the kernel's choice is recorded");
            assert_eq!((held.container_port, held.proto), (80, proto));
            // Nobody else gets it, on that address or on every address.
            assert_eq!(
                Reservation::take(held).unwrap_err(),
                ReserveError::InUse(format!("127.0.0.1:{}/{proto}", held.host_port))
            );
            let wildcard = Publish { host_ip: None, ..held };
            let err = Reservation::take(wildcard).unwrap_err();
            assert_eq!(err.to_string(), format!("host port {}/{proto} is already in use", held.host_port));
            drop(r);
            Reservation::take(held).expect("released on drop");
        }
    }

    #[test]
    fn a_port_another_program_listens_on_is_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = Reservation::take(p(None, port, 80, Proto::Tcp)).unwrap_err();
        assert_eq!(e.to_string(), format!("host port {port}/tcp is already in use"));
        let e = Reservation::take(p(Some([127, 0, 0, 1]), port, 80, Proto::Tcp)).unwrap_err();
        assert_eq!(e.to_string(), format!("host port 127.0.0.1:{port}/tcp is already in use"));
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        let e = Reservation::take(p(Some([127, 0, 0, 1]), port, 53, Proto::Udp)).unwrap_err();
        assert!(matches!(e, ReserveError::InUse(_)), "{e}");
    }

    #[test]
    fn a_held_tcp_port_listens_and_keeps_others_out() {
        let r = Reservation::take(p(Some([127, 0, 0, 1]), 0, 80, Proto::Tcp)).unwrap();
        let port = r.publish().host_port;
        // Listening (what pasta -t auto looks for): a connection is accepted by the kernel.
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("the reserved port listens");
        assert!(TcpListener::bind(("0.0.0.0", port)).is_err(), "another program cannot take it");
    }

    #[test]
    fn an_address_not_of_this_host_is_named() {
        // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this host.
        let e = Reservation::take(p(Some([192, 0, 2, 7]), 0, 80, Proto::Tcp)).unwrap_err();
        assert_eq!(e, ReserveError::NotLocal(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(e.to_string().contains("192.0.2.7"), "{e}");
    }
}
