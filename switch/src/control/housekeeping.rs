//! The housekeeping thread: ages the forwarding tables once a second,
//! refreshes each port's share of its table, and acts on the workers'
//! port events (a vanished interface, a vhost-user link going up or down).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam::channel::RecvTimeoutError;

use super::Daemon;
use crate::port::PortId;
use crate::worker::PortEvent;

impl Daemon {
    /// Ages forwarding tables once a second and removes ports whose device vanished.
    pub(super) fn housekeeping(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.events.recv_timeout(Duration::from_secs(1)) {
                Ok(PortEvent::Gone { port, errno }) => {
                    let mut inner = self.lock();
                    if let Some(p) = inner.ports.get(&port) {
                        tracing::warn!(port = %port, network = %p.spec.network, netns = %p.spec.netns,
                            ifname = %p.spec.ifname, errno, "port's interface vanished (namespace deleted?); removing the port");
                        self.remove_ports(&mut inner, &[port]);
                        self.persist(&inner);
                    }
                }
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
}
