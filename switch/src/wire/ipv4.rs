//! The IPv4 header fields the switch reads and rewrites (RFC 791 §3.1), each
//! named once in [`field`], behind a checked constructor: routing, punting
//! and the gateway read a packet only through [`Ipv4`].
//!
//! Also the one rewrite a router makes: the TTL decrement with an
//! incremental checksum update (RFC 1812 §5.3.1, RFC 1624 eqn. 3).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

/// Field positions in the IPv4 header (RFC 791 §3.1).
pub mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const LENGTH: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;
/// Don't Fragment, in the high byte of the flags/fragment-offset word (RFC 791 §3.1).
const DF: u8 = 0x40;
/// Fragment offset bits of that word.
const FRAG_OFFSET: u16 = 0x1fff;

/// UDP header fields (RFC 768).
pub mod udp {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const HEADER_LEN: usize = 8;

    /// DHCP's UDP ports (RFC 2131 §4.1).
    pub const DHCP_SERVER_PORT: u16 = 67;
    pub const DHCP_CLIENT_PORT: u16 = 68;

    /// The (source, destination) ports of a UDP header; `None` if `udp` is shorter than them.
    #[inline]
    pub fn ports(udp: &[u8]) -> Option<(u16, u16)> {
        let be16 = |r: Range<usize>| udp.get(r).map(|b| u16::from_be_bytes([b[0], b[1]]));
        Some((be16(SRC_PORT)?, be16(DST_PORT)?))
    }
}

/// ICMP header fields (RFC 792; the next-hop MTU of Fragmentation Needed: RFC 1191 §4).
pub mod icmp {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    /// Where an error's quote of the offending packet starts.
    pub const HEADER_LEN: usize = 8;
}

/// IP protocol numbers the switch looks at (IANA).
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const UDP: u8 = 17;
}

/// Not an IPv4 header: wrong version, a header length below 20 bytes, or
/// cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A checked view of an IPv4 header at the start of `T`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4<T> {
    /// Checks version, header length and that the whole header is there.
    /// The total length is not checked against the buffer: a GSO
    /// super-frame's is not meaningful (see `datapath::offload`).
    #[inline]
    pub fn new_checked(buf: T) -> Result<Ipv4<T>, Malformed> {
        let b = buf.as_ref();
        let first = *b.first().ok_or(Malformed)?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < HEADER_LEN || ihl > b.len() {
            return Err(Malformed);
        }
        Ok(Ipv4 { buf })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    #[inline]
    fn be16(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.b()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline]
    fn addr(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.b()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The header length in bytes (options included).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        self.be16(field::LENGTH)
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.b()[field::FLAGS_FRAG.start] & DF != 0
    }

    #[inline]
    pub fn frag_offset(&self) -> u16 {
        self.be16(field::FLAGS_FRAG) & FRAG_OFFSET
    }

    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        self.addr(field::SRC)
    }

    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        self.addr(field::DST)
    }

    /// The bytes after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    /// The whole buffer, header first.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.b()
    }
}

/// Why a packet cannot be forwarded as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlError {
    /// Not a well-formed IPv4 header.
    Malformed,
    /// TTL would reach 0: Time Exceeded (RFC 1812 §5.3.1).
    Expired,
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4<T> {
    /// Decrements the TTL and updates the header checksum incrementally
    /// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), where m is the 16-bit word
    /// holding TTL and protocol). Returns the new TTL; an expiring packet is
    /// left untouched.
    #[inline]
    pub fn decrement_ttl(&mut self) -> Result<u8, TtlError> {
        let ip = self.buf.as_mut();
        let ttl = ip[field::TTL];
        if ttl <= 1 {
            return Err(TtlError::Expired);
        }
        let word = field::TTL..field::PROTOCOL + 1;
        let old = u16::from_be_bytes([ip[word.start], ip[word.start + 1]]);
        ip[field::TTL] = ttl - 1;
        let new = u16::from_be_bytes([ip[word.start], ip[word.start + 1]]);
        let hc = u16::from_be_bytes([ip[field::CHECKSUM.start], ip[field::CHECKSUM.start + 1]]);
        let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        ip[field::CHECKSUM].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        Ok(ttl - 1)
    }
}

/// Decrements the TTL of the IPv4 header at the start of `ip` (see
/// [`Ipv4::decrement_ttl`]); checks the header shape first.
#[inline]
pub fn decrement_ttl(ip: &mut [u8]) -> Result<u8, TtlError> {
    Ipv4::new_checked(ip).map_err(|_| TtlError::Malformed)?.decrement_ttl()
}

/// Writes a 20-byte header without options (the gateway's own packets):
/// version 4, IHL 5, `tos`, total length, TTL 64, `proto`, the addresses and
/// the header checksum. `buf` must be at least [`HEADER_LEN`] long.
pub fn emit_header(buf: &mut [u8], tos: u8, total_len: u16, proto: u8, src: Ipv4Addr, dst: Ipv4Addr) {
    let h = &mut buf[..HEADER_LEN];
    h.fill(0);
    h[field::VER_IHL] = 0x45;
    h[1] = tos;
    h[field::LENGTH].copy_from_slice(&total_len.to_be_bytes());
    h[field::TTL] = 64;
    h[field::PROTOCOL] = proto;
    h[field::SRC].copy_from_slice(&src.octets());
    h[field::DST].copy_from_slice(&dst.octets());
    let ck = crate::wire::checksum::internet_checksum(h);
    h[field::CHECKSUM].copy_from_slice(&ck.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::internet_checksum;

    #[test]
    fn fields_read_what_etherparse_reads() {
        let h = etherparse::Ipv4Header::new(12, 33, etherparse::IpNumber::UDP, [10, 1, 0, 5], [10, 2, 0, 7]).unwrap();
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(&[0u8; 12]);
        let v = Ipv4::new_checked(&b[..]).unwrap();
        assert_eq!(v.header_len(), 20);
        assert_eq!(v.total_len(), 32);
        assert_eq!(v.ttl(), 33);
        assert_eq!(v.protocol(), protocol::UDP);
        assert!(v.dont_frag(), "etherparse sets DF by default");
        assert_eq!(v.frag_offset(), 0);
        assert_eq!(v.src(), Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(v.dst(), Ipv4Addr::new(10, 2, 0, 7));
        assert_eq!(v.payload().len(), 12);
    }

    #[test]
    fn checked_constructor_refuses_what_is_not_ipv4() {
        assert_eq!(Ipv4::new_checked(&[][..]).unwrap_err(), Malformed);
        assert!(Ipv4::new_checked(&[0x45; 19][..]).is_err(), "cut short");
        assert!(Ipv4::new_checked(&[0x65; 20][..]).is_err(), "version 6");
        assert!(Ipv4::new_checked(&[0x44; 20][..]).is_err(), "IHL 4");
        assert!(Ipv4::new_checked(&[0x46; 20][..]).is_err(), "IHL 6 in 20 bytes");
        assert!(Ipv4::new_checked(&[0x45; 20][..]).is_ok());
    }

    #[test]
    fn emitted_headers_verify() {
        let mut b = [0u8; 20];
        emit_header(&mut b, 0xc0, 56, protocol::ICMP, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(internet_checksum(&b), 0);
        let v = Ipv4::new_checked(&b[..]).unwrap();
        assert_eq!((v.ttl(), v.protocol(), v.total_len()), (64, 1, 56));
    }
}
