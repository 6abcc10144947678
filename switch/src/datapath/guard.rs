//! The guard stage: port security on a received frame, before it teaches
//! the forwarding table anything (a spoofed source must not move another
//! station's MAC), and storm control on the frames it would flood. Reads
//! the frame, never writes it; no allocation, no syscall (module doc of
//! `crate::security` for the policy).
//!
//! What a port with port security may send ([`admit`]):
//! - Ethernet source: its own MAC. Group and all-zero sources are left to
//!   the L2 step, which drops them as `bad_src_mac`.
//! - VLAN-tagged frames: none (`vlan_tagged`): the addresses inside a tag
//!   cannot be checked without reading it, and bridged tags are for labs.
//! - ARP (RFC 826): sender hardware address its MAC, sender protocol
//!   address one of its addresses or 0.0.0.0 (an RFC 5227 §2.1.1 probe).
//! - IPv4: source one of its addresses, or 0.0.0.0 to UDP port 67 (a DHCP
//!   client before it has an address, RFC 2131 §4.1); never from UDP port
//!   67 or to port 68 (a DHCP server or relay: only the gateway answers DHCP,
//!   RFC 2131 §4.1), and a DHCP client message's `chaddr` is its own MAC
//!   (RFC 2131 §2: a client cycling hardware addresses would drain the pool).
//! - Anything else (IPv6, LLDP, ...): its own source MAC is the whole check.

#![forbid(unsafe_code)]

use crate::security::Security;
use crate::stats::DropReason;
use crate::wire::arp::Arp;
use crate::wire::ipv4::udp::{self, DHCP_CLIENT_PORT, DHCP_SERVER_PORT};
use crate::wire::ipv4::{self, Ipv4};
use crate::wire::{ethertype, is_tagged, outer_ethertype, EthAddrs, ETH_HEADER_LEN};

/// Where a BOOTP/DHCP message carries the client hardware address (RFC 2131 §2, `chaddr`).
const CHADDR: std::ops::Range<usize> = 28..34;

/// Whether port security lets a port with `sec` send `frame`; the drop reason if not.
#[inline]
pub fn admit(frame: &[u8], sec: &Security) -> Result<(), DropReason> {
    let Ok(eth) = EthAddrs::parse(frame) else { return Ok(()) }; // a runt: the L2 step counts it
    if eth.src.is_multicast() || eth.src.is_zero() {
        return Ok(()); // the L2 step drops it as bad_src_mac
    }
    if eth.src != sec.mac {
        return Err(DropReason::SpoofedMac);
    }
    if is_tagged(frame) {
        return Err(DropReason::VlanTagged);
    }
    match outer_ethertype(frame) {
        Some(ethertype::ARP) => arp(frame, sec),
        Some(ethertype::IPV4) => ipv4(&frame[ETH_HEADER_LEN..], sec),
        _ => Ok(()),
    }
}

fn arp(frame: &[u8], sec: &Security) -> Result<(), DropReason> {
    // An ARP packet that is not Ethernet/IPv4 cannot be checked, and no
    // station on an Ethernet IPv4 network needs to send one.
    let a = Arp::parse(frame).ok_or(DropReason::SpoofedArp)?;
    if a.sender_mac != sec.mac || !(a.sender_ip.is_unspecified() || sec.owns(a.sender_ip)) {
        return Err(DropReason::SpoofedArp);
    }
    Ok(())
}

fn ipv4(packet: &[u8], sec: &Security) -> Result<(), DropReason> {
    let ip = Ipv4::new_checked(packet).map_err(|_| DropReason::SpoofedIp)?;
    // Only a first fragment (or a whole datagram) carries the UDP ports.
    let datagram = (ip.protocol() == ipv4::protocol::UDP && ip.frag_offset() == 0).then(|| ip.payload());
    let ports = datagram.and_then(udp::ports);
    if let Some((src, dst)) = ports {
        if src == DHCP_SERVER_PORT || dst == DHCP_CLIENT_PORT {
            return Err(DropReason::RogueDhcp);
        }
        if dst == DHCP_SERVER_PORT {
            let chaddr = datagram.and_then(|u| u.get(udp::HEADER_LEN..)?.get(CHADDR));
            if chaddr.is_some_and(|c| c != sec.mac.0) {
                return Err(DropReason::SpoofedMac);
            }
            if ip.src().is_unspecified() {
                return Ok(());
            }
        }
    }
    if sec.owns(ip.src()) {
        Ok(())
    } else {
        Err(DropReason::SpoofedIp)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::wire::MacAddr;

    const MINE: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const OTHER: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    fn sec(ips: &[Ipv4Addr]) -> Security {
        Security { mac: MINE, ips: ips.to_vec() }
    }

    fn eth(src: MacAddr, ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ty.to_be_bytes());
        f.extend_from_slice(payload);
        f.resize(f.len().max(60), 0);
        f
    }

    fn udp(src: Ipv4Addr, sport: u16, dport: u16, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&[255; 4]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(body);
        p
    }

    fn dhcp_body(chaddr: MacAddr) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1; // BOOTREQUEST
        b[CHADDR].copy_from_slice(&chaddr.0);
        b
    }

    fn arp_frame(sender_mac: MacAddr, sender_ip: Ipv4Addr) -> Vec<u8> {
        let mut f = crate::wire::arp::request(sender_mac, sender_ip, Ipv4Addr::new(10, 0, 0, 1));
        f[6..12].copy_from_slice(&MINE.0);
        f
    }

    #[test]
    fn a_port_sends_from_its_own_addresses_only() {
        let s = sec(&[IP]);
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &udp(IP, 5000, 53, &[])), &s), Ok(()));
        assert_eq!(admit(&eth(OTHER, ethertype::IPV4, &udp(IP, 5000, 53, &[])), &s), Err(DropReason::SpoofedMac));
        let spoofed = udp(Ipv4Addr::new(10, 0, 0, 3), 5000, 53, &[]);
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &spoofed), &s), Err(DropReason::SpoofedIp));
        // Before it has an address, any IPv4 source passes (the MAC is still checked).
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &spoofed), &sec(&[])), Ok(()));
        // Other EtherTypes: the MAC is the whole check.
        assert_eq!(admit(&eth(MINE, ethertype::IPV6, &[0x60; 40]), &s), Ok(()));
        assert_eq!(admit(&eth(OTHER, ethertype::IPV6, &[0x60; 40]), &s), Err(DropReason::SpoofedMac));
    }

    #[test]
    fn forged_arp_is_dropped() {
        let s = sec(&[IP]);
        assert_eq!(admit(&arp_frame(MINE, IP), &s), Ok(()));
        assert_eq!(admit(&arp_frame(MINE, Ipv4Addr::UNSPECIFIED), &s), Ok(()), "an RFC 5227 probe");
        assert_eq!(admit(&arp_frame(OTHER, IP), &s), Err(DropReason::SpoofedArp));
        assert_eq!(admit(&arp_frame(MINE, Ipv4Addr::new(10, 0, 0, 1)), &s), Err(DropReason::SpoofedArp));
        assert_eq!(admit(&eth(MINE, ethertype::ARP, &[0; 10]), &s), Err(DropReason::SpoofedArp));
    }

    #[test]
    fn dhcp_clients_pass_and_servers_do_not() {
        let s = sec(&[]);
        let discover = udp(Ipv4Addr::UNSPECIFIED, 68, 67, &dhcp_body(MINE));
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &discover), &s), Ok(()));
        // Still allowed once the port has an address (INIT-REBOOT asks from 0.0.0.0).
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &discover), &sec(&[IP])), Ok(()));
        let stolen = udp(Ipv4Addr::UNSPECIFIED, 68, 67, &dhcp_body(OTHER));
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &stolen), &s), Err(DropReason::SpoofedMac));
        let offer = udp(IP, 67, 68, &dhcp_body(OTHER));
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &offer), &sec(&[IP])), Err(DropReason::RogueDhcp));
        let to_client = udp(IP, 5000, 68, &[]);
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &to_client), &sec(&[IP])), Err(DropReason::RogueDhcp));
    }

    #[test]
    fn tagged_and_malformed_frames_are_dropped_runts_left_to_the_l2_step() {
        let s = sec(&[IP]);
        assert_eq!(admit(&eth(MINE, ethertype::VLAN, &[0, 1, 8, 0]), &s), Err(DropReason::VlanTagged));
        assert_eq!(admit(&eth(MINE, ethertype::IPV4, &[0x46, 0]), &s), Err(DropReason::SpoofedIp));
        assert_eq!(admit(&[0; 10], &s), Ok(()));
        assert_eq!(admit(&eth(MacAddr::BROADCAST, ethertype::IPV4, &[]), &s), Ok(()), "left to bad_src_mac");
    }

    #[test]
    fn garbage_never_panics() {
        let s = sec(&[IP]);
        let mut x: u64 = 0x9e37_79b9;
        for len in 0..300 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = admit(&f, &s);
            if f.len() > 14 {
                f[6..12].copy_from_slice(&MINE.0);
                f[12..14].copy_from_slice(&[8, 0]);
                if f.len() > 14 {
                    f[14] = 0x45;
                }
                let _ = admit(&f, &s);
            }
        }
    }
}
