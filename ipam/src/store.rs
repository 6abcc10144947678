//! The IPAM state of every network, made durable through one [`Journal`]
//! (so one fsync commits the leases of all networks: group commit).
//!
//! Use: [`Store::open`] loads the journal; [`Store::add_network`] creates a
//! network's DHCP server and replays its records; [`Store::handle`] runs a
//! DHCP message and queues its records; [`Store::commit`] makes everything
//! queued durable, and only then may the replies it produced be sent.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dhcp::{DhcpConfig, DhcpServer, Handled};
use crate::journal::{Background, Journal, JournalError};
use crate::lease::{ClientKey, Lease, LeaseError, Leases, Record};
use crate::Ipv4Net;

/// A journal entry: a lease record of one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub network: String,
    pub record: Record,
}

/// Compact once the journal holds more than this many bytes and more than
/// the snapshot does (the live records at the last compaction): the files
/// never exceed about twice the live leases (or this floor), however many
/// handshakes come and go, and a compaction, which writes the live records
/// once, comes after at least as many bytes were appended (the write cost
/// stays within twice the appends). Redis rewrites its append-only file by
/// the same rule (`auto-aof-rewrite-percentage 100`). While a compaction
/// runs in the background the old journal stays beside the new one, which
/// is not let grow past the same bound (a commit waits for the compaction
/// then): three times at most, for that while.
pub const COMPACT_MIN_BYTES: u64 = 64 << 10;

pub struct Store {
    journal: Journal<Entry>,
    nets: HashMap<String, DhcpServer>,
    /// Records loaded for networks not (yet) added.
    pending: HashMap<String, Vec<Record>>,
    /// Bytes of a torn journal tail skipped at open.
    pub torn_bytes: u64,
    /// A background compaction's failure, not yet reported.
    compaction_failed: Option<JournalError>,
}

/// Lease lifetime for addresses given with `connect --ip auto`: they belong
/// to the port until it is disconnected.
pub const STATIC_LEASE_SECS: u64 = crate::lease::PORT_LEASE_SECS;

impl Store {
    pub fn open(dir: &Path) -> Result<Store, JournalError> {
        let (journal, loaded) = Journal::<Entry>::open(dir, "leases")?;
        let mut pending: HashMap<String, Vec<Record>> = HashMap::new();
        for e in loaded.records {
            pending.entry(e.network).or_default().push(e.record);
        }
        Ok(Store { journal, nets: HashMap::new(), pending, torn_bytes: loaded.torn_bytes, compaction_failed: None })
    }

    /// Adds (or replaces) a network: dynamic addresses from `range`, never
    /// `reserved` ones, static reservations by MAC; replays its records.
    pub fn add_network(
        &mut self,
        name: &str,
        cfg: DhcpConfig,
        range: Ipv4Net,
        reserved: impl IntoIterator<Item = Ipv4Addr>,
        statics: impl IntoIterator<Item = ([u8; 6], Ipv4Addr)>,
    ) {
        let mut leases = Leases::new(cfg.subnet, range, reserved);
        for (mac, ip) in statics {
            let _ = leases.add_static(mac, ip);
        }
        for r in self.pending.remove(name).unwrap_or_default() {
            leases.apply(r);
        }
        self.nets.insert(name.to_string(), DhcpServer::new(cfg, leases));
    }

    /// Removes a network and forgets its leases (durably, at the next commit).
    pub fn remove_network(&mut self, name: &str) {
        if let Some(s) = self.nets.remove(name) {
            for l in s.leases.iter() {
                self.journal.append(&Entry { network: name.to_string(), record: Record::Forget(l.key.clone()) });
            }
        }
        self.pending.remove(name);
    }

    pub fn network(&self, name: &str) -> Option<&DhcpServer> {
        self.nets.get(name)
    }

    pub fn network_mut(&mut self, name: &str) -> Option<&mut DhcpServer> {
        self.nets.get_mut(name)
    }

    fn queue(&mut self, network: &str, records: &[Record]) {
        for r in records {
            self.journal.append(&Entry { network: network.to_string(), record: r.clone() });
        }
    }

    /// Runs one DHCP message of `network`; its records are queued for [`Store::commit`].
    pub fn handle(&mut self, network: &str, payload: &[u8], now: u64) -> Option<Handled> {
        let h = self.nets.get_mut(network)?.handle(payload, now);
        let recs = h.records.clone();
        self.queue(network, &recs);
        Some(h)
    }

    /// Takes an address for a port (`connect --ip auto`), bound to its MAC
    /// until [`Store::release_port`]. Commits before returning.
    pub fn allocate_port(&mut self, network: &str, mac: [u8; 6], now: u64) -> Result<Ipv4Addr, LeaseError> {
        let s = self.nets.get_mut(network).ok_or(LeaseError::Exhausted)?;
        let key = ClientKey::Mac(mac);
        let addr = s.leases.offer(&key, mac, None, now)?;
        let r = s.leases.bind(&key, mac, addr, STATIC_LEASE_SECS, None, now)?;
        self.queue(network, &[r]);
        Ok(addr)
    }

    /// Records a static address given with `connect --ip`, so DHCP never hands it out.
    pub fn claim_port(&mut self, network: &str, mac: [u8; 6], addr: Ipv4Addr, now: u64) -> Result<(), LeaseError> {
        let Some(s) = self.nets.get_mut(network) else { return Ok(()) };
        let key = ClientKey::Mac(mac);
        let r = s.leases.claim(&key, mac, addr, STATIC_LEASE_SECS, now)?;
        self.queue(network, &[r]);
        Ok(())
    }

    /// Frees the address a port held through [`Store::allocate_port`] or [`Store::claim_port`].
    pub fn release_port(&mut self, network: &str, mac: [u8; 6]) {
        let Some(s) = self.nets.get_mut(network) else { return };
        let key = ClientKey::Mac(mac);
        if s.leases.get(&key).is_some_and(|l| l.expires > STATIC_LEASE_SECS) {
            let recs = s.leases.forget(&key);
            self.queue(network, &recs);
        }
    }

    /// Makes every queued record durable (one fsync), starting a compaction
    /// in the background when the journal outgrows the live records (see
    /// [`COMPACT_MIN_BYTES`]): the caller, the DHCP thread, goes on at once
    /// (journal module doc, "Compaction in the background"). A compaction
    /// that failed is returned, once, by [`Store::compaction_failed`]; the
    /// records are durable all the same.
    pub fn commit(&mut self) -> Result<(), JournalError> {
        self.journal.commit()?;
        let due = |j: &Journal<Entry>| j.len() > COMPACT_MIN_BYTES.max(j.snapshot_len());
        let outcome = match self.journal.poll_background() {
            // Due again before the last one ended: wait for it, so that the
            // files stay bounded (see COMPACT_MIN_BYTES) whatever the disk.
            Background::Running if due(&self.journal) => self.journal.wait_background(),
            other => other,
        };
        match outcome {
            Background::Running => return Ok(()),
            Background::Failed(e) => self.compaction_failed = Some(e),
            Background::Idle | Background::Done => {}
        }
        if due(&self.journal) {
            let all = self.live_entries();
            // The records are durable already (the commit above): a
            // compaction that cannot start (no thread, no `.next` file) is a
            // compaction failure, not a failed commit, or the DHCP thread
            // would withhold ACKs for leases that are on disk.
            if let Err(e) = self.journal.compact_in_background(all) {
                self.compaction_failed = Some(e);
            }
        }
        Ok(())
    }

    /// The error of the last background compaction that failed, once.
    pub fn compaction_failed(&mut self) -> Option<JournalError> {
        self.compaction_failed.take()
    }

    /// Whether a compaction runs in the background.
    pub fn compacting(&self) -> bool {
        self.journal.compacting()
    }

    /// Every live record of the added networks.
    fn live_entries(&self) -> Vec<Entry> {
        self.nets
            .iter()
            .flat_map(|(n, s)| s.leases.records().into_iter().map(|record| Entry { network: n.clone(), record }))
            .collect()
    }

    /// Rewrites the files as the live records of the added networks only.
    fn compact(&mut self) -> Result<(), JournalError> {
        let all = self.live_entries();
        self.journal.compact(&all)
    }

    /// Forgets for good the records of networks that were never added since
    /// [`Store::open`]: networks whose removal a killed daemon had not yet
    /// journaled (the state file, written first, no longer has them). Left
    /// in the journal they would come back into a new network of the same
    /// name. Call once every network of the state file is added.
    pub fn drop_unknown(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.clear();
        self.compact()
    }

    /// The leases of one network or all, with the network name.
    pub fn leases(&self, network: Option<&str>) -> Vec<(String, Lease)> {
        let mut v: Vec<(String, Lease)> = self
            .nets
            .iter()
            .filter(|(n, _)| network.is_none_or(|x| x == n.as_str()))
            .flat_map(|(n, s)| s.leases.iter().map(|l| (n.clone(), l.clone())))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1.addr).cmp(&(&b.0, b.1.addr)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn cfg() -> DhcpConfig {
        DhcpConfig {
            server: Ipv4Addr::new(10, 5, 0, 1),
            subnet: "10.5.0.0/24".parse().unwrap(),
            dns: vec![],
            domain: None,
            mtu: None,
            lease_secs: 600,
            decline_secs: 60,
            per_mac_cap: 0,
        }
    }

    fn add(s: &mut Store) {
        s.add_network("n", cfg(), "10.5.0.0/24".parse().unwrap(), [Ipv4Addr::new(10, 5, 0, 1)], []);
    }

    /// A DISCOVER with Rapid Commit from `mac`: one round trip to a bound lease.
    fn rapid(mac: u8) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&[2, 0, 0, 0, 1, mac]);
        b[236..240].copy_from_slice(&0x6382_5363u32.to_be_bytes());
        b.extend_from_slice(&[53, 1, 1, 80, 0, 255]);
        b
    }

    #[test]
    fn leases_survive_a_restart_and_are_never_handed_out_twice() {
        let dir = std::env::temp_dir().join(format!("tapyard-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut before = Vec::new();
        {
            let mut s = Store::open(&dir).unwrap();
            add(&mut s);
            let port = s.allocate_port("n", [2, 0, 0, 0, 0, 9], NOW).unwrap();
            before.push(port);
            for m in 0..20 {
                let h = s.handle("n", &rapid(m), NOW).unwrap();
                assert_eq!(h.records.len(), 1);
            }
            s.commit().unwrap();
            before.extend(s.leases(None).iter().map(|(_, l)| l.addr));
            // Queued but never committed: lost with the "crash", never acknowledged.
            s.handle("n", &rapid(99), NOW).unwrap();
        }
        let mut s = Store::open(&dir).unwrap();
        add(&mut s);
        let after: Vec<Ipv4Addr> = s.leases(None).iter().map(|(_, l)| l.addr).collect();
        assert_eq!(after.len(), 21);
        for a in &after {
            assert!(before.contains(a));
        }
        // New clients get addresses nobody holds.
        for m in 100..120 {
            let h = s.handle("n", &rapid(m), NOW).unwrap();
            assert_eq!(h.records.len(), 1);
        }
        let all: Vec<Ipv4Addr> = s.leases(None).iter().map(|(_, l)| l.addr).collect();
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        // Releasing the port frees its address for good.
        s.release_port("n", [2, 0, 0, 0, 0, 9]);
        s.commit().unwrap();
        drop(s);
        let mut s = Store::open(&dir).unwrap();
        add(&mut s);
        assert!(s.leases(None).iter().all(|(_, l)| l.addr != before[0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn disk_bytes(dir: &Path) -> u64 {
        ["leases.journal", "leases.snapshot"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum()
    }

    #[test]
    fn records_of_a_network_the_state_no_longer_has_are_dropped_for_good() {
        let dir = std::env::temp_dir().join(format!("tapyard-store-unknown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = Store::open(&dir).unwrap();
            add(&mut s);
            for m in 0..5 {
                s.handle("n", &rapid(m), NOW).unwrap();
            }
            s.commit().unwrap();
        }
        {
            // The state file no longer has "n" (a daemon killed during
            // `network rm`, after the state file, before the journal).
            let mut s = Store::open(&dir).unwrap();
            s.drop_unknown().unwrap();
        }
        // A new network of the same name starts empty.
        let mut s = Store::open(&dir).unwrap();
        add(&mut s);
        assert!(s.leases(None).is_empty(), "{:?}", s.leases(None));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_files_stay_bounded_however_many_leases_come_and_go() {
        let dir = std::env::temp_dir().join(format!("tapyard-store-bounded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = Store::open(&dir).unwrap();
        add(&mut s);
        // Ten live port addresses, and 1,500 that come and go.
        for m in 0..10u8 {
            s.allocate_port("n", [2, 0, 0, 0, 1, m], NOW).unwrap();
        }
        s.commit().unwrap();
        let mut most = 0;
        for i in 0..1500u32 {
            let mac = [2, 0, 0, 0, 2, (i % 200) as u8];
            s.allocate_port("n", mac, NOW).unwrap();
            s.commit().unwrap();
            s.release_port("n", mac);
            s.commit().unwrap();
            most = most.max(disk_bytes(&dir));
        }
        // Without compaction: about 1,500 × 2 records of ~150 bytes. While a
        // compaction runs, the old journal and the new one (each at most the
        // bound and a record) and the small snapshot.
        assert!(most <= 2 * COMPACT_MIN_BYTES + 4096, "{most} bytes on disk at most");
        drop(s);
        let mut s = Store::open(&dir).unwrap();
        add(&mut s);
        assert_eq!(s.leases(None).len(), 10, "the live leases survive every compaction");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
