//! What a port may send: its port security (the one source MAC and the IPv4
//! addresses it owns) and its storm-control budget, as the control plane
//! sets them and the data path's guard stage (`datapath/guard.rs`) checks
//! them. Owns the settings and the one piece of state they share with the
//! workers, the per-port [`StormMeter`].
//!
//! Port security follows OpenStack's (Neutron's port security, on by
//! default for ports with an address): a port sends only from the MAC
//! tapyard gave it and, once it has an address (`--ip`, `--ip auto` or a
//! DHCP lease), only from that address; only the gateway answers DHCP; and
//! a DHCP client asks only for its own hardware address. `connect
//! --port-security off` lifts all of it, for labs whose nodes route,
//! bridge or spoof on purpose (docs/RELIABILITY.md).
//!
//! Storm control counts the frames a port floods (broadcast, multicast and
//! unknown unicast) in fixed one-second windows, as switches' storm control
//! does, and drops what exceeds the port's limit within a window.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::wire::MacAddr;

/// Flooded frames a port may send per second unless told otherwise
/// (`daemon --storm-limit`): far above what a station's ARP, neighbour
/// discovery and DHCP need, far below what would let one port keep the
/// workers busy copying its floods to every other port.
pub const DEFAULT_STORM_LIMIT: u32 = 2_000;

/// A port's port security: the addresses it may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// The only source MAC (Ethernet, ARP sender, DHCP client hardware address).
    pub mac: MacAddr,
    /// Its IPv4 addresses (static, `--ip auto`, DHCP leases); empty: none
    /// yet, so IPv4 and ARP sources are not checked until it has one.
    pub ips: Vec<Ipv4Addr>,
}

impl Security {
    /// Whether `ip` is one of the port's addresses, or the port has none yet.
    #[inline]
    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.ips.is_empty() || self.ips.contains(&ip)
    }
}

/// A port's storm-control limit and the meter its workers share.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Flooded frames allowed per one-second window.
    pub limit: u32,
    pub meter: std::sync::Arc<StormMeter>,
}

/// Flooded frames of one port in the current one-second window, shared by
/// the workers reading its queues (one atomic word: the window's second in
/// the high half, the frames counted in it in the low half). Kept across
/// snapshots with the port, so a republication does not refill it.
#[derive(Debug, Default)]
pub struct StormMeter {
    state: AtomicU64,
}

impl StormMeter {
    /// Counts one flooded frame at second `now`; whether it is within
    /// `limit` for that second. Two workers opening a new window at once
    /// may each count from zero: the limit is then exceeded by at most a
    /// frame per worker, never underrun.
    #[inline]
    pub fn admit(&self, now: u32, limit: u32) -> bool {
        let cur = self.state.load(Ordering::Relaxed);
        if (cur >> 32) as u32 != now {
            self.state.store((u64::from(now) << 32) | 1, Ordering::Relaxed);
            return limit > 0;
        }
        let before = self.state.fetch_add(1, Ordering::Relaxed) as u32;
        before < limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_admits_the_limit_per_second_then_refills() {
        let m = StormMeter::default();
        let admitted = (0..100).filter(|_| m.admit(7, 30)).count();
        assert_eq!(admitted, 30);
        // A new second opens a new window.
        assert_eq!((0..100).filter(|_| m.admit(8, 30)).count(), 30);
        // A limit of zero floods nothing.
        assert!(!StormMeter::default().admit(1, 0));
    }

    #[test]
    fn a_port_without_an_address_yet_owns_every_source() {
        let mut s = Security { mac: MacAddr([2, 0, 0, 0, 0, 1]), ips: vec![] };
        assert!(s.owns(Ipv4Addr::new(10, 0, 0, 9)));
        s.ips.push(Ipv4Addr::new(10, 0, 0, 2));
        assert!(s.owns(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(!s.owns(Ipv4Addr::new(10, 0, 0, 9)));
    }
}
