//! Routing between the networks of a router, decided once, in the worker
//! (RFC 1812 §5.2): [`decide`] looks the destination up, checks the egress
//! MTU, the TTL and the next hop, and returns the [`Verdict`]: routed with
//! its [`NextHop`], or punted to the gateway with the reason it found, or
//! for the gateway itself. [`rewrite`] makes the one change a router makes
//! to a forwarded packet (TTL, header checksum, MACs). [`icmp_error`] builds
//! the errors the gateway sends for punted packets, from that reason.
//!
//! RFCs: 1812 §5.3.1 (TTL), 1624 eqn. 3 (incremental checksum update, in
//! `wire::ipv4`), 792 and 1812 §4.3.2.3 (ICMP error contents: the original
//! IP header and at least 8 bytes of its payload), 1191 §4 (the next-hop MTU
//! in Fragmentation Needed).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use super::classify::{NextHop, Verdict};
use crate::punt::PuntReason;
use crate::snapshot::{RouterView, Snapshot};
use crate::stats::DropReason;
use crate::wire::checksum::internet_checksum;
use crate::wire::ipv4::{self, icmp, Ipv4};
use crate::wire::{ethertype, l3_payload, set_macs, ETH_HEADER_LEN};

/// What the router does with `frame`, which arrived addressed to the MAC of
/// the gateway `gw_ip` of a network attached to `router`. `on_wire` is the
/// length checked against the egress MTU: the frame's own, or for a GSO
/// super-frame the length of its largest segment. The order of the checks
/// is the order of the errors a Linux router sends: no route, then size,
/// then TTL, then the neighbour.
#[inline]
pub fn decide(frame: &[u8], on_wire: usize, gw_ip: Ipv4Addr, router: &RouterView, snap: &Snapshot) -> Verdict {
    let Some(ip) = l3_payload(frame, ethertype::IPV4).and_then(|p| Ipv4::new_checked(p).ok()) else {
        // Not IPv4 (ARP to the gateway's MAC, say): the gateway's own.
        return Verdict::Local;
    };
    let dst = ip.dst();
    if dst == gw_ip
        || router.gateway_ips.contains(&dst)
        || dst.is_broadcast()
        || dst.is_multicast()
        || dst.is_unspecified()
    {
        // To one of the router's own addresses (answered by the gateway the
        // packet arrived at, as a Linux router answers for any of its
        // addresses), or nothing a router forwards.
        return Verdict::Local;
    }
    let Some((route, out)) = router.table.lookup(dst).and_then(|r| Some((r, snap.network(r.target)?))) else {
        return Verdict::Punt(PuntReason::NoRoute);
    };
    let mtu = out.mtu();
    if on_wire.saturating_sub(ETH_HEADER_LEN) > usize::from(mtu) {
        return if ip.dont_frag() {
            Verdict::Punt(PuntReason::FragNeeded { mtu })
        } else {
            // Not fragmented (see docs/ARCHITECTURE.md); counted and dropped.
            Verdict::Drop(DropReason::TooBig)
        };
    }
    if ip.ttl() <= 1 {
        return Verdict::Punt(PuntReason::TtlExpired);
    }
    let hop = route.hop(dst);
    match (out.neighbors.get(&hop), &out.gateway) {
        (Some(&dst), Some(g)) => Verdict::Route(NextHop { egress: route.target, dst, src: g.mac }),
        _ => Verdict::Punt(PuntReason::Unresolved { egress: route.target, hop }),
    }
}

/// Rewrites a routed frame in place for its next hop: TTL decremented with
/// the checksum updated (RFC 1812 §5.3.1), MACs set to the next hop's and
/// the egress gateway's. False (frame untouched) if the frame is not an
/// untagged IPv4 packet whose TTL may be decremented; [`decide`] has
/// checked both for frames it routes.
#[inline]
pub fn rewrite(frame: &mut [u8], hop: &NextHop) -> bool {
    if l3_payload(frame, ethertype::IPV4).is_none() {
        return false;
    }
    if ipv4::decrement_ttl(&mut frame[ETH_HEADER_LEN..]).is_err() {
        return false;
    }
    set_macs(frame, hop.dst, hop.src);
    true
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
    /// The error the gateway sends for a packet punted for `reason`; none
    /// for the gateway's own traffic, and none yet for an unresolved next
    /// hop (that one waits for ARP first, then is Host Unreachable).
    pub fn for_reason(reason: PuntReason) -> Option<IcmpError> {
        match reason {
            PuntReason::TtlExpired => Some(IcmpError::TtlExceeded),
            PuntReason::NoRoute => Some(IcmpError::NetUnreachable),
            PuntReason::FragNeeded { mtu } => Some(IcmpError::FragNeeded { mtu }),
            PuntReason::Local | PuntReason::Unresolved { .. } => None,
        }
    }

    fn type_code(self) -> (u8, u8) {
        match self {
            IcmpError::TtlExceeded => (11, 0),
            IcmpError::NetUnreachable => (3, 0),
            IcmpError::HostUnreachable => (3, 1),
            IcmpError::FragNeeded { .. } => (3, 4),
        }
    }
}

/// ICMP types an error may be sent about (RFC 1812 §4.3.2.7: not about an
/// ICMP error): echo reply and request, timestamp, information (0, 8, 13–16).
fn is_icmp_query(t: u8) -> bool {
    matches!(t, 0 | 8 | 13 | 14 | 15 | 16)
}

/// Builds the IPv4 packet of an ICMP error from router address `from` about
/// the offending packet `orig` (its IPv4 header and payload), quoting as
/// much of it as fits in a 576-byte ICMP datagram (RFC 1812 §4.3.2.3; RFC
/// 792's minimum is the header and 8 bytes, which receivers such as
/// smoltcp cannot parse when the quoted header's total length says more).
/// Returns `None` for packets that must never draw an ICMP error (RFC 1812
/// §4.3.2.7): non-initial fragments, ICMP errors themselves, packets from
/// no unicast source, and malformed headers.
pub fn icmp_error(kind: IcmpError, from: Ipv4Addr, orig: &[u8]) -> Option<Vec<u8>> {
    let ip = Ipv4::new_checked(orig).ok()?;
    if ip.frag_offset() != 0 {
        return None;
    }
    if ip.protocol() == ipv4::protocol::ICMP && !is_icmp_query(*ip.payload().first()?) {
        return None;
    }
    let src = ip.src();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return None;
    }
    if ip.payload().len() < icmp::HEADER_LEN {
        return None;
    }
    let quoted = &orig[..orig.len().min(MAX_ICMP_ERROR - ipv4::HEADER_LEN - icmp::HEADER_LEN)];
    let (t, c) = kind.type_code();
    let total = ipv4::HEADER_LEN + icmp::HEADER_LEN + quoted.len();
    let mut out = vec![0u8; total];
    // TOS 0xc0: internetwork control, as routers send ICMP errors (RFC 1812 §4.3.2.5).
    ipv4::emit_header(&mut out, 0xc0, total as u16, ipv4::protocol::ICMP, from, src);
    let msg = &mut out[ipv4::HEADER_LEN..];
    msg[icmp::TYPE] = t;
    msg[icmp::CODE] = c;
    if let IcmpError::FragNeeded { mtu } = kind {
        msg[icmp::NEXT_HOP_MTU].copy_from_slice(&mtu.to_be_bytes());
    }
    msg[icmp::HEADER_LEN..].copy_from_slice(quoted);
    let ck = internet_checksum(msg);
    msg[icmp::CHECKSUM].copy_from_slice(&ck.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    pub(crate) fn udp_packet(src: &str, dst: &str, ttl: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 8 + 12];
        let total = p.len() as u16;
        ipv4::emit_header(&mut p, 0, total, ipv4::protocol::UDP, ip(src), ip(dst));
        p[8] = ttl;
        p[10..12].fill(0);
        let ck = internet_checksum(&p[..20]);
        p[10..12].copy_from_slice(&ck.to_be_bytes());
        p[20..28].copy_from_slice(&[0x30, 0x39, 0x82, 0x9a, 0, 20, 0, 0]);
        p
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
            let ck = internet_checksum(&h);
            h[10..12].copy_from_slice(&ck.to_be_bytes());
            let ttl = h[8];
            let mut g = h.clone();
            match ipv4::decrement_ttl(&mut g) {
                Ok(t) => {
                    assert_eq!(t, ttl - 1);
                    let mut fresh = g.clone();
                    fresh[10] = 0;
                    fresh[11] = 0;
                    let want = internet_checksum(&fresh);
                    // 0x0000 and 0xffff are the same checksum in ones' complement.
                    let got = u16::from_be_bytes([g[10], g[11]]);
                    assert!(got == want || (got == 0 && want == 0xffff) || (got == 0xffff && want == 0), "ttl {ttl}");
                    assert_eq!(internet_checksum(&g), 0, "the header verifies");
                }
                Err(e) => {
                    assert_eq!(e, ipv4::TtlError::Expired);
                    assert!(ttl <= 1);
                    assert_eq!(g, h, "an expired packet is left untouched");
                }
            }
        }
        assert_eq!(ipv4::decrement_ttl(&mut [0x45; 10]), Err(ipv4::TtlError::Malformed));
        assert_eq!(ipv4::decrement_ttl(&mut [0x65; 20]), Err(ipv4::TtlError::Malformed));
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
        assert_eq!(internet_checksum(&pkt[..20]), 0);
        assert_eq!(internet_checksum(&pkt[20..]), 0);
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

    #[test]
    fn each_punt_reason_has_its_error() {
        assert_eq!(IcmpError::for_reason(PuntReason::TtlExpired), Some(IcmpError::TtlExceeded));
        assert_eq!(IcmpError::for_reason(PuntReason::NoRoute), Some(IcmpError::NetUnreachable));
        assert_eq!(
            IcmpError::for_reason(PuntReason::FragNeeded { mtu: 1400 }),
            Some(IcmpError::FragNeeded { mtu: 1400 })
        );
        assert_eq!(IcmpError::for_reason(PuntReason::Local), None);
    }
}
