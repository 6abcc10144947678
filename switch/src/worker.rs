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
//! the shared per-port stats once per burst; the worker's own counters
//! ([`WorkerStats`]: turns, bursts, frames, busy time, pending ports) once per turn.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::Sender;
use crossbeam::utils::CachePadded;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::capture::Dir;
use crate::clock::Clock;
use crate::datapath::classify;
use crate::datapath::egress::Egress;
use crate::packet::{Batch, HEADROOM};
use crate::port::{PortId, RecvState};
use crate::snapshot::{PortView, Snapshot};
use crate::stats::WorkerStats;
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
    /// Its loop's counters (written once per turn by the worker alone).
    pub stats: Arc<CachePadded<WorkerStats>>,
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
    let stats = Arc::new(CachePadded::new(WorkerStats::default()));
    let stats2 = stats.clone();
    let thread = std::thread::Builder::new().name(format!("tapyard-w{index}")).spawn(move || {
        if let Some(core) = core {
            if !core_affinity::set_for_current(core) {
                tracing::warn!(worker = index, core = core.id, "could not pin worker to its core");
            }
        }
        let mut w = Worker::new(index, poll, shared, adopted2, stats2);
        if let Err(e) = w.run() {
            tracing::error!(worker = index, error = %e, "worker stopped");
        }
    })?;
    Ok(WorkerHandle { waker, adopted, stats, thread })
}

struct Worker {
    index: usize,
    poll: Poll,
    shared: Shared,
    adopted: Arc<AtomicU64>,
    stats: Arc<CachePadded<WorkerStats>>,
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
    fn new(
        index: usize,
        poll: Poll,
        shared: Shared,
        adopted: Arc<AtomicU64>,
        stats: Arc<CachePadded<WorkerStats>>,
    ) -> Worker {
        let n = usize::from(u16::MAX) + 1;
        Worker {
            index,
            poll,
            shared,
            adopted,
            stats,
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
            let mut timeout = if self.pending.is_empty() && !self.shared.busy { None } else { Some(Duration::ZERO) };
            if timeout.is_none() {
                // Frames held by impairments leave when due: sleep no longer than that.
                if let Some(due) = self.egress.impair.next_due() {
                    timeout = Some(Duration::from_nanos(due.saturating_sub(self.shared.clock.now_nanos())));
                }
            }
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
            // Only a worker with impaired ports reads the nanosecond clock each turn.
            let impaired = !self.egress.impair.ports().is_empty();
            if impaired {
                self.egress.impair.now = self.shared.clock.now_nanos();
            }
            // Per-turn counters: two clock reads only in a turn with ports to serve.
            let bursts = self.pending.len();
            let start = (bursts > 0).then(Instant::now);
            let frames = self.serve_pending();
            if impaired {
                self.release_impaired();
            }
            let busy_ns = start.filter(|_| frames > 0).map_or(0, |t| t.elapsed().as_nanos() as u64);
            self.stats.add_turn(bursts as u64, frames, busy_ns, self.pending.len());
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
        self.egress.impair.adopt(&self.snap);
        self.adopted.store(self.snap.epoch, Ordering::Release);
    }

    /// Serves every pending port one burst; returns the frames read.
    fn serve_pending(&mut self) -> u64 {
        let now = self.shared.clock.now_secs();
        let mut frames = 0;
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
            frames += self.batch.len() as u64;
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
        frames
    }
}

impl Worker {
    /// Runs the frames impairments held that are due now: direction in
    /// through the pipeline as bursts of their port, direction out to their
    /// port (`datapath::impair`).
    fn release_impaired(&mut self) {
        let now = self.shared.clock.now_secs();
        release_impaired(&mut self.batch, &mut self.egress, &self.snap, self.index, now);
    }
}

/// Runs what worker `worker`'s impairment lines hold that is due at
/// `egress.impair.now`: direction-in frames through the pipeline as bursts
/// of their port, direction-out frames to their port.
pub fn release_impaired(batch: &mut Batch, egress: &mut Egress, snap: &Snapshot, worker: usize, now: u32) {
    for k in 0..egress.impair.ports().len() {
        let id = egress.impair.ports()[k];
        let Some(view) = snap.port(id) else { continue };
        let queue = view.queue_for(worker).unwrap_or(0);
        while egress.impair.due_in(id, batch) > 0 {
            pipeline(batch, egress, snap, view, queue, now);
        }
    }
    egress.release_impaired(snap);
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
    if let Some(imp) = &view.impair {
        if egress.impair.ingress(view, imp, batch) {
            return report.state;
        }
    }
    pipeline(batch, egress, snap, view, *queue, now);
    report.state
}

/// Runs the frames of `batch`, read from `queue` of `view`, through classify and egress.
// Inlined into `burst`, so the unimpaired path compiles as it did before the
// split (measured: left to itself, LLVM inlined the table's `learn` here
// instead, +15 instructions per frame).
#[inline(always)]
fn pipeline(batch: &mut Batch, egress: &mut Egress, snap: &Snapshot, view: &PortView, queue: usize, now: u32) {
    let table = view.network.fdb.table();
    let taps = snap.taps(view.id);
    egress.begin(snap);
    for i in 0..batch.len() {
        let wire = batch.wire_mut(i);
        if let Some(t) = taps {
            egress.tap(t, view.id, Dir::In, wire, snap);
        }
        let hdr = VnetHdr::of(wire);
        let c = classify(&wire[HEADROOM..], &hdr, view, snap, &table, now);
        egress.received(wire.len() - HEADROOM, c.learn_full);
        egress.apply(c.verdict, i, wire, view, snap);
    }
    drop(table);
    egress.finish(batch, view, queue, snap);
}
