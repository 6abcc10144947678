//! Leases of one network: who holds which address until when, and the rules
//! for handing addresses out (RFC 2131 §4.3). Sans-I/O: time is a parameter
//! (seconds since the Unix epoch), and every change that must survive a crash
//! is returned as a [`Record`] for the caller to make durable *before* it
//! answers the client (an ACK only after its lease is on disk).
//!
//! Address states, all tracked in one [`Pool`] bitmap of the dynamic range:
//! free; held by a lease (offered, bound, or remembered after release or
//! expiry); quarantined after a DECLINE; reserved (gateway, aux addresses,
//! static reservations). A remembered address stays with its client, so an
//! expired or released lease's address is offered again to the same client
//! first (§4.3.1); it goes to someone else only when nothing free is left,
//! oldest first.

#![forbid(unsafe_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::pool::Pool;

/// What identifies a client: its DHCP client identifier (option 61, raw
/// bytes, any type, RFC 4361 IAID+DUID included), else its hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClientKey {
    Id(Vec<u8>),
    Mac([u8; 6]),
}

impl ClientKey {
    pub fn new(client_id: Option<&[u8]>, mac: [u8; 6]) -> ClientKey {
        match client_id {
            Some(id) if !id.is_empty() => ClientKey::Id(id.to_vec()),
            _ => ClientKey::Mac(mac),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Offered, not yet requested; not durable (an offer is no commitment).
    Offered,
    Bound,
    /// Released by the client; the address is remembered for it.
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub key: ClientKey,
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
    pub hostname: Option<String>,
    /// Seconds since the Unix epoch.
    pub expires: u64,
    pub state: LeaseState,
}

/// Lease lifetime of a port's own address (`connect --ip`, `--ip auto`):
/// it belongs to the port until the port lets it go ([`Leases::forget`]).
pub const PORT_LEASE_SECS: u64 = 100 * 365 * 24 * 3600;

impl Lease {
    /// Bound and not expired at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.state == LeaseState::Bound && self.expires > now
    }

    /// A port's own address (bound for [`PORT_LEASE_SECS`]): a DHCP client
    /// on the port neither shortens it (a renewal keeps the later expiry)
    /// nor ends it (RELEASE and DECLINE leave it alone); else the address
    /// would go back to the pool while the port's interface still has it.
    pub fn is_port_address(&self) -> bool {
        self.state == LeaseState::Bound && self.expires > PORT_LEASE_SECS
    }
}

/// A change to make durable: replaying every record in order rebuilds the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The lease as it now stands (insert or replace).
    Lease(Lease),
    /// The client's lease is gone (declined, or reclaimed for another client).
    Forget(ClientKey),
    /// The address was declined: nobody gets it before `until`.
    Quarantine { addr: Ipv4Addr, until: u64 },
}

/// Why no address was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("no free address left in the pool")]
    Exhausted,
    /// The requested address is not this client's to have (answer NAK).
    #[error("address {0} is not available to this client")]
    NotYours(Ipv4Addr),
}

/// How long an offered address is held for the client that was offered it.
pub const OFFER_HOLD_SECS: u64 = 60;

/// The leases of one network.
#[derive(Debug, Clone)]
pub struct Leases {
    subnet: Ipv4Net,
    pool: Pool,
    /// Addresses no lease may take: gateway, aux addresses, static reservations.
    reserved: BTreeSet<Ipv4Addr>,
    statics: HashMap<[u8; 6], Ipv4Addr>,
    leases: HashMap<ClientKey, Lease>,
    by_addr: HashMap<Ipv4Addr, ClientKey>,
    /// The clients (keys) with a lease per hardware address: what one port
    /// holds, for the per-port cap (`DhcpConfig::per_mac_cap`).
    by_mac: HashMap<[u8; 6], Vec<ClientKey>>,
    quarantine: HashMap<Ipv4Addr, u64>,
    /// Time-ordered indexes, so that expiry and reclaiming are O(log n):
    /// offers by hold expiry, bound/released leases by expiry, quarantines by end.
    offers_q: BTreeSet<(u64, Ipv4Addr)>,
    held_q: BTreeSet<(u64, Ipv4Addr)>,
    quarantine_q: BTreeSet<(u64, Ipv4Addr)>,
}

impl Leases {
    /// Leases over `subnet`, dynamic addresses from `range` (inside `subnet`),
    /// never handing out the `reserved` addresses.
    pub fn new(subnet: Ipv4Net, range: Ipv4Net, reserved: impl IntoIterator<Item = Ipv4Addr>) -> Leases {
        let mut l = Leases {
            subnet,
            pool: Pool::for_range(range, subnet),
            reserved: BTreeSet::new(),
            statics: HashMap::new(),
            leases: HashMap::new(),
            by_addr: HashMap::new(),
            by_mac: HashMap::new(),
            quarantine: HashMap::new(),
            offers_q: BTreeSet::new(),
            held_q: BTreeSet::new(),
            quarantine_q: BTreeSet::new(),
        };
        for a in reserved {
            l.reserve(a);
        }
        l
    }

    fn reserve(&mut self, addr: Ipv4Addr) {
        self.reserved.insert(addr);
        self.pool.take(addr);
    }

    /// A static reservation: `mac` always gets `addr`, and nobody else does.
    pub fn add_static(&mut self, mac: [u8; 6], addr: Ipv4Addr) -> Result<(), LeaseError> {
        if !self.subnet.contains(&addr) || self.reserved.contains(&addr) || self.by_addr.contains_key(&addr) {
            return Err(LeaseError::NotYours(addr));
        }
        self.statics.insert(mac, addr);
        self.reserve(addr);
        Ok(())
    }

    pub fn get(&self, key: &ClientKey) -> Option<&Lease> {
        self.leases.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// (used, size) of the dynamic range.
    pub fn usage(&self) -> (u32, u32) {
        (self.pool.used(), self.pool.size())
    }

    /// Whether `addr` may be handed to `key` (its own lease, its static
    /// reservation, or a free address of the dynamic range).
    fn available_to(&self, addr: Ipv4Addr, key: &ClientKey, mac: [u8; 6], now: u64) -> bool {
        if self.statics.get(&mac) == Some(&addr) {
            return true;
        }
        if self.reserved.contains(&addr) || self.quarantine.get(&addr).is_some_and(|&t| t > now) {
            return false;
        }
        match self.by_addr.get(&addr) {
            Some(owner) => owner == key,
            None => self.pool.contains(addr) && !self.pool.is_used(addr),
        }
    }

    /// Picks an address for `key` (DHCPDISCOVER, RFC 2131 §4.3.1): its static
    /// reservation; else its current or remembered address; else the address
    /// it asks for, if free; else the next free one; else the oldest
    /// remembered address of another client. Holds it for [`OFFER_HOLD_SECS`].
    pub fn offer(
        &mut self,
        key: &ClientKey,
        mac: [u8; 6],
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<Ipv4Addr, LeaseError> {
        self.expire(now);
        if let Some(&addr) = self.statics.get(&mac) {
            return Ok(addr);
        }
        if let Some(l) = self.leases.get(key) {
            if self.available_to(l.addr, key, mac, now) {
                let addr = l.addr;
                if l.state != LeaseState::Bound {
                    self.hold(key, mac, addr, now);
                }
                return Ok(addr);
            }
        }
        let addr = match requested.filter(|&a| self.available_to(a, key, mac, now)) {
            Some(a) => a,
            None => match self.pool.allocate() {
                Some(a) => {
                    self.pool.release(a); // taken again by hold() below
                    a
                }
                None => self.reclaim(now).ok_or(LeaseError::Exhausted)?,
            },
        };
        self.hold(key, mac, addr, now);
        Ok(addr)
    }

    /// Records an offer of `addr` to `key`.
    fn hold(&mut self, key: &ClientKey, mac: [u8; 6], addr: Ipv4Addr, now: u64) {
        self.set(Lease {
            key: key.clone(),
            mac,
            addr,
            hostname: self.leases.get(key).and_then(|l| l.hostname.clone()),
            expires: now + OFFER_HOLD_SECS,
            state: LeaseState::Offered,
        });
    }

    /// Frees the remembered (released or expired) address whose lease ended
    /// longest ago, for another client. The caller journals nothing: a
    /// reclaimed lease is overwritten by the new client's durable lease.
    fn reclaim(&mut self, now: u64) -> Option<Ipv4Addr> {
        let &(expires, addr) = self.held_q.first()?;
        if expires > now {
            return None;
        }
        let key = self.by_addr.get(&addr)?.clone();
        self.remove(&key);
        self.pool.release(addr);
        Some(addr)
    }

    fn queue(&mut self, l: &Lease) -> &mut BTreeSet<(u64, Ipv4Addr)> {
        if l.state == LeaseState::Offered {
            &mut self.offers_q
        } else {
            &mut self.held_q
        }
    }

    /// Removes `key`'s lease and its index entries; the address stays taken
    /// in the pool (callers decide what becomes of it).
    fn remove(&mut self, key: &ClientKey) -> Option<Lease> {
        let l = self.leases.remove(key)?;
        self.by_addr.remove(&l.addr);
        if let Some(keys) = self.by_mac.get_mut(&l.mac) {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_mac.remove(&l.mac);
            }
        }
        self.queue(&l).remove(&(l.expires, l.addr));
        Some(l)
    }

    /// Inserts or replaces a lease, keeping the address index, the time
    /// queues and the pool in step.
    fn set(&mut self, lease: Lease) {
        if let Some(old) = self.remove(&lease.key) {
            if old.addr != lease.addr && !self.reserved.contains(&old.addr) {
                self.pool.release(old.addr);
            }
        }
        // Another client's remembered lease on this address gives way.
        if let Some(prev) = self.by_addr.get(&lease.addr).cloned() {
            self.remove(&prev);
        }
        self.pool.take(lease.addr);
        self.by_addr.insert(lease.addr, lease.key.clone());
        self.queue(&lease).insert((lease.expires, lease.addr));
        self.by_mac.entry(lease.mac).or_default().push(lease.key.clone());
        self.leases.insert(lease.key.clone(), lease);
    }

    /// How many clients other than `key` hold an address (an outstanding
    /// offer or an active lease) for hardware address `mac` at `now`: what a
    /// port with port security holds, whose DHCP clients all carry its MAC.
    pub fn held_by_others(&self, mac: [u8; 6], key: &ClientKey, now: u64) -> usize {
        let Some(keys) = self.by_mac.get(&mac) else { return 0 };
        keys.iter()
            .filter(|k| *k != key)
            .filter_map(|k| self.leases.get(k))
            .filter(|l| l.is_active(now) || l.state == LeaseState::Offered && l.expires > now)
            .count()
    }

    /// Binds `addr` to `key` for `secs` (DHCPREQUEST in any state, §4.3.2):
    /// allowed for the client's own (offered, bound, remembered) address, its
    /// static reservation, or a free address of the range. Returns the record
    /// to make durable before the ACK; `NotYours` means NAK.
    pub fn bind(
        &mut self,
        key: &ClientKey,
        mac: [u8; 6],
        addr: Ipv4Addr,
        secs: u64,
        hostname: Option<String>,
        now: u64,
    ) -> Result<Record, LeaseError> {
        self.expire(now);
        if !self.available_to(addr, key, mac, now) {
            return Err(LeaseError::NotYours(addr));
        }
        let old = self.leases.get(key).filter(|l| l.addr == addr && l.state == LeaseState::Bound);
        // A renewal never shortens a binding (a port's address stays the port's).
        let expires = old.map_or(0, |l| l.expires).max(now + secs);
        let hostname = hostname.or_else(|| self.leases.get(key).and_then(|l| l.hostname.clone()));
        let lease = Lease { key: key.clone(), mac, addr, hostname, expires, state: LeaseState::Bound };
        self.set(lease.clone());
        Ok(Record::Lease(lease))
    }

    /// Withdraws an outstanding offer to `key` (it chose another server).
    pub fn withdraw_offer(&mut self, key: &ClientKey) {
        if self.leases.get(key).is_some_and(|l| l.state == LeaseState::Offered) {
            if let Some(l) = self.remove(key) {
                self.pool.release(l.addr);
            }
        }
    }

    /// Drops `key`'s lease and frees its address at once (a port that was
    /// disconnected). Returns the record to make durable.
    pub fn forget(&mut self, key: &ClientKey) -> Vec<Record> {
        match self.remove(key) {
            Some(l) => {
                if !self.reserved.contains(&l.addr) {
                    self.pool.release(l.addr);
                }
                vec![Record::Forget(key.clone())]
            }
            None => Vec::new(),
        }
    }

    /// Binds an address given by hand (`connect --ip`): any host of the
    /// subnet, inside the dynamic range or not, that no other client holds
    /// and that is not reserved or quarantined.
    pub fn claim(
        &mut self,
        key: &ClientKey,
        mac: [u8; 6],
        addr: Ipv4Addr,
        secs: u64,
        now: u64,
    ) -> Result<Record, LeaseError> {
        self.expire(now);
        let host = self.subnet.contains(&addr) && addr != self.subnet.network() && addr != self.subnet.broadcast();
        let taken = self.by_addr.get(&addr).is_some_and(|k| k != key)
            || self.reserved.contains(&addr) && self.statics.get(&mac) != Some(&addr)
            || self.quarantine.get(&addr).is_some_and(|&t| t > now)
            || self.pool.contains(addr) && self.pool.is_used(addr) && !self.by_addr.contains_key(&addr);
        if !host || taken {
            return Err(LeaseError::NotYours(addr));
        }
        let lease =
            Lease { key: key.clone(), mac, addr, hostname: None, expires: now + secs, state: LeaseState::Bound };
        self.set(lease.clone());
        Ok(Record::Lease(lease))
    }

    /// DHCPRELEASE (§4.4.6): the address is remembered for the client.
    pub fn release(&mut self, key: &ClientKey, addr: Ipv4Addr, now: u64) -> Option<Record> {
        let mut l = self.leases.get(key).filter(|l| l.addr == addr && !l.is_port_address())?.clone();
        l.state = LeaseState::Released;
        l.expires = now;
        self.set(l.clone());
        Some(Record::Lease(l))
    }

    /// DHCPDECLINE (§4.3.3): the client found the address in use. The lease
    /// is dropped and the address quarantined until `now + secs`.
    pub fn decline(&mut self, key: &ClientKey, addr: Ipv4Addr, now: u64, secs: u64) -> Vec<Record> {
        if self.leases.get(key).is_none_or(|l| l.addr != addr || l.is_port_address()) {
            return Vec::new();
        }
        self.remove(key);
        let until = now + secs;
        self.set_quarantine(addr, until);
        vec![Record::Forget(key.clone()), Record::Quarantine { addr, until }]
    }

    /// Ends offers and quarantines that ran out. Bound leases that expire
    /// keep their address (remembered) until [`Leases::reclaim`] needs it.
    /// O(log n) per item that ended.
    pub fn expire(&mut self, now: u64) {
        while let Some(&(until, a)) = self.quarantine_q.first().filter(|(t, _)| *t <= now) {
            self.quarantine_q.remove(&(until, a));
            self.quarantine.remove(&a);
            if !self.by_addr.contains_key(&a) && !self.reserved.contains(&a) {
                self.pool.release(a);
            }
        }
        while let Some(&(_, a)) = self.offers_q.first().filter(|(t, _)| *t <= now) {
            let Some(key) = self.by_addr.get(&a).cloned() else {
                self.offers_q.pop_first();
                continue;
            };
            self.remove(&key);
            self.pool.release(a);
        }
    }

    fn set_quarantine(&mut self, addr: Ipv4Addr, until: u64) {
        if let Some(old) = self.quarantine.insert(addr, until) {
            self.quarantine_q.remove(&(old, addr));
        }
        self.quarantine_q.insert((until, addr));
        self.pool.take(addr);
    }

    /// Applies a durable record (replay after a restart).
    pub fn apply(&mut self, r: Record) {
        match r {
            Record::Lease(l) => self.set(l),
            Record::Forget(k) => {
                if let Some(l) = self.remove(&k) {
                    if !self.quarantine.contains_key(&l.addr) && !self.reserved.contains(&l.addr) {
                        self.pool.release(l.addr);
                    }
                }
            }
            Record::Quarantine { addr, until } => self.set_quarantine(addr, until),
        }
    }

    /// Everything durable, for compacting the journal: bound and released
    /// leases and live quarantines.
    pub fn records(&self) -> Vec<Record> {
        let mut v: Vec<Record> =
            self.leases.values().filter(|l| l.state != LeaseState::Offered).map(|l| Record::Lease(l.clone())).collect();
        v.extend(self.quarantine.iter().map(|(&addr, &until)| Record::Quarantine { addr, until }));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn leases() -> Leases {
        let subnet: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        Leases::new(subnet, subnet, ["10.0.0.1".parse().unwrap()])
    }

    fn mac(i: u8) -> [u8; 6] {
        [2, 0, 0, 0, 0, i]
    }

    fn key(i: u8) -> ClientKey {
        ClientKey::new(None, mac(i))
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn dora_binds_and_renewal_keeps_the_address() {
        let mut l = leases();
        let a = l.offer(&key(1), mac(1), None, NOW).unwrap();
        assert_ne!(a, ip("10.0.0.1"), "never the gateway");
        let r = l.bind(&key(1), mac(1), a, 3600, Some("c1".into()), NOW).unwrap();
        assert!(matches!(r, Record::Lease(ref x) if x.addr == a && x.state == LeaseState::Bound));
        // Renewing (and rebinding) keeps the address and extends the lease.
        l.bind(&key(1), mac(1), a, 3600, None, NOW + 1800).unwrap();
        let lease = l.get(&key(1)).unwrap();
        assert_eq!(lease.expires, NOW + 1800 + 3600);
        assert_eq!(lease.hostname.as_deref(), Some("c1"));
        // A second DISCOVER from the bound client offers the same address.
        assert_eq!(l.offer(&key(1), mac(1), None, NOW + 1900).unwrap(), a);
    }

    #[test]
    fn a_dhcp_client_on_a_port_neither_shortens_nor_ends_the_port_address() {
        // Found by tests/crash.rs: a DHCP handshake from a port with `--ip`
        // turned its address into a one-hour lease, free for others after.
        let mut l = leases();
        let a = ip("10.0.0.9");
        l.claim(&key(1), mac(1), a, PORT_LEASE_SECS, NOW).unwrap();
        assert_eq!(l.offer(&key(1), mac(1), None, NOW).unwrap(), a);
        l.bind(&key(1), mac(1), a, 3600, None, NOW).unwrap();
        assert_eq!(l.get(&key(1)).unwrap().expires, NOW + PORT_LEASE_SECS, "a renewal keeps the later expiry");
        assert!(l.release(&key(1), a, NOW).is_none());
        assert!(l.decline(&key(1), a, NOW, 60).is_empty());
        assert!(l.get(&key(1)).unwrap().is_port_address());
        assert!(l.offer(&key(2), mac(2), Some(a), NOW + 7200).unwrap() != a, "never offered to another client");
    }

    #[test]
    fn client_identifier_keys_leases_not_the_mac() {
        let mut l = leases();
        let duid = ClientKey::new(Some(&[255, 1, 2, 3, 4, 0, 2, 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8]), mac(1));
        let a = l.offer(&duid, mac(1), None, NOW).unwrap();
        l.bind(&duid, mac(1), a, 600, None, NOW).unwrap();
        // Same MAC, no identifier: a different client.
        let b = l.offer(&key(1), mac(1), None, NOW).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn another_clients_address_is_refused() {
        let mut l = leases();
        let a = l.offer(&key(1), mac(1), None, NOW).unwrap();
        l.bind(&key(1), mac(1), a, 600, None, NOW).unwrap();
        assert_eq!(l.bind(&key(2), mac(2), a, 600, None, NOW), Err(LeaseError::NotYours(a)));
        assert_eq!(l.bind(&key(2), mac(2), ip("10.0.0.1"), 600, None, NOW), Err(LeaseError::NotYours(ip("10.0.0.1"))));
        assert_eq!(l.bind(&key(2), mac(2), ip("10.9.0.5"), 600, None, NOW), Err(LeaseError::NotYours(ip("10.9.0.5"))));
        // A requested free address is honoured (init-reboot into a fresh server).
        assert!(l.bind(&key(2), mac(2), ip("10.0.0.77"), 600, None, NOW).is_ok());
        assert_eq!(l.offer(&key(3), mac(3), Some(ip("10.0.0.77")), NOW).map(|a| a == ip("10.0.0.77")), Ok(false));
    }

    #[test]
    fn an_expired_or_released_address_goes_back_to_its_client_first() {
        let mut l = leases();
        let a = l.offer(&key(1), mac(1), None, NOW).unwrap();
        l.bind(&key(1), mac(1), a, 60, None, NOW).unwrap();
        // Others come and go while client 1's lease lapses.
        for i in 2..20 {
            let x = l.offer(&key(i), mac(i), None, NOW + 100).unwrap();
            assert_ne!(x, a);
        }
        assert_eq!(l.offer(&key(1), mac(1), None, NOW + 200).unwrap(), a);
        l.bind(&key(1), mac(1), a, 60, None, NOW + 200).unwrap();
        l.release(&key(1), a, NOW + 210).unwrap();
        assert_eq!(l.offer(&key(1), mac(1), None, NOW + 300).unwrap(), a);
    }

    #[test]
    fn exhaustion_then_reclaim_of_the_oldest_remembered_address() {
        let subnet: Ipv4Net = "10.0.0.0/29".parse().unwrap(); // .1-.6, gateway .1: 5 dynamic
        let mut l = Leases::new(subnet, subnet, [ip("10.0.0.1")]);
        let mut got = Vec::new();
        for i in 1..=5 {
            let a = l.offer(&key(i), mac(i), None, NOW).unwrap();
            l.bind(&key(i), mac(i), a, 100 + u64::from(i), None, NOW).unwrap();
            got.push(a);
        }
        assert_eq!(l.offer(&key(9), mac(9), None, NOW + 1), Err(LeaseError::Exhausted));
        // After the leases run out, the one that ended first is reused.
        let a = l.offer(&key(9), mac(9), None, NOW + 1000).unwrap();
        assert_eq!(a, got[0]);
        assert!(l.get(&key(1)).is_none());
    }

    #[test]
    fn decline_quarantines_the_address() {
        let mut l = leases();
        let a = l.offer(&key(1), mac(1), None, NOW).unwrap();
        l.bind(&key(1), mac(1), a, 600, None, NOW).unwrap();
        let recs = l.decline(&key(1), a, NOW, 300);
        assert_eq!(recs.len(), 2);
        assert_ne!(l.offer(&key(1), mac(1), Some(a), NOW + 10).unwrap(), a);
        assert_eq!(l.bind(&key(2), mac(2), a, 600, None, NOW + 10), Err(LeaseError::NotYours(a)));
        // After the quarantine the address is free again.
        assert!(l.bind(&key(2), mac(2), a, 600, None, NOW + 301).is_ok());
    }

    #[test]
    fn static_reservations_win() {
        let mut l = leases();
        l.add_static(mac(7), ip("10.0.0.50")).unwrap();
        assert_eq!(l.offer(&key(7), mac(7), None, NOW).unwrap(), ip("10.0.0.50"));
        assert!(l.bind(&key(7), mac(7), ip("10.0.0.50"), 600, None, NOW).is_ok());
        assert!(l.bind(&key(8), mac(8), ip("10.0.0.50"), 600, None, NOW).is_err());
        for i in 10..60 {
            assert_ne!(l.offer(&key(i), mac(i), None, NOW).unwrap(), ip("10.0.0.50"));
        }
    }

    #[test]
    fn replaying_the_records_rebuilds_the_table() {
        let mut l = leases();
        let mut journal = Vec::new();
        for i in 1..=30 {
            let a = l.offer(&key(i), mac(i), None, NOW).unwrap();
            journal.push(l.bind(&key(i), mac(i), a, 600, None, NOW).unwrap());
        }
        let a5 = l.get(&key(5)).unwrap().addr;
        journal.extend(l.decline(&key(5), a5, NOW, 300));
        let a6 = l.get(&key(6)).unwrap().addr;
        journal.push(l.release(&key(6), a6, NOW).unwrap());
        let mut r = leases();
        for rec in journal {
            r.apply(rec);
        }
        let mut want: Vec<Lease> = l.iter().cloned().collect();
        let mut have: Vec<Lease> = r.iter().cloned().collect();
        want.sort_by_key(|x| x.addr);
        have.sort_by_key(|x| x.addr);
        assert_eq!(want, have);
        assert_eq!(l.usage(), r.usage());
        // And the compacted records rebuild it too.
        let mut c = leases();
        for rec in l.records() {
            c.apply(rec);
        }
        assert_eq!(c.usage(), l.usage());
    }

    #[test]
    fn no_address_is_ever_held_by_two_clients() {
        // Property: random DISCOVER/REQUEST/RELEASE/DECLINE traffic from 300
        // clients on a /24; after every step, no address has two owners.
        let mut l = leases();
        let mut x: u64 = 42;
        let mut now = NOW;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = (x % 300) as u8;
            let k = ClientKey::Id(vec![1, c, (x >> 20) as u8 % 2]);
            let m = mac(c);
            now += x % 3;
            match (x >> 8) % 5 {
                0 | 1 => {
                    if let Ok(a) = l.offer(&k, m, None, now) {
                        let _ = l.bind(&k, m, a, 30 + x % 300, None, now);
                    }
                }
                2 => {
                    let a = Ipv4Addr::from(u32::from(ip("10.0.0.0")) + (x >> 16) as u32 % 256);
                    let _ = l.bind(&k, m, a, 60, None, now);
                }
                3 => {
                    if let Some(a) = l.get(&k).map(|x| x.addr) {
                        l.release(&k, a, now);
                    }
                }
                _ => {
                    if let Some(a) = l.get(&k).map(|x| x.addr) {
                        l.decline(&k, a, now, 120);
                    }
                }
            }
            if step % 16 != 0 {
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            for lease in l.iter() {
                assert!(seen.insert(lease.addr), "{} held twice", lease.addr);
                assert_ne!(lease.addr, ip("10.0.0.1"));
            }
        }
    }
}
