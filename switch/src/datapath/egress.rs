//! Stage three of the pipeline: carrying out a [`Verdict`]. This module owns
//! everything after the decision: transmitting to one port, flooding a
//! network, delivering a routed frame (unicast by the egress network's
//! table, else flooded: [`targets`], the one definition of "unicast or
//! flood", which the gateway uses too), finishing offloads in software for
//! egress ports that lack them ([`super::offload`]), gathering a burst's
//! frames for ports that take them in one call (`PortCaps::gather`),
//! punting to the gateway, and the per-burst accounting ([`Tally`]).
//!
//! Per-burst accounting: counters are added to the shared per-port and
//! per-router stats once per burst, not per frame, so a burst costs a
//! handful of atomic adds on shared cache lines however many frames it holds.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use super::classify::Verdict;
use super::impair::Lines;
use super::offload::{complete_csum, segment, OffloadError};
use super::route;
use crate::capture::{now_ns, Dir, PortTaps};
use crate::packet::{Batch, PortId, BATCH, HEADROOM, MAX_FRAME};
use crate::port::SendReport;
use crate::punt::PuntReason;
use crate::snapshot::{NetworkView, PortView, Snapshot};
use crate::stats::{BurstCount, DropReason, RouterStats, QUEUE_STATS};
use crate::wire::vnet::VnetHdr;
use crate::wire::{dst_mac, MacAddr};

/// Distinct egress ports whose send reports one burst accumulates; beyond
/// that (a flood into a very large network) reports are applied directly.
const TRACKED_EGRESS: usize = 64;
/// Frames a burst holds back for gathering ports: a full burst flooded to
/// eight of them.
const GATHER: usize = BATCH * 8;

/// The ports a frame for `dst` goes to on network `net`: the port `dst` was
/// learned on if it is on `net` (and is not `except`), else every port of
/// `net` but `except`.
pub fn targets<'a>(
    snap: &'a Snapshot,
    net: &'a NetworkView,
    dst: MacAddr,
    except: Option<PortId>,
) -> impl Iterator<Item = &'a PortView> + 'a {
    let learned = (!dst.is_multicast())
        .then(|| net.fdb.table().lookup(dst))
        .flatten()
        .and_then(|p| snap.port(p))
        .filter(|p| p.on(net.id) && Some(p.id) != except);
    let flood = learned.is_none().then_some(net.ports.iter()).into_iter().flatten();
    learned
        .map(|p| &**p)
        .into_iter()
        .chain(flood.filter(move |&&p| Some(p) != except).filter_map(move |&p| snap.port(p).map(|v| &**v)))
}

/// What one burst of one ingress port counted, added to the shared stats at its end.
#[derive(Default)]
pub struct Tally {
    rx: BurstCount,
    drops: [u64; DropReason::ALL.len()],
    learn_full: u64,
    /// Routing outcomes, by [`RouteCount`].
    routes: [u64; RouteCount::N],
}

/// The routing outcomes a burst counts for the ingress network's router.
#[derive(Clone, Copy)]
enum RouteCount {
    Routed,
    TtlExpired,
    NoRoute,
    Unresolved,
    FragNeeded,
    TooBig,
}

impl RouteCount {
    const N: usize = 6;

    /// The counter of a punt reason; none for the gateway's own traffic.
    fn of(reason: PuntReason) -> Option<RouteCount> {
        match reason {
            PuntReason::Local => None,
            PuntReason::TtlExpired => Some(RouteCount::TtlExpired),
            PuntReason::NoRoute => Some(RouteCount::NoRoute),
            PuntReason::Unresolved { .. } => Some(RouteCount::Unresolved),
            PuntReason::FragNeeded { .. } => Some(RouteCount::FragNeeded),
        }
    }

    fn counter(self, s: &RouterStats) -> &AtomicU64 {
        match self {
            RouteCount::Routed => &s.routed,
            RouteCount::TtlExpired => &s.ttl_expired,
            RouteCount::NoRoute => &s.no_route,
            RouteCount::Unresolved => &s.unresolved,
            RouteCount::FragNeeded => &s.frag_needed,
            RouteCount::TooBig => &s.too_big,
        }
    }

    const ALL: [RouteCount; RouteCount::N] = [
        RouteCount::Routed,
        RouteCount::TtlExpired,
        RouteCount::NoRoute,
        RouteCount::Unresolved,
        RouteCount::FragNeeded,
        RouteCount::TooBig,
    ];
}

impl Tally {
    #[inline]
    fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    #[inline]
    fn route(&mut self, c: RouteCount) {
        self.routes[c as usize] += 1;
    }

    /// Adds the burst's counts to `ingress`'s stats (frames read on `queue`)
    /// and its network's router, and starts over.
    fn flush(&mut self, ingress: &PortView, queue: usize) {
        let s = &ingress.stats;
        s.rx_packets.fetch_add(self.rx.packets, Ordering::Relaxed);
        s.rx_queue_packets[queue.min(QUEUE_STATS - 1)].fetch_add(self.rx.packets, Ordering::Relaxed);
        s.rx_bytes.fetch_add(self.rx.bytes, Ordering::Relaxed);
        if self.learn_full > 0 {
            s.learn_full.fetch_add(self.learn_full, Ordering::Relaxed);
        }
        for r in DropReason::ALL {
            if self.drops[r as usize] > 0 {
                s.drop_n(r, self.drops[r as usize]);
            }
        }
        let net = &ingress.network;
        for c in RouteCount::ALL {
            let n = self.routes[c as usize];
            if n > 0 {
                // Counted for the router and for the network the packets came from.
                if let Some(r) = &net.router {
                    c.counter(&r.stats).fetch_add(n, Ordering::Relaxed);
                }
                c.counter(&net.route_stats).fetch_add(n, Ordering::Relaxed);
            }
        }
        *self = Tally::default();
    }
}

/// A worker's egress stage: its transmit queue, segmentation space, and what
/// one burst has sent, gathered and counted so far. Allocated once per worker.
pub struct Egress {
    /// The queue this worker writes on every egress port (its index).
    queue: usize,
    /// Send reports per egress port, applied once per burst.
    ids: [PortId; TRACKED_EGRESS],
    reps: [SendReport; TRACKED_EGRESS],
    n: usize,
    /// Frames of this burst held back for ports that want them in one
    /// call: (egress port, index in the batch).
    gathered: [(PortId, u16); GATHER],
    ng: usize,
    /// Index in the batch of the frame being carried out.
    cur: u16,
    /// Where GSO super-frames are segmented: a vnet header and a maximal frame.
    scratch: Box<[u8]>,
    tally: Tally,
    /// Frames held by impaired ports' settings (`port set`; [`super::impair`]).
    pub impair: Lines,
    /// When this burst was read ([`now_ns`]), for captures and the flight recorder.
    ts: u64,
}

impl Egress {
    /// The egress stage of the worker that writes queue `queue` of every port.
    pub fn new(queue: usize) -> Egress {
        Egress {
            queue,
            ids: [PortId(0); TRACKED_EGRESS],
            reps: [SendReport::default(); TRACKED_EGRESS],
            n: 0,
            gathered: [(PortId(0), 0); GATHER],
            ng: 0,
            cur: 0,
            scratch: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(),
            tally: Tally::default(),
            impair: Lines::new(queue),
            ts: 0,
        }
    }

    /// Counts a frame of `len` bytes read from the ingress port, and whether
    /// its source could not be learned.
    #[inline]
    pub fn received(&mut self, len: usize, learn_full: bool) {
        self.tally.rx.add(len);
        self.tally.learn_full += u64::from(learn_full);
    }

    /// Carries out `verdict` for the frame at `index` of the burst (`wire`:
    /// its vnet header and frame), received on `ingress`.
    #[inline]
    pub fn apply(&mut self, verdict: Verdict, index: usize, wire: &mut [u8], ingress: &PortView, snap: &Snapshot) {
        self.cur = index as u16;
        let net = &*ingress.network;
        match verdict {
            Verdict::Forward(out) => {
                if let Some(egress) = snap.port(out) {
                    self.transmit(egress, wire, snap);
                }
            }
            Verdict::Flood { local } => {
                if local {
                    self.punt(net, ingress.id, PuntReason::Local, wire);
                }
                for &out in &net.ports {
                    if out != ingress.id {
                        if let Some(egress) = snap.port(out) {
                            self.transmit(egress, wire, snap);
                        }
                    }
                }
            }
            Verdict::Route(hop) => {
                let Some(out) = snap.network(hop.egress) else {
                    self.tally.route(RouteCount::NoRoute);
                    return;
                };
                if !route::rewrite(&mut wire[HEADROOM..], &hop) {
                    // classify checked what rewrite needs; a frame that fails it is not a packet to route.
                    self.tally.drop(DropReason::BadOffload);
                    return;
                }
                self.tally.route(RouteCount::Routed);
                for egress in targets(snap, out, hop.dst, None) {
                    self.transmit(egress, wire, snap);
                }
            }
            Verdict::Local => self.punt(net, ingress.id, PuntReason::Local, wire),
            Verdict::Punt(reason) => {
                if let Some(c) = RouteCount::of(reason) {
                    self.tally.route(c);
                }
                self.punt(net, ingress.id, reason, wire);
            }
            Verdict::Drop(r) => {
                if r == DropReason::TooBig {
                    self.tally.route(RouteCount::TooBig);
                }
                self.tally.drop(r);
            }
        }
    }

    /// Ends a burst of `ingress` read on `queue`: sends what was gathered,
    /// applies the send reports, and adds the burst's counts to the stats.
    pub fn finish(&mut self, batch: &Batch, ingress: &PortView, queue: usize, snap: &Snapshot) {
        self.send_gathered(snap, batch);
        self.apply_reports(snap);
        self.tally.flush(ingress, queue);
    }

    fn apply_reports(&mut self, snap: &Snapshot) {
        for i in 0..self.n {
            if let Some(view) = snap.port(self.ids[i]) {
                apply_tx(view, &self.reps[i]);
            }
        }
        self.n = 0;
    }

    /// Sends the direction-out frames of impaired ports that are due now
    /// ([`super::impair`]), finishing offloads as for any frame.
    pub fn release_impaired(&mut self, snap: &Snapshot) {
        let mut lines = std::mem::take(&mut self.impair);
        lines.due_out(|id, wire| {
            if let Some(view) = snap.port(id) {
                // Not gathered: released frames are not in the burst.
                if self.finish_and_send(view, wire, false).is_err() {
                    view.stats.drop_n(DropReason::BadOffload, 1);
                }
            }
        });
        self.impair = lines;
        self.apply_reports(snap);
    }

    /// Sends one frame (`wire`: vnet header + frame) to `egress`. When the
    /// frame asks for an offload the egress does not take, it is finished
    /// here first: a partial checksum is completed in place (so the other
    /// egress ports of a flood get the finished frame too), a GSO
    /// super-frame is segmented into the scratch space, one segment at a time.
    #[inline]
    fn transmit(&mut self, egress: &PortView, wire: &mut [u8], snap: &Snapshot) {
        // Taps see the frame as the switch sends it, before the link's
        // impairments (as on a switch port with a lossy cable behind it).
        if let Some(t) = snap.taps(egress.id) {
            self.tap(t, egress.id, Dir::Out, wire, snap);
        }
        if let Some(imp) = &egress.impair {
            if self.impair.egress(egress, imp, wire) {
                return;
            }
        }
        if self.finish_and_send(egress, wire, true).is_err() {
            self.tally.drop(DropReason::BadOffload);
        }
    }

    #[inline]
    fn finish_and_send(&mut self, egress: &PortView, wire: &mut [u8], gather: bool) -> Result<(), OffloadError> {
        let (hb, frame) = wire.split_at_mut(HEADROOM);
        let mut h = VnetHdr::of(hb);
        let caps = egress.port.caps();
        if caps.offloads.accepts(&h) {
            if !(gather && caps.gather && self.gather(egress.id)) {
                let r = egress.port.send_batch(self.queue, &[&*wire]);
                self.add(egress, r);
            }
            return Ok(());
        }
        if h.is_gso() {
            let (queue, scratch) = (self.queue, &mut self.scratch);
            let mut reps = SendReport::default();
            segment(&h, frame, scratch, |seg| reps.add(&egress.port.send_batch(queue, &[seg])))?;
            self.add(egress, reps);
            return Ok(());
        }
        complete_csum(&mut h, frame)?;
        h.write_to(hb);
        let r = egress.port.send_batch(self.queue, &[&*wire]);
        self.add(egress, r);
        Ok(())
    }

    /// Starts a burst: the time its frames are recorded and captured with
    /// (one clock read per burst, and none when no port has taps).
    #[inline]
    pub fn begin(&mut self, snap: &Snapshot) {
        if !snap.taps.is_empty() {
            self.ts = now_ns();
        }
    }

    /// The taps of a frame crossing `port` in direction `dir`: its flight
    /// recorder, the captures that include it, and a copy to its mirror
    /// port (sent at once, never gathered: a routed frame is rewritten
    /// after its ingress copy). The copy's send is counted on the mirror
    /// port only, and its failures are not the source's.
    #[inline]
    pub fn tap(&mut self, taps: &PortTaps, port: PortId, dir: Dir, wire: &mut [u8], snap: &Snapshot) {
        taps.observe(self.queue, dir, self.ts, &wire[HEADROOM..]);
        let Some(m) = taps.mirror.filter(|&m| m != port).and_then(|m| snap.port(m)) else { return };
        taps.mirrored.fetch_add(1, Ordering::Relaxed);
        if let Some(mt) = snap.taps(m.id) {
            // The mirror port's own recorder and captures see the copy; its mirror does not (no chains).
            mt.observe(self.queue, Dir::Out, self.ts, &wire[HEADROOM..]);
        }
        let _ = self.finish_and_send(m, wire, false);
    }

    /// Hands a frame to the gateway of `net`, finishing a partial checksum
    /// first (the gateway's smoltcp checks checksums; the finished header is
    /// written back, so a flood that follows sends the same finished frame).
    /// A super-frame (the gateway serves no TCP), a frame that cannot be
    /// finished, or a full queue is counted `gateway_full`.
    #[inline]
    fn punt(&mut self, net: &NetworkView, in_port: PortId, reason: PuntReason, wire: &mut [u8]) {
        let Some(gw) = &net.gateway else { return };
        let (hb, frame) = wire.split_at_mut(HEADROOM);
        let mut h = VnetHdr::of(hb);
        let queued = !h.is_gso() && complete_csum(&mut h, frame).is_ok() && {
            h.write_to(hb);
            gw.punt.push(net.id, in_port, reason, frame)
        };
        if !queued {
            self.tally.drop(DropReason::GatewayFull);
        }
    }

    #[inline]
    fn add(&mut self, view: &PortView, r: SendReport) {
        if let Some(i) = self.ids[..self.n].iter().position(|&id| id == view.id) {
            self.reps[i].add(&r);
            return;
        }
        if self.n == TRACKED_EGRESS {
            apply_tx(view, &r);
            return;
        }
        self.ids[self.n] = view.id;
        self.reps[self.n] = r;
        self.n += 1;
    }

    /// Holds the current frame back for `port`; false when full (send now).
    #[inline]
    fn gather(&mut self, port: PortId) -> bool {
        if self.ng == GATHER {
            return false;
        }
        self.gathered[self.ng] = (port, self.cur);
        self.ng += 1;
        true
    }

    /// Sends the held-back frames, one `send_batch` per port (a port gets at
    /// most one copy of each of a burst's frames, so [`BATCH`] per call).
    fn send_gathered(&mut self, snap: &Snapshot, batch: &Batch) {
        while self.ng > 0 {
            let port = self.gathered[0].0;
            let mut frames: [&[u8]; BATCH] = [&[]; BATCH];
            let mut n = 0;
            // Take the frames for `port` in order, keep the rest (a burst is
            // at most a few hundred entries: this is cheaper than sorting).
            let mut keep = 0;
            for k in 0..self.ng {
                let (p, i) = self.gathered[k];
                if p == port && n < frames.len() {
                    frames[n] = batch.get(usize::from(i)).wire();
                    n += 1;
                } else {
                    self.gathered[keep] = (p, i);
                    keep += 1;
                }
            }
            self.ng = keep;
            if let Some(view) = snap.port(port) {
                let r = view.port.send_batch(self.queue, &frames[..n]);
                self.add(view, r);
            }
        }
    }
}

/// Adds a send report to `view`'s counters.
pub fn apply_tx(view: &PortView, r: &SendReport) {
    let s = &view.stats;
    s.tx_packets.fetch_add(r.sent, Ordering::Relaxed);
    s.tx_bytes.fetch_add(r.bytes, Ordering::Relaxed);
    if r.link_down > 0 {
        s.drop_n(DropReason::LinkDown, r.link_down);
    }
    if r.queue_full > 0 {
        s.drop_n(DropReason::QueueFull, r.queue_full);
    }
    if r.errors > 0 {
        s.tx_errors.fetch_add(r.errors, Ordering::Relaxed);
    }
}

/// The destination MAC of a frame for [`targets`] (broadcast for a runt: flooded).
#[inline]
pub fn dst_or_broadcast(frame: &[u8]) -> MacAddr {
    dst_mac(frame).unwrap_or(MacAddr::BROADCAST)
}
