//! Worker threads: each owns a set of ports, polls their descriptors with mio
//! and runs every burst it reads through the pipeline of [`crate::datapath`]
//! (classify, then egress). This file keeps what is the worker's own:
//! polling, snapshot adoption and the pending list; [`burst`] is the
//! pipeline's driver and reads top to bottom.
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
use crate::datapath::classify;
use crate::datapath::egress::Egress;
use crate::packet::{Batch, HEADROOM};
use crate::port::{PortId, RecvState};
use crate::snapshot::{PortView, Snapshot};
use crate::wire::vnet::VnetHdr;

const WAKER: Token = Token(usize::MAX);

/// Something the data path's threads tell the control plane about a port,
/// through one bounded queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEvent {
    /// Sent by a worker: the port's device disappeared (for example its
    /// namespace was deleted).
    Gone { port: PortId, errno: i32 },
    /// Sent by a vhost-user port's connection thread: a frontend connected
    /// (`up`) or went away.
    VhostLink { port: PortId, up: bool },
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
    pub events: Sender<PortEvent>,
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
    egress: Egress,
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
            egress: Egress::new(index),
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
            // Borrow the snapshot and the buffers separately, so a burst
            // costs no reference-count traffic on shared cache lines.
            let Some((view, queue)) = self.snap.port(id).and_then(|v| Some((v, v.queue_for(self.index)?))) else {
                continue;
            };
            let mut io = Io { batch: &mut self.batch, egress: &mut self.egress, queue };
            let state = burst(&mut io, &self.snap, view, now);
            match state {
                RecvState::More => self.mark_pending(id),
                RecvState::Drained => {}
                RecvState::Gone => {
                    self.gone[id.index()] = true;
                    if let Some(fd) = self.snap.port(id).and_then(|v| v.port.raw_fd(queue)) {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    let _ = self.shared.events.try_send(PortEvent::Gone { port: id, errno: libc::EBADFD });
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

/// A worker's buffers, borrowed for one burst.
pub struct Io<'a> {
    pub batch: &'a mut Batch,
    pub egress: &'a mut Egress,
    /// The queue of the ingress port this worker reads.
    pub queue: usize,
}

/// Reads one burst from queue `io.queue` of `view` and runs it through the
/// pipeline: receive → classify → egress → send. The whole per-frame path.
pub fn burst(io: &mut Io, snap: &Snapshot, view: &PortView, now: u32) -> RecvState {
    let Io { batch, egress, queue } = io;
    batch.clear();
    let report = view.port.recv_batch(*queue, batch);
    if report.frames == 0 {
        return report.state;
    }
    let table = view.network.fdb.table();
    for i in 0..batch.len() {
        let wire = batch.wire_mut(i);
        let hdr = VnetHdr::of(wire);
        let c = classify(&wire[HEADROOM..], &hdr, view, snap, &table, now);
        egress.received(wire.len() - HEADROOM, c.learn_full);
        egress.apply(c.verdict, i, wire, view, snap);
    }
    drop(table);
    egress.finish(batch, view, *queue, snap);
    report.state
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::build::{build, network_spec, NetworkIn, Plan, PortIn};
    use crate::control::persist::NetworkSpec;
    use crate::datapath::Fdb;
    use crate::packet::NetId;
    use crate::port::mem::MemPort;
    use crate::port::Port;
    use crate::punt::PuntQueue;
    use crate::stats::{DropReason, PortStats};
    use std::sync::atomic::Ordering;

    /// A snapshot of networks without subnets (pure L2) with 64-entry tables,
    /// and the given ports (id, network name).
    fn l2_snapshot(nets: &[&str], ports: &[(u16, &str, Arc<dyn Port>)]) -> Snapshot {
        let specs: Vec<NetworkSpec> = nets.iter().map(|n| network_spec(n, None)).collect();
        build(Plan {
            epoch: 1,
            networks: specs
                .iter()
                .enumerate()
                .map(|(i, spec)| NetworkIn {
                    id: NetId(i as u32 + 1),
                    spec,
                    fdb: Arc::new(Fdb::new(64, 300)),
                    route_stats: Arc::default(),
                    gw_stats: Arc::default(),
                })
                .collect(),
            routers: vec![],
            ports: ports
                .iter()
                .map(|(id, net, port)| PortIn {
                    id: PortId(*id),
                    network: net,
                    port: port.clone(),
                    stats: Arc::default(),
                    worker: 0,
                })
                .collect(),
            neighbors: Default::default(),
            punt: Arc::new(PuntQueue::new()),
        })
    }

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
        let ports: Vec<(u16, &str, Arc<dyn Port>)> = (1..=4u16)
            .map(|i| (i, if i == 4 { "b" } else { "a" }, mems[i as usize].clone() as Arc<dyn Port>))
            .collect();
        (l2_snapshot(&["a", "b"], &ports), mems)
    }

    fn run(snap: &Snapshot, id: u16) -> RecvState {
        let mut batch = Batch::new();
        let mut egress = Egress::new(0);
        let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
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
        let ports: Vec<(u16, &str, Arc<dyn Port>)> =
            mems.iter().enumerate().map(|(i, m)| (i as u16 + 1, "n", m.clone() as Arc<dyn Port>)).collect();
        let snap = l2_snapshot(&["n"], &ports);
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
