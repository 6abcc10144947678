//! A router's route table: longest-prefix match over connected networks and
//! static routes (RFC 1812 §5.2.4.3). Built by the control plane and swapped
//! in whole; the per-frame lookup is a scan (router tables here hold a
//! handful of connected networks and static routes) and allocates nothing.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use crate::packet::NetId;

/// One route: a prefix and the network it leads to, with an optional next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: u32,
    pub len: u8,
    pub target: NetId,
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

    pub fn new(prefix: Ipv4Addr, len: u8, target: NetId, via: Option<Ipv4Addr>) -> Route {
        let len = len.min(32);
        Route { prefix: u32::from(prefix) & Self::mask(len), len, target, via }
    }

    #[inline]
    fn matches(&self, addr: u32) -> bool {
        addr & Self::mask(self.len) == self.prefix
    }

    /// The next hop for `dst`: the route's gateway, or `dst` itself on a connected network.
    #[inline]
    pub fn hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        self.via.unwrap_or(dst)
    }
}

/// A route table kept sorted longest prefix first, so the first match is the longest.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::new(vec![
            Route::new(ip("0.0.0.0"), 0, NetId(9), Some(ip("10.0.0.254"))),
            Route::new(ip("10.0.0.0"), 8, NetId(1), None),
            Route::new(ip("10.1.0.0"), 16, NetId(2), None),
            Route::new(ip("10.1.2.0"), 24, NetId(3), None),
            Route::new(ip("10.1.2.128"), 25, NetId(4), Some(ip("10.1.2.1"))),
        ]);
        assert_eq!(t.lookup(ip("10.1.2.200")).unwrap().target, NetId(4));
        assert_eq!(t.lookup(ip("10.1.2.200")).unwrap().hop(ip("10.1.2.200")), ip("10.1.2.1"));
        assert_eq!(t.lookup(ip("10.1.2.5")).unwrap().target, NetId(3));
        assert_eq!(t.lookup(ip("10.1.2.5")).unwrap().hop(ip("10.1.2.5")), ip("10.1.2.5"));
        assert_eq!(t.lookup(ip("10.1.9.9")).unwrap().target, NetId(2));
        assert_eq!(t.lookup(ip("10.200.0.1")).unwrap().target, NetId(1));
        assert_eq!(t.lookup(ip("192.0.2.1")).unwrap().target, NetId(9));
        let one = RouteTable::new(vec![Route::new(ip("10.0.0.0"), 8, NetId(1), None)]);
        assert!(one.lookup(ip("11.0.0.1")).is_none());
        // A /32 and host bits in the given prefix.
        let t = RouteTable::new(vec![
            Route::new(ip("10.0.0.7"), 32, NetId(5), None),
            Route::new(ip("10.0.0.99"), 24, NetId(6), None),
        ]);
        assert_eq!(t.lookup(ip("10.0.0.7")).unwrap().target, NetId(5));
        assert_eq!(t.lookup(ip("10.0.0.8")).unwrap().target, NetId(6));
    }
}
