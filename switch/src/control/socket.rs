//! The control socket's connections: who may use the socket, and how a flood
//! of connections, silent or slow clients and bad requests are kept from
//! delaying anyone else (docs/PROTOCOL.md, "Who may connect" and "Limits").
//!
//! **Who.** On accept the kernel tells us who connected (`SO_PEERCRED`: the
//! peer's uid, gid and pid when it connected, in the daemon's user
//! namespace). Root (uid 0 there), the daemon's own effective user and,
//! with `daemon --socket-group G`, members of G may talk to it; anyone
//! else gets one `forbidden` error line and is closed. Membership is the
//! peer's gid, or G among the supplementary groups in `/proc/PID/status` of
//! the peer's pid, if that process still runs as the same effective uid
//! (so a reused pid is not taken for the peer). The file's mode (0600, or
//! 0660 owned by G) says the same thing; the check holds even if someone
//! loosens the mode.
//!
//! **Design.** One thread (`tapyard-ctl`) owns the listener and every
//! connection, all registered with one mio `Poll`. A connection waiting for
//! a request costs a file descriptor and a buffer, never a thread. The loop
//! reads without blocking until a connection holds a complete request line,
//! parses it, and hands the request to a small pool of handler threads
//! ([`HANDLERS_MIN`] kept, up to [`HANDLERS_MAX`] while requests queue up);
//! the reply comes back as bytes and the loop writes it without blocking.
//! Only executing a request occupies a thread, and no client can hold one
//! by being slow, since all reading and writing happen on the loop. While
//! a connection's request is at a handler or its reply is being written,
//! nothing more is read from it (a client that pipelines requests and
//! never reads replies holds at most one request line and one reply).
//! A `capture` request turns its connection into a stream: the loop gives
//! the socket (blocking again, with the write timeout) to a thread of its
//! own, at most [`MAX_STREAMS`] at once.
//!
//! **Deadlines.** Each connection has one deadline, set by its phase:
//!
//! | phase | deadline | on expiry |
//! |---|---|---|
//! | accepted, or a request begun | the whole request line within [`Limits::request_timeout`] (not per byte: a byte a second does not keep it alive) | an error line, closed (`request_timeout`) |
//! | idle after a reply | [`Limits::idle_timeout`] | closed (`idle_timeout`) |
//! | at a handler | none (the daemon's own work) | — |
//! | writing a reply | the whole reply within [`Limits::write_timeout`] | closed (`write_timeout`) |
//!
//! The loop checks deadlines every [`SWEEP`], so one fires up to that late.
//!
//! **How many.** At most [`Limits::max_connections`] connections (4096, or
//! half the open-file limit if that is lower). A new connection beyond that
//! closes the connection that has waited longest for a request (`evicted`;
//! a stalled or idle one), or, when every connection is busy with a request,
//! is refused (`busy`); finding it scans the connections, only at the
//! limit. The listener's backlog is the kernel's: a burst of connections
//! waits there while the loop accepts them in bounded batches.
//!
//! **Memory.** A connection holds at most one request line (1 MiB) and one
//! reply. Unfinished requests together hold at most
//! [`Limits::max_buffered`] (64 MiB) plus one read (16 KiB) per connection:
//! at the budget, a connection with half a request is not read (not even
//! for its end) until the budget frees, and its request deadline still
//! runs; one beginning a request still gets one read, so requests of up to
//! 16 KiB (all the CLI sends) get through.
//!
//! **Bad requests.** A line longer than [`Limits::max_request`] gets a
//! `bad_request` and the connection is closed (the framing is lost); a line
//! that is not a valid request gets a `bad_request` and the connection goes
//! on (it is still framed). Every refusal, timeout and bad request has a
//! counter ([`Reason`]; `stats` `control_socket`, the metric
//! `tapyard_control_refused_total{reason}`); logging about them is limited
//! to one line per reason every ten seconds.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::proto::{ApiError, ControlRefusals, ControlSocketInfo, ErrorKind, Reply, Request, Response};
use super::Daemon;
use crate::port::sys::PeerCred;

/// How often the loop checks deadlines.
pub const SWEEP: Duration = Duration::from_millis(250);
/// Handler threads always kept.
pub const HANDLERS_MIN: usize = 2;
/// Handler threads at most (more start only while requests wait for one).
pub const HANDLERS_MAX: usize = 16;
/// A handler above [`HANDLERS_MIN`] idle this long ends.
const HANDLER_LINGER: Duration = Duration::from_secs(10);
/// Capture streams at once (a thread each); more are refused with `busy`.
pub const MAX_STREAMS: usize = 64;
/// Connections at most, before the open-file limit is considered.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections accepted per loop turn before other events get their turn.
const ACCEPT_BATCH: usize = 256;
/// Bytes read from a connection per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Request lines taken from one connection per loop turn; a client that
/// pipelines more waits for the next turn, after everyone else's events.
const LINES_PER_TURN: usize = 32;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// The socket's limits; [`Limits::default`] is what the daemon uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, in bytes (the newline not counted).
    pub max_request: usize,
    /// A request line must arrive whole within this, from the connection's
    /// accept or the request's first byte.
    pub request_timeout: Duration,
    /// A connection silent this long after a reply is closed.
    pub idle_timeout: Duration,
    /// A reply must be written whole within this.
    pub write_timeout: Duration,
    /// Connections held at once.
    pub max_connections: usize,
    /// Bytes of unfinished requests held across all connections; above
    /// it, connections with half a request are not read (their senders
    /// wait, within their request deadline) until others finish.
    pub max_buffered: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request: 1 << 20,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            max_connections: MAX_CONNECTIONS,
            max_buffered: 64 << 20,
        }
    }
}

impl Limits {
    /// The default limits, with at most half of `nofile` (the open-file
    /// limit) for connections, the rest for ports, captures and the state.
    pub fn for_nofile(nofile: u64) -> Limits {
        let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX);
        Limits { max_connections: half.clamp(16, MAX_CONNECTIONS), ..Limits::default() }
    }
}

/// Who may use the socket besides root: the daemon's user and a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The daemon's effective uid.
    pub own_uid: u32,
    /// `daemon --socket-group`.
    pub group: Option<u32>,
}

impl Access {
    /// Whether `peer` may use the socket. `groups(pid, uid)` gives the
    /// supplementary groups of process `pid` if it runs as `uid`.
    pub fn allows(&self, peer: PeerCred, groups: impl FnOnce(u32, u32) -> Vec<u32>) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        let Some(g) = self.group else {
            return false;
        };
        peer.gid == g || (peer.pid != 0 && groups(peer.pid, peer.uid).contains(&g))
    }

    /// Who may, for the refusal's message.
    fn describe(&self) -> String {
        let users = if self.own_uid == 0 { "root".to_string() } else { format!("root and uid {}", self.own_uid) };
        match self.group {
            Some(g) => format!("{users} and members of group {g}"),
            None => users,
        }
    }
}

/// The supplementary groups of process `pid` (`/proc/PID/status`), empty
/// unless its effective uid is `uid` (the pid may have been reused).
pub fn proc_groups(pid: u32, uid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(|s| status_groups(&s, uid)).unwrap_or_default()
}

/// [`proc_groups`] on the text of a status file.
fn status_groups(status: &str, uid: u32) -> Vec<u32> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("");
    // Uid: real, effective, saved, filesystem.
    let euid = field("Uid:").split_whitespace().nth(1).and_then(|v| v.parse::<u32>().ok());
    if euid != Some(uid) {
        return Vec::new();
    }
    field("Groups:").split_whitespace().filter_map(|g| g.parse().ok()).collect()
}

/// Why a connection was refused or closed, or a request rejected: one
/// counter each ([`ControlRefusals`] names them for `stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Forbidden,
    Busy,
    Evicted,
    RequestTimeout,
    IdleTimeout,
    WriteTimeout,
    TooLarge,
    Malformed,
}

impl Reason {
    const COUNT: usize = 8;
}

/// The socket's counters: written by the loop and the stream threads,
/// read with relaxed loads by `stats`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections the loop holds (capture streams are in `streams`).
    open: AtomicU64,
    max_connections: AtomicU64,
    streams: AtomicU64,
    /// Bytes of unfinished requests held (the loop's `buffered`).
    buffered: AtomicU64,
    accepted: AtomicU64,
    requests: AtomicU64,
    refused: [AtomicU64; Reason::COUNT],
}

impl Counters {
    fn count(&self, r: Reason) {
        self.refused[r as usize].fetch_add(1, Relaxed);
    }

    /// What `stats` shows.
    pub fn info(&self) -> ControlSocketInfo {
        let n = |r: Reason| self.refused[r as usize].load(Relaxed);
        ControlSocketInfo {
            connections: self.open.load(Relaxed) + self.streams.load(Relaxed),
            max_connections: self.max_connections.load(Relaxed),
            streams: self.streams.load(Relaxed),
            buffered_bytes: self.buffered.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            requests: self.requests.load(Relaxed),
            refused: ControlRefusals {
                forbidden: n(Reason::Forbidden),
                busy: n(Reason::Busy),
                evicted: n(Reason::Evicted),
                request_timeout: n(Reason::RequestTimeout),
                idle_timeout: n(Reason::IdleTimeout),
                write_timeout: n(Reason::WriteTimeout),
                too_large: n(Reason::TooLarge),
                malformed: n(Reason::Malformed),
            },
        }
    }
}

/// One log line per reason every ten seconds, with how many were not logged.
#[derive(Default)]
struct Quiet {
    last: [Option<Instant>; Reason::COUNT],
    held: [u64; Reason::COUNT],
}

impl Quiet {
    fn log(&mut self, r: Reason, what: &str) {
        let i = r as usize;
        let now = Instant::now();
        if self.last[i].is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
            self.held[i] += 1;
            return;
        }
        tracing::warn!(more = self.held[i], "control socket: {what}");
        self.last[i] = Some(now);
        self.held[i] = 0;
    }
}

/// A response line.
pub fn encode(r: Result<Reply, ApiError>) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(&Response::from_result(r)).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::<Reply>::from_result(Err(ApiError::system(format!(
            "cannot encode the reply: {e}"
        )))))
        .unwrap_or_default()
    });
    bytes.push(b'\n');
    bytes
}

/// What happens once a connection's reply is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Read the next request.
    Next,
    /// Close (the framing is lost).
    Close,
    /// Close and stop the daemon (`shutdown`).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request line, or the rest of one.
    Reading,
    /// Its request is at a handler.
    Handling,
    /// Its reply is being written.
    Writing(After),
}

struct Conn {
    stream: UnixStream,
    /// Tells this connection from an earlier one in the same slot.
    gen: u64,
    phase: Phase,
    /// Bytes read and not yet taken as requests.
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    out: Vec<u8>,
    written: usize,
    /// The phase's deadline, and what its expiry counts as.
    deadline: Option<(Instant, Reason)>,
    /// When it last began waiting for a request (eviction takes the oldest).
    waiting_since: Instant,
}

/// A request for a handler thread.
struct Job {
    slot: usize,
    gen: u64,
    req: Request,
    after: After,
}

/// A handler's reply, back to the loop.
struct Done {
    slot: usize,
    gen: u64,
    bytes: Vec<u8>,
    after: After,
}

/// The handler threads: at least [`HANDLERS_MIN`], more (up to
/// [`HANDLERS_MAX`]) only while requests wait and none is idle. The job
/// queue needs no bound of its own: each connection has at most one
/// request in it.
struct Pool {
    jobs: Sender<Job>,
    rx: Receiver<Job>,
    done: Sender<Done>,
    waker: Arc<Waker>,
    daemon: Arc<Daemon>,
    threads: Arc<AtomicUsize>,
    idle: Arc<AtomicUsize>,
}

impl Pool {
    fn submit(&self, job: Job) {
        let _ = self.jobs.send(job);
        if self.idle.load(Relaxed) == 0 && self.threads.load(Relaxed) < HANDLERS_MAX {
            self.spawn();
        }
    }

    fn spawn(&self) {
        self.threads.fetch_add(1, Relaxed);
        let (rx, done, waker, d) = (self.rx.clone(), self.done.clone(), self.waker.clone(), self.daemon.clone());
        let (threads, idle) = (self.threads.clone(), self.idle.clone());
        let started = std::thread::Builder::new().name("tapyard-req".into()).spawn(move || loop {
            idle.fetch_add(1, Relaxed);
            let job = rx.recv_timeout(HANDLER_LINGER);
            idle.fetch_sub(1, Relaxed);
            match job {
                Ok(Job { slot, gen, req, after }) => {
                    let bytes = encode(d.handle(req));
                    if done.send(Done { slot, gen, bytes, after }).is_err() {
                        break;
                    }
                    let _ = waker.wake();
                }
                Err(RecvTimeoutError::Timeout) => {
                    let n = threads.load(Relaxed);
                    if n > HANDLERS_MIN && threads.compare_exchange(n, n - 1, Relaxed, Relaxed).is_ok() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        });
        if started.is_err() {
            self.threads.fetch_sub(1, Relaxed);
            tracing::warn!("cannot start a control request thread");
        }
    }
}

/// Starts the loop thread on `listener`. `stop` hears of a `shutdown` request.
pub fn spawn(
    d: Arc<Daemon>,
    listener: UnixListener,
    access: Access,
    limits: Limits,
    stop: Sender<&'static str>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poll = Poll::new()?;
    poll.registry().register(&mut SourceFd(&listener.as_raw_fd()), LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (done_tx, done_rx) = unbounded();
    let (jobs, rx) = unbounded();
    let pool =
        Pool { jobs, rx, done: done_tx, waker, daemon: d.clone(), threads: Arc::default(), idle: Arc::default() };
    for _ in 0..HANDLERS_MIN {
        pool.spawn();
    }
    d.socket_counters.max_connections.store(limits.max_connections as u64, Relaxed);
    let mut l = Loop {
        d,
        listener,
        poll,
        access,
        limits,
        pool,
        done: done_rx,
        stop,
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        gen: 0,
        accept_pending: false,
        accept_retry: None,
        ready: Vec::new(),
        buffered: 0,
        paused: Vec::new(),
        quiet: Quiet::default(),
    };
    std::thread::Builder::new().name("tapyard-ctl".into()).spawn(move || l.run())?;
    Ok(())
}

struct Loop {
    d: Arc<Daemon>,
    listener: UnixListener,
    poll: Poll,
    access: Access,
    limits: Limits,
    pool: Pool,
    done: Receiver<Done>,
    stop: Sender<&'static str>,
    /// Connections by slot (token − [`FIRST_CONN`]).
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections in `conns`.
    open: usize,
    gen: u64,
    /// The last accept batch was cut short: accept again without waiting.
    accept_pending: bool,
    /// Out of file descriptors with nothing to evict: try accepting again then.
    accept_retry: Option<Instant>,
    /// Connections to read again this turn without an event: their reply
    /// was written, or they used up their lines for a turn (readiness is
    /// edge-triggered and will not say again that data is waiting).
    ready: Vec<usize>,
    /// Bytes in every connection's `buf`.
    buffered: usize,
    /// Connections with half a request left unread while `buffered` is
    /// over [`Limits::max_buffered`]; tried again at each sweep.
    paused: Vec<usize>,
    quiet: Quiet,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP;
        loop {
            let now = Instant::now();
            let mut timeout = next_sweep.saturating_duration_since(now);
            if self.accept_pending || !self.ready.is_empty() {
                timeout = Duration::ZERO;
            } else if let Some(t) = self.accept_retry {
                timeout = timeout.min(t.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "control socket: poll failed; the socket stops answering");
                    return;
                }
                continue;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        if ev.is_writable() || ev.is_write_closed() {
                            self.write(slot);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(slot);
                        }
                    }
                }
            }
            while let Ok(done) = self.done.try_recv() {
                self.finished(done);
            }
            for slot in std::mem::take(&mut self.ready) {
                self.read(slot);
            }
            let now = Instant::now();
            if self.accept_pending || self.accept_retry.is_some_and(|t| t <= now) {
                self.accept();
            }
            if now >= next_sweep {
                if self.d.stop.load(Relaxed) {
                    // The daemon stopped: its connections close with this thread.
                    return;
                }
                self.sweep(now);
                self.ready.append(&mut self.paused);
                next_sweep = now + SWEEP;
            }
        }
    }

    fn counters(&self) -> &Counters {
        &self.d.socket_counters
    }

    /// `buffered` changed from `before` to `after` bytes for one connection.
    fn account(&mut self, before: usize, after: usize) {
        self.buffered = (self.buffered + after).saturating_sub(before);
        self.d.socket_counters.buffered.store(self.buffered as u64, Relaxed);
    }

    fn set_open(&mut self, delta: isize) {
        self.open = self.open.saturating_add_signed(delta);
        self.d.socket_counters.open.store(self.open as u64, Relaxed);
    }

    fn accept(&mut self) {
        self.accept_pending = false;
        self.accept_retry = None;
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((s, _)) => self.admit(s),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) or memory:
                    // make room if a connection is idle, else try again soon.
                    if !self.evict() {
                        tracing::warn!(error = %e, "control socket: cannot accept; retrying in 100 ms");
                        self.accept_retry = Some(Instant::now() + Duration::from_millis(100));
                        return;
                    }
                }
            }
        }
        self.accept_pending = true;
    }

    /// Checks a new connection's peer and takes it in, refuses it, or makes room for it.
    fn admit(&mut self, mut s: UnixStream) {
        self.counters().accepted.fetch_add(1, Relaxed);
        let cred = match crate::port::sys::peer_cred(&s) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot read the peer's credentials; closing");
                return;
            }
        };
        if !self.access.allows(cred, proc_groups) {
            self.counters().count(Reason::Forbidden);
            let msg = format!(
                "permission denied: uid {} (pid {}) may not use this socket; only {} may",
                cred.uid,
                cred.pid,
                self.access.describe()
            );
            self.quiet.log(Reason::Forbidden, &msg);
            refuse(&mut s, ErrorKind::Forbidden, &msg);
            return;
        }
        if self.open >= self.limits.max_connections && !self.evict() {
            self.counters().count(Reason::Busy);
            let msg = format!(
                "too many control connections ({} open, every one busy with a request); retry later",
                self.open
            );
            self.quiet.log(Reason::Busy, &msg);
            refuse(&mut s, ErrorKind::Busy, &msg);
            return;
        }
        if s.set_nonblocking(true).is_err() {
            return;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(slot + FIRST_CONN);
        if let Err(e) =
            self.poll.registry().register(&mut SourceFd(&s.as_raw_fd()), token, Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(error = %e, "control socket: cannot watch a connection; closing it");
            self.free.push(slot);
            return;
        }
        self.gen += 1;
        let now = Instant::now();
        self.conns[slot] = Some(Conn {
            stream: s,
            gen: self.gen,
            phase: Phase::Reading,
            buf: Vec::new(),
            scanned: 0,
            out: Vec::new(),
            written: 0,
            deadline: Some((now + self.limits.request_timeout, Reason::RequestTimeout)),
            waiting_since: now,
        });
        self.set_open(1);
        // Its request may already be there (edge-triggered: no event for it).
        self.read(slot);
    }

    /// Closes the connection that has waited longest for a request, to
    /// make room; false if every connection is busy with a request.
    fn evict(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.phase == Phase::Reading).map(|c| (c.waiting_since, i)))
            .min();
        let Some((_, slot)) = oldest else {
            return false;
        };
        self.counters().count(Reason::Evicted);
        let msg = format!(
            "closed: the control socket holds its most connections ({}) and this one waited longest for a request",
            self.limits.max_connections
        );
        self.quiet.log(Reason::Evicted, &msg);
        if let Some(c) = self.conns[slot].as_mut() {
            refuse(&mut c.stream, ErrorKind::Busy, &msg);
        }
        self.close(slot);
        true
    }

    fn close(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&c.stream.as_raw_fd()));
            self.free.push(slot);
            self.set_open(-1);
            self.account(c.buf.len(), 0);
        }
    }

    /// Reads what a waiting connection sent and acts on complete requests
    /// (at most [`LINES_PER_TURN`]; then it goes on the ready list).
    fn read(&mut self, slot: usize) {
        let limits = self.limits;
        for _ in 0..LINES_PER_TURN {
            let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            if c.phase != Phase::Reading {
                return;
            }
            // What it may read now: the rest of the budget; one read even
            // without one, for a connection beginning a request.
            let mut room = limits.max_buffered.saturating_sub(self.buffered);
            if room == 0 && c.buf.is_empty() {
                room = 1;
            }
            if room == 0 {
                self.paused.push(slot);
                return;
            }
            let before = c.buf.len();
            let line = next_line(c, &limits, room);
            let after = c.buf.len();
            self.account(before, after);
            match line {
                Line::Pending => return,
                Line::Paused => {
                    self.paused.push(slot);
                    return;
                }
                Line::Closed => return self.close(slot),
                Line::TooLarge => {
                    self.counters().count(Reason::TooLarge);
                    self.quiet.log(Reason::TooLarge, "a request line over the limit; closed");
                    let msg = format!("request longer than {} bytes; closing the connection", limits.max_request);
                    self.reply(slot, encode(Err(ApiError::bad_request(msg))), After::Close);
                    return;
                }
                Line::Request(line) => self.request(slot, &line),
            }
        }
        if self.conns.get(slot).and_then(Option::as_ref).is_some_and(|c| c.phase == Phase::Reading) {
            self.ready.push(slot);
        }
    }

    /// Acts on one request line of connection `slot`.
    fn request(&mut self, slot: usize, line: &[u8]) {
        let parsed = std::str::from_utf8(line)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|s| serde_json::from_str::<Request>(s).map_err(|e| e.to_string()));
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.counters().count(Reason::Malformed);
                self.quiet.log(Reason::Malformed, "a malformed request; answered");
                self.counters().requests.fetch_add(1, Relaxed);
                self.reply(slot, encode(Err(ApiError::bad_request(format!("malformed request: {e}")))), After::Next);
                return;
            }
        };
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        c.phase = Phase::Handling;
        c.deadline = None;
        let gen = c.gen;
        match req {
            Request::Capture(req) => self.stream(slot, req),
            Request::Shutdown => self.pool.submit(Job { slot, gen, req: Request::Shutdown, after: After::Stop }),
            req => self.pool.submit(Job { slot, gen, req, after: After::Next }),
        }
    }

    /// A handler's reply.
    fn finished(&mut self, done: Done) {
        self.counters().requests.fetch_add(1, Relaxed);
        if self.conns.get(done.slot).and_then(Option::as_ref).is_some_and(|c| c.gen == done.gen) {
            self.reply(done.slot, done.bytes, done.after);
        } else if done.after == After::Stop {
            let _ = self.stop.send("shutdown request");
        }
    }

    /// Starts writing `bytes` to connection `slot`, then `after`.
    fn reply(&mut self, slot: usize, bytes: Vec<u8>, after: After) {
        let write_timeout = self.limits.write_timeout;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        c.out = bytes;
        c.written = 0;
        c.phase = Phase::Writing(after);
        c.deadline = Some((Instant::now() + write_timeout, Reason::WriteTimeout));
        self.write(slot);
    }

    /// Writes what it can of connection `slot`'s reply; when it is all
    /// written, goes on as the reply said.
    fn write(&mut self, slot: usize) {
        let limits = self.limits;
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Phase::Writing(after) = c.phase else {
            return;
        };
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => return self.close_after(slot, after),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close_after(slot, after),
            }
        }
        if after != After::Next {
            return self.close_after(slot, after);
        }
        let now = Instant::now();
        c.out = Vec::new();
        c.written = 0;
        c.phase = Phase::Reading;
        c.waiting_since = now;
        c.deadline = Some(if c.buf.is_empty() {
            (now + limits.idle_timeout, Reason::IdleTimeout)
        } else {
            (now + limits.request_timeout, Reason::RequestTimeout)
        });
        // Requests it already sent, and what arrived meanwhile: read by the
        // loop (from here, a reply written at once would recurse).
        self.ready.push(slot);
    }

    fn close_after(&mut self, slot: usize, after: After) {
        self.close(slot);
        if after == After::Stop {
            let _ = self.stop.send("shutdown request");
        }
    }

    /// Gives connection `slot` to a thread of its own for a capture stream.
    fn stream(&mut self, slot: usize, req: super::proto::CaptureRequest) {
        let c = &self.d.socket_counters;
        if c.streams.load(Relaxed) >= MAX_STREAMS as u64 {
            c.count(Reason::Busy);
            let msg = format!("too many capture streams ({MAX_STREAMS}); stop one first");
            c.requests.fetch_add(1, Relaxed);
            self.reply(slot, encode(Err(ApiError::new(ErrorKind::Busy, msg))), After::Next);
            return;
        }
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut SourceFd(&conn.stream.as_raw_fd()));
        self.free.push(slot);
        c.streams.fetch_add(1, Relaxed);
        c.requests.fetch_add(1, Relaxed);
        self.account(conn.buf.len(), 0);
        self.set_open(-1);
        let d = self.d.clone();
        let write_timeout = self.limits.write_timeout;
        let started = std::thread::Builder::new().name("tapyard-cap".into()).spawn(move || {
            let Conn { stream, buf, .. } = conn;
            let ready = stream.set_nonblocking(false).and_then(|_| stream.set_write_timeout(Some(write_timeout)));
            if let (Ok(()), Ok(reader), Ok(closer)) = (ready, stream.try_clone(), stream.try_clone()) {
                // What the client sent after the request (a stop) is read first.
                let reader = io::Cursor::new(buf).chain(reader);
                let mut out = io::BufWriter::new(stream);
                super::capture::stream(&d, req, reader, closer, &mut out, |w, r| {
                    w.write_all(&encode(r))?;
                    w.flush()
                });
            }
            d.socket_counters.streams.fetch_sub(1, Relaxed);
        });
        if started.is_err() {
            tracing::warn!("cannot start a thread for a capture stream");
            self.d.socket_counters.streams.fetch_sub(1, Relaxed);
        }
    }

    /// Closes the connections whose deadline passed.
    fn sweep(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            let Some((at, why)) = c.deadline else {
                continue;
            };
            if at > now {
                continue;
            }
            self.d.socket_counters.count(why);
            match why {
                Reason::RequestTimeout => {
                    let msg = format!(
                        "no complete request within {} s; closing the connection",
                        self.limits.request_timeout.as_secs_f64()
                    );
                    refuse(&mut c.stream, ErrorKind::BadRequest, &msg);
                    self.quiet.log(why, "a connection sent no complete request in time; closed");
                }
                Reason::WriteTimeout => self.quiet.log(why, "a client did not read its reply in time; closed"),
                _ => {}
            }
            self.close(slot);
        }
    }
}

/// What a connection's buffer and socket hold.
enum Line {
    /// A whole request line (without its newline).
    Request(Vec<u8>),
    /// Not yet a whole line; nothing more to read now.
    Pending,
    /// Not yet a whole line; it read as much as it was given room for.
    Paused,
    /// A line longer than the limit.
    TooLarge,
    /// The peer closed, or reading failed.
    Closed,
}

/// Takes the next request line of `c`, reading until there is one, the
/// socket has nothing more, the line is too long, or it has read `room`
/// bytes (or the first read past it). Blank lines are skipped.
fn next_line(c: &mut Conn, limits: &Limits, room: usize) -> Line {
    let mut read = 0;
    loop {
        if let Some(i) = c.buf[c.scanned..].iter().position(|&b| b == b'\n') {
            let end = c.scanned + i;
            let mut line: Vec<u8> = c.buf.drain(..=end).collect();
            line.pop();
            c.scanned = 0;
            if c.buf.is_empty() && c.buf.capacity() > 4 * READ_CHUNK {
                c.buf = Vec::new();
            }
            if line.len() > limits.max_request {
                return Line::TooLarge;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Line::Request(line);
        }
        c.scanned = c.buf.len();
        if c.buf.len() > limits.max_request {
            return Line::TooLarge;
        }
        if read >= room {
            return Line::Paused;
        }
        let mut chunk = [0u8; READ_CHUNK];
        match c.stream.read(&mut chunk) {
            Ok(0) => return Line::Closed,
            Ok(n) => {
                if c.buf.is_empty() && matches!(c.deadline, Some((_, Reason::IdleTimeout))) {
                    // A new request begins: it must arrive whole in time.
                    c.deadline = Some((Instant::now() + limits.request_timeout, Reason::RequestTimeout));
                }
                c.buf.extend_from_slice(&chunk[..n]);
                read += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Line::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Line::Closed,
        }
    }
}

/// Writes one error line without waiting (a new or idle connection's
/// socket buffer has room for it); the caller then closes the connection.
fn refuse(s: &mut UnixStream, kind: ErrorKind, msg: &str) {
    let _ = s.set_nonblocking(true);
    let _ = s.write(&encode(Err(ApiError::new(kind, msg))));
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;

    #[test]
    fn root_the_daemons_user_and_the_group_may_connect() {
        let peer = |uid, gid, pid| PeerCred { pid, uid, gid };
        let none = |_, _| Vec::new();
        let alone = Access { own_uid: 1000, group: None };
        assert!(alone.allows(peer(0, 0, 1), none), "root");
        assert!(alone.allows(peer(1000, 1000, 1), none), "the daemon's own user");
        assert!(!alone.allows(peer(1001, 1001, 1), none), "another user");
        assert!(!alone.allows(peer(1001, 50, 1), |_, _| vec![50]), "no group given: groups do not matter");
        let rootless = Access { own_uid: 0, group: None };
        assert!(!rootless.allows(peer(65534, 65534, 0), none), "an unmapped user reads as the overflow id");
        let group = Access { own_uid: 0, group: Some(50) };
        assert!(group.allows(peer(1001, 50, 7), none), "the group as its primary gid");
        assert!(group.allows(peer(1001, 1001, 7), |pid, uid| if (pid, uid) == (7, 1001) {
            vec![4, 50]
        } else {
            vec![]
        }));
        assert!(!group.allows(peer(1001, 1001, 7), |_, _| vec![4]), "not a member");
        assert!(!group.allows(peer(1001, 1001, 0), |_, _| vec![50]), "no pid: only the gid counts");
    }

    #[test]
    fn supplementary_groups_count_only_while_the_pid_runs_as_the_peer() {
        let status = "Name:\tcat\nUid:\t1001\t1001\t1001\t1001\nGid:\t1001\t1001\t1001\t1001\nGroups:\t4 27 50 \n";
        assert_eq!(status_groups(status, 1001), vec![4, 27, 50]);
        assert!(status_groups(status, 1002).is_empty(), "a reused pid, now someone else's");
        assert!(status_groups("Uid:\t1001\t1001\t1001\t1001\nGroups:\n", 1001).is_empty());
        assert!(status_groups("", 1001).is_empty());
    }

    #[test]
    fn the_connection_limit_follows_the_open_file_limit() {
        assert_eq!(Limits::for_nofile(1 << 20).max_connections, MAX_CONNECTIONS);
        assert_eq!(Limits::for_nofile(1024).max_connections, 512);
        assert_eq!(Limits::for_nofile(10).max_connections, 16);
        assert_eq!(Limits::for_nofile(u64::MAX).max_connections, MAX_CONNECTIONS);
    }

    fn conn(limits: &Limits) -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let c = Conn {
            stream: a,
            gen: 1,
            phase: Phase::Reading,
            buf: Vec::new(),
            scanned: 0,
            out: Vec::new(),
            written: 0,
            deadline: Some((now + limits.idle_timeout, Reason::IdleTimeout)),
            waiting_since: now,
        };
        (c, b)
    }

    #[test]
    fn lines_are_taken_one_at_a_time_and_blank_ones_skipped() {
        let limits = Limits::default();
        let (mut c, mut peer) = conn(&limits);
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::Pending));
        peer.write_all(b"\n  \n{\"op\":\"ping\"}\n{\"op\":").unwrap();
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::Request(l) if l == b"{\"op\":\"ping\"}"));
        assert_eq!(c.deadline.unwrap().1, Reason::RequestTimeout, "a request began: the request deadline");
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::Pending), "half a line waits");
        peer.write_all(b"\"network_ls\"}\n").unwrap();
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::Request(l) if l == b"{\"op\":\"network_ls\"}"));
        drop(peer);
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::Closed));
    }

    /// A daemon (no ports, no privileges needed) serving a socket with
    /// `limits`; stopped and removed on drop.
    struct Served {
        d: Arc<Daemon>,
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
    }

    impl Served {
        fn start(tag: &str, limits: Limits) -> Served {
            let dir = std::env::temp_dir().join(format!("tapyard-unit-{}-sock{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("s.sock");
            let d = Daemon::start(super::super::Config::new(path.clone(), dir.clone())).unwrap();
            let listener = UnixListener::bind(&path).unwrap();
            let access = Access { own_uid: crate::port::sys::effective_uid(), group: None };
            let (stop, _) = crossbeam::channel::unbounded();
            spawn(d.clone(), listener, access, limits, stop).unwrap();
            Served { d, dir, path }
        }

        fn connect(&self) -> UnixStream {
            let s = UnixStream::connect(&self.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        }

        fn refused(&self) -> ControlRefusals {
            self.d.socket_counters.info().refused
        }
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.d.shutdown();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Everything the daemon sends until it closes the connection.
    fn until_closed(s: &mut UnixStream) -> String {
        let mut text = String::new();
        s.read_to_string(&mut text).expect("closed by the daemon, within the read timeout");
        text
    }

    fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    const SHORT: Limits = Limits {
        max_request: 1 << 20,
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_millis(300),
        max_connections: 64,
        max_buffered: 64 << 20,
    };

    #[test]
    fn silent_trickling_idle_and_non_reading_clients_are_closed_and_counted() {
        let sv = Served::start("deadlines", SHORT);
        let mut silent = sv.connect();
        let mut idle = sv.connect();
        idle.write_all(b"{\"op\":\"ping\"}\n").unwrap();
        let mut trickle = sv.connect();
        let trickler = std::thread::spawn({
            let mut t = trickle.try_clone().unwrap();
            move || {
                let started = Instant::now();
                // `{"op":"ping"`, then spaces: the line never ends.
                for b in b"{\"op\":\"ping\"".iter().chain(std::iter::repeat(&b' ')) {
                    if t.write_all(&[*b]).is_err() {
                        return started.elapsed();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                unreachable!()
            }
        });
        let mut deaf = sv.connect();
        deaf.set_nonblocking(true).unwrap();
        let pings = b"{\"op\":\"ping\"}\n".repeat(100_000);
        let mut sent = 0;
        while let Ok(n) = deaf.write(&pings[sent..]) {
            sent += n;
        }

        let text = until_closed(&mut silent);
        assert!(text.contains("no complete request within 0.3 s"), "{text}");
        let text = until_closed(&mut idle);
        assert!(text.starts_with("{\"ok\":true") && text.lines().count() == 1, "a reply, then closed quietly: {text}");
        // Bytes arriving every 20 ms do not keep a request alive past its deadline.
        assert!(trickler.join().unwrap() < Duration::from_secs(5));
        assert!(until_closed(&mut trickle).contains("no complete request"));
        wait("the deaf client is closed", || sv.refused().write_timeout == 1);
        let r = sv.refused();
        assert_eq!((r.request_timeout, r.idle_timeout, r.write_timeout), (2, 1, 1), "{r:?}");
        wait("every connection gone", || sv.d.socket_counters.info().connections == 0);
        assert!(sv.d.socket_counters.info().requests >= 2);
    }

    #[test]
    fn at_the_limit_the_longest_waiting_makes_room_and_with_none_waiting_a_new_one_is_busy() {
        let sv = Served::start("limit", Limits { max_connections: 4, idle_timeout: Duration::from_secs(60), ..SHORT });
        let mut first = sv.connect();
        first.write_all(b"{\"op\":\"ping\"}\n").unwrap();
        assert!(BufReader::new(&first).lines().next().unwrap().unwrap().contains("\"ok\":true"));
        let rest: Vec<UnixStream> = (0..3).map(|_| sv.connect()).collect();
        wait("four connections", || sv.d.socket_counters.info().connections == 4);
        let mut fifth = sv.connect();
        let text = until_closed(&mut first);
        assert!(text.contains("\"busy\"") && text.contains("waited longest"), "{text}");
        fifth.write_all(b"{\"op\":\"ping\"}\n").unwrap();
        assert!(BufReader::new(&fifth).lines().next().unwrap().unwrap().contains("\"ok\":true"));
        assert_eq!(sv.refused().evicted, 1);
        drop(rest);
        drop(fifth);
        wait("connections closed", || sv.d.socket_counters.info().connections == 0);

        // Four clients stuck writing (they do not read): none may be
        // evicted, so a fifth is refused until their write deadline.
        let sv = Served::start("busy", Limits { max_connections: 4, write_timeout: Duration::from_secs(5), ..SHORT });
        let mut deaf = Vec::new();
        for _ in 0..4 {
            let mut s = sv.connect();
            s.set_nonblocking(true).unwrap();
            let pings = b"{\"op\":\"ping\"}\n".repeat(100_000);
            let mut sent = 0;
            while let Ok(n) = s.write(&pings[sent..]) {
                sent += n;
            }
            deaf.push(s);
        }
        wait("four stuck connections", || sv.d.socket_counters.info().connections == 4);
        let mut fifth = sv.connect();
        let text = until_closed(&mut fifth);
        assert!(text.contains("\"busy\"") && text.contains("too many control connections"), "{text}");
        assert_eq!((sv.refused().busy, sv.refused().evicted), (1, 0));
    }

    #[test]
    fn unfinished_requests_together_hold_no_more_than_the_budget() {
        let budget = 64 * 1024;
        let sv =
            Served::start("budget", Limits { max_buffered: budget, request_timeout: Duration::from_secs(1), ..SHORT });
        let half: Vec<UnixStream> = (0..8)
            .map(|_| {
                let mut s = sv.connect();
                s.write_all(&[b' '; 100_000]).unwrap();
                s
            })
            .collect();
        wait("the budget is used", || sv.d.socket_counters.info().buffered_bytes >= budget as u64);
        let held = sv.d.socket_counters.info().buffered_bytes;
        assert!(held <= (budget + 8 * READ_CHUNK) as u64, "{held}");
        // A complete request still gets through.
        let mut c = sv.connect();
        c.write_all(b"{\"op\":\"ping\"}\n").unwrap();
        assert!(BufReader::new(&c).lines().next().unwrap().unwrap().contains("\"ok\":true"));
        // Those left unread are not read until the budget frees, not even
        // for their end: they go at their request deadline.
        drop(half);
        wait("the budget is free again", || sv.d.socket_counters.info().buffered_bytes == 0);
        assert!(sv.refused().request_timeout >= 1, "{:?}", sv.refused());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_it_all() {
        let limits = Limits { max_request: 100, ..Limits::default() };
        let (mut c, mut peer) = conn(&limits);
        peer.write_all(&[b'x'; 100]).unwrap();
        peer.write_all(b"\n").unwrap();
        assert!(
            matches!(next_line(&mut c, &limits, usize::MAX), Line::Request(l) if l.len() == 100),
            "exactly the limit"
        );
        peer.write_all(&[b'x'; 50_000]).unwrap();
        assert!(matches!(next_line(&mut c, &limits, usize::MAX), Line::TooLarge));
        assert!(c.buf.len() <= 100 + READ_CHUNK, "stopped reading at the limit: {}", c.buf.len());
    }
}
