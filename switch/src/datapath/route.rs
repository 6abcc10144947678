//! Routing building blocks for the data path (the routing issue wires them
//! into the workers): longest-prefix match over a small route table, the
//! TTL decrement with an incremental header-checksum update, and the ICMP
//! errors a router sends. Pure functions of their inputs; no allocation on
//! the per-frame functions.
//!
//! RFCs: 1812 §5.3.1 (TTL), 1624 eqn. 3 (incremental checksum update),
//! 792 and 1812 §4.3.2.3 (ICMP error contents: the original IP header and
//! at least 8 bytes of its payload).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

/// One route: a prefix and what it leads to (an index the caller defines,
/// for example an egress network), with an optional next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: u32,
    pub len: u8,
    pub target: u16,
    pub via: Option<Ipv4Addr>,
}

impl Route {
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len.min(32)))
        }
    }

    pub fn new(prefix: Ipv4Addr, len: u8, target: u16, via: Option<Ipv4Addr>) -> Route {
        let len = len.min(32);
        Route { prefix: u32::from(prefix) & Self::mask(len), len, target, via }
    }

    #[inline]
    fn matches(&self, addr: u32) -> bool {
        addr & Self::mask(self.len) == self.prefix
    }
}

/// A route table kept sorted longest prefix first, so the first match is the
/// longest. Built by the control plane and swapped in whole; the per-frame
/// lookup is a scan (router tables here hold a handful of connected networks
/// and static routes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        // Longest first; for equal prefixes keep the first given (connected before static).
        routes.sort_by_key(|r| std::cmp::Reverse(r.len));
        routes.dedup_by(|b, a| a.len == b.len && a.prefix == b.prefix);
        RouteTable { routes }
    }

    /// The longest-prefix match for `dst`.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Route> {
        let a = u32::from(dst);
        self.routes.iter().find(|r| r.matches(a))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// What routing did with a frame addressed to a gateway's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Not a packet to route (not IPv4, or for the gateway itself, or to a
    /// broadcast/multicast address): the gateway responder takes it.
    NotRouted,
    /// Rewritten in place (TTL, checksum, MACs); send it on network `egress`.
    Forward {
        egress: u16,
    },
    /// Cannot be forwarded: the gateway responder answers with an ICMP error.
    Expired,
    NoRoute,
    Unresolved,
    /// Larger than the egress network's MTU with Don't Fragment set:
    /// Fragmentation Needed (RFC 1191) with that MTU.
    FragNeeded {
        mtu: u16,
    },
    /// Larger than the egress MTU without DF: dropped and counted (tapyard
    /// does not fragment; a Linux router would, RFC 791 — see docs).
    TooBig,
}

/// Routes an Ethernet frame that arrived addressed to the gateway whose IPv4
/// address is `gw_ip` (RFC 1812 §5.2): longest-prefix match in `table`, the
/// next hop's MAC from `neighbor(network, ip)`, the egress gateway's MAC
/// from `gateway_mac(network)`, TTL decrement with an incremental checksum
/// update, MACs rewritten. Touches the frame only when it returns `Forward`.
/// `on_wire` is the length checked against the egress MTU: the frame's own,
/// or for a GSO super-frame the length of its largest segment.
#[inline]
pub fn route_frame(
    frame: &mut [u8],
    on_wire: usize,
    gw_ip: [u8; 4],
    table: &RouteTable,
    neighbor: impl Fn(u16, u32) -> Option<[u8; 6]>,
    gateway_mac: impl Fn(u16) -> Option<[u8; 6]>,
    egress_mtu: impl Fn(u16) -> u16,
) -> Routed {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return Routed::NotRouted;
    }
    let dst = [frame[30], frame[31], frame[32], frame[33]];
    let d = Ipv4Addr::from(dst);
    if dst == gw_ip || d.is_broadcast() || d.is_multicast() || d.is_unspecified() {
        return Routed::NotRouted;
    }
    let Some(r) = table.lookup(d) else { return Routed::NoRoute };
    let mtu = egress_mtu(r.target);
    if on_wire.saturating_sub(14) > usize::from(mtu) {
        // DF is bit 1 of the flags (RFC 791 §3.1).
        return if frame[20] & 0x40 != 0 { Routed::FragNeeded { mtu } } else { Routed::TooBig };
    }
    // TTL before the neighbour, as the gateway thread decides which ICMP error to send.
    if frame[22] <= 1 {
        return Routed::Expired;
    }
    let hop = r.via.map_or(u32::from(d), u32::from);
    let (Some(mac), Some(src)) = (neighbor(r.target, hop), gateway_mac(r.target)) else {
        return Routed::Unresolved;
    };
    match decrement_ttl(&mut frame[14..]) {
        Ok(_) => {}
        Err(TtlError::Expired) => return Routed::Expired,
        Err(TtlError::Malformed) => return Routed::NotRouted,
    }
    frame[..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&src);
    Routed::Forward { egress: r.target }
}

/// Why a packet cannot be forwarded as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlError {
    /// Not a well-formed IPv4 header (version, IHL, length).
    Malformed,
    /// TTL would reach 0: Time Exceeded (RFC 1812 §5.3.1).
    Expired,
}

/// Decrements the TTL of the IPv4 header at the start of `ip` and updates
/// its checksum incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'),
/// where m is the 16-bit word holding TTL and protocol). The caller has
/// checked nothing; this checks the header shape it touches.
#[inline]
pub fn decrement_ttl(ip: &mut [u8]) -> Result<u8, TtlError> {
    if ip.len() < 20
        || ip[0] >> 4 != 4
        || usize::from(ip[0] & 0x0f) * 4 < 20
        || usize::from(ip[0] & 0x0f) * 4 > ip.len()
    {
        return Err(TtlError::Malformed);
    }
    let ttl = ip[8];
    if ttl <= 1 {
        return Err(TtlError::Expired);
    }
    let old = u16::from_be_bytes([ip[8], ip[9]]);
    ip[8] = ttl - 1;
    let new = u16::from_be_bytes([ip[8], ip[9]]);
    let hc = u16::from_be_bytes([ip[10], ip[11]]);
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let out = !(sum as u16);
    ip[10..12].copy_from_slice(&out.to_be_bytes());
    Ok(ttl - 1)
}

/// The RFC 1071 checksum of `data` (for tests and for building ICMP errors).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Largest ICMP error datagram, IP header included (RFC 1812 §4.3.2.3).
pub const MAX_ICMP_ERROR: usize = 576;

/// ICMP error types a router sends (RFC 792).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Type 11 code 0: TTL exceeded in transit.
    TtlExceeded,
    /// Type 3 code 0: network unreachable (no route).
    NetUnreachable,
    /// Type 3 code 1: host unreachable (neighbour did not answer).
    HostUnreachable,
    /// Type 3 code 4: fragmentation needed and DF set, with the next-hop MTU (RFC 1191).
    FragNeeded { mtu: u16 },
}

impl IcmpError {
    fn type_code(self) -> (u8, u8) {
        match self {
            IcmpError::TtlExceeded => (11, 0),
            IcmpError::NetUnreachable => (3, 0),
            IcmpError::HostUnreachable => (3, 1),
            IcmpError::FragNeeded { .. } => (3, 4),
        }
    }
}

/// Builds the IPv4 packet of an ICMP error from router address `from` about
/// the offending packet `orig` (its IPv4 header and payload), quoting as
/// much of it as fits in a 576-byte ICMP datagram (RFC 1812 §4.3.2.3; RFC
/// 792's minimum is the header and 8 bytes, which receivers such as
/// smoltcp cannot parse when the quoted header's total length says more). Returns `None` for packets that must never
/// draw an ICMP error (RFC 1812 §4.3.2.7): non-initial fragments, ICMP
/// errors themselves, and malformed headers.
pub fn icmp_error(kind: IcmpError, from: Ipv4Addr, orig: &[u8]) -> Option<Vec<u8>> {
    if orig.len() < 20 || orig[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(orig[0] & 0x0f) * 4;
    if ihl < 20 || ihl > orig.len() {
        return None;
    }
    let frag_offset = u16::from_be_bytes([orig[6], orig[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    if orig[9] == 1 {
        // ICMP: no error about an error (types other than echo/timestamp/info/… requests).
        let t = *orig.get(ihl)?;
        if !matches!(t, 0 | 8 | 13 | 14 | 15 | 16) {
            return None;
        }
    }
    let src = Ipv4Addr::new(orig[12], orig[13], orig[14], orig[15]);
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return None;
    }
    if orig.len() < ihl + 8 {
        return None;
    }
    let quoted = &orig[..orig.len().min(MAX_ICMP_ERROR - 20 - 8)];
    let (t, c) = kind.type_code();
    let mut icmp = vec![0u8; 8 + quoted.len()];
    icmp[0] = t;
    icmp[1] = c;
    if let IcmpError::FragNeeded { mtu } = kind {
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    }
    icmp[8..].copy_from_slice(quoted);
    let ck = checksum(&icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ip = vec![0u8; total];
    ip[0] = 0x45;
    // TOS 0xc0: internetwork control, as routers send ICMP errors (RFC 1812 §4.3.2.5).
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&from.octets());
    ip[16..20].copy_from_slice(&src.octets());
    let hck = checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&hck.to_be_bytes());
    ip[20..].copy_from_slice(&icmp);
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn route_frame_rewrites_or_explains() {
        let table = RouteTable::new(vec![
            Route::new(ip("10.2.0.0"), 24, 2, None),
            Route::new(ip("10.9.0.0"), 16, 2, Some(ip("10.2.0.9"))),
        ]);
        let neigh = |net: u16, a: u32| {
            (net == 2 && (a == u32::from(ip("10.2.0.7")) || a == u32::from(ip("10.2.0.9"))))
                .then_some([2, 0, 0, 0, 2, 7])
        };
        let gwmac = |net: u16| (net == 2).then_some([2, 0, 0, 0, 0xee, 2]);
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[8, 0]);
        f.extend(udp_packet("10.1.0.5", "10.2.0.7", 64));
        let before = f.clone();
        assert_eq!(
            {
                let n = f.len();
                route_frame(&mut f, n, [10, 1, 0, 1], &table, neigh, gwmac, |_| 1500)
            },
            Routed::Forward { egress: 2 }
        );
        assert_eq!(&f[..6], &[2, 0, 0, 0, 2, 7]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0xee, 2]);
        assert_eq!(f[14 + 8], 63);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(&f[34..], &before[34..], "the payload is untouched");
        // Through a static route's next hop.
        let mut g = before.clone();
        g[30..34].copy_from_slice(&[10, 9, 3, 3]);
        let ck = {
            g[24] = 0;
            g[25] = 0;
            checksum(&g[14..34])
        };
        g[24..26].copy_from_slice(&ck.to_be_bytes());
        assert_eq!(
            {
                let n = g.len();
                route_frame(&mut g, n, [10, 1, 0, 1], &table, neigh, gwmac, |_| 1500)
            },
            Routed::Forward { egress: 2 }
        );
        // The other outcomes leave the frame alone.
        for (dst, ttl, want) in [
            ("10.2.0.8", 64, Routed::Unresolved),
            ("10.5.0.1", 64, Routed::NoRoute),
            ("10.2.0.7", 1, Routed::Expired),
            ("10.1.0.1", 64, Routed::NotRouted),
            ("255.255.255.255", 64, Routed::NotRouted),
        ] {
            let mut h = vec![0u8; 14];
            h[12..14].copy_from_slice(&[8, 0]);
            h.extend(udp_packet("10.1.0.5", dst, ttl));
            let copy = h.clone();
            assert_eq!(
                {
                    let n = h.len();
                    route_frame(&mut h, n, [10, 1, 0, 1], &table, neigh, gwmac, |_| 1500)
                },
                want,
                "{dst}"
            );
            assert_eq!(h, copy);
        }
        // Larger than the egress MTU: with DF, Fragmentation Needed; without, too big.
        let mut big = vec![0u8; 14];
        big[12..14].copy_from_slice(&[8, 0]);
        big.extend(udp_packet("10.1.0.5", "10.2.0.7", 64));
        big[14 + 6] = 0x40;
        assert_eq!(
            {
                let n = big.len();
                route_frame(&mut big, n, [10, 1, 0, 1], &table, neigh, gwmac, |_| 30)
            },
            Routed::FragNeeded { mtu: 30 }
        );
        big[14 + 6] = 0;
        assert_eq!(
            {
                let n = big.len();
                route_frame(&mut big, n, [10, 1, 0, 1], &table, neigh, gwmac, |_| 30)
            },
            Routed::TooBig
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::new(vec![
            Route::new(ip("0.0.0.0"), 0, 9, Some(ip("10.0.0.254"))),
            Route::new(ip("10.0.0.0"), 8, 1, None),
            Route::new(ip("10.1.0.0"), 16, 2, None),
            Route::new(ip("10.1.2.0"), 24, 3, None),
            Route::new(ip("10.1.2.128"), 25, 4, Some(ip("10.1.2.1"))),
        ]);
        assert_eq!(t.lookup(ip("10.1.2.200")).unwrap().target, 4);
        assert_eq!(t.lookup(ip("10.1.2.5")).unwrap().target, 3);
        assert_eq!(t.lookup(ip("10.1.9.9")).unwrap().target, 2);
        assert_eq!(t.lookup(ip("10.200.0.1")).unwrap().target, 1);
        assert_eq!(t.lookup(ip("192.0.2.1")).unwrap().target, 9);
        assert!(RouteTable::new(vec![Route::new(ip("10.0.0.0"), 8, 1, None)]).lookup(ip("11.0.0.1")).is_none());
        // A /32 and host bits in the given prefix.
        let t =
            RouteTable::new(vec![Route::new(ip("10.0.0.7"), 32, 5, None), Route::new(ip("10.0.0.99"), 24, 6, None)]);
        assert_eq!(t.lookup(ip("10.0.0.7")).unwrap().target, 5);
        assert_eq!(t.lookup(ip("10.0.0.8")).unwrap().target, 6);
    }

    #[test]
    fn ttl_rewrite_matches_a_fresh_checksum_over_random_headers() {
        let mut x: u64 = 0xdead_beef;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let ihl = 5 + (rnd() % 11) as usize; // 20..60 bytes, options included
            let mut h = vec![0u8; ihl * 4];
            for b in h.iter_mut() {
                *b = rnd() as u8;
            }
            h[0] = 0x40 | ihl as u8;
            h[8] = (rnd() % 256) as u8;
            h[10] = 0;
            h[11] = 0;
            let ck = checksum(&h);
            h[10..12].copy_from_slice(&ck.to_be_bytes());
            let ttl = h[8];
            let mut g = h.clone();
            match decrement_ttl(&mut g) {
                Ok(t) => {
                    assert_eq!(t, ttl - 1);
                    let mut fresh = g.clone();
                    fresh[10] = 0;
                    fresh[11] = 0;
                    let want = checksum(&fresh);
                    // 0x0000 and 0xffff are the same checksum in ones' complement.
                    let got = u16::from_be_bytes([g[10], g[11]]);
                    assert!(got == want || (got == 0 && want == 0xffff) || (got == 0xffff && want == 0), "ttl {ttl}");
                    assert_eq!(checksum(&g), 0, "the header verifies");
                }
                Err(e) => {
                    assert_eq!(e, TtlError::Expired);
                    assert!(ttl <= 1);
                    assert_eq!(g, h, "an expired packet is left untouched");
                }
            }
        }
        assert_eq!(decrement_ttl(&mut [0x45; 10]), Err(TtlError::Malformed));
        assert_eq!(decrement_ttl(&mut [0x65; 20]), Err(TtlError::Malformed));
    }

    fn udp_packet(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 12];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[8] = ttl;
        p[9] = 17;
        p[12..16].copy_from_slice(&ip(src).octets());
        p[16..20].copy_from_slice(&ip(dst).octets());
        let ck = checksum(&p[..20]);
        p[10..12].copy_from_slice(&ck.to_be_bytes());
        p[20..28].copy_from_slice(&[0x30, 0x39, 0x82, 0x9a, 0, 20, 0, 0]);
        p
    }

    #[test]
    fn icmp_errors_parse_back_with_smoltcp() {
        let orig = udp_packet("10.1.0.5", "10.2.0.7", 1);
        for (kind, want_t) in [
            (IcmpError::TtlExceeded, 11u8),
            (IcmpError::NetUnreachable, 3),
            (IcmpError::HostUnreachable, 3),
            (IcmpError::FragNeeded { mtu: 1400 }, 3),
        ] {
            let pkt = icmp_error(kind, ip("10.1.0.1"), &orig).unwrap();
            let v4 = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            assert!(v4.verify_checksum());
            let r = Ipv4Repr::parse(&v4, &ChecksumCapabilities::default()).unwrap();
            assert_eq!((r.src_addr, r.dst_addr), (ip("10.1.0.1"), ip("10.1.0.5")));
            let icmp = Icmpv4Packet::new_checked(v4.payload()).unwrap();
            assert!(icmp.verify_checksum());
            assert_eq!(u8::from(icmp.msg_type()), want_t);
            let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
            let quoted = match repr {
                Icmpv4Repr::TimeExceeded { header, .. } | Icmpv4Repr::DstUnreachable { header, .. } => header,
                other => panic!("{other:?}"),
            };
            assert_eq!(quoted.src_addr, ip("10.1.0.5"));
            assert_eq!(quoted.dst_addr, ip("10.2.0.7"));
            if let IcmpError::FragNeeded { mtu } = kind {
                assert_eq!(u16::from_be_bytes([v4.payload()[6], v4.payload()[7]]), mtu);
            }
        }
    }

    #[test]
    fn icmp_errors_stay_within_576_bytes() {
        let mut big = udp_packet("10.1.0.5", "10.2.0.7", 1);
        big.resize(1500, 0xab);
        let pkt = icmp_error(IcmpError::HostUnreachable, ip("10.1.0.1"), &big).unwrap();
        assert_eq!(pkt.len(), MAX_ICMP_ERROR);
        assert_eq!(checksum(&pkt[..20]), 0);
        assert_eq!(checksum(&pkt[20..]), 0);
    }

    #[test]
    fn no_icmp_errors_about_errors_fragments_or_broadcasts() {
        let mut frag = udp_packet("10.1.0.5", "10.2.0.7", 1);
        frag[7] = 8; // fragment offset 8 × 8 bytes
        assert!(icmp_error(IcmpError::TtlExceeded, ip("10.1.0.1"), &frag).is_none());
        let err = icmp_error(IcmpError::TtlExceeded, ip("10.1.0.1"), &udp_packet("10.1.0.5", "10.2.0.7", 1)).unwrap();
        assert!(icmp_error(IcmpError::TtlExceeded, ip("10.3.0.1"), &err).is_none(), "no error about an error");
        let bcast = udp_packet("255.255.255.255", "10.2.0.7", 1);
        assert!(icmp_error(IcmpError::TtlExceeded, ip("10.1.0.1"), &bcast).is_none());
        assert!(icmp_error(IcmpError::TtlExceeded, ip("10.1.0.1"), &[0x45; 12]).is_none());
    }
}
