//! Bytes to typed views, with every field named once: MAC addresses and the
//! Ethernet header ([`EthAddrs`], [`ethertype`]), IPv4 ([`ipv4`]), ARP
//! ([`arp`]), the Internet checksum ([`checksum`]) and the virtio-net header
//! ([`vnet`]). No I/O, no state, no `unsafe`; nothing above this layer reads
//! a header field by a literal offset.
//!
//! Parsing contract (after smoltcp): everything here is checked, because every
//! byte the switch parses comes from a port, that is, from someone else.
//!
//! VLAN tags: the switch bridges 802.1Q/802.1ad-tagged frames as opaque L2
//! frames (a frame may be one tag longer than the MTU allows untagged, and
//! software offload finishing walks one tag), but nothing at L3 looks inside
//! them: a tagged frame is never routed, punted to a gateway, or answered.
//! A tagged frame addressed to a gateway is dropped and counted
//! (`vlan_tagged`); [`l3_ethertype`] is how every L3 reader gets its
//! ethertype, so that rule lives in one place.

#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ipv4;
pub mod vnet;

use std::fmt;
use std::str::FromStr;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The I/G bit (IEEE 802-2014 §8.2): set for group (multicast and broadcast) addresses.
    #[inline]
    pub fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// The U/L bit: set for locally administered addresses.
    #[inline]
    pub fn is_local(self) -> bool {
        self.0[0] & 0x02 != 0
    }

    #[inline]
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }

    /// The address packed into the low 48 bits of a `u64` (big-endian order).
    #[inline]
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The inverse of [`MacAddr::to_u64`]; the top 16 bits are ignored.
    #[inline]
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// A stable, locally administered unicast address derived from `seed`
    /// (FNV-1a over the bytes): the same network, namespace and interface
    /// get the same MAC across reconnects and daemon restarts, so neighbour
    /// caches in containers stay valid.
    pub fn stable_local(seed: &[u8]) -> MacAddr {
        let mut m = MacAddr::from_u64(fnv1a(seed));
        // Unicast (I/G = 0), locally administered (U/L = 1).
        m.0[0] = (m.0[0] & 0xfc) | 0x02;
        m
    }
}

/// FNV-1a, 64 bits, over `bytes`: a stable (not keyed, not secret) hash for
/// names and addresses derived from a port's identity.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':', like 02:00:00:00:00:01")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Length of an Ethernet II header without 802.1Q tags.
pub const ETH_HEADER_LEN: usize = 14;

/// The EtherType values the switch looks at (IEEE 802 numbers).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    /// IEEE 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// IEEE 802.1ad service VLAN tag (Q-in-Q).
    pub const QINQ: u16 = 0x88a8;
}

/// Ethernet header fields by position (IEEE 802.3 §3.1.1).
mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// The destination MAC of a frame at least an Ethernet header long.
#[inline]
pub fn dst_mac(frame: &[u8]) -> Option<MacAddr> {
    Some(MacAddr(frame.get(field::DST)?.try_into().ok()?))
}

/// Writes the two addresses of an Ethernet header (a routed frame's new hop).
/// The caller sized `frame`: it is at least an Ethernet header long.
#[inline]
pub fn set_macs(frame: &mut [u8], dst: MacAddr, src: MacAddr) {
    frame[field::DST].copy_from_slice(&dst.0);
    frame[field::SRC].copy_from_slice(&src.0);
}

/// Writes an untagged Ethernet header at the start of `frame` (at least
/// [`ETH_HEADER_LEN`] long: the caller sized it).
#[inline]
pub fn emit_eth_header(frame: &mut [u8], dst: MacAddr, src: MacAddr, ty: u16) {
    set_macs(frame, dst, src);
    frame[field::ETHERTYPE].copy_from_slice(&ty.to_be_bytes());
}

/// The outermost EtherType of a frame, if it has an Ethernet header.
#[inline]
pub fn outer_ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(field::ETHERTYPE).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// Whether the frame carries an 802.1Q or 802.1ad tag.
#[inline]
pub fn is_tagged(frame: &[u8]) -> bool {
    matches!(outer_ethertype(frame), Some(ethertype::VLAN | ethertype::QINQ))
}

/// The EtherType an L3 reader acts on: that of an untagged frame, `None` for
/// a tagged one or a runt (see the module doc on VLAN tags).
#[inline]
pub fn l3_ethertype(frame: &[u8]) -> Option<u16> {
    outer_ethertype(frame).filter(|t| !matches!(*t, ethertype::VLAN | ethertype::QINQ))
}

/// The L3 payload of an untagged frame of EtherType `ty`.
#[inline]
pub fn l3_payload(frame: &[u8], ty: u16) -> Option<&[u8]> {
    (l3_ethertype(frame) == Some(ty)).then(|| &frame[ETH_HEADER_LEN..])
}

/// The two addresses the L2 decision needs, read through etherparse's
/// zero-copy `Ethernet2Slice`. Bridging needs nothing deeper (STYLE §4):
/// a frame with a valid Ethernet header and garbage above it is still forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthAddrs {
    pub dst: MacAddr,
    pub src: MacAddr,
}

/// Why a frame cannot be switched at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EthError {
    /// Shorter than an Ethernet header.
    Runt,
}

impl EthAddrs {
    #[inline]
    pub fn parse(frame: &[u8]) -> Result<EthAddrs, EthError> {
        let eth = etherparse::Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| EthError::Runt)?;
        Ok(EthAddrs { dst: MacAddr(eth.destination()), src: MacAddr(eth.source()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display_round_trip() {
        let m: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]);
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
    }

    #[test]
    fn mac_parse_rejects_garbage() {
        for bad in ["", "02:00:00:00:00", "02:00:00:00:00:00:00", "0g:00:00:00:00:00", "002:00:00:00:00:0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn stable_mac_is_local_unicast_and_stable() {
        let a = MacAddr::stable_local(b"net/ns/eth0");
        assert_eq!(a, MacAddr::stable_local(b"net/ns/eth0"));
        assert_ne!(a, MacAddr::stable_local(b"net/ns/eth1"));
        assert!(a.is_local());
        assert!(!a.is_multicast());
    }

    #[test]
    fn eth_parse_reads_addresses_and_rejects_runts() {
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let a = EthAddrs::parse(&f).unwrap();
        assert!(a.dst.is_multicast());
        assert_eq!(a.src, MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(EthAddrs::parse(&f[..13]), Err(EthError::Runt));
        assert_eq!(EthAddrs::parse(&[]), Err(EthError::Runt));
    }
}
