//! The housekeeping thread: ages the forwarding tables once a second,
//! refreshes each port's share of its table, checks that each TAP port's
//! namespace still exists, acts on the workers' port events (a vanished
//! interface, a vhost-user link going up or down), and samples the counters
//! once a second for the rates of `stats` (stats.rs).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::RecvTimeoutError;

use super::netns::Netns;
use super::Daemon;
use crate::port::PortId;
use crate::worker::PortEvent;

/// How often the namespaces of TAP ports are checked.
const NETNS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the uplink's rules are checked for someone having removed them.
const UPLINK_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the counters are sampled: rates are over this interval (docs/stats.md).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

impl Daemon {
    /// Ages forwarding tables once a second and removes ports whose device
    /// or namespace vanished.
    pub(super) fn housekeeping(&self) {
        let mut next_netns_check = Instant::now() + NETNS_CHECK_EVERY;
        let mut next_uplink_check = Instant::now() + UPLINK_CHECK_EVERY;
        self.sample_stats();
        let mut next_sample = Instant::now() + SAMPLE_EVERY;
        while !self.stop.load(Ordering::Relaxed) {
            // Wake for the next sample at the latest, so that rates are over one second, not two.
            let wait = next_sample.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
            match self.events.recv_timeout(wait) {
                Ok(PortEvent::Gone { port, errno }) => self.remove_vanished(port, None, &format!("errno {errno}")),
                Ok(PortEvent::VhostLink { port, up }) => {
                    let inner = self.lock();
                    if let Some((p, net)) =
                        inner.ports.get(&port).and_then(|p| Some((p, inner.networks.get(&p.spec.network)?)))
                    {
                        if up {
                            // The frontend is back: its MAC is ours (VIRTIO_NET_F_MAC), point it here now.
                            net.fdb.table().learn(p.spec.mac, port, self.clock.now_secs());
                        } else {
                            // Gone: flood to the MACs it had, rather than send them into a dead port.
                            net.fdb.flush(Some(port));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if Instant::now() >= next_sample {
                self.sample_stats();
                // From when it was due, not from now: samples stay about a second apart.
                next_sample += SAMPLE_EVERY;
                if next_sample < Instant::now() {
                    next_sample = Instant::now() + SAMPLE_EVERY;
                }
            }
            if Instant::now() >= next_netns_check {
                self.check_namespaces();
                next_netns_check = Instant::now() + NETNS_CHECK_EVERY;
            }
            if Instant::now() >= next_uplink_check {
                self.recheck_uplink();
                next_uplink_check = Instant::now() + UPLINK_CHECK_EVERY;
            }
            let now = self.clock.now_secs();
            let inner = self.lock();
            for net in inner.networks.values() {
                net.fdb.age(now);
            }
            // Refresh each port's share of its table, which workers read to
            // share a full table fairly (table/fdb.rs, "Bounds and fairness").
            let mut counts: HashMap<PortId, u64> = HashMap::new();
            for net in inner.networks.values() {
                counts.extend(net.fdb.port_counts());
            }
            for p in inner.ports.values() {
                p.stats.fdb_entries.store(counts.get(&p.id).copied().unwrap_or(0), Ordering::Relaxed);
            }
        }
    }

    /// Removes every TAP port whose namespace is no longer there under the
    /// name it was connected with (netns.rs, [`Netns::check`]). Its queue
    /// fds keep the namespace alive, so the interface never disappears by
    /// itself and the workers would never report it gone. The files are
    /// checked without the lock held.
    fn check_namespaces(&self) {
        let taps: Vec<(PortId, Netns)> =
            self.lock().ports.values().filter_map(|p| Some((p.id, p.netns.clone()?))).collect();
        for (port, ns) in taps {
            if let Err(why) = ns.check() {
                self.remove_vanished(port, Some(&ns), &format!("namespace gone: {why}"));
            }
        }
    }

    /// Removes `port`, whose interface (a worker saw EBADFD) or namespace
    /// vanished, if it is still there (and, with `ns`, still in that
    /// namespace: its id may have been reused since it was checked).
    fn remove_vanished(&self, port: PortId, ns: Option<&Netns>, cause: &str) {
        let mut inner = self.lock();
        let Some(p) = inner.ports.get(&port) else { return };
        if ns.is_some() && p.netns.as_ref() != ns {
            return;
        }
        tracing::warn!(port = %port, network = %p.spec.network, netns = %p.spec.netns, ifname = %p.spec.ifname,
            cause, "port's interface vanished (namespace deleted?); removing the port");
        self.remove_ports(&mut inner, &[port]);
        self.persist(&inner);
    }
}
