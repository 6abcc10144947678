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
use crate::datapath::route::{route_frame, Routed};
use crate::datapath::{decide, to_gateway, Decision, Learned, Table, ToGateway};
use crate::packet::Batch;
use crate::port::{PortId, RecvState, SendReport};
use crate::snapshot::{NetworkView, PortView, RouterView, Snapshot};
use crate::stats::{BurstCount, DropReason, RouterStats};
use crate::wire::EthAddrs;
use crate::wire::MacAddr;

const WAKER: Token = Token(usize::MAX);

/// Something a worker tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The port's device disappeared (for example its namespace was deleted).
    PortGone { port: PortId, errno: i32 },
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
}

impl Default for TxAcc {
    fn default() -> Self {
        Self::new()
    }
}

impl TxAcc {
    pub fn new() -> TxAcc {
        TxAcc { ids: [PortId(0); 64], reps: [SendReport::default(); 64], n: 0 }
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
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        self.adopt();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = if self.pending.is_empty() { None } else { Some(Duration::ZERO) };
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
            let still = new.port(id).filter(|v| v.worker == self.index);
            let same = match (still, self.snap.port(id)) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.port, &b.port),
                _ => false,
            };
            if same {
                i += 1;
                continue;
            }
            if let Some(fd) = self.snap.port(id).and_then(|v| v.port.raw_fd()) {
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
            if let Some(fd) = view.port.raw_fd() {
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
            let Some(view) = self.snap.port(id).filter(|v| v.worker == self.index) else {
                continue;
            };
            let state = burst(&mut self.batch, &mut self.tx, &self.snap, view, now);
            match state {
                RecvState::More => self.mark_pending(id),
                RecvState::Drained => {}
                RecvState::Gone => {
                    self.gone[id.index()] = true;
                    if let Some(fd) = self.snap.port(id).and_then(|v| v.port.raw_fd()) {
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

/// Routes a frame addressed to the gateway (see `datapath::route`). Returns
/// true when it was forwarded; false hands it to the gateway responder, which
/// answers the gateway's own traffic and sends the ICMP errors (the counter
/// of the reason is bumped here).
#[inline]
fn route(
    frame: &mut [u8],
    gw_ip: [u8; 4],
    router: &RouterView,
    net: &NetworkView,
    snap: &Snapshot,
    tx: &mut TxAcc,
) -> bool {
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
            let frame: &[u8] = frame;
            match out.fdb.table().lookup(dst).and_then(|p| snap.port(p)).filter(|p| Arc::ptr_eq(&p.network, out)) {
                Some(p) => tx.add(p, p.port.send_batch(&[frame])),
                None => {
                    for &q in &out.ports {
                        if let Some(p) = snap.port(q) {
                            tx.add(p, p.port.send_batch(&[frame]));
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

/// Reads one burst from `view` and forwards it: the whole per-frame path.
pub fn burst(batch: &mut Batch, tx: &mut TxAcc, snap: &Snapshot, view: &PortView, now: u32) -> RecvState {
    batch.clear();
    let report = view.port.recv_batch(batch);
    if report.frames == 0 {
        return report.state;
    }
    let net = &view.network;
    let table = net.fdb.table();
    let mut rx = BurstCount::default();
    let mut drops = [0u64; DropReason::ALL.len()];
    let mut learn_full = 0u64;
    for i in 0..batch.len() {
        let frame = batch.frame_mut(i);
        rx.add(frame.len());
        let v = decide(frame, view.id, &table, net.max_frame, now);
        if v.learned == Some(Learned::Full) && !share_fairly(&table, snap, view, frame, now) {
            learn_full += 1;
        }
        if let (Some(gw), false) = (&net.gateway, matches!(v.decision, Decision::Drop(_))) {
            match to_gateway(frame, gw.mac, gw.ip) {
                ToGateway::No => {}
                ToGateway::Only => {
                    if let Some(router) = &net.router {
                        if route(frame, gw.ip, router, net, snap, tx) {
                            continue;
                        }
                    }
                    if !gw.punt.push(net, view.id, frame) {
                        drops[DropReason::GatewayFull as usize] += 1;
                    }
                    continue;
                }
                ToGateway::Copy => {
                    if !gw.punt.push(net, view.id, frame) {
                        drops[DropReason::GatewayFull as usize] += 1;
                    }
                }
            }
        }
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
                    tx.add(egress, egress.port.send_batch(&[frame]));
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
                    tx.add(egress, egress.port.send_batch(&[frame]));
                }
            }
        }
    }
    let s = &view.stats;
    s.rx_packets.fetch_add(rx.packets, Ordering::Relaxed);
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
        burst(&mut batch, &mut tx, snap, snap.port(PortId(id)).unwrap(), 0)
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
}
