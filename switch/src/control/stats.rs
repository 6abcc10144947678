//! The `stats` request: one typed snapshot of every counter the daemon
//! keeps (ports, networks, routers, workers, the punt queue), with rates
//! over the last second ([`StatsInfo`]; docs/stats.md).
//!
//! Rates: the housekeeping thread calls [`Daemon::sample_stats`] once a
//! second; it copies the counters that have rates and keeps the sample
//! before it, so a rate is (newest − previous) / the time between them, a
//! full interval of about one second, never a partial one. A `stats`
//! request reads live counters and the rates of the two newest samples
//! (`sample_age_ms` says how old). Counters are read with relaxed loads
//! (stats.rs): a sample may see a burst's packets before its bytes, never a
//! torn value.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use super::build::UPLINK_NETWORK;
use super::networks::network;
use super::proto::*;
use super::{unix_now, Daemon, Inner};
use crate::port::PortId;
use crate::stats::{DropReason, PortCounters, PortStats, RouterStats};

/// The counters that have rates, of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    drops: u64,
}

impl Totals {
    fn of(s: &PortStats) -> Totals {
        Totals {
            rx_packets: s.rx_packets.load(Relaxed),
            rx_bytes: s.rx_bytes.load(Relaxed),
            tx_packets: s.tx_packets.load(Relaxed),
            tx_bytes: s.tx_bytes.load(Relaxed),
            drops: DropReason::ALL.iter().map(|&r| s.drops(r)).sum(),
        }
    }
}

/// One sample: counters by owner. A port or router is known by its id or
/// name *and* the address of its counters, so a port id reused by a new port
/// (or a router re-created under its name) starts without a rate instead of
/// a negative or bogus one.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    ports: HashMap<PortId, (usize, Totals)>,
    routers: HashMap<String, (usize, u64)>,
    /// Per worker: frames and busy nanoseconds.
    workers: Vec<(u64, u64)>,
}

/// The two newest samples (housekeeping thread; `Daemon::sampler`).
#[derive(Debug, Default)]
pub(super) struct Sampler {
    prev: Option<Sample>,
    last: Option<Sample>,
}

/// Per second, from two readings `ms` milliseconds apart; a counter that went
/// backwards (its owner was replaced) has no rate.
fn per_sec(new: u64, old: u64, ms: u64) -> u64 {
    if ms == 0 {
        return 0;
    }
    let d = u128::from(new.saturating_sub(old));
    u64::try_from(d * 1000 / u128::from(ms)).unwrap_or(u64::MAX)
}

impl Sampler {
    /// Milliseconds between the two newest samples; 0 while there are fewer than two.
    fn interval_ms(&self) -> u64 {
        match (&self.prev, &self.last) {
            (Some(p), Some(l)) => l.at.duration_since(p.at).as_millis() as u64,
            _ => 0,
        }
    }

    fn push(&mut self, s: Sample) {
        self.prev = self.last.take();
        self.last = Some(s);
    }

    fn port_rates(&self, id: PortId, stats: &Arc<PortStats>) -> RatesInfo {
        let ms = self.interval_ms();
        let key = Arc::as_ptr(stats) as usize;
        let get = |s: &Option<Sample>| s.as_ref().and_then(|s| s.ports.get(&id).copied()).filter(|(k, _)| *k == key);
        let (Some((_, new)), Some((_, old))) = (get(&self.last), get(&self.prev)) else {
            return RatesInfo::default();
        };
        RatesInfo {
            rx_pps: per_sec(new.rx_packets, old.rx_packets, ms),
            rx_bps: per_sec(new.rx_bytes, old.rx_bytes, ms).saturating_mul(8),
            tx_pps: per_sec(new.tx_packets, old.tx_packets, ms),
            tx_bps: per_sec(new.tx_bytes, old.tx_bytes, ms).saturating_mul(8),
            drops_ps: per_sec(new.drops, old.drops, ms),
        }
    }

    fn router_pps(&self, name: &str, stats: &Arc<RouterStats>) -> u64 {
        let key = Arc::as_ptr(stats) as usize;
        let get = |s: &Option<Sample>| s.as_ref().and_then(|s| s.routers.get(name).copied()).filter(|(k, _)| *k == key);
        match (get(&self.last), get(&self.prev)) {
            (Some((_, new)), Some((_, old))) => per_sec(new, old, self.interval_ms()),
            _ => 0,
        }
    }

    /// Frames per second and busy millionths of worker `w`.
    fn worker_rates(&self, w: usize) -> (u64, u64) {
        let get = |s: &Option<Sample>| s.as_ref().and_then(|s| s.workers.get(w).copied());
        let (Some(new), Some(old)) = (get(&self.last), get(&self.prev)) else { return (0, 0) };
        let ms = self.interval_ms();
        if ms == 0 {
            return (0, 0);
        }
        // busy ns per (ms × 1000 ns per µs) = millionths of the interval.
        let busy_ppm = (new.1.saturating_sub(old.1) / ms).min(1_000_000);
        (per_sec(new.0, old.0, ms), busy_ppm)
    }
}

impl Daemon {
    /// Takes one sample of the counters that have rates (the housekeeping
    /// thread, once a second).
    pub(super) fn sample_stats(&self) {
        let sample = {
            let inner = self.lock();
            let mut ports: HashMap<PortId, (usize, Totals)> =
                inner.ports.values().map(|p| (p.id, (Arc::as_ptr(&p.stats) as usize, Totals::of(&p.stats)))).collect();
            if let Some(u) = &inner.uplink {
                ports.insert(u.port_id, (Arc::as_ptr(&u.port_stats) as usize, Totals::of(&u.port_stats)));
            }
            let routers = inner
                .routers
                .values()
                .map(|r| (r.spec.name.clone(), (Arc::as_ptr(&r.stats) as usize, r.stats.routed.load(Relaxed))))
                .collect();
            let workers =
                self.workers.iter().map(|w| (w.stats.frames.load(Relaxed), w.stats.busy_ns.load(Relaxed))).collect();
            Sample { at: Instant::now(), ports, routers, workers }
        };
        self.sampler().push(sample);
    }

    fn sampler(&self) -> std::sync::MutexGuard<'_, Sampler> {
        self.sampler.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `stats` request: every port, network, router and worker, or
    /// (`filter`) one network's ports, the network and its router.
    pub(super) fn stats(&self, filter: Option<&str>) -> Result<StatsInfo, ApiError> {
        let inner = self.lock();
        if let Some(n) = filter {
            network(&inner, n)?;
        }
        let now = unix_now();
        let mut active_leases: BTreeMap<String, u64> = BTreeMap::new();
        for (net, l) in self.ipam().leases(filter) {
            if l.is_active(now) {
                *active_leases.entry(net).or_default() += 1;
            }
        }
        // Lock order: `inner`, then the sampler (taken alone by the housekeeping thread).
        let sampler = self.sampler();
        let ports = self.port_stats(&inner, &sampler, filter);
        let networks = inner
            .networks
            .values()
            .filter(|n| filter.is_none_or(|f| f == n.spec.name))
            .map(|n| {
                let name = &n.spec.name;
                let mut s = NetworkStatsInfo {
                    name: name.clone(),
                    drops: DropReason::ALL.iter().map(|r| (r.name().to_string(), 0)).collect(),
                    fdb_entries: n.fdb.table().len() as u64,
                    fdb_capacity: n.spec.fdb_capacity as u64,
                    leases: active_leases.get(name).copied().unwrap_or(0),
                    router: inner
                        .routers
                        .values()
                        .find(|r| r.spec.networks.contains(name))
                        .map(|r| r.spec.name.clone()),
                    route_counters: n.route_stats.snapshot(),
                    gateway_counters: n.gw_stats.snapshot(),
                    ..Default::default()
                };
                for p in ports.iter().filter(|p| p.network == *name) {
                    add_port(&mut s, p);
                }
                s
            })
            .collect::<Vec<_>>();
        let routers = inner
            .routers
            .values()
            .filter(|r| filter.is_none_or(|f| r.spec.networks.iter().any(|n| n == f)))
            .map(|r| RouterStatsInfo {
                name: r.spec.name.clone(),
                networks: r.spec.networks.clone(),
                counters: r.stats.snapshot(),
                routed_pps: sampler.router_pps(&r.spec.name, &r.stats),
            })
            .collect();
        let snap = self.snapshot.load();
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let (frames_ps, busy_ppm) = sampler.worker_rates(i);
                WorkerStatsInfo {
                    index: i,
                    ports: snap.ports_of_worker(i).count(),
                    turns: w.stats.turns.load(Relaxed),
                    busy_turns: w.stats.busy_turns.load(Relaxed),
                    bursts: w.stats.bursts.load(Relaxed),
                    frames: w.stats.frames.load(Relaxed),
                    busy_ns: w.stats.busy_ns.load(Relaxed),
                    frames_ps,
                    busy_ppm,
                    pending: w.stats.pending.load(Relaxed),
                }
            })
            .collect();
        Ok(StatsInfo {
            interval_ms: sampler.interval_ms(),
            sample_age_ms: sampler.last.as_ref().map_or(0, |s| s.at.elapsed().as_millis() as u64),
            ports,
            networks,
            routers,
            workers,
            punt_queue: QueueDepthInfo { depth: self.punt.depth() as u64, capacity: self.punt.capacity() as u64 },
            control_socket: self.socket_counters.info(),
        })
    }

    /// Every port of `filter` (all, and the uplink, without one), in id order.
    fn port_stats(&self, inner: &Inner, sampler: &Sampler, filter: Option<&str>) -> Vec<PortStatsInfo> {
        let mut out: Vec<PortStatsInfo> = inner
            .ports
            .values()
            .filter(|p| filter.is_none_or(|f| f == p.spec.network))
            .map(|p| {
                let queues = p.port.caps().queues;
                PortStatsInfo {
                    id: p.id.0,
                    network: p.spec.network.clone(),
                    netns: p.spec.netns.clone(),
                    ifname: p.spec.ifname.clone(),
                    vhost_socket: p.vhost.as_deref().map(|v| v.config().socket.display().to_string()),
                    uplink: false,
                    // As `port_ls` says: queue q of a multi-queue port is worker q's.
                    workers: if queues > 1 { (0..usize::from(queues)).collect() } else { vec![p.worker] },
                    counters: p.stats.snapshot(),
                    rates: sampler.port_rates(p.id, &p.stats),
                    vhost_counters: p.vhost.as_deref().map(|v| v.counters().snapshot()).unwrap_or_default(),
                    afxdp_counters: p.xdp.as_deref().map(super::ports::xdp_counters).unwrap_or_default(),
                }
            })
            .collect();
        if let (None, Some(u)) = (filter, &inner.uplink) {
            out.push(PortStatsInfo {
                id: u.port_id.0,
                network: UPLINK_NETWORK.to_string(),
                netns: String::new(),
                ifname: u.cfg.ifname.clone(),
                vhost_socket: None,
                uplink: true,
                workers: (0..usize::from(u.port.caps().queues.max(1))).collect(),
                counters: u.port_stats.snapshot(),
                rates: sampler.port_rates(u.port_id, &u.port_stats),
                vhost_counters: Default::default(),
                afxdp_counters: Default::default(),
            });
        }
        out.sort_by_key(|p| p.id);
        out
    }
}

/// Adds a port's counters and rates to its network's sums.
fn add_port(s: &mut NetworkStatsInfo, p: &PortStatsInfo) {
    let c: &PortCounters = &p.counters;
    s.ports += 1;
    s.rx_packets += c.rx_packets;
    s.rx_bytes += c.rx_bytes;
    s.tx_packets += c.tx_packets;
    s.tx_bytes += c.tx_bytes;
    s.learn_full += c.learn_full;
    for (k, v) in &c.drops {
        *s.drops.entry(k.clone()).or_default() += v;
    }
    let (r, q) = (&mut s.rates, &p.rates);
    r.rx_pps += q.rx_pps;
    r.rx_bps += q.rx_bps;
    r.tx_pps += q.tx_pps;
    r.tx_bps += q.tx_bps;
    r.drops_ps += q.drops_ps;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(at: Instant, rx: u64, key: usize) -> Sample {
        let t = Totals { rx_packets: rx, rx_bytes: rx * 100, ..Default::default() };
        Sample {
            at,
            ports: HashMap::from([(PortId(1), (key, t))]),
            routers: HashMap::new(),
            workers: vec![(rx, 250_000_000 * rx / 1000)],
        }
    }

    #[test]
    fn rates_are_over_the_last_full_interval() {
        let stats = Arc::new(PortStats::default());
        let key = Arc::as_ptr(&stats) as usize;
        let mut s = Sampler::default();
        let t0 = Instant::now();
        s.push(sample(t0, 0, key));
        assert_eq!(s.interval_ms(), 0);
        assert_eq!(s.port_rates(PortId(1), &stats), RatesInfo::default(), "one sample: no rate yet");
        s.push(sample(t0 + Duration::from_millis(2000), 1000, key));
        assert_eq!(s.interval_ms(), 2000);
        let r = s.port_rates(PortId(1), &stats);
        assert_eq!((r.rx_pps, r.rx_bps, r.tx_pps), (500, 500 * 100 * 8, 0));
        // Worker: 1000 frames and 0.25 s busy over 2 s: 500 frames/s, 12.5 % busy.
        assert_eq!(s.worker_rates(0), (500, 125_000));
        // Nothing moved in the next interval: the rates fall to zero.
        s.push(sample(t0 + Duration::from_millis(3000), 1000, key));
        assert_eq!(s.port_rates(PortId(1), &stats), RatesInfo::default());
    }

    /// The request against a daemon without root: a network with a
    /// vhost-user port (no TAP needed), a filter, a missing network.
    #[test]
    fn the_snapshot_lists_every_part_and_a_missing_network_is_not_found() {
        let dir = std::env::temp_dir().join(format!("tapyard-stats-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = super::super::Config { workers: 2, ..super::super::Config::new(dir.join("s.sock"), dir.clone()) };
        /// Stops the daemon and removes its directory, also when the test fails.
        struct Guard(Arc<Daemon>, std::path::PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.shutdown();
                let _ = std::fs::remove_dir_all(&self.1);
            }
        }
        let guard = Guard(Daemon::start(cfg).unwrap(), dir.clone());
        let d = &guard.0;
        for (name, subnet) in [("a", "10.231.0.0/24"), ("b", "10.232.0.0/24")] {
            let args = NetworkCreate { name: name.into(), subnet: Some(subnet.into()), ..Default::default() };
            d.handle(Request::NetworkCreate(args)).unwrap();
        }
        let sock = dir.join("vm.sock").display().to_string();
        d.handle(Request::ConnectVhost {
            network: "a".into(),
            socket: sock.clone(),
            client: false,
            queues: None,
            mac: None,
            socket_mode: None,
            socket_group: None,
            port_security: None,
            storm_limit: None,
        })
        .unwrap();
        let all = d.stats(None).unwrap();
        let names: Vec<&str> = all.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!((all.workers.len(), all.punt_queue.capacity), (2, crate::punt::PUNT_DEPTH as u64));
        let p = &all.ports[0];
        assert_eq!((p.network.as_str(), p.netns.as_str(), p.vhost_socket.as_deref()), ("a", "", Some(sock.as_str())));
        assert!(p.vhost_counters.contains_key("no_rx_buffers"), "{p:?}");
        assert_eq!(p.counters.drops.len(), DropReason::ALL.len());
        let a = &all.networks[0];
        assert_eq!((a.ports, a.fdb_capacity, a.drops.len()), (1, 4096, DropReason::ALL.len()));
        assert_eq!(a.leases, 0, "no lease yet: the VM has not asked");
        let v = serde_json::to_value(&all).unwrap();
        assert_eq!(v["ports"][0]["netns"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<StatsInfo>(v).unwrap(), all, "the CLI reads what the daemon writes");
        let only_b = d.stats(Some("b")).unwrap();
        assert!(only_b.ports.is_empty() && only_b.networks.len() == 1 && only_b.workers.len() == 2);
        let e = d.stats(Some("nope")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("no network named \"nope\""), "{e}");
    }

    #[test]
    fn a_replaced_port_has_no_rate_rather_than_a_wrong_one() {
        let old = Arc::new(PortStats::default());
        let new = Arc::new(PortStats::default());
        let mut s = Sampler::default();
        let t0 = Instant::now();
        s.push(sample(t0, 5000, Arc::as_ptr(&old) as usize));
        s.push(sample(t0 + Duration::from_secs(1), 10, Arc::as_ptr(&new) as usize));
        assert_eq!(s.port_rates(PortId(1), &new), RatesInfo::default());
        assert_eq!(per_sec(10, 5000, 1000), 0, "a counter that went back has no rate");
    }
}
