//! Worker threads: each owns a set of ports, polls their descriptors with mio
//! and runs every frame it reads through the forwarding decision to the
//! egress ports.
//!
//! Loop (one turn):
//! 1. `poll` (blocking only when no port has frames left over from the last turn).
//! 2. On a wake-up from the control plane, adopt the newest snapshot: register
//!    new ports, deregister removed ones.
//! 3. Serve the ready ports round-robin, one burst of at most
//!    [`BATCH`](crate::packet::BATCH) frames each. mio is edge-triggered: a
//!    port whose burst filled up may hold more frames but will not be
//!    reported again, so it stays on the `pending` list for the next turn.
//!    One busy port thus gets one burst per turn like every other port.
//!
//! Nothing in steady state allocates, locks or logs: buffers, the pending
//! list and the per-burst counters are sized at start. Counters are added to
//! the shared per-port stats once per burst.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::channel::Sender;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::clock::Clock;
use crate::datapath::offload::{complete_csum, segment, segment_frame_len, OffloadError};
use crate::datapath::route::{route_frame, Routed};
use crate::datapath::{decide, to_gateway, Decision, Learned, Table, ToGateway};
use crate::packet::{Batch, HEADROOM, MAX_FRAME};
use crate::port::{PortId, RecvState, SendReport};
use crate::snapshot::{NetworkView, PortView, RouterView, Snapshot};
use crate::stats::{BurstCount, DropReason, RouterStats, QUEUE_STATS};
use crate::wire::vnet::VnetHdr;
use crate::wire::EthAddrs;
use crate::wire::MacAddr;

const WAKER: Token = Token(usize::MAX);

/// Something a worker tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The port's device disappeared (for example its namespace was deleted).
    PortGone { port: PortId, errno: i32 },
    /// A vhost-user frontend connected (`up`) or went away.
    PortLink { port: PortId, up: bool },
}

/// What the control plane keeps of a running worker.
pub struct WorkerHandle {
    pub waker: Arc<Waker>,
    /// The epoch of the snapshot this worker runs on.
    pub adopted: Arc<AtomicU64>,
    pub thread: std::thread::JoinHandle<()>,
}

/// State shared by every worker.
#[derive(Clone)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub stop: Arc<AtomicBool>,
    pub events: Sender<WorkerEvent>,
    pub clock: Clock,
    /// Busy polling (`daemon --poll busy`): never sleep in `poll`.
    pub busy: bool,
}

/// Starts worker `index`, pinned to `core` when given.
pub fn spawn(index: usize, core: Option<core_affinity::CoreId>, shared: Shared) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let adopted = Arc::new(AtomicU64::new(0));
    let adopted2 = adopted.clone();
    let thread = std::thread::Builder::new().name(format!("tapyard-w{index}")).spawn(move || {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core) {
                tracing::warn!(worker = index, core = core.id, "could not pin worker to its core");
            }
        }
        let mut w = Worker::new(index, poll, shared, adopted2);
        if let Err(e) = w.run() {
            tracing::error!(worker = index, error = %e, "worker stopped");
        }
    })?;
    Ok(WorkerHandle { waker, adopted, thread })
}

/// Per-egress send results gathered over one burst, added to the shared
/// stats once at its end.
pub struct TxAcc {
    ids: [PortId; 64],
    reps: [SendReport; 64],
    n: usize,
    /// Frames of this burst held back for ports that want them in one
    /// call ([`PortCaps::gather`]): (egress port, index in the batch).
    gathered: [(PortId, u16); GATHER],
    ng: usize,
    /// Index in the batch of the frame being forwarded.
    cur: u16,
}

/// Frames a burst holds back for gathering ports (a burst of 64 flooded to 4 of them).
const GATHER: usize = 256;

impl Default for TxAcc {
    fn default() -> Self {
        Self::new()
    }
}

impl TxAcc {
    pub fn new() -> TxAcc {
        TxAcc {
            ids: [PortId(0); 64],
            reps: [SendReport::default(); 64],
            n: 0,
            gathered: [(PortId(0), 0); GATHER],
            ng: 0,
            cur: 0,
        }
    }

    #[inline]
    fn add(&mut self, view: &PortView, r: SendReport) {
        if let Some(i) = self.ids[..self.n].iter().position(|&id| id == view.id) {
            let a = &mut self.reps[i];
            a.sent += r.sent;
            a.bytes += r.bytes;
            a.link_down += r.link_down;
            a.queue_full += r.queue_full;
            a.errors += r.errors;
            return;
        }
        if self.n == self.ids.len() {
            // More distinct egress ports in one burst than we track: account directly.
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

    /// Sends the held-back frames, one `send_batch` per port (and per 64 frames).
    fn send_gathered(&mut self, snap: &Snapshot, batch: &Batch, queue: usize) {
        while self.ng > 0 {
            let port = self.gathered[0].0;
            let mut frames: [&[u8]; 64] = [&[]; 64];
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
                let r = view.port.send_batch(queue, &frames[..n]);
                self.add(view, r);
            }
        }
    }

    fn flush(&mut self, snap: &Snapshot) {
        for i in 0..self.n {
            if let Some(view) = snap.port(self.ids[i]) {
                apply_tx(view, &self.reps[i]);
            }
        }
        self.n = 0;
    }
}

fn apply_tx(view: &PortView, r: &SendReport) {
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

struct Worker {
    index: usize,
    poll: Poll,
    shared: Shared,
    adopted: Arc<AtomicU64>,
    snap: Arc<Snapshot>,
    /// Ports this worker has registered with its poller.
    owned: Vec<PortId>,
    /// Ports with frames possibly left to read, served round-robin.
    pending: VecDeque<PortId>,
    in_pending: Vec<bool>,
    /// Ports already reported gone (so they are reported once).
    gone: Vec<bool>,
    batch: Batch,
    tx: TxAcc,
    /// Where GSO super-frames are segmented for egress ports without offloads.
    scratch: Box<[u8]>,
}

impl Worker {
    fn new(index: usize, poll: Poll, shared: Shared, adopted: Arc<AtomicU64>) -> Worker {
        let n = usize::from(u16::MAX) + 1;
        Worker {
            index,
            poll,
            shared,
            adopted,
            snap: Arc::new(Snapshot::default()),
            owned: Vec::with_capacity(1024),
            pending: VecDeque::with_capacity(1024),
            in_pending: vec![false; n],
            gone: vec![false; n],
            batch: Batch::new(),
            tx: TxAcc::new(),
            scratch: new_scratch(),
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        self.adopt();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = if self.pending.is_empty() && !self.shared.busy { None } else { Some(Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut reload = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => reload = true,
                    Token(t) => self.mark_pending(PortId(t as u16)),
                }
            }
            if reload {
                self.adopt();
            }
            self.serve_pending();
        }
        Ok(())
    }

    #[inline]
    fn mark_pending(&mut self, id: PortId) {
        if !self.in_pending[id.index()] {
            self.in_pending[id.index()] = true;
            self.pending.push_back(id);
        }
    }

    /// Switches to the newest snapshot and brings poller registrations in line with it.
    fn adopt(&mut self) {
        let new = self.shared.snapshot.load_full();
        // Deregister ports we no longer own while the old snapshot still keeps their fds open.
        let mut i = 0;
        while i < self.owned.len() {
            let id = self.owned[i];
            let still = new.port(id).filter(|v| v.queue_for(self.index).is_some());
            let same = match (still, self.snap.port(id)) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.port, &b.port),
                _ => false,
            };
            if same {
                i += 1;
                continue;
            }
            if let Some(fd) = self.snap.port(id).and_then(|v| v.queue_for(self.index).and_then(|q| v.port.raw_fd(q))) {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            self.owned.swap_remove(i);
            self.gone[id.index()] = false;
        }
        for view in new.ports_of_worker(self.index) {
            if self.owned.contains(&view.id) {
                continue;
            }
            self.owned.push(view.id);
            if let Some(fd) = view.queue_for(self.index).and_then(|q| view.port.raw_fd(q)) {
                let r = self.poll.registry().register(&mut SourceFd(&fd), Token(view.id.index()), Interest::READABLE);
                if let Err(e) = r {
                    tracing::error!(port = %view.id, error = %e, "cannot poll port");
                }
            }
            // Frames may have queued before registration; edge-triggered
            // readiness would never report them, so look once now.
            let id = view.id;
            self.mark_pending(id);
        }
        self.snap = new;
        self.adopted.store(self.snap.epoch, Ordering::Release);
    }

    fn serve_pending(&mut self) {
        let now = self.shared.clock.now_secs();
        for _ in 0..self.pending.len() {
            let Some(id) = self.pending.pop_front() else {
                break;
            };
            self.in_pending[id.index()] = false;
            if self.gone[id.index()] {
                continue;
            }
            // Borrow the snapshot and the scratch space separately, so a
            // burst costs no reference-count traffic on shared cache lines.
            let Some((view, queue)) = self.snap.port(id).and_then(|v| Some((v, v.queue_for(self.index)?))) else {
                continue;
            };
            let mut io =
                Io { batch: &mut self.batch, tx: &mut self.tx, scratch: &mut self.scratch, queue, worker: self.index };
            let state = burst(&mut io, &self.snap, view, now);
            match state {
                RecvState::More => self.mark_pending(id),
                RecvState::Drained => {}
                RecvState::Gone => {
                    self.gone[id.index()] = true;
                    if let Some(fd) = self.snap.port(id).and_then(|v| v.port.raw_fd(queue)) {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    let _ = self.shared.events.try_send(WorkerEvent::PortGone { port: id, errno: libc::EBADFD });
                }
                RecvState::Error(_) => {
                    if let Some(v) = self.snap.port(id) {
                        v.stats.rx_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// Called when the table is full and the source of `frame` (on `view`'s port)
/// was not learned. If that port holds less than its fair share of the table
/// (capacity / ports of the network), evict one entry of the port holding the
/// most, if that one holds more than its share, and learn again. Returns
/// whether the source is now learned. Bounded work, no allocation; taken only
/// by a port under its share, so a port flooding made-up MACs never gets here.
fn share_fairly(table: &Table, snap: &Snapshot, view: &PortView, frame: &[u8], now: u32) -> bool {
    let net = &view.network;
    let fair = table.capacity() as u64 / net.ports.len().max(1) as u64;
    if view.stats.fdb_entries.load(Ordering::Relaxed) >= fair {
        return false;
    }
    let victim = net
        .ports
        .iter()
        .filter(|&&p| p != view.id)
        .filter_map(|&p| snap.port(p))
        .max_by_key(|p| p.stats.fdb_entries.load(Ordering::Relaxed));
    let Some(victim) = victim.filter(|v| v.stats.fdb_entries.load(Ordering::Relaxed) > fair) else {
        return false;
    };
    let Ok(eth) = EthAddrs::parse(frame) else { return false };
    // Start the scan at a place that varies with the MAC, so evictions spread.
    if !table.evict_one(victim.id, eth.src.to_u64() as usize) {
        return false;
    }
    victim.stats.learn_evicted.fetch_add(1, Ordering::Relaxed);
    let _ = victim.stats.fdb_entries.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    // Count ourselves at once, so the share check tightens before the next refresh.
    view.stats.fdb_entries.fetch_add(1, Ordering::Relaxed);
    table.learn(eth.src, view.id, now) == Learned::New
}

/// A worker's scratch space and identity, borrowed for one burst.
pub struct Io<'a> {
    pub batch: &'a mut Batch,
    pub tx: &'a mut TxAcc,
    /// Segmentation space (see [`new_scratch`]).
    pub scratch: &'a mut [u8],
    /// The queue of the ingress port this worker reads.
    pub queue: usize,
    /// This worker's index: the queue it writes on every egress port.
    pub worker: usize,
}

/// Scratch space for one segment: a vnet header and a maximal frame.
pub fn new_scratch() -> Box<[u8]> {
    vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice()
}

/// Sends one frame (`wire`: vnet header + frame) to `egress` on queue
/// `queue`. When the frame asks for an offload the egress does not take, it
/// is finished here first: a partial checksum is completed in place (so the
/// other egress ports of a flood get the finished frame too), a GSO
/// super-frame is segmented into `scratch`, one segment at a time.
#[inline]
fn transmit(
    tx: &mut TxAcc,
    scratch: &mut [u8],
    egress: &PortView,
    queue: usize,
    wire: &mut [u8],
) -> Result<(), OffloadError> {
    let (hb, frame) = wire.split_at_mut(HEADROOM);
    let mut h = VnetHdr::of(hb);
    let caps = egress.port.caps();
    if caps.offloads.accepts(&h) {
        if !(caps.gather && tx.gather(egress.id)) {
            tx.add(egress, egress.port.send_batch(queue, &[&*wire]));
        }
        return Ok(());
    }
    if h.is_gso() {
        segment(&h, frame, scratch, |seg| tx.add(egress, egress.port.send_batch(queue, &[seg])))?;
        return Ok(());
    }
    complete_csum(&mut h, frame)?;
    h.write_to(hb);
    tx.add(egress, egress.port.send_batch(queue, &[&*wire]));
    Ok(())
}

/// Routes a frame addressed to the gateway (see `datapath::route`). Returns
/// true when it was forwarded (or dropped and counted); false hands it to
/// the gateway responder, which answers the gateway's own traffic and sends
/// the ICMP errors (the counter of the reason is bumped here). `on_wire` is
/// the largest frame this becomes on the wire (the segment size of a GSO
/// super-frame): the TTL is rewritten once in the super-frame's header, and
/// segmentation, if the egress needs it, follows.
#[allow(clippy::too_many_arguments)]
#[inline]
fn route(
    wire: &mut [u8],
    on_wire: usize,
    gw_ip: [u8; 4],
    router: &RouterView,
    net: &NetworkView,
    snap: &Snapshot,
    tx: &mut TxAcc,
    scratch: &mut [u8],
    q: usize,
    bad_offload: &mut u64,
) -> bool {
    let frame = &mut wire[HEADROOM..];
    // To one of the router's own addresses: the gateway answers it.
    if frame.len() >= 34 && router.gateway_ips.iter().any(|g| frame[30..34] == *g) {
        return false;
    }

    // Counted for the router and for the network the packet came from.
    let bump = |c: fn(&RouterStats) -> &AtomicU64| {
        c(&router.stats).fetch_add(1, Ordering::Relaxed);
        c(&net.route_stats).fetch_add(1, Ordering::Relaxed);
    };
    match route_frame(
        frame,
        on_wire,
        gw_ip,
        &router.table,
        |n, ip| snap.neighbor(n, ip),
        |n| snap.gateway_mac(n),
        |n| snap.mtu(n),
    ) {
        Routed::Forward { egress } => {
            let Some(out) = snap.network(egress) else { return false };
            bump(|s| &s.routed);
            let dst = MacAddr(frame[..6].try_into().expect("an Ethernet frame"));
            match out.fdb.table().lookup(dst).and_then(|p| snap.port(p)).filter(|p| Arc::ptr_eq(&p.network, out)) {
                Some(p) => {
                    if transmit(tx, scratch, p, q, wire).is_err() {
                        *bad_offload += 1;
                    }
                }
                None => {
                    for &q_port in &out.ports {
                        if let Some(p) = snap.port(q_port) {
                            if transmit(tx, scratch, p, q, wire).is_err() {
                                *bad_offload += 1;
                            }
                        }
                    }
                }
            }
            true
        }
        Routed::NotRouted => false,
        Routed::Expired => {
            bump(|s| &s.ttl_expired);
            false
        }
        Routed::NoRoute => {
            bump(|s| &s.no_route);
            false
        }
        Routed::Unresolved => {
            bump(|s| &s.unresolved);
            false
        }
        Routed::FragNeeded { .. } => {
            bump(|s| &s.frag_needed);
            false
        }
        Routed::TooBig => {
            // Not fragmented (see docs); counted, and dropped here.
            bump(|s| &s.too_big);
            true
        }
    }
}

/// Hands a frame to the gateway responder, finishing a partial checksum
/// first (smoltcp checks checksums). False when it could not be queued.
#[inline]
fn punt(gw: &crate::snapshot::GatewayView, net: &Arc<NetworkView>, in_port: PortId, wire: &mut [u8]) -> bool {
    let (hb, frame) = wire.split_at_mut(HEADROOM);
    let mut h = VnetHdr::of(hb);
    if h.is_gso() || complete_csum(&mut h, frame).is_err() {
        // A super-frame for the gateway itself (it serves no TCP) cannot be queued.
        return false;
    }
    gw.punt.push(net, in_port, frame)
}

/// Reads one burst from queue `io.queue` of `view` and forwards it: the whole per-frame path.
pub fn burst(io: &mut Io, snap: &Snapshot, view: &PortView, now: u32) -> RecvState {
    let Io { batch, tx, scratch, queue, worker } = io;
    batch.clear();
    let report = view.port.recv_batch(*queue, batch);
    if report.frames == 0 {
        return report.state;
    }
    let net = &view.network;
    let table = net.fdb.table();
    let mut rx = BurstCount::default();
    let mut drops = [0u64; DropReason::ALL.len()];
    let mut learn_full = 0u64;
    let q = *worker;
    for i in 0..batch.len() {
        tx.cur = i as u16;
        let wire = batch.wire_mut(i);
        let hdr = VnetHdr::of(wire);
        let len = wire.len() - HEADROOM;
        rx.add(len);
        // A super-frame is checked against the MTU by the frames it becomes.
        let (max_frame, on_wire) = if hdr.is_gso() {
            match segment_frame_len(&hdr, &wire[HEADROOM..]) {
                Ok(n) if n <= net.max_frame => (usize::MAX, n),
                Ok(_) => {
                    drops[DropReason::Oversize as usize] += 1;
                    continue;
                }
                Err(_) => {
                    drops[DropReason::BadOffload as usize] += 1;
                    continue;
                }
            }
        } else {
            (net.max_frame, len)
        };
        let v = decide(&wire[HEADROOM..], view.id, &table, max_frame, now);
        if v.learned == Some(Learned::Full) && !share_fairly(&table, snap, view, &wire[HEADROOM..], now) {
            learn_full += 1;
        }
        if let (Some(gw), false) = (&net.gateway, matches!(v.decision, Decision::Drop(_))) {
            match to_gateway(&wire[HEADROOM..], gw.mac, gw.ip) {
                ToGateway::No => {}
                ToGateway::Only => {
                    if let Some(router) = &net.router {
                        let mut bad = 0;
                        let done = route(wire, on_wire, gw.ip, router, net, snap, tx, scratch, q, &mut bad);
                        drops[DropReason::BadOffload as usize] += bad;
                        if done {
                            continue;
                        }
                    }
                    let wire = batch.wire_mut(i);
                    if !punt(gw, net, view.id, wire) {
                        drops[DropReason::GatewayFull as usize] += 1;
                    }
                    continue;
                }
                ToGateway::Copy => {
                    if !punt(gw, net, view.id, wire) {
                        drops[DropReason::GatewayFull as usize] += 1;
                    }
                }
            }
        }
        let wire = batch.wire_mut(i);
        let flood = match v.decision {
            Decision::Drop(r) => {
                drops[r as usize] += 1;
                continue;
            }
            Decision::Flood => true,
            Decision::Unicast(out) => match snap.port(out) {
                // The entry may name a port that left or changed networks
                // since it was learned: flood then, as for an unknown MAC.
                Some(egress) if Arc::ptr_eq(&egress.network, net) => {
                    if transmit(tx, scratch, egress, q, wire).is_err() {
                        drops[DropReason::BadOffload as usize] += 1;
                    }
                    false
                }
                _ => true,
            },
        };
        if flood {
            for &out in &net.ports {
                if out == view.id {
                    continue;
                }
                if let Some(egress) = snap.port(out) {
                    if transmit(tx, scratch, egress, q, wire).is_err() {
                        drops[DropReason::BadOffload as usize] += 1;
                    }
                }
            }
        }
    }
    let s = &view.stats;
    s.rx_packets.fetch_add(rx.packets, Ordering::Relaxed);
    s.rx_queue_packets[(*queue).min(QUEUE_STATS - 1)].fetch_add(rx.packets, Ordering::Relaxed);
    s.rx_bytes.fetch_add(rx.bytes, Ordering::Relaxed);
    if learn_full > 0 {
        s.learn_full.fetch_add(learn_full, Ordering::Relaxed);
    }
    for r in DropReason::ALL {
        if drops[r as usize] > 0 {
            s.drop_n(r, drops[r as usize]);
        }
    }
    drop(table);
    tx.send_gathered(snap, batch, q);
    tx.flush(snap);
    report.state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Fdb;
    use crate::port::mem::MemPort;
    use crate::port::Port;
    use crate::snapshot::NetworkView;
    use crate::stats::PortStats;

    const BCAST: [u8; 6] = [0xff; 6];

    fn frame(dst: [u8; 6], src: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len.max(14)];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
        f.truncate(len);
        f
    }

    /// Two networks: ports 1, 2, 3 on "a", port 4 on "b".
    fn setup() -> (Snapshot, Vec<Arc<MemPort>>) {
        let mems: Vec<Arc<MemPort>> = (0..=4).map(|i| Arc::new(MemPort::new(&format!("m{i}")))).collect();
        let net = |name: &str, ports: Vec<u16>| {
            Arc::new(NetworkView {
                gateway: None,
                index: 0,
                router: None,
                route_stats: Default::default(),
                neighbors: Default::default(),
                name: name.into(),
                max_frame: 1518,
                fdb: Arc::new(Fdb::new(64, 300)),
                ports: ports.into_iter().map(PortId).collect(),
            })
        };
        let (a, b) = (net("a", vec![1, 2, 3]), net("b", vec![4]));
        let mut ports = vec![None];
        for i in 1..=4u16 {
            let network = if i == 4 { b.clone() } else { a.clone() };
            let port: Arc<dyn Port> = mems[i as usize].clone();
            ports.push(Some(Arc::new(PortView { id: PortId(i), port, stats: Arc::default(), network, worker: 0 })));
        }
        (Snapshot { epoch: 1, networks: vec![a, b], ports }, mems)
    }

    fn run(snap: &Snapshot, id: u16) -> RecvState {
        let mut batch = Batch::new();
        let mut tx = TxAcc::new();
        let mut scratch = new_scratch();
        let mut io = Io { batch: &mut batch, tx: &mut tx, scratch: &mut scratch, queue: 0, worker: 0 };
        burst(&mut io, snap, snap.port(PortId(id)).unwrap(), 0)
    }

    fn stats(snap: &Snapshot, id: u16) -> &PortStats {
        &snap.port(PortId(id)).unwrap().stats
    }

    #[test]
    fn broadcast_floods_its_network_only_and_unicast_follows_learning() {
        let (snap, m) = setup();
        m[1].inject(&frame(BCAST, 1, 60));
        assert_eq!(run(&snap, 1), RecvState::Drained);
        assert_eq!(m[1].take_sent().len(), 0, "never back out the ingress port");
        assert_eq!(m[2].take_sent().len(), 1);
        assert_eq!(m[3].take_sent().len(), 1);
        assert_eq!(m[4].take_sent().len(), 0, "networks are isolated");
        // Port 2 answers port 1: known unicast, one copy, to port 1 only.
        m[2].inject(&frame([2, 0, 0, 0, 0, 1], 2, 60));
        run(&snap, 2);
        assert_eq!(m[1].take_sent().len(), 1);
        assert_eq!(m[3].take_sent().len(), 0);
        assert_eq!(stats(&snap, 1).tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(stats(&snap, 2).rx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(stats(&snap, 2).rx_bytes.load(Ordering::Relaxed), 60);
    }

    #[test]
    fn a_port_flooding_made_up_macs_cannot_lock_its_neighbours_out() {
        let (snap, m) = setup();
        let net = snap.port(PortId(1)).unwrap().network.clone();
        // Port 1 sends from 200 made-up MACs; the table (64) fills with them.
        for i in 0..200u32 {
            let mut f = frame(BCAST, 0, 60);
            f[8..12].copy_from_slice(&i.to_be_bytes());
            f[6] = 0x02;
            m[1].inject(&f);
            if i % 32 == 31 {
                run(&snap, 1);
            }
        }
        run(&snap, 1);
        assert_eq!(net.fdb.table().len(), 64);
        assert!(stats(&snap, 1).learn_full.load(Ordering::Relaxed) > 0);
        // The control plane's per-second refresh of the gauges.
        for (p, n) in net.fdb.port_counts() {
            stats(&snap, p.0).fdb_entries.store(n, Ordering::Relaxed);
        }
        // Port 2, holding nothing, still gets its MAC learned: one of port 1's goes.
        m[2].inject(&frame(BCAST, 0x77, 60));
        run(&snap, 2);
        let t = net.fdb.table();
        assert_eq!(t.lookup(crate::wire::MacAddr([2, 0, 0, 0, 0, 0x77])), Some(PortId(2)));
        assert_eq!(t.len(), 64);
        assert_eq!(stats(&snap, 1).learn_evicted.load(Ordering::Relaxed), 1);
        assert_eq!(stats(&snap, 2).learn_full.load(Ordering::Relaxed), 0);
        // Port 1, far over its share, never evicts anyone to learn more.
        let before = net.fdb.port_counts()[&PortId(1)];
        m[1].inject(&frame(BCAST, 0x99, 60));
        run(&snap, 1);
        assert_eq!(net.fdb.port_counts()[&PortId(1)], before);
    }

    #[test]
    fn an_entry_pointing_into_another_network_is_not_followed() {
        let (snap, m) = setup();
        // A MAC learned on port 4 (network b) must not pull a frame of network a across.
        snap.port(PortId(1)).unwrap().network.fdb.table().learn(crate::wire::MacAddr([2, 0, 0, 0, 0, 9]), PortId(4), 0);
        m[1].inject(&frame([2, 0, 0, 0, 0, 9], 1, 60));
        run(&snap, 1);
        assert_eq!(m[4].take_sent().len(), 0);
        assert_eq!(m[2].take_sent().len(), 1, "flooded within its own network instead");
    }

    #[test]
    fn bursts_are_bounded_and_drops_are_counted_by_reason() {
        let (snap, m) = setup();
        for _ in 0..(crate::packet::BATCH + 5) {
            m[1].inject(&frame(BCAST, 1, 60));
        }
        assert_eq!(run(&snap, 1), RecvState::More, "a full burst leaves the rest for the next turn");
        assert_eq!(run(&snap, 1), RecvState::Drained);
        m[1].inject(&frame(BCAST, 1, 10));
        m[1].inject(&frame(BCAST, 1, 2000));
        m[1].inject(&frame(BCAST, 0xff, 60)); // src 02:..:ff is fine
        let mut mc = frame(BCAST, 1, 60);
        mc[6] = 0x01; // group source address
        m[1].inject(&mc);
        m[3].set_down(true);
        run(&snap, 1);
        let s = stats(&snap, 1);
        assert_eq!(s.drops(DropReason::Runt), 1);
        assert_eq!(s.drops(DropReason::Oversize), 1);
        assert_eq!(s.drops(DropReason::BadSrcMac), 1);
        // Port 3 was down for the one good frame of the last burst.
        assert_eq!(stats(&snap, 3).drops(DropReason::LinkDown), 1);
        assert_eq!(stats(&snap, 2).tx_packets.load(Ordering::Relaxed), crate::packet::BATCH as u64 + 5 + 1);
    }

    /// A TCP super-frame from port 1: to a port with TSO it goes as it is (one
    /// write); to a port without offloads it is segmented, each segment complete.
    #[test]
    fn super_frames_pass_through_or_are_segmented_per_egress() {
        use crate::wire::vnet::{Offloads, VnetHdr};
        let mems = [
            Arc::new(MemPort::with_offloads("tso-in", Offloads::ALL)),
            Arc::new(MemPort::with_offloads("tso-out", Offloads::ALL)),
            Arc::new(MemPort::new("plain-out")),
        ];
        let net = Arc::new(NetworkView {
            gateway: None,
            index: 0,
            router: None,
            route_stats: Default::default(),
            neighbors: Default::default(),
            name: "n".into(),
            max_frame: 1518,
            fdb: Arc::new(Fdb::new(64, 300)),
            ports: vec![PortId(1), PortId(2), PortId(3)],
        });
        let mut ports = vec![None];
        for (i, m) in mems.iter().enumerate() {
            let port: Arc<dyn Port> = m.clone();
            let id = PortId(i as u16 + 1);
            ports.push(Some(Arc::new(PortView { id, port, stats: Arc::default(), network: net.clone(), worker: 0 })));
        }
        let snap = Snapshot { epoch: 1, networks: vec![net], ports };
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1000, 2000, 7, 65535)
            .ack(1)
            .psh()
            .write(&mut frame, &payload)
            .unwrap();
        let hdr = VnetHdr::tcp4_gso(1448);
        mems[0].inject_wire(hdr, &frame);
        run(&snap, 1);
        let passed = mems[1].take_sent_wire();
        assert_eq!(passed, vec![(hdr, frame.clone())], "unchanged, one write, header kept");
        let segs = mems[2].take_sent_wire();
        assert_eq!(segs.len(), 3, "4000 bytes in 1448-byte segments");
        let mut joined = Vec::new();
        for (i, (h, f)) in segs.iter().enumerate() {
            assert!(h.is_plain());
            let p = etherparse::SlicedPacket::from_ethernet(f).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not TCP") };
            let want = tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), want, "segment {i} checksum");
            assert_eq!(tcp.sequence_number(), 7 + 1448 * i as u32);
            assert_eq!(tcp.psh(), i == 2, "PSH only on the last segment");
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
        // Counted once as received, and per segment on the plain egress.
        assert_eq!(stats(&snap, 1).rx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(stats(&snap, 3).tx_packets.load(Ordering::Relaxed), 3);
        // A super-frame whose segments would not fit the network's MTU is dropped.
        let big = VnetHdr { gso_size: 3000, ..hdr };
        mems[0].inject_wire(big, &frame);
        run(&snap, 1);
        assert!(mems[1].take_sent().is_empty() && mems[2].take_sent().is_empty());
        assert_eq!(stats(&snap, 1).drops(DropReason::Oversize), 1);
        // A header that cannot be finished (GSO on a non-IP frame) is dropped and counted.
        let mut junk = frame.clone();
        junk[12..14].copy_from_slice(&[0x88, 0xb5]);
        mems[0].inject_wire(hdr, &junk);
        run(&snap, 1);
        assert_eq!(stats(&snap, 1).drops(DropReason::BadOffload), 1);
    }
}
