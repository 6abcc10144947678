//! ARP over Ethernet for IPv4 (RFC 826), through smoltcp's `ArpPacket` and
//! `ArpRepr`: the one field the data path reads (the target protocol
//! address, to recognise requests for a gateway) and the request the
//! gateway sends to resolve a next hop.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr};

use super::{ethertype, l3_payload, MacAddr, ETH_HEADER_LEN};

/// An Ethernet frame's minimum length without FCS; short frames are padded to it.
const MIN_FRAME: usize = 60;

/// The sender and target of an Ethernet/IPv4 ARP packet carried by `frame`
/// (untagged), if it is one: hardware type Ethernet, lengths 6 and 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op_request: bool,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    #[inline]
    pub fn parse(frame: &[u8]) -> Option<Arp> {
        let p = ArpPacket::new_checked(l3_payload(frame, ethertype::ARP)?).ok()?;
        match ArpRepr::parse(&p).ok()? {
            ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                target_protocol_addr,
                ..
            } => Some(Arp {
                op_request: operation == ArpOperation::Request,
                sender_mac: MacAddr(source_hardware_addr.0),
                sender_ip: source_protocol_addr,
                target_ip: target_protocol_addr,
            }),
            _ => None,
        }
    }
}

/// Where an Ethernet/IPv4 ARP packet (RFC 826, hardware length 6,
/// protocol length 4) carries its target protocol address, from the start
/// of the ARP payload.
const TARGET_IP: std::ops::Range<usize> = 24..28;

/// The target protocol address at the place an Ethernet/IPv4 ARP packet has
/// it, read without checking the rest: the data path sends every ARP frame
/// naming a gateway there to the gateway, which checks it (and counts a
/// malformed one) through [`Arp::parse`].
#[inline]
pub fn target_ip_field(frame: &[u8]) -> Option<Ipv4Addr> {
    let b = l3_payload(frame, ethertype::ARP)?.get(TARGET_IP)?;
    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// A broadcast ARP request from `mac`/`ip` for `target`, padded to 60 bytes.
pub fn request(mac: MacAddr, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac.0),
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(mac.0),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut f = vec![0u8; MIN_FRAME.max(ETH_HEADER_LEN + arp.buffer_len())];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut f[..]));
    arp.emit(&mut ArpPacket::new_unchecked(&mut f[ETH_HEADER_LEN..]));
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_parses_back() {
        let me = MacAddr([2, 0, 0, 0, 0, 1]);
        let f = request(me, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &[0xff; 6]);
        let a = Arp::parse(&f).unwrap();
        assert!(a.op_request);
        assert_eq!(target_ip_field(&f), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(
            (a.sender_mac, a.sender_ip, a.target_ip),
            (me, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9))
        );
        // Truncated, tagged or not ARP at all: nothing.
        assert!(Arp::parse(&f[..30]).is_none());
        let mut tagged = f.clone();
        tagged[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert!(Arp::parse(&tagged).is_none());
    }
}
