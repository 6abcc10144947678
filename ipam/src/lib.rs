//! tapyard address management: what addresses a network owns, which of them
//! a port may take, the leases handed out, and the DHCP server that hands
//! them out.
//!
//! Two halves:
//! - **Sans-I/O** (this file, [`pool`], [`lease`], [`dhcp`]): subnets,
//!   gateways, static assignments, pools, lease state and DHCP message
//!   handling as pure functions of their inputs. No sockets, threads, files or
//!   clock reads: the caller passes the time in, and sends the bytes out.
//! - **I/O** ([`journal`], [`store`]): the durable part. [`journal::Journal`]
//!   reads, appends, fsyncs and compacts files in the state directory;
//!   [`store::Store`] runs the sans-I/O servers of every network over one
//!   journal, so a reply leaves only after its lease is on disk. They touch
//!   files only, never sockets or the clock.
//!
//! The switch's control plane owns the sockets and the clock, and calls both.

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

/// A default address pool: networks created without `--subnet` take the
/// next free `/size` subnet of `base`, starting at `base`'s own address
/// (Docker's convention: 172.17.0.0/16 first, never 172.16.0.0/16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPool {
    pub base: Ipv4Net,
    pub size: u8,
}

impl std::str::FromStr for DefaultPool {
    type Err = String;

    /// `A.B.C.D/N/M`: subnets of prefix M out of A.B.C.D/N.
    fn from_str(s: &str) -> Result<DefaultPool, String> {
        let bad = || format!("invalid default pool {s:?}: expected CIDR/PREFIX, like 172.17.0.0/12/16");
        let (cidr, size) = s.rsplit_once('/').ok_or_else(bad)?;
        let base: Ipv4Net = cidr.parse().map_err(|_| bad())?;
        let size: u8 = size.parse().map_err(|_| bad())?;
        if size < base.prefix_len() || size > 30 {
            return Err(format!(
                "invalid default pool {s:?}: the subnet size /{size} must lie between /{} and /30",
                base.prefix_len()
            ));
        }
        Ok(DefaultPool { base, size })
    }
}

/// Docker's defaults: /16s out of 172.17.0.0/12, then /20s out of 192.168.0.0/16.
pub fn default_pools() -> Vec<DefaultPool> {
    vec![
        DefaultPool { base: "172.17.0.0/12".parse().expect("valid"), size: 16 },
        DefaultPool { base: "192.168.0.0/16".parse().expect("valid"), size: 20 },
    ]
}

/// The first subnet of the pools, in order, that overlaps none of `taken`.
pub fn next_subnet(pools: &[DefaultPool], taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    for p in pools {
        let step = 1u64 << (32 - p.size);
        let end = u64::from(u32::from(p.base.broadcast())) + 1;
        // Start at the base address itself, aligned down to the subnet size.
        let mut at = u64::from(u32::from(p.base.addr())) & !(step - 1);
        while at + step <= end {
            let net = Ipv4Net::new(Ipv4Addr::from(at as u32), p.size).expect("prefix <= 32");
            if !taken.iter().any(|t| t.contains(&net.network()) || net.contains(&t.network())) {
                return Some(net);
            }
            at += step;
        }
    }
    None
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
    fn default_pools_follow_dockers_order_and_skip_taken_subnets() {
        let pools = default_pools();
        assert_eq!(next_subnet(&pools, &[]), Some(net("172.17.0.0/16")));
        assert_eq!(next_subnet(&pools, &[net("172.17.0.0/16"), net("172.18.5.0/24")]), Some(net("172.19.0.0/16")));
        let all172: Vec<Ipv4Net> = (17..32).map(|i| net(&format!("172.{i}.0.0/16"))).collect();
        assert_eq!(next_subnet(&pools, &all172), Some(net("192.168.0.0/20")));
        let custom: DefaultPool = "10.100.0.0/16/24".parse().unwrap();
        assert_eq!(next_subnet(&[custom], &[net("10.100.0.0/24")]), Some(net("10.100.1.0/24")));
        assert!("10.0.0.0/16/8".parse::<DefaultPool>().is_err());
        assert!("10.0.0.0/16".parse::<DefaultPool>().is_err());
        assert_eq!(next_subnet(&[custom], &[net("10.0.0.0/8")]), None);
    }

    #[test]
    fn without_a_subnet_the_prefix_is_required() {
        assert_eq!(check_static(ip("10.1.0.2"), Some(24), None, []).unwrap(), net("10.1.0.2/24"));
        assert_eq!(check_static(ip("10.1.0.2"), None, None, []), Err(IpamError::PrefixNeeded(ip("10.1.0.2"))));
    }
}
