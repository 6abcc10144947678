//! tapyard address management: what addresses a network owns and which of
//! them a port may take. Sans-I/O: no sockets, threads, files or clock reads;
//! the switch's control plane calls it and persists the results.
//!
//! This crate starts small (subnets, gateways, static assignments); the IPAM
//! issue grows it into pools, leases and the DHCP server logic.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

pub mod dhcp;
pub mod journal;
pub mod lease;
pub mod pool;
pub mod store;

pub use ipnet::Ipv4Net;
pub use pool::Pool;
use serde::{Deserialize, Serialize};

/// Why an addressing request is refused. Messages say what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {0} is too small: use a prefix of /30 or shorter, so it has room for a gateway and a host")]
    SubnetTooSmall(Ipv4Net),
    #[error("subnet {given} has host bits set: did you mean {canonical}?")]
    HostBitsSet { given: Ipv4Net, canonical: Ipv4Net },
    #[error("gateway {gateway} is not a usable host address of subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: Ipv4Net },
    #[error("subnet {subnet} overlaps subnet {other} of network {network:?}: choose a subnet that does not overlap")]
    Overlap { subnet: Ipv4Net, other: Ipv4Net, network: String },
    #[error("address {addr} is not in subnet {subnet} of this network")]
    AddressOutsideSubnet { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("address {addr} is the {what} address of subnet {subnet}, which no port may take")]
    AddressReserved { addr: Ipv4Addr, subnet: Ipv4Net, what: &'static str },
    #[error("address {0} is already assigned to another port on this network")]
    AddressInUse(Ipv4Addr),
    #[error("address {0} needs a prefix length (like {0}/24) because the network has no subnet")]
    PrefixNeeded(Ipv4Addr),
    #[error("address {addr}/{given} does not match the network's subnet {subnet}: use {addr}/{want} or leave the prefix out")]
    PrefixMismatch { addr: Ipv4Addr, given: u8, want: u8, subnet: Ipv4Net },
}

/// A network's subnet and gateway, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addressing {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

impl Addressing {
    /// Validates `subnet` and `gateway` (default: the first host address, as Docker does).
    pub fn new(subnet: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<Addressing, IpamError> {
        if subnet.trunc() != subnet {
            return Err(IpamError::HostBitsSet { given: subnet, canonical: subnet.trunc() });
        }
        if subnet.prefix_len() > 30 {
            return Err(IpamError::SubnetTooSmall(subnet));
        }
        let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = gateway.unwrap_or(first);
        if !is_host(subnet, gateway) {
            return Err(IpamError::GatewayOutsideSubnet { gateway, subnet });
        }
        Ok(Addressing { subnet, gateway })
    }

    /// Refuses a subnet that overlaps one of `others` (name, subnet).
    pub fn check_overlap<'a>(&self, others: impl IntoIterator<Item = (&'a str, Ipv4Net)>) -> Result<(), IpamError> {
        for (name, other) in others {
            if other.contains(&self.subnet.network()) || self.subnet.contains(&other.network()) {
                return Err(IpamError::Overlap { subnet: self.subnet, other, network: name.to_string() });
            }
        }
        Ok(())
    }
}

fn is_host(subnet: Ipv4Net, addr: Ipv4Addr) -> bool {
    subnet.contains(&addr) && addr != subnet.network() && addr != subnet.broadcast()
}

/// Checks a static address for a port (`connect --ip`), given the network's
/// addressing (if any) and the addresses other ports of the network hold.
///
/// `requested` is the address with the prefix the user typed, if any. The
/// result carries the prefix the interface gets: the subnet's, when the
/// network has one.
pub fn check_static(
    requested: Ipv4Addr,
    prefix: Option<u8>,
    addressing: Option<&Addressing>,
    in_use: impl IntoIterator<Item = Ipv4Addr>,
) -> Result<Ipv4Net, IpamError> {
    let net = match addressing {
        Some(a) => {
            let want = a.subnet.prefix_len();
            if let Some(given) = prefix.filter(|&p| p != want) {
                return Err(IpamError::PrefixMismatch { addr: requested, given, want, subnet: a.subnet });
            }
            if !a.subnet.contains(&requested) {
                return Err(IpamError::AddressOutsideSubnet { addr: requested, subnet: a.subnet });
            }
            let reserved = if requested == a.subnet.network() {
                Some("network")
            } else if requested == a.subnet.broadcast() {
                Some("broadcast")
            } else if requested == a.gateway {
                Some("gateway")
            } else {
                None
            };
            if let Some(what) = reserved {
                return Err(IpamError::AddressReserved { addr: requested, subnet: a.subnet, what });
            }
            Ipv4Net::new(requested, want).expect("prefix of a valid subnet")
        }
        None => {
            let p = prefix.ok_or(IpamError::PrefixNeeded(requested))?;
            Ipv4Net::new(requested, p).map_err(|_| IpamError::PrefixNeeded(requested))?
        }
    };
    if in_use.into_iter().any(|a| a == requested) {
        return Err(IpamError::AddressInUse(requested));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_defaults_to_first_host() {
        let a = Addressing::new(net("10.1.0.0/24"), None).unwrap();
        assert_eq!(a.gateway, ip("10.1.0.1"));
    }

    #[test]
    fn bad_subnets_and_gateways_are_refused() {
        assert!(matches!(Addressing::new(net("10.1.0.5/24"), None), Err(IpamError::HostBitsSet { .. })));
        assert!(matches!(Addressing::new(net("10.1.0.0/31"), None), Err(IpamError::SubnetTooSmall(_))));
        for gw in ["10.2.0.1", "10.1.0.0", "10.1.0.255"] {
            assert!(matches!(
                Addressing::new(net("10.1.0.0/24"), Some(ip(gw))),
                Err(IpamError::GatewayOutsideSubnet { .. })
            ));
        }
    }

    #[test]
    fn overlap_is_refused_both_ways() {
        let a = Addressing::new(net("10.1.0.0/24"), None).unwrap();
        assert!(a.check_overlap([("x", net("10.0.0.0/8"))]).is_err());
        assert!(a.check_overlap([("x", net("10.1.0.128/25"))]).is_err());
        assert!(a.check_overlap([("x", net("10.1.1.0/24"))]).is_ok());
    }

    #[test]
    fn static_addresses_are_checked() {
        let a = Addressing::new(net("10.1.0.0/24"), None).unwrap();
        let used = [ip("10.1.0.7")];
        assert_eq!(check_static(ip("10.1.0.2"), None, Some(&a), used).unwrap(), net("10.1.0.2/24"));
        assert_eq!(check_static(ip("10.1.0.2"), Some(24), Some(&a), used).unwrap(), net("10.1.0.2/24"));
        assert!(matches!(
            check_static(ip("10.1.0.2"), Some(16), Some(&a), used),
            Err(IpamError::PrefixMismatch { .. })
        ));
        assert!(matches!(
            check_static(ip("10.9.0.2"), None, Some(&a), used),
            Err(IpamError::AddressOutsideSubnet { .. })
        ));
        assert!(matches!(
            check_static(ip("10.1.0.1"), None, Some(&a), used),
            Err(IpamError::AddressReserved { what: "gateway", .. })
        ));
        assert!(matches!(
            check_static(ip("10.1.0.255"), None, Some(&a), used),
            Err(IpamError::AddressReserved { what: "broadcast", .. })
        ));
        assert_eq!(check_static(ip("10.1.0.7"), None, Some(&a), used), Err(IpamError::AddressInUse(ip("10.1.0.7"))));
    }

    #[test]
    fn without_a_subnet_the_prefix_is_required() {
        assert_eq!(check_static(ip("10.1.0.2"), Some(24), None, []).unwrap(), net("10.1.0.2/24"));
        assert_eq!(check_static(ip("10.1.0.2"), None, None, []), Err(IpamError::PrefixNeeded(ip("10.1.0.2"))));
    }
}
