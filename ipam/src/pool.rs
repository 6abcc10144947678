//! An address pool: which addresses of a range are free, with allocation in
//! constant time (a bitmap of used addresses plus a summary bitmap of the
//! words that still have a free bit), even for a /16.
//!
//! Allocation goes round-robin from a cursor, not lowest-first, so an address
//! just released is not handed to the next client at once (a client that
//! released it may still have packets in flight, and neighbours may still
//! cache its old MAC).

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Free/used state of a contiguous range of IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    first: u32,
    len: u32,
    /// Bit i set: address first + i is used.
    used: Vec<u64>,
    /// Bit j set: word j of `used` has at least one free bit.
    free_words: Vec<u64>,
    n_used: u32,
    cursor: u32,
}

impl Pool {
    /// A pool of the host addresses of `range` (network and broadcast
    /// addresses excluded when the range is the whole subnet, i.e. shorter
    /// than /31), all free.
    pub fn new(range: Ipv4Net) -> Pool {
        let (first, last) = if range.prefix_len() >= 31 {
            (u32::from(range.network()), u32::from(range.broadcast()))
        } else {
            (u32::from(range.network()) + 1, u32::from(range.broadcast()) - 1)
        };
        Pool::from_bounds(first, last)
    }

    /// A pool of the addresses of `range` that are hosts of `subnet` (the
    /// range's own first and last addresses are usable unless they are the
    /// subnet's network or broadcast address).
    pub fn for_range(range: Ipv4Net, subnet: Ipv4Net) -> Pool {
        let first = u32::from(range.network()).max(u32::from(subnet.network()) + 1);
        let last = u32::from(range.broadcast()).min(u32::from(subnet.broadcast()) - 1);
        Pool::from_bounds(first, last.max(first))
    }

    /// A pool of the addresses `first..=last`, all free.
    pub fn from_bounds(first: u32, last: u32) -> Pool {
        let len = last - first + 1;
        let words = len.div_ceil(64) as usize;
        let mut used = vec![0u64; words];
        // Bits past the end of the range are permanently "used".
        let tail = len % 64;
        if tail != 0 {
            used[words - 1] = !0u64 << tail;
        }
        let mut p = Pool { first, len, used, free_words: vec![0; words.div_ceil(64)], n_used: 0, cursor: 0 };
        for w in 0..words {
            p.sync_summary(w);
        }
        p
    }

    fn sync_summary(&mut self, w: usize) {
        let (sw, bit) = (w / 64, w % 64);
        if self.used[w] == !0 {
            self.free_words[sw] &= !(1 << bit);
        } else {
            self.free_words[sw] |= 1 << bit;
        }
    }

    fn index(&self, addr: Ipv4Addr) -> Option<u32> {
        let a = u32::from(addr);
        (a >= self.first && a - self.first < self.len).then(|| a - self.first)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.index(addr).is_some()
    }

    pub fn is_used(&self, addr: Ipv4Addr) -> bool {
        self.index(addr).is_some_and(|i| self.used[i as usize / 64] >> (i % 64) & 1 == 1)
    }

    /// Addresses in the pool.
    pub fn size(&self) -> u32 {
        self.len
    }

    pub fn used(&self) -> u32 {
        self.n_used
    }

    pub fn free(&self) -> u32 {
        self.len - self.n_used
    }

    /// Marks `addr` used; false if it is outside the pool or already used.
    pub fn take(&mut self, addr: Ipv4Addr) -> bool {
        let Some(i) = self.index(addr) else { return false };
        let (w, b) = (i as usize / 64, i % 64);
        if self.used[w] >> b & 1 == 1 {
            return false;
        }
        self.used[w] |= 1 << b;
        self.n_used += 1;
        self.sync_summary(w);
        true
    }

    /// Marks `addr` free; false if it is outside the pool or already free.
    pub fn release(&mut self, addr: Ipv4Addr) -> bool {
        let Some(i) = self.index(addr) else { return false };
        let (w, b) = (i as usize / 64, i % 64);
        if self.used[w] >> b & 1 == 0 {
            return false;
        }
        self.used[w] &= !(1 << b);
        self.n_used -= 1;
        self.sync_summary(w);
        true
    }

    /// Takes the next free address at or after the cursor (wrapping), or
    /// `None` when the pool is full. At most `len / 4096 + 2` summary words
    /// are scanned: constant time for any IPv4 range.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        if self.n_used == self.len {
            return None;
        }
        let i = self.find_free_from(self.cursor).or_else(|| self.find_free_from(0))?;
        let addr = Ipv4Addr::from(self.first + i);
        self.take(addr);
        self.cursor = if i + 1 >= self.len { 0 } else { i + 1 };
        Some(addr)
    }

    /// The first free index at or after `start`, without wrapping.
    fn find_free_from(&self, start: u32) -> Option<u32> {
        if start >= self.len {
            return None;
        }
        let w = start as usize / 64;
        // The start word, from the start bit on.
        let here = !self.used[w] & (!0u64 << (start % 64));
        if here != 0 {
            return Some(w as u32 * 64 + here.trailing_zeros());
        }
        // Later words, found through the summary.
        let next = w + 1;
        let mut sw = next / 64;
        let mut mask = !0u64 << (next % 64);
        while sw < self.free_words.len() {
            let bits = self.free_words[sw] & mask;
            if bits != 0 {
                let word = sw * 64 + bits.trailing_zeros() as usize;
                return Some(word as u32 * 64 + (!self.used[word]).trailing_zeros());
            }
            sw += 1;
            mask = !0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_slash_24_has_254_hosts_and_never_repeats() {
        let mut p = Pool::new(net("10.0.0.0/24"));
        assert_eq!(p.size(), 254);
        let mut seen = HashSet::new();
        while let Some(a) = p.allocate() {
            assert!(seen.insert(a), "{a} handed out twice");
            assert_ne!(a, "10.0.0.0".parse::<Ipv4Addr>().unwrap());
            assert_ne!(a, "10.0.0.255".parse::<Ipv4Addr>().unwrap());
        }
        assert_eq!(seen.len(), 254);
        assert_eq!(p.free(), 0);
    }

    #[test]
    fn taken_addresses_are_skipped_and_release_reuses_later() {
        let mut p = Pool::new(net("10.0.0.0/29")); // .1 to .6
        assert!(p.take("10.0.0.2".parse().unwrap()));
        assert!(!p.take("10.0.0.2".parse().unwrap()));
        assert!(!p.take("10.0.1.2".parse().unwrap()));
        let got: Vec<Ipv4Addr> = std::iter::from_fn(|| p.allocate()).collect();
        assert_eq!(got.len(), 5);
        assert!(!got.contains(&"10.0.0.2".parse().unwrap()));
        assert!(p.release("10.0.0.4".parse().unwrap()));
        assert!(!p.release("10.0.0.4".parse().unwrap()));
        assert_eq!(p.allocate(), Some("10.0.0.4".parse().unwrap()));
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn round_robin_does_not_hand_back_a_just_released_address() {
        let mut p = Pool::new(net("10.0.0.0/24"));
        let a = p.allocate().unwrap();
        p.release(a);
        assert_ne!(p.allocate(), Some(a));
    }

    #[test]
    fn random_take_release_allocate_matches_a_model() {
        // Property: against a HashSet model, over a /20 (4094 hosts) and
        // ranges whose length is not a multiple of 64.
        for range in [net("10.0.0.0/20"), net("10.1.0.0/26")] {
            let mut p = Pool::new(range);
            let mut model: HashSet<u32> = HashSet::new();
            let mut x: u64 = 0x9e37_79b9;
            for _ in 0..50_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x >> 8) as u32 % p.size();
                let addr = Ipv4Addr::from(u32::from(range.network()) + 1 + i);
                match x % 3 {
                    0 => assert_eq!(p.take(addr), model.insert(i)),
                    1 => assert_eq!(p.release(addr), model.remove(&i)),
                    _ => match p.allocate() {
                        Some(a) => {
                            let j = u32::from(a) - u32::from(range.network()) - 1;
                            assert!(model.insert(j), "allocated a used address {a}");
                        }
                        None => assert_eq!(model.len() as u32, p.size()),
                    },
                }
                assert_eq!(p.used(), model.len() as u32);
            }
        }
    }

    #[test]
    fn slash_16_fills_completely() {
        let mut p = Pool::new(net("172.17.0.0/16"));
        let mut n = 0;
        while p.allocate().is_some() {
            n += 1;
        }
        assert_eq!(n, 65_534);
        assert_eq!(p.allocate(), None);
    }
}
