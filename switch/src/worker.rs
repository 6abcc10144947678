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
use crate::datapath::{decide, Decision, Learned};
use crate::packet::Batch;
use crate::port::{PortId, RecvState, SendReport};
use crate::snapshot::{PortView, Snapshot};
use crate::stats::{BurstCount, DropReason};

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
pub fn spawn(
    index: usize,
    core: Option<core_affinity::CoreId>,
    shared: Shared,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let adopted = Arc::new(AtomicU64::new(0));
    let adopted2 = adopted.clone();
    let thread = std::thread::Builder::new()
        .name(format!("tapyard-w{index}"))
        .spawn(move || {
            if let Some(core) = core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        worker = index,
                        core = core.id,
                        "could not pin worker to its core"
                    );
                }
            }
            let mut w = Worker::new(index, poll, shared, adopted2);
            if let Err(e) = w.run() {
                tracing::error!(worker = index, error = %e, "worker stopped");
            }
        })?;
    Ok(WorkerHandle {
        waker,
        adopted,
        thread,
    })
}

/// Per-egress send results gathered over one burst, added to the shared
/// stats once at its end.
struct TxAcc {
    ids: [PortId; 64],
    reps: [SendReport; 64],
    n: usize,
}

impl TxAcc {
    fn new() -> TxAcc {
        TxAcc {
            ids: [PortId(0); 64],
            reps: [SendReport::default(); 64],
            n: 0,
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
            let timeout = if self.pending.is_empty() {
                None
            } else {
                Some(Duration::ZERO)
            };
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
            match view.port.raw_fd() {
                Some(fd) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut SourceFd(&fd),
                        Token(view.id.index()),
                        Interest::READABLE,
                    ) {
                        tracing::error!(port = %view.id, error = %e, "cannot poll port");
                    }
                }
                None => {}
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
            let Some(view) = self
                .snap
                .port(id)
                .filter(|v| v.worker == self.index)
                .cloned()
            else {
                continue;
            };
            if self.gone[id.index()] {
                continue;
            }
            match self.burst(&view, now) {
                RecvState::More => self.mark_pending(id),
                RecvState::Drained => {}
                RecvState::Gone => {
                    self.gone[id.index()] = true;
                    if let Some(fd) = view.port.raw_fd() {
                        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    }
                    let _ = self.shared.events.try_send(WorkerEvent::PortGone {
                        port: id,
                        errno: libc::EBADFD,
                    });
                }
                RecvState::Error(_) => {
                    view.stats.rx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Reads one burst from `view` and forwards it.
    fn burst(&mut self, view: &PortView, now: u32) -> RecvState {
        self.batch.clear();
        let report = view.port.recv_batch(&mut self.batch);
        if report.frames == 0 {
            return report.state;
        }
        let net = &view.network;
        let table = net.fdb.table();
        let mut rx = BurstCount::default();
        let mut drops = [0u64; DropReason::ALL.len()];
        let mut learn_full = 0u64;
        for buf in self.batch.iter() {
            let frame = buf.frame();
            rx.add(frame.len());
            let v = decide(frame, view.id, &table, net.max_frame, now);
            if v.learned == Some(Learned::Full) {
                learn_full += 1;
            }
            let flood = match v.decision {
                Decision::Drop(r) => {
                    drops[r as usize] += 1;
                    continue;
                }
                Decision::Flood => true,
                Decision::Unicast(out) => match self.snap.port(out) {
                    // The entry may name a port that left or changed networks
                    // since it was learned: flood then, as for an unknown MAC.
                    Some(egress) if Arc::ptr_eq(&egress.network, net) => {
                        self.tx.add(egress, egress.port.send_batch(&[frame]));
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
                    if let Some(egress) = self.snap.port(out) {
                        self.tx.add(egress, egress.port.send_batch(&[frame]));
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
        self.tx.flush(&self.snap);
        report.state
    }
}
