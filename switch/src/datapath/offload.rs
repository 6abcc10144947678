//! Finishing offloaded frames in software, for egress ports that cannot take
//! them as they are: completing a partial L4 checksum (`NEEDS_CSUM`), and
//! segmenting a GSO super-frame (TCP over IPv4/IPv6, UDP with USO) into
//! frames of at most `gso_size` payload bytes, each with correct lengths,
//! IP IDs, TCP sequence numbers and flags, and checksums.
//!
//! Pure functions over byte slices: no allocation, no I/O. Every input comes
//! from a port, so every offset is checked; a frame that cannot be finished
//! is an [`OffloadError`] (the caller drops and counts it), never a panic.
//!
//! Read first: virtio 1.x §5.1.6.2 (what `NEEDS_CSUM` and the GSO types
//! promise); RFC 1071 (the Internet checksum); RFC 791 (IPv4 total length,
//! identification, header checksum); RFC 8200 §3 and §8.1 (IPv6 payload
//! length, upper-layer checksums); RFC 9293 §3.1, §3.4 (TCP checksum,
//! sequence numbers); RFC 3168 §6.1.2 (ECN and CWR); RFC 768 (UDP).
//!
//! # What is trusted
//! From the vnet header only `flags`, `gso_type` and `gso_size` (and, for
//! [`complete_csum`], `csum_start`/`csum_offset`, checked against the
//! frame). `hdr_len` is ignored: Linux sets it to the length of the skb's
//! linear part, not to the header length, so segmentation parses the header
//! lengths from the frame itself (Ethernet, at most one 802.1Q tag, IPv4 with
//! options or IPv6 with hop-by-hop/destination-options headers, TCP with
//! options or UDP). Likewise the length fields of the super-frame's own IP
//! and L4 headers are ignored: the payload runs to the end of the frame, as
//! the kernel's GSO takes it from `skb->len`.
//!
//! A segment's checksums are computed afresh from its own bytes and a
//! pseudo-header built from its addresses, not adjusted from the partial sum
//! the sender left: that sum covers the super-frame's length, and a sender
//! that got it wrong would otherwise get every segment wrong in the same way.

#![forbid(unsafe_code)]

use crate::wire::checksum::{csum_add, fold, internet_checksum};
use crate::wire::vnet::{VnetHdr, VNET_HDR_LEN};
use crate::wire::ETH_HEADER_LEN;

/// Why a frame could not be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Headers are cut short, or an offset points outside the frame.
    /// Also: a segment would not fit the caller's scratch buffer, or its
    /// length would not fit a 16-bit length field.
    #[error("the frame's headers or offload fields are cut short or inconsistent")]
    Malformed,
    /// A GSO type we do not segment (UFO), or a GSO frame that is not TCP/UDP over IP.
    #[error("the frame carries an offload this switch does not finish in software")]
    Unsupported,
}

// ---------------------------------------------------------------------------
// Checksum completion

/// Completes the L4 checksum of `frame` as `hdr` asks (`NEEDS_CSUM`:
/// one's-complement sum from `csum_start` to the end, stored at
/// `csum_start + csum_offset`), and clears the flag in `hdr`.
///
/// The sender (Linux's `CHECKSUM_PARTIAL`, or a virtio driver) has already
/// put the folded pseudo-header sum in the checksum field, so the plain sum
/// over the region is the whole checksum; this function needs to know
/// nothing of the protocol. A result of 0 is stored as 0xffff, as Linux's
/// `skb_checksum_help` does: UDP requires it (RFC 768: 0 means "no
/// checksum"), and for TCP both are the same one's-complement zero, so a
/// receiver verifies either.
///
/// On success `F_NEEDS_CSUM` is cleared and `F_DATA_VALID` set (we computed
/// it, so a receiver that honours the header may skip verifying it). No-op
/// without `NEEDS_CSUM`. `Malformed` when the region or the checksum field is
/// not inside the frame; the frame is then unchanged.
pub fn complete_csum(hdr: &mut VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    // The field lies wholly inside the frame, and so does the start of the
    // region, which is not after the field (Linux checks the same two).
    if at + 2 > frame.len() {
        return Err(OffloadError::Malformed);
    }
    let c = match !fold(csum_add(0, &frame[start..])) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    hdr.flags = (hdr.flags & !VnetHdr::F_NEEDS_CSUM) | VnetHdr::F_DATA_VALID;
    Ok(())
}

// ---------------------------------------------------------------------------
// Header parsing

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const VLAN_TAG_LEN: usize = 4;
const IPV4_MIN_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_MIN_LEN: usize = 20;
const UDP_LEN: usize = 8;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DSTOPTS: u8 = 60;
/// At most this many hop-by-hop/destination-options headers are walked
/// (RFC 8200 §4.1 allows one hop-by-hop and two destination-options headers).
const MAX_IPV6_EXT: usize = 3;

// TCP flag bits in byte 13 of the header (RFC 9293 §3.1, RFC 3168 §6.1).
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ip {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4 {
    Tcp,
    Udp,
}

/// Where the headers of a TCP/UDP-over-IP frame are. Offsets from the first
/// byte of the Ethernet header; `l3_off < l4_off < payload_off <= frame.len()`.
#[derive(Clone, Copy, Debug)]
struct Headers {
    ip: Ip,
    l4: L4,
    l3_off: usize,
    l4_off: usize,
    /// The length of all headers; the payload starts here.
    payload_off: usize,
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Parses the header lengths of a TCP/UDP-over-IP frame. `Malformed`: the
/// bytes do not hold together (cut short, wrong IP version, IHL or data
/// offset too small, an IPv4 fragment, which cannot be a super-frame).
/// `Unsupported`: well-formed, but not TCP or UDP over IPv4/IPv6 behind at
/// most one VLAN tag (including IPv6 extension headers other than hop-by-hop
/// and destination options, which we do not walk: a routing header would
/// change the pseudo-header's destination, RFC 8200 §8.1).
fn parse_headers(frame: &[u8]) -> Result<Headers, OffloadError> {
    use OffloadError::{Malformed, Unsupported};
    let mut l3_off = ETH_HEADER_LEN;
    let mut ethertype = be16(frame, 12).ok_or(Malformed)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16).ok_or(Malformed)?;
        l3_off += VLAN_TAG_LEN;
    }
    let (ip, proto, l4_off) = match ethertype {
        ETHERTYPE_IPV4 => {
            let h = frame.get(l3_off..l3_off + IPV4_MIN_LEN).ok_or(Malformed)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            // MF set or a fragment offset: a piece of a datagram, not a super-frame.
            let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
            if h[0] >> 4 != 4 || ihl < IPV4_MIN_LEN || fragment {
                return Err(Malformed);
            }
            (Ip::V4, h[9], l3_off + ihl)
        }
        ETHERTYPE_IPV6 => {
            let h = frame.get(l3_off..l3_off + IPV6_LEN).ok_or(Malformed)?;
            if h[0] >> 4 != 6 {
                return Err(Malformed);
            }
            let (mut next, mut off) = (h[6], l3_off + IPV6_LEN);
            // Generic extension header layout (RFC 8200 §4.3, §4.6): next
            // header, then the length in 8-octet units not counting the first.
            for _ in 0..MAX_IPV6_EXT {
                if next != IPPROTO_HOPOPTS && next != IPPROTO_DSTOPTS {
                    break;
                }
                let e = frame.get(off..off + 2).ok_or(Malformed)?;
                next = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            (Ip::V6, next, off)
        }
        _ => return Err(Unsupported),
    };
    let (l4, payload_off) = match proto {
        IPPROTO_TCP => {
            let h = frame.get(l4_off..l4_off + TCP_MIN_LEN).ok_or(Malformed)?;
            let doff = usize::from(h[12] >> 4) * 4;
            if doff < TCP_MIN_LEN {
                return Err(Malformed);
            }
            (L4::Tcp, l4_off + doff)
        }
        IPPROTO_UDP => (L4::Udp, l4_off + UDP_LEN),
        _ => return Err(Unsupported),
    };
    if payload_off > frame.len() {
        return Err(Malformed);
    }
    Ok(Headers { ip, l4, l3_off, l4_off, payload_off })
}

/// How a GSO frame splits: its headers, the payload bytes per segment, and
/// the length of the largest (first) segment.
#[derive(Clone, Copy, Debug)]
struct Plan {
    h: Headers,
    mss: usize,
    largest: usize,
}

fn plan(hdr: &VnetHdr, frame: &[u8]) -> Result<Plan, OffloadError> {
    use OffloadError::{Malformed, Unsupported};
    // Decide on the header before the bytes: UFO is unsupported whatever the frame holds.
    let want = match hdr.gso() {
        VnetHdr::GSO_TCPV4 => Some((Ip::V4, L4::Tcp)),
        VnetHdr::GSO_TCPV6 => Some((Ip::V6, L4::Tcp)),
        // USO does not say the IP version: either is fine.
        VnetHdr::GSO_UDP_L4 => None,
        _ => return Err(Unsupported),
    };
    if hdr.gso_size == 0 {
        return Err(Malformed);
    }
    let h = parse_headers(frame)?;
    let matches = match want {
        Some(w) => (h.ip, h.l4) == w,
        None => h.l4 == L4::Udp,
    };
    if !matches {
        return Err(Unsupported);
    }
    let mss = usize::from(hdr.gso_size);
    let largest = h.payload_off + mss.min(frame.len() - h.payload_off);
    // Every length field of the largest segment must fit in 16 bits (RFC 791
    // total length, RFC 8200 payload length, RFC 768 length).
    let ip_len = match h.ip {
        Ip::V4 => largest - h.l3_off,
        Ip::V6 => largest - h.l3_off - IPV6_LEN,
    };
    // The IP length is the larger (it counts the L4 header too).
    if ip_len > usize::from(u16::MAX) {
        return Err(Malformed);
    }
    Ok(Plan { h, mss, largest })
}

// ---------------------------------------------------------------------------
// Segmentation

/// The length of the largest frame [`segment`] would produce (headers plus
/// `gso_size`, or plus the whole payload when that is smaller), for MTU
/// checks and for sizing the scratch buffer (which needs 12 more bytes);
/// the frame's own length if it is not GSO. Errors as [`segment`].
pub fn segment_frame_len(hdr: &VnetHdr, frame: &[u8]) -> Result<usize, OffloadError> {
    if !hdr.is_gso() {
        return Ok(frame.len());
    }
    Ok(plan(hdr, frame)?.largest)
}

/// Splits the GSO super-frame `frame` into segments. Each segment is built in
/// `scratch` as a zeroed 12-byte `virtio_net_hdr` followed by the complete
/// frame (all checksums filled in) and passed to `emit` as one slice, ready
/// to write to a port. Returns the number of segments.
///
/// Segment `i` carries payload bytes `i·gso_size ..` of the super-frame, with
/// - IPv4: total length and header checksum of its own, and identification
///   `id + i` (mod 2^16): RFC 791 lets the ID tell datagrams apart, and Linux
///   (`inet_gso_segment`) numbers the segments this way, so the result is what
///   the sender's kernel would have put on a wire;
/// - IPv6: payload length of its own (RFC 8200 §3);
/// - TCP: sequence number advanced by the payload before it, modulo 2^32
///   (RFC 9293 §3.4); FIN and PSH only on the last segment, since they belong
///   to the end of the data; CWR only on the first, since it acknowledges one
///   congestion signal once (RFC 3168 §6.1.2; Linux's `tcp_gso_segment` clears
///   it on later segments the same way); every other flag (ACK, ECE, URG...)
///   on every segment;
/// - UDP (USO): each segment a datagram with its own length;
/// - the TCP or UDP checksum computed over the segment and its pseudo-header
///   (RFC 9293 §3.1, RFC 768, RFC 8200 §8.1); a UDP result of 0 is sent as
///   0xffff, since 0 would mean "no checksum" (RFC 768), which IPv6 forbids.
///
/// A payload of at most `gso_size` bytes (also none) yields one segment.
/// A frame that is not GSO is emitted once, as it is but with its checksum
/// completed if it has `NEEDS_CSUM`, so a caller may pass every frame here.
///
/// Everything is checked before the first call to `emit`, so on error
/// nothing has been emitted. Errors: `Unsupported` for UFO (`GSO_UDP`),
/// unknown GSO types and frames that are not the GSO type's protocol over
/// IPv4/IPv6 (see the module doc); `Malformed` for `gso_size` 0, headers cut
/// short, segment lengths that do not fit their 16-bit fields, a
/// [`complete_csum`] failure on a non-GSO frame, and a `scratch` shorter
/// than 12 bytes plus [`segment_frame_len`].
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    if !hdr.is_gso() {
        return emit_whole(hdr, frame, scratch, emit);
    }
    let p = plan(hdr, frame)?;
    if scratch.len() < VNET_HDR_LEN + p.largest {
        return Err(OffloadError::Malformed);
    }
    let Plan { h, mss, .. } = p;
    scratch[..VNET_HDR_LEN].fill(0);
    // The headers are copied once. Every field that differs between
    // segments is rewritten for each one from the super-frame's values.
    scratch[VNET_HDR_LEN..VNET_HDR_LEN + h.payload_off].copy_from_slice(&frame[..h.payload_off]);
    let (ip, l4) = (h.l3_off, h.l4_off);
    let ip_id = if h.ip == Ip::V4 { u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]) } else { 0 };
    let (mut seq, flags) = if h.l4 == L4::Tcp {
        (u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]), frame[l4 + 13])
    } else {
        (0, 0)
    };
    let pseudo = pseudo_header_sum(&h, frame);

    let payload = &frame[h.payload_off..];
    let count = payload.len().div_ceil(mss).max(1);
    // `chunks` yields nothing for an empty payload; such a frame still goes out once.
    let empty: Option<&[u8]> = payload.is_empty().then_some(&[]);
    for (i, chunk) in payload.chunks(mss).chain(empty).enumerate() {
        let len = h.payload_off + chunk.len();
        let seg = &mut scratch[VNET_HDR_LEN..VNET_HDR_LEN + len];
        seg[h.payload_off..].copy_from_slice(chunk);
        match h.ip {
            Ip::V4 => {
                put16(seg, ip + 2, (len - ip) as u16);
                put16(seg, ip + 4, ip_id.wrapping_add(i as u16));
                put16(seg, ip + 10, 0);
                let c = internet_checksum(&seg[ip..l4]);
                put16(seg, ip + 10, c);
            }
            Ip::V6 => put16(seg, ip + 4, (len - ip - IPV6_LEN) as u16),
        }
        let l4_len = len - l4;
        let csum_at = match h.l4 {
            L4::Tcp => {
                seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                seq = seq.wrapping_add(chunk.len() as u32);
                let mut f = flags;
                if i + 1 < count {
                    f &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    f &= !TCP_CWR;
                }
                seg[l4 + 13] = f;
                l4 + 16
            }
            L4::Udp => {
                put16(seg, l4 + 4, l4_len as u16);
                l4 + 6
            }
        };
        put16(seg, csum_at, 0);
        let c = match !fold(csum_add(pseudo + l4_len as u64, &seg[l4..])) {
            // UDP only (RFC 768); TCP keeps 0, as Linux's `tcp_gso_segment` does.
            0 if h.l4 == L4::Udp => 0xffff,
            c => c,
        };
        put16(seg, csum_at, c);
        emit(&scratch[..VNET_HDR_LEN + len]);
    }
    Ok(count)
}

/// [`segment`] of a frame that is not GSO: one copy, its checksum completed if asked.
fn emit_whole(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let out = scratch.get_mut(..VNET_HDR_LEN + frame.len()).ok_or(OffloadError::Malformed)?;
    out[..VNET_HDR_LEN].fill(0);
    out[VNET_HDR_LEN..].copy_from_slice(frame);
    complete_csum(&mut { *hdr }, &mut out[VNET_HDR_LEN..])?;
    emit(out);
    Ok(1)
}

/// The pseudo-header's address and protocol words (RFC 9293 §3.1 for IPv4,
/// RFC 8200 §8.1 for IPv6, where the protocol is the upper-layer one, not an
/// extension header's), unfolded; the caller adds the L4 length. Adding the
/// length as one number is the same as adding it as 16-bit words, modulo
/// 2^16 − 1, for the 32-bit IPv6 length as well.
fn pseudo_header_sum(h: &Headers, frame: &[u8]) -> u64 {
    let proto = u64::from(if h.l4 == L4::Tcp { IPPROTO_TCP } else { IPPROTO_UDP });
    let addrs = match h.ip {
        // Source and destination: bytes 12..20 of the IPv4 header, 8..40 of the IPv6 header.
        Ip::V4 => &frame[h.l3_off + 12..h.l3_off + 20],
        Ip::V6 => &frame[h.l3_off + 8..h.l3_off + 40],
    };
    csum_add(proto, addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, Ipv6Header, Ipv6RawExtHeader, NetHeaders, PacketBuilder, PacketHeaders,
        TcpHeader, TcpOptionElement, TransportHeader, VlanId,
    };

    const SRC4: [u8; 4] = [10, 1, 2, 3];
    const DST4: [u8; 4] = [10, 9, 8, 7];
    const SRC6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xab, 0xcd];
    const DST6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
    const VNET_ZERO: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Net {
        V4,
        V6,
    }

    /// Deterministic payload bytes that do not repeat with any small period.
    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i.wrapping_mul(31) ^ (i >> 8).wrapping_mul(7)) as u8).collect()
    }

    fn ip(net: Net) -> IpHeaders {
        match net {
            Net::V4 => {
                let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, SRC4, DST4).unwrap();
                // Close to the top so the per-segment IDs wrap (RFC 791 IDs are modulo 2^16).
                h.identification = 0xfffe;
                h.dont_fragment = true;
                IpHeaders::Ipv4(h, Default::default())
            }
            Net::V6 => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: IpNumber::TCP,
                    hop_limit: 64,
                    source: SRC6,
                    destination: DST6,
                },
                Default::default(),
            ),
        }
    }

    fn tcp_hdr(flags: u8) -> TcpHeader {
        // Close to the top so the sequence numbers wrap (RFC 9293 §3.4).
        let mut t = TcpHeader::new(40000, 443, 0xffff_f000, 501);
        t.acknowledgment_number = 0x1234_5678;
        t.fin = flags & TCP_FIN != 0;
        t.psh = flags & TCP_PSH != 0;
        t.ack = flags & 0x10 != 0;
        t.urg = flags & 0x20 != 0;
        t.ece = flags & 0x40 != 0;
        t.cwr = flags & TCP_CWR != 0;
        t.urgent_pointer = if t.urg { 3 } else { 0 };
        // Timestamps, as Linux sends them: a 32-byte header.
        t.set_options(&[TcpOptionElement::Noop, TcpOptionElement::Noop, TcpOptionElement::Timestamp(7, 9)]).unwrap();
        t
    }

    enum Proto {
        Tcp(TcpHeader),
        Udp,
    }

    /// A frame with every checksum correct, built by etherparse.
    fn build(ip: IpHeaders, vlan: bool, proto: Proto, data: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let b = if vlan { b.single_vlan(VlanId::try_new(42).unwrap()).ip(ip) } else { b.ip(ip) };
        let mut v = Vec::new();
        match proto {
            Proto::Tcp(t) => b.tcp_header(t).write(&mut v, data).unwrap(),
            Proto::Udp => b.udp(5353, 4789).write(&mut v, data).unwrap(),
        }
        v
    }

    fn tcp_frame(net: Net, vlan: bool, flags: u8, data: &[u8]) -> Vec<u8> {
        build(ip(net), vlan, Proto::Tcp(tcp_hdr(flags)), data)
    }

    fn udp_frame(net: Net, vlan: bool, data: &[u8]) -> Vec<u8> {
        build(ip(net), vlan, Proto::Udp, data)
    }

    /// Sum of 16-bit words, one at a time: the plain reading of RFC 1071,
    /// to check the chunked sum against.
    fn naive_sum(parts: &[&[u8]]) -> u16 {
        let mut s: u64 = 0;
        for p in parts {
            for (i, b) in p.iter().enumerate() {
                s += if i % 2 == 0 { u64::from(*b) << 8 } else { u64::from(*b) };
            }
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    /// Offsets of the L4 header and the payload, and the pseudo-header, by etherparse.
    fn layout(frame: &[u8]) -> (usize, usize, Vec<u8>) {
        let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
        let payload = h.payload.slice().len();
        let l4 = frame.len() - payload - h.transport.as_ref().unwrap().header_len();
        let proto = match h.transport.as_ref().unwrap() {
            TransportHeader::Tcp(_) => 6u8,
            _ => 17,
        };
        let l4_len = frame.len() - l4;
        let pseudo = match h.net.as_ref().unwrap() {
            NetHeaders::Ipv4(ip, _) => {
                [&ip.source[..], &ip.destination, &[0, proto], &(l4_len as u16).to_be_bytes()].concat()
            }
            NetHeaders::Ipv6(ip, _) => {
                [&ip.source[..], &ip.destination, &(l4_len as u32).to_be_bytes(), &[0, 0, 0, proto]].concat()
            }
            _ => unreachable!(),
        };
        (l4, frame.len() - payload, pseudo)
    }

    /// Turns a fully checksummed frame into what Linux hands over for
    /// `CHECKSUM_PARTIAL`: the folded pseudo-header sum, not complemented, in
    /// the checksum field; returns the header that says so.
    fn partial(frame: &mut [u8], gso_type: u8, gso_size: u16) -> VnetHdr {
        let (l4, _, pseudo) = layout(frame);
        // Where the checksum sits in the TCP (RFC 9293 §3.1) and UDP (RFC 768) header.
        let off = if is_tcp(frame) { 16 } else { 6 };
        put16(frame, l4 + off, naive_sum(&[&pseudo]));
        VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type,
            // What Linux really puts there: the linear length, not the header length.
            hdr_len: frame.len().min(0xffff) as u16,
            gso_size,
            csum_start: l4 as u16,
            csum_offset: off as u16,
            num_buffers: 0,
        }
    }

    fn is_tcp(frame: &[u8]) -> bool {
        matches!(PacketHeaders::from_ethernet_slice(frame).unwrap().transport, Some(TransportHeader::Tcp(_)))
    }

    /// Runs `segment` with a scratch buffer of `scratch_len`, collecting the output.
    fn run(hdr: &VnetHdr, frame: &[u8], scratch_len: usize) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut scratch = vec![0xa5u8; scratch_len];
        let mut out = Vec::new();
        let n = segment(hdr, frame, &mut scratch, |s| out.push(s.to_vec()))?;
        assert_eq!(n, out.len(), "returns the number of segments it emitted");
        Ok(out)
    }

    fn segments(hdr: &VnetHdr, frame: &[u8]) -> Vec<Vec<u8>> {
        run(hdr, frame, 70_000).unwrap()
    }

    /// Checks `segs` against the super-frame `orig` (as etherparse built it,
    /// before `partial`) split at `mss`, field by field, with every checksum
    /// recomputed by etherparse.
    fn check(orig: &[u8], mss: usize, segs: &[Vec<u8>]) {
        let o = PacketHeaders::from_ethernet_slice(orig).unwrap();
        let data = o.payload.slice();
        assert_eq!(segs.len(), data.len().div_ceil(mss).max(1), "segment count");
        let mut joined = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            assert_eq!(seg[..VNET_HDR_LEN], VNET_ZERO, "segment {i}: zeroed vnet header");
            let s = PacketHeaders::from_ethernet_slice(&seg[VNET_HDR_LEN..]).unwrap();
            let pl = s.payload.slice();
            assert_eq!(pl.len(), if last { data.len() - i * mss } else { mss }, "segment {i} payload length");
            joined.extend_from_slice(pl);
            assert_eq!(s.link, o.link);
            assert_eq!(s.link_exts, o.link_exts, "VLAN tag kept");
            let ip_len = s.net.as_ref().unwrap().header_len();
            match (s.net.as_ref().unwrap(), o.net.as_ref().unwrap()) {
                (NetHeaders::Ipv4(ip, _), NetHeaders::Ipv4(oip, _)) => {
                    let l4 = s.transport.as_ref().unwrap().header_len();
                    assert_eq!(usize::from(ip.total_len), ip_len + l4 + pl.len(), "segment {i} total length");
                    assert_eq!(ip.identification, oip.identification.wrapping_add(i as u16), "segment {i} IP ID");
                    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "segment {i} IP checksum");
                    let same = Ipv4Header {
                        total_len: oip.total_len,
                        identification: oip.identification,
                        header_checksum: oip.header_checksum,
                        ..ip.clone()
                    };
                    assert_eq!(&same, oip, "segment {i}: other IPv4 fields kept");
                }
                (NetHeaders::Ipv6(ip, ext), NetHeaders::Ipv6(oip, oext)) => {
                    let l4 = s.transport.as_ref().unwrap().header_len();
                    assert_eq!(
                        usize::from(ip.payload_length),
                        ip_len - 40 + l4 + pl.len(),
                        "segment {i} payload length"
                    );
                    assert_eq!(Ipv6Header { payload_length: oip.payload_length, ..ip.clone() }, *oip);
                    assert_eq!(ext, oext, "extension headers kept");
                }
                _ => panic!("segment {i}: IP version changed"),
            }
            match (s.transport.as_ref().unwrap(), o.transport.as_ref().unwrap()) {
                (TransportHeader::Tcp(t), TransportHeader::Tcp(ot)) => {
                    let seq = ot.sequence_number.wrapping_add((i * mss) as u32);
                    assert_eq!(t.sequence_number, seq, "segment {i} sequence number");
                    assert_eq!(t.fin, ot.fin && last, "segment {i} FIN");
                    assert_eq!(t.psh, ot.psh && last, "segment {i} PSH");
                    assert_eq!(t.cwr, ot.cwr && i == 0, "segment {i} CWR");
                    let same = TcpHeader {
                        sequence_number: ot.sequence_number,
                        fin: ot.fin,
                        psh: ot.psh,
                        cwr: ot.cwr,
                        checksum: ot.checksum,
                        ..t.clone()
                    };
                    assert_eq!(&same, ot, "segment {i}: other TCP fields (ACK, ECE, URG, options) kept");
                    let want = match s.net.as_ref().unwrap() {
                        NetHeaders::Ipv4(ip, _) => t.calc_checksum_ipv4(ip, pl).unwrap(),
                        NetHeaders::Ipv6(ip, _) => t.calc_checksum_ipv6(ip, pl).unwrap(),
                        _ => unreachable!(),
                    };
                    assert_eq!(t.checksum, want, "segment {i} TCP checksum");
                }
                (TransportHeader::Udp(u), TransportHeader::Udp(ou)) => {
                    assert_eq!(usize::from(u.length), 8 + pl.len(), "segment {i} UDP length");
                    assert_eq!((u.source_port, u.destination_port), (ou.source_port, ou.destination_port));
                    let want = match s.net.as_ref().unwrap() {
                        NetHeaders::Ipv4(ip, _) => u.calc_checksum_ipv4(ip, pl).unwrap(),
                        NetHeaders::Ipv6(ip, _) => u.calc_checksum_ipv6(ip, pl).unwrap(),
                        _ => unreachable!(),
                    };
                    assert_eq!(u.checksum, want, "segment {i} UDP checksum");
                }
                _ => panic!("segment {i}: L4 protocol changed"),
            }
        }
        assert_eq!(joined, data, "the segments' payloads, joined, are the original payload");
    }

    const ALL_FLAGS: u8 = 0x10 | 0x20 | 0x40 | TCP_CWR | TCP_PSH | TCP_FIN;

    #[test]
    fn tcp_super_frames_segment_as_the_kernel_does() {
        for net in [Net::V4, Net::V6] {
            for vlan in [false, true] {
                let gso = if net == Net::V4 { VnetHdr::GSO_TCPV4 } else { VnetHdr::GSO_TCPV6 };
                for (len, mss) in [(10_000, 1448), (60_000, 1448), (2896, 1448), (100, 1448), (1449, 1448)] {
                    let orig = tcp_frame(net, vlan, ALL_FLAGS, &payload(len));
                    let mut f = orig.clone();
                    let h = partial(&mut f, gso | VnetHdr::GSO_ECN, mss);
                    let segs = segments(&h, &f);
                    check(&orig, usize::from(mss), &segs);
                    let hl = f.len() - len;
                    assert_eq!(segment_frame_len(&h, &f), Ok(hl + len.min(usize::from(mss))));
                    assert_eq!(segs.iter().map(|s| s.len() - VNET_HDR_LEN).max(), segment_frame_len(&h, &f).ok());
                }
                // Flags kept when only ACK is set; none added.
                let orig = tcp_frame(net, vlan, 0x10, &payload(5000));
                let mut f = orig.clone();
                let h = partial(&mut f, gso, 1000);
                check(&orig, 1000, &segments(&h, &f));
            }
        }
    }

    #[test]
    fn uso_super_frames_become_udp_datagrams() {
        for net in [Net::V4, Net::V6] {
            for vlan in [false, true] {
                for (len, mss) in [(8000, 1000), (8001, 1000), (1, 1000), (0, 1000), (63_000, 1472)] {
                    let orig = udp_frame(net, vlan, &payload(len));
                    let mut f = orig.clone();
                    let h = partial(&mut f, VnetHdr::GSO_UDP_L4, mss);
                    check(&orig, usize::from(mss), &segments(&h, &f));
                }
            }
        }
    }

    #[test]
    fn one_segment_when_the_payload_fits_is_the_original_frame() {
        // With nothing to split, the segment is byte for byte what etherparse
        // built with full checksums: the partial checksum is completed, every
        // other field is already right.
        for net in [Net::V4, Net::V6] {
            for orig in [tcp_frame(net, true, ALL_FLAGS, &payload(777)), udp_frame(net, false, &payload(777))] {
                let mut f = orig.clone();
                let gso = match (net, is_tcp(&orig)) {
                    (Net::V4, true) => VnetHdr::GSO_TCPV4,
                    (Net::V6, true) => VnetHdr::GSO_TCPV6,
                    _ => VnetHdr::GSO_UDP_L4,
                };
                for mss in [777, 1448, u16::MAX] {
                    let h = partial(&mut f, gso, mss);
                    let segs = segments(&h, &f);
                    assert_eq!(segs.len(), 1);
                    assert_eq!(segs[0][VNET_HDR_LEN..], orig[..]);
                }
            }
        }
    }

    #[test]
    fn exact_multiples_gso_size_one_and_empty_payloads() {
        let orig = tcp_frame(Net::V4, false, ALL_FLAGS, &payload(4 * 1000));
        let mut f = orig.clone();
        let h = partial(&mut f, VnetHdr::GSO_TCPV4, 1000);
        let segs = segments(&h, &f);
        assert_eq!(segs.len(), 4);
        check(&orig, 1000, &segs);

        for (net, gso) in [(Net::V4, VnetHdr::GSO_TCPV4), (Net::V6, VnetHdr::GSO_TCPV6)] {
            let orig = tcp_frame(net, true, ALL_FLAGS, &payload(37));
            let mut f = orig.clone();
            let h = partial(&mut f, gso, 1);
            let segs = segments(&h, &f);
            assert_eq!(segs.len(), 37);
            check(&orig, 1, &segs);
        }
        let orig = udp_frame(Net::V6, false, &payload(9));
        let mut f = orig.clone();
        let h = partial(&mut f, VnetHdr::GSO_UDP_L4, 1);
        check(&orig, 1, &segments(&h, &f));

        // No payload at all: one segment, the headers alone.
        let orig = tcp_frame(Net::V4, false, 0x10 | TCP_FIN, &[]);
        let mut f = orig.clone();
        let h = partial(&mut f, VnetHdr::GSO_TCPV4, 1448);
        let segs = segments(&h, &f);
        check(&orig, 1448, &segs);
        assert_eq!(segs[0][VNET_HDR_LEN..], orig[..]);
    }

    #[test]
    fn ipv4_options_and_ipv6_option_headers_are_walked() {
        let IpHeaders::Ipv4(mut v4, e) = ip(Net::V4) else { unreachable!() };
        // NOP, NOP, then a record-route option with room for two addresses (RFC 791).
        v4.options = [1, 1, 7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..].try_into().unwrap();
        let orig = build(IpHeaders::Ipv4(v4, e), true, Proto::Tcp(tcp_hdr(ALL_FLAGS)), &payload(5000));
        let mut f = orig.clone();
        let h = partial(&mut f, VnetHdr::GSO_TCPV4, 1448);
        check(&orig, 1448, &segments(&h, &f));

        let IpHeaders::Ipv6(v6, mut e) = ip(Net::V6) else { unreachable!() };
        e.hop_by_hop_options = Some(Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 4, 0, 0, 0, 0]).unwrap());
        e.destination_options =
            Some(Ipv6RawExtHeader::new_raw(IpNumber(0), &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap());
        for proto in [Proto::Tcp(tcp_hdr(ALL_FLAGS)), Proto::Udp] {
            let gso = if matches!(proto, Proto::Tcp(_)) { VnetHdr::GSO_TCPV6 } else { VnetHdr::GSO_UDP_L4 };
            let orig = build(IpHeaders::Ipv6(v6.clone(), e.clone()), false, proto, &payload(5000));
            let mut f = orig.clone();
            let h = partial(&mut f, gso, 1200);
            check(&orig, 1200, &segments(&h, &f));
        }
    }

    #[test]
    fn what_cannot_be_segmented_is_an_error_and_emits_nothing() {
        use OffloadError::{Malformed, Unsupported};
        let tcp4 = {
            let mut f = tcp_frame(Net::V4, false, ALL_FLAGS, &payload(3000));
            let h = partial(&mut f, VnetHdr::GSO_TCPV4, 1000);
            (h, f)
        };
        let udp6 = {
            let mut f = udp_frame(Net::V6, true, &payload(3000));
            let h = partial(&mut f, VnetHdr::GSO_UDP_L4, 1000);
            (h, f)
        };
        let expect = |h: &VnetHdr, f: &[u8], want: OffloadError| {
            let mut emitted = 0;
            let r = segment(h, f, &mut [0u8; 4096], |_| emitted += 1);
            assert_eq!(r, Err(want), "{h:?}");
            assert_eq!(emitted, 0);
            assert_eq!(segment_frame_len(h, f), Err(want));
        };
        let (h, f) = &tcp4;
        expect(&VnetHdr { gso_size: 0, ..*h }, f, Malformed);
        expect(&VnetHdr { gso_type: VnetHdr::GSO_UDP, ..*h }, f, Unsupported);
        expect(&VnetHdr { gso_type: 2, ..*h }, f, Unsupported);
        expect(&VnetHdr { gso_type: 0x7f, ..*h }, f, Unsupported);
        expect(&VnetHdr { gso_type: VnetHdr::GSO_TCPV6, ..*h }, f, Unsupported);
        expect(&VnetHdr { gso_type: VnetHdr::GSO_UDP_L4, ..*h }, f, Unsupported);
        let (h6, f6) = &udp6;
        expect(&VnetHdr { gso_type: VnetHdr::GSO_TCPV4, ..*h6 }, f6, Unsupported);
        expect(&VnetHdr { gso_type: VnetHdr::GSO_TCPV6, ..*h6 }, f6, Unsupported);

        // Every cut inside the headers.
        for (h, f) in [&tcp4, &udp6] {
            let (_, hl, _) = layout(f);
            for cut in 0..hl {
                expect(h, &f[..cut], Malformed);
            }
        }
        // Not IP: an ARP EtherType, or a second (QinQ) VLAN tag.
        let mut g = f.clone();
        g[12..14].copy_from_slice(&[0x08, 0x06]);
        expect(h, &g, Unsupported);
        let mut g = f6.clone();
        g[16..18].copy_from_slice(&[0x81, 0x00]);
        expect(h6, &g, Unsupported);
        // IPv4: wrong version, IHL below 5, IHL past the frame, a fragment.
        for (at, v) in [(14, 0x65), (14, 0x44), (20, 0x20), (21, 0x01)] {
            let mut g = f.clone();
            g[at] = v;
            expect(h, &g, Malformed);
        }
        let mut g = f[..14 + 60].to_vec();
        g[14] = 0x4f;
        expect(h, &g, Malformed);
        // TCP data offset below 5, or past the frame.
        for doff in [0x00, 0x40, 0xf0] {
            let mut g = f.clone();
            g[14 + 20 + 12] = doff;
            if doff == 0xf0 {
                g.truncate(14 + 20 + 59);
            }
            expect(h, &g, Malformed);
        }
        // IPv6: wrong version; a routing header (it would change the pseudo-header).
        let mut g = f6.clone();
        g[18] = 0x45;
        expect(h6, &g, Malformed);
        let mut g = f6.clone();
        g[18 + 6] = 43;
        expect(h6, &g, Unsupported);
        // A segment longer than 16-bit length fields allow.
        let big = {
            let mut g = f.clone();
            g.resize(14 + 20 + 32 + 70_000, 0);
            g
        };
        expect(&VnetHdr { gso_size: u16::MAX, ..*h }, &big, Malformed);
        assert_eq!(run(&VnetHdr { gso_size: 65_000, ..*h }, &big, 70_000).map(|s| s.len()), Ok(2));

        // Scratch one byte short of the largest segment; then just enough.
        let need = VNET_HDR_LEN + segment_frame_len(h, f).unwrap();
        assert_eq!(need, VNET_HDR_LEN + 14 + 20 + 32 + 1000);
        assert_eq!(run(h, f, need - 1), Err(Malformed));
        assert_eq!(run(h, f, need).map(|s| s.len()), Ok(3));
    }

    #[test]
    fn frames_without_gso_are_emitted_once() {
        let orig = udp_frame(Net::V4, false, &payload(333));
        // Plain: unchanged.
        let segs = run(&VnetHdr::NONE, &orig, 2048).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0][..VNET_HDR_LEN], VNET_ZERO);
        assert_eq!(segs[0][VNET_HDR_LEN..], orig[..]);
        // NEEDS_CSUM: completed.
        let mut f = orig.clone();
        let h = partial(&mut f, VnetHdr::GSO_NONE, 0);
        let segs = run(&h, &f, 2048).unwrap();
        assert_eq!(segs[0][VNET_HDR_LEN..], orig[..]);
        assert_eq!(segment_frame_len(&h, &f), Ok(f.len()));
        // Errors.
        assert_eq!(run(&h, &f, VNET_HDR_LEN + f.len() - 1), Err(OffloadError::Malformed));
        let bad = VnetHdr { csum_start: f.len() as u16, ..h };
        assert_eq!(run(&bad, &f, 2048), Err(OffloadError::Malformed));
    }

    #[test]
    fn checksums_of_frames_with_tcp_zero_and_udp_zero() {
        // Choose two payload bytes so the checksum comes out as 0: with the
        // word at 0 the checksum is c = ~S; putting c there makes the sum
        // S + ~S = 0xffff, whose complement is 0.
        for net in [Net::V4, Net::V6] {
            for udp in [false, true] {
                let mut data = payload(1001);
                data[0] = 0;
                data[1] = 0;
                let f0 = if udp { udp_frame(net, false, &data) } else { tcp_frame(net, false, 0x10, &data) };
                let (l4, hl, _) = layout(&f0);
                let csum = u16::from_be_bytes([f0[l4 + if udp { 6 } else { 16 }], f0[l4 + if udp { 7 } else { 17 }]]);
                let c = if udp && csum == 0xffff { 0 } else { csum };
                data[..2].copy_from_slice(&c.to_be_bytes());
                let orig = if udp { udp_frame(net, false, &data) } else { tcp_frame(net, false, 0x10, &data) };
                assert_eq!(orig[hl..hl + 2], c.to_be_bytes());
                let gso = match (net, udp) {
                    (_, true) => VnetHdr::GSO_UDP_L4,
                    (Net::V4, false) => VnetHdr::GSO_TCPV4,
                    (Net::V6, false) => VnetHdr::GSO_TCPV6,
                };
                let mut f = orig.clone();
                let h = partial(&mut f, gso, 1448);
                let seg = &segments(&h, &f)[0][VNET_HDR_LEN..];
                let off = l4 + if udp { 6 } else { 16 };
                // UDP: 0 is "no checksum" (RFC 768), so 0xffff; TCP keeps 0, as Linux does.
                assert_eq!(seg[off..off + 2], if udp { [0xff, 0xff] } else { [0, 0] }, "{net:?} udp={udp}");
                check(&orig, 1448, &[segments(&h, &f)[0].clone()]);

                // complete_csum does not know the protocol; like Linux's
                // skb_checksum_help it stores 0xffff, the same one's-complement zero.
                let mut g = f.clone();
                let mut hh = VnetHdr { gso_type: 0, ..h };
                complete_csum(&mut hh, &mut g).unwrap();
                assert_eq!(g[off..off + 2], [0xff, 0xff]);
                let (_, _, pseudo) = layout(&g);
                assert_eq!(naive_sum(&[&pseudo, &g[l4..]]), 0xffff, "the receiver's check passes");
            }
        }
    }

    #[test]
    fn complete_csum_matches_an_independent_checksum() {
        for net in [Net::V4, Net::V6] {
            for vlan in [false, true] {
                for len in (0..=9).chain([100, 1001, 1472, 9001]) {
                    for orig in [tcp_frame(net, vlan, 0x18, &payload(len)), udp_frame(net, vlan, &payload(len))] {
                        let mut f = orig.clone();
                        let mut h = partial(&mut f, VnetHdr::GSO_NONE, 0);
                        assert_ne!(f, orig, "the partial checksum differs from the full one");
                        complete_csum(&mut h, &mut f).unwrap();
                        assert!(!h.needs_csum());
                        assert_eq!(h.flags & VnetHdr::F_DATA_VALID, VnetHdr::F_DATA_VALID);
                        // `orig` has etherparse's checksums; the 0 ↔ 0xffff case is its own test.
                        assert_eq!(f, orig, "{net:?} vlan={vlan} len={len}");
                        // Already complete: nothing to do.
                        complete_csum(&mut h, &mut f).unwrap();
                        assert_eq!(f, orig);
                    }
                }
            }
        }
    }

    #[test]
    fn complete_csum_rejects_offsets_outside_the_frame() {
        let mut f = udp_frame(Net::V4, false, &payload(5));
        let keep = f.clone();
        let len = f.len() as u16;
        for (start, off) in [(len, 0), (len - 1, 0), (len - 2, 1), (34, len - 35), (u16::MAX, u16::MAX), (0, len - 1)] {
            let mut h = VnetHdr { flags: VnetHdr::F_NEEDS_CSUM, csum_start: start, csum_offset: off, ..VnetHdr::NONE };
            assert_eq!(complete_csum(&mut h, &mut f), Err(OffloadError::Malformed), "{start} {off}");
            assert!(h.needs_csum());
            assert_eq!(f, keep);
        }
        // The field may end exactly at the frame's end.
        let mut h = VnetHdr { flags: VnetHdr::F_NEEDS_CSUM, csum_start: len - 2, csum_offset: 0, ..VnetHdr::NONE };
        assert_eq!(complete_csum(&mut h, &mut f), Ok(()));
        assert_eq!(complete_csum(&mut { VnetHdr::NONE }, &mut []), Ok(()));
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64 (Marsaglia 2003).
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn the_chunked_sum_is_the_sum_of_16_bit_words() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for len in (0..70).chain([1000, 65_535, 65_536, 70_001]) {
            let mut v: Vec<u8> = (0..len).map(|_| r.next() as u8).collect();
            assert_eq!(fold(csum_add(0, &v)), naive_sum(&[&v]), "len {len}");
            // All ones is the worst case for carries.
            v.fill(0xff);
            assert_eq!(fold(csum_add(0, &v)), naive_sum(&[&v]), "len {len}, all ones");
        }
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0), 0);
        // RFC 1071 §3's example: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        assert_eq!(fold(csum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut r = Rng(0x2545_f491_4f6c_dd1d);
        let mut bases = Vec::new();
        for (net, gso) in [(Net::V4, VnetHdr::GSO_TCPV4), (Net::V6, VnetHdr::GSO_TCPV6)] {
            for vlan in [false, true] {
                bases.push((tcp_frame(net, vlan, ALL_FLAGS, &payload(3000)), gso));
                bases.push((udp_frame(net, vlan, &payload(2500)), VnetHdr::GSO_UDP_L4));
            }
        }
        let gso_types = [0, 1, 3, 4, 5, 0x81, 0x84, 0x85, 2, 0xff];
        let mut scratch = vec![0u8; 70_000];
        let (mut ok, mut errs) = (0, 0);
        for iter in 0..20_000 {
            let (mut f, mut gso_type) = if iter % 10 == 9 {
                ((0..r.below(200)).map(|_| r.next() as u8).collect(), 0)
            } else {
                bases[r.below(bases.len())].clone()
            };
            // Half the time the GSO type the frame was built for, else any.
            if r.below(2) == 0 {
                gso_type = gso_types[r.below(gso_types.len())];
            }
            // Mutate a few bytes, mostly in the headers.
            for _ in 0..r.below(4) {
                if !f.is_empty() {
                    let at = if r.below(4) > 0 { r.below(f.len().min(100)) } else { r.below(f.len()) };
                    f[at] = r.next() as u8;
                }
            }
            if r.below(3) == 0 {
                let n = r.below(f.len() + 1);
                f.truncate(n);
            }
            let hdr = VnetHdr {
                flags: r.next() as u8 & 3,
                gso_type,
                hdr_len: r.next() as u16,
                gso_size: match r.below(4) {
                    0 => 0,
                    1 => 1 + r.below(3) as u16,
                    2 => 1 + r.below(2000) as u16,
                    _ => r.next() as u16,
                },
                csum_start: if r.below(2) == 0 { r.below(80) as u16 } else { r.next() as u16 },
                csum_offset: if r.below(2) == 0 { r.below(20) as u16 } else { r.next() as u16 },
                num_buffers: 0,
            };
            let _ = complete_csum(&mut { hdr }, &mut f.clone());
            let max = segment_frame_len(&hdr, &f);
            let scratch_len = [0, 60, 1600, 70_000][r.below(4)];
            let mut n = 0;
            let res = segment(&hdr, &f, &mut scratch[..scratch_len], |s| {
                n += 1;
                assert!(s.len() <= scratch_len);
                assert!(s.len() - VNET_HDR_LEN <= *max.as_ref().unwrap());
                if hdr.is_gso() {
                    // Whatever went in, what comes out has valid checksums.
                    let seg = &s[VNET_HDR_LEN..];
                    let h = parse_headers(seg).unwrap();
                    let addrs = match h.ip {
                        Ip::V4 => &seg[h.l3_off + 12..h.l3_off + 20],
                        Ip::V6 => &seg[h.l3_off + 8..h.l3_off + 40],
                    };
                    let proto = if h.l4 == L4::Tcp { 6 } else { 17 };
                    let l4_len = ((seg.len() - h.l4_off) as u32).to_be_bytes();
                    assert_eq!(naive_sum(&[addrs, &[0, proto], &l4_len, &seg[h.l4_off..]]), 0xffff);
                    if h.ip == Ip::V4 {
                        assert_eq!(naive_sum(&[&seg[h.l3_off..h.l4_off]]), 0xffff);
                    }
                }
            });
            match res {
                Ok(count) => {
                    assert_eq!(count, n);
                    ok += 1;
                }
                Err(_) => {
                    assert_eq!(n, 0, "nothing emitted before an error");
                    errs += 1;
                }
            }
        }
        // The inputs reach both outcomes often enough to mean something.
        assert!(ok > 2000 && errs > 2000, "ok {ok} errors {errs}");
    }
}
