//! vhost-user ports: a VM's (or DPDK virtio-user's) virtio-net device, with
//! tapyard as the vhost-user *backend*. The frontend shares its memory and
//! its split virtqueues over a unix socket; frames move by copying between
//! guest memory and our packet buffers, with no syscall per frame.
//!
//! Layers (rust-vmm crates, see docs/ARCHITECTURE.md "vhost-user ports"):
//! - the vhost-user protocol and the vring/memory bookkeeping are
//!   `vhost-user-backend`'s [`VhostUserDaemon`]: one connection thread per
//!   port reads the socket (feature negotiation, memory table, ring
//!   addresses, kick/call eventfds), and one small vring thread waits on
//!   the kick eventfds. `Device` is our `VhostUserBackend`: it offers the
//!   features, answers `GET_CONFIG`, and on a kick only wakes the worker
//!   that owns the queue pair.
//! - the rings themselves are read and written here, by the owning worker,
//!   in [`Port::recv_batch`] / [`Port::send_batch`], a burst at a time:
//!   `vring.rs` resolves the rings once per burst, takes every chain up to
//!   the `avail.idx` it read once, and returns them with one `used.idx`
//!   update and at most one call (virtio-queue's `Queue` only keeps the
//!   ring addresses and positions between bursts).
//!
//! Locking: each burst takes the ring's `VringRwLock` for writing once,
//! and holds it from reading the positions to publishing them. It cannot
//! go: vhost-user-backend's handler thread sets and reads the same queue
//! state on SET_VRING_ADDR / SET_VRING_BASE / GET_VRING_BASE and the
//! disconnect reset; and a receive ring has several writers when the port
//! has fewer pairs than the daemon has workers (`queue % pairs`), besides
//! the control thread's gateway replies (`send_batch(0, ..)`). Uncontended,
//! it is one compare-and-swap and one release store per 32 frames.
//!
//! Queue pair `q` is virtqueues `2q` (receive: host to guest) and `2q + 1`
//! (transmit: guest to host), virtio 1.2 §5.1.2. With more than one pair
//! (`VIRTIO_NET_F_MQ`), worker `w` serves pair `w`, as with a multi-queue TAP.
//!
//! No syscall per frame: kicks are suppressed with `VIRTIO_RING_F_EVENT_IDX`
//! (virtio 1.2 §2.7.10): the worker publishes `avail_event` only when it has
//! drained the ring, so a frontend that keeps the ring busy never kicks; and
//! calls (interrupts to the guest) are sent only when the guest's
//! `used_event` asks for one. Without EVENT_IDX, there is one call per
//! burst, not per frame.
//!
//! The frontend is untrusted. Every frame is copied out of guest memory
//! once, into our buffer, before any decision is made on it; the guest can
//! change its memory afterwards without effect. Descriptor chains that are
//! too short, too long, loop or run past the ring, point outside the memory
//! table, or have the wrong direction are returned to the guest unused,
//! counted by reason ([`VhostCounters`]), and the worker carries on.
//!
//! A frontend that goes away (VM reboot or crash) leaves the port in
//! place and down: sends are counted as `link_down`, and the rings are
//! reset so the next connection starts clean. `--client` ports retry the
//! connection every second.

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vring::{GuestMem, Ring};
use super::{Offloads, Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::{Batch, HEADROOM};
use crate::wire::vnet::VNET_HDR_LEN;
use crate::wire::MacAddr;

/// virtio feature bits (virtio 1.2 §5.1.3, §6).
pub mod feature {
    pub const NET_F_CSUM: u32 = 0;
    pub const NET_F_GUEST_CSUM: u32 = 1;
    pub const NET_F_MTU: u32 = 3;
    pub const NET_F_MAC: u32 = 5;
    pub const NET_F_GUEST_TSO4: u32 = 7;
    pub const NET_F_GUEST_TSO6: u32 = 8;
    pub const NET_F_GUEST_ECN: u32 = 9;
    pub const NET_F_HOST_TSO4: u32 = 11;
    pub const NET_F_HOST_TSO6: u32 = 12;
    pub const NET_F_HOST_ECN: u32 = 13;
    pub const NET_F_MRG_RXBUF: u32 = 15;
    pub const NET_F_STATUS: u32 = 16;
    pub const NET_F_MQ: u32 = 22;
    pub const RING_F_INDIRECT_DESC: u32 = 28;
    pub const RING_F_EVENT_IDX: u32 = 29;
    /// vhost-user: the frontend may send `SET_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u32 = 30;
    pub const F_VERSION_1: u32 = 32;

    /// Names for `port ls`, lowest bit first.
    pub const NAMES: &[(u32, &str)] = &[
        (NET_F_CSUM, "csum"),
        (NET_F_GUEST_CSUM, "guest_csum"),
        (NET_F_MTU, "mtu"),
        (NET_F_MAC, "mac"),
        (NET_F_GUEST_TSO4, "guest_tso4"),
        (NET_F_GUEST_TSO6, "guest_tso6"),
        (NET_F_GUEST_ECN, "guest_ecn"),
        (NET_F_HOST_TSO4, "host_tso4"),
        (NET_F_HOST_TSO6, "host_tso6"),
        (NET_F_HOST_ECN, "host_ecn"),
        (NET_F_MRG_RXBUF, "mrg_rxbuf"),
        (NET_F_STATUS, "status"),
        (NET_F_MQ, "mq"),
        (RING_F_INDIRECT_DESC, "indirect_desc"),
        (RING_F_EVENT_IDX, "event_idx"),
        (PROTOCOL_FEATURES, "protocol_features"),
        (F_VERSION_1, "version_1"),
    ];

    pub const fn bit(b: u32) -> u64 {
        1 << b
    }

    pub fn names(bits: u64) -> Vec<&'static str> {
        NAMES.iter().filter(|(b, _)| bits & bit(*b) != 0).map(|(_, n)| *n).collect()
    }
}
use feature::bit;

/// Queue pairs a port may have (`--queues`); tapyard serves one per worker.
pub const MAX_PAIRS: u16 = 64;
/// Ring size the frontend may choose, up to virtio-user's and QEMU's largest.
const MAX_QUEUE_SIZE: usize = 1024;
/// Receive buffers one frame may take with `VIRTIO_NET_F_MRG_RXBUF`: a
/// 64 KiB super-frame in the smallest buffers Linux posts (1536 bytes) takes 44.
const MAX_MERGED: usize = 64;
/// Length of `struct virtio_net_config` as far as we fill it (virtio 1.2
/// §5.1.4): mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;
/// `VIRTIO_NET_S_LINK_UP`.
const S_LINK_UP: u16 = 1;

/// How the port reaches its frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// tapyard listens on the socket (QEMU `-chardev socket,...` without `server=on`).
    Server,
    /// tapyard connects to a frontend that listens, and retries.
    Client,
}

/// What a vhost-user port is made with.
#[derive(Debug, Clone)]
pub struct VhostConfig {
    pub socket: PathBuf,
    pub mode: Mode,
    pub pairs: u16,
    pub mac: MacAddr,
    pub mtu: u16,
    /// Where the protocol handler's private socket goes: a directory only
    /// the daemon's user can enter (the daemon's `STATE_DIR/vhost`).
    pub handler_dir: PathBuf,
    /// The daemon busy-polls (`daemon --poll busy`): the worker never sleeps,
    /// so rings are polled without end and the frontend never needs to kick.
    pub busy: bool,
    /// Server mode: permission bits of the socket (`--socket-mode`). A
    /// frontend needs write permission on a unix socket to connect to it
    /// (unix(7)), so the umask's 0755 would shut out a QEMU running as
    /// another user.
    pub socket_mode: u32,
    /// Server mode: the socket's group (`--socket-group`); none keeps the
    /// group the kernel gave it (the daemon's, or the directory's if setgid).
    pub socket_gid: Option<u32>,
}

/// Socket permission bits when none are asked for: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Why a descriptor chain was rejected (counted per port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum BadChain {
    /// Less than a virtio-net header and an Ethernet header.
    TooShort,
    /// More bytes than the largest frame we take.
    TooLong,
    /// The chain did not end: it loops, is longer than the ring, or its
    /// descriptor table is not readable.
    Unterminated,
    /// A buffer lies (partly) outside the memory the frontend shared.
    OutsideMemory,
    /// A device-writable buffer in a transmit chain, or a device-readable
    /// one in a receive chain.
    WrongDirection,
}

impl BadChain {
    pub const ALL: [BadChain; 5] = [
        BadChain::TooShort,
        BadChain::TooLong,
        BadChain::Unterminated,
        BadChain::OutsideMemory,
        BadChain::WrongDirection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BadChain::TooShort => "too_short",
            BadChain::TooLong => "too_long",
            BadChain::Unterminated => "unterminated",
            BadChain::OutsideMemory => "outside_memory",
            BadChain::WrongDirection => "wrong_direction",
        }
    }
}

crate::stats::counters! {
    /// Counters of a vhost-user port beyond the common port counters,
    /// declared once: `port ls --json` lists them by these names.
    pub struct VhostCounters {
        /// Descriptor chains returned unused, by [`BadChain`] reason.
        bad_chain_too_short,
        bad_chain_too_long,
        bad_chain_unterminated,
        bad_chain_outside_memory,
        bad_chain_wrong_direction,
        /// Frames for the guest dropped because it had posted no (or too few) receive buffers.
        no_rx_buffers,
        /// Frames for the guest larger than the buffers it can take (no
        /// `MRG_RXBUF` and a chain too small).
        rx_too_big,
        /// Kicks from the frontend (notifications that it posted frames).
        kicks,
        /// Calls (interrupts) we sent to the frontend.
        calls,
        connects,
        disconnects,
    }
}

impl VhostCounters {
    /// The counter of a bad-chain reason.
    pub fn bad_chain(&self, b: BadChain) -> &AtomicU64 {
        match b {
            BadChain::TooShort => &self.bad_chain_too_short,
            BadChain::TooLong => &self.bad_chain_too_long,
            BadChain::Unterminated => &self.bad_chain_unterminated,
            BadChain::OutsideMemory => &self.bad_chain_outside_memory,
            BadChain::WrongDirection => &self.bad_chain_wrong_direction,
        }
    }
}

/// State shared by the worker (rings), the connection thread and the
/// vring thread.
struct Shared {
    cfg: VhostConfig,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The rings of the current connection, handed to us by the vring
    /// thread on its first event (`vhost-user-backend` keeps them to itself
    /// otherwise); none between connections.
    vrings: ArcSwapOption<Vec<VringRwLock>>,
    /// Per queue pair: an epoll set, the descriptor the owning worker
    /// registers with its poller. It holds `wake` and the frontend's kick
    /// eventfd of the pair's transmit ring, so a kick wakes the worker
    /// directly (the vring thread sees it too, off the critical path).
    notify: Vec<Epoll>,
    /// Per queue pair: written to make the worker look at the ring.
    wake: Vec<EventFd>,

    /// Features the frontend acknowledged on the current connection (0 when down).
    acked: AtomicU64,
    connected: AtomicBool,
    /// The link is cut on purpose (`port set --down`): the config space's
    /// status says so (VIRTIO_NET_S_LINK_UP clear, virtio 1.2 §5.1.4).
    admin_down: AtomicBool,
    /// Per queue pair: kicks on the receive ring are switched off.
    rx_quiet: Vec<AtomicBool>,
    stop: AtomicBool,
    counters: VhostCounters,
    /// Told when the link comes up or goes down (the control plane refreshes
    /// or flushes the port's forwarding entries).
    on_link: Box<dyn Fn(bool) + Send + Sync>,
}

/// Our `VhostUserBackend`: negotiation answers and kick forwarding; no data.
#[derive(Clone)]
struct Device(Arc<Shared>);

impl Device {
    fn offered(&self) -> u64 {
        use feature::*;
        let mut f = bit(F_VERSION_1)
            | bit(NET_F_MAC)
            | bit(NET_F_MTU)
            | bit(NET_F_STATUS)
            | bit(NET_F_MRG_RXBUF)
            | bit(RING_F_EVENT_IDX)
            | bit(RING_F_INDIRECT_DESC)
            | bit(NET_F_CSUM)
            | bit(NET_F_GUEST_CSUM)
            | bit(NET_F_HOST_TSO4)
            | bit(NET_F_HOST_TSO6)
            | bit(NET_F_HOST_ECN)
            | bit(NET_F_GUEST_TSO4)
            | bit(NET_F_GUEST_TSO6)
            | bit(NET_F_GUEST_ECN)
            | bit(PROTOCOL_FEATURES);
        if self.0.cfg.pairs > 1 {
            f |= bit(NET_F_MQ);
        }
        f
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let c = &self.0.cfg;
        let mut b = [0u8; CONFIG_LEN];
        b[..6].copy_from_slice(&c.mac.0);
        let up = self.0.connected.load(Relaxed) && !self.0.admin_down.load(Relaxed);
        let status = if up { S_LINK_UP } else { 0 };
        b[6..8].copy_from_slice(&status.to_le_bytes());
        b[8..10].copy_from_slice(&c.pairs.to_le_bytes());
        b[10..12].copy_from_slice(&c.mtu.to_le_bytes());
        b
    }
}

impl VhostUserBackend for Device {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.0.cfg.pairs) * 2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.offered()
    }

    fn acked_features(&self, features: u64) {
        self.0.acked.store(features, Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut p = VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        if self.0.cfg.pairs > 1 {
            p |= VhostUserProtocolFeatures::MQ;
        }
        p
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The vrings carry the flag themselves (set by vhost-user-backend).
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // A read past our part of the config space reads zeros (virtio 1.2
        // §4.1.4.3 lets the device define only what its features need).
        let cfg = self.config();
        (offset..offset.saturating_add(size)).map(|i| cfg.get(i as usize).copied().unwrap_or(0)).collect()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // The handler swapped the memory inside the GuestMemoryAtomic we share.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One vring thread for every queue: it only forwards kicks.
        vec![(1u64 << self.num_queues()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if self.0.vrings.load().is_none() {
            self.0.vrings.store(Some(Arc::new(vrings.to_vec())));
        }
        let ev = usize::from(device_event);
        // Transmit rings only: kicks on receive rings (the guest posted
        // buffers) need nothing, as frames for the guest are written when
        // they arrive (or dropped and counted if there is no room), and
        // send_batch asks the guest not to send them.
        if ev >= self.num_queues() || ev % 2 == 0 {
            return Ok(());
        }
        let pair = ev / 2;
        let Some(fd) = vrings.get(ev).and_then(|v| v.get_ref().get_kick().as_ref().map(|k| k.as_raw_fd())) else {
            return Ok(());
        };
        // Put the ring's kick eventfd in the pair's notifier, so that kicks
        // wake the owning worker directly, not through this thread. Tried on
        // every event (cheap, and this thread runs only on kicks, which the
        // worker suppresses while busy): a frontend may replace the eventfd
        // at any time, even under the same descriptor number.
        let n = &self.0.notify[pair];
        match n.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 1)) {
            // New: the ring just started; wake the worker for what was posted before.
            Ok(()) => {
                let _ = self.0.wake[pair].write(1);
            }
            // Known: a kick the worker woke on itself (this thread only consumed it).
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.0.counters.kicks.fetch_add(1, Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, pair, "cannot watch the kick eventfd; waking the worker from here");
                let _ = self.0.wake[pair].write(1);
            }
        }
        Ok(())
    }
}

/// Bounds of the empty polls of a transmit ring before the worker asks for
/// kicks and may sleep (see `recv_batch`); it starts at IDLE_START.
const IDLE_MIN: u32 = 4;
const IDLE_START: u32 = 64;
const IDLE_MAX: u32 = 1024;

/// Polling state of one transmit ring, touched only by its worker.
#[derive(Default)]
struct PollState {
    idle: std::sync::atomic::AtomicU32,
    /// Empty polls allowed before asking for kicks (adaptive).
    budget: std::sync::atomic::AtomicU32,
    /// Notifications are enabled (the frontend kicks).
    armed: AtomicBool,
}

/// A vhost-user backend port. See the module documentation.
pub struct VhostPort {
    shared: Arc<Shared>,
    poll: Vec<PollState>,
    name: String,
    conn: Mutex<Option<JoinHandle<()>>>,
    /// A duplicate of the listening socket (server mode): shutting it down
    /// wakes the connection thread's accept on removal.
    listen_fd: Mutex<Option<OwnedFd>>,
    shutdown: Arc<Mutex<Option<vhost_user_backend::ShutdownHandle>>>,
}

impl VhostPort {
    /// Creates the port and starts serving `cfg.socket`. In server mode the
    /// socket is bound before this returns (an error names the path); in
    /// client mode the connection is retried in the background.
    pub fn start(cfg: VhostConfig, on_link: Box<dyn Fn(bool) + Send + Sync>) -> io::Result<VhostPort> {
        if cfg.pairs == 0 || cfg.pairs > MAX_PAIRS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("--queues must be 1 to {MAX_PAIRS}")));
        }
        let wake = (0..cfg.pairs).map(|_| EventFd::new(EFD_NONBLOCK)).collect::<io::Result<Vec<_>>>()?;
        let notify = (0..cfg.pairs).map(|_| Epoll::new()).collect::<io::Result<Vec<_>>>()?;
        for (n, w) in notify.iter().zip(&wake) {
            n.ctl(ControlOperation::Add, w.as_raw_fd(), EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0))?;
        }
        let name = format!("vhost-user:{}", cfg.socket.display());
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            vrings: ArcSwapOption::empty(),
            notify,
            wake,
            acked: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            admin_down: AtomicBool::new(false),
            rx_quiet: (0..cfg.pairs).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            counters: VhostCounters::default(),
            on_link,
        });
        let listener = match cfg.mode {
            Mode::Server => {
                refuse_non_socket(&cfg.socket)?;
                let l = Listener::new(&cfg.socket, true)
                    .map_err(|e| io::Error::other(format!("cannot listen on {}: {e}", cfg.socket.display())))?;
                // Until these run the socket has the umask's (stricter or
                // equal) bits: no frontend gets in that the mode would refuse.
                set_socket_owner(&cfg.socket, cfg.socket_mode, cfg.socket_gid)?;
                Some(l)
            }
            Mode::Client => None,
        };
        // SAFETY: as_raw_fd is the live listening socket; BorrowedFd only lives for the dup.
        let listen_fd = listener
            .as_ref()
            .map(|l| unsafe { std::os::fd::BorrowedFd::borrow_raw(l.as_raw_fd()) }.try_clone_to_owned())
            .transpose()?;
        let shutdown = Arc::new(Mutex::new(None));
        let (sh, sd) = (shared.clone(), shutdown.clone());
        let conn = std::thread::Builder::new()
            .name(format!("vhost-{}", short(&cfg.socket)))
            .spawn(move || serve(listener, &sh, &sd))?;
        let poll = (0..cfg.pairs)
            .map(|_| PollState {
                armed: AtomicBool::new(true),
                budget: std::sync::atomic::AtomicU32::new(IDLE_START),
                ..PollState::default()
            })
            .collect();
        Ok(VhostPort { shared, poll, name, conn: Mutex::new(Some(conn)), listen_fd: Mutex::new(listen_fd), shutdown })
    }

    pub fn config(&self) -> &VhostConfig {
        &self.shared.cfg
    }

    pub fn counters(&self) -> &VhostCounters {
        &self.shared.counters
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Relaxed)
    }

    /// Features acknowledged by the connected frontend (0 while down).
    pub fn acked_features(&self) -> u64 {
        self.shared.acked.load(Relaxed)
    }

    /// Stops serving: closes the connection, stops the threads, removes the
    /// socket file it created. Idempotent.
    pub fn stop(&self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(fd) = self.listen_fd.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // SAFETY: fd is our own duplicate of the listening socket;
            // shutdown() acts on the socket and wakes the blocking accept().
            unsafe { libc::shutdown(fd.as_fd().as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(h) = self.shutdown.lock().unwrap_or_else(|e| e.into_inner()).take() {
            h.shutdown();
        }
        if let Some(t) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }

    /// The vhost-user protocol features offered.
    pub fn protocol_feature_names(&self) -> Vec<&'static str> {
        let p = Device(self.shared.clone()).protocol_features();
        [
            (VhostUserProtocolFeatures::MQ, "mq"),
            (VhostUserProtocolFeatures::REPLY_ACK, "reply_ack"),
            (VhostUserProtocolFeatures::CONFIG, "config"),
            (VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS, "configure_mem_slots"),
        ]
        .into_iter()
        .filter(|(f, _)| p.contains(*f))
        .map(|(_, n)| n)
        .collect()
    }
}

/// The virtio-net header is 12 bytes with VERSION_1 or MRG_RXBUF, else the
/// legacy 10 (virtio 1.2 §5.1.6).
fn hdr_len(acked: u64) -> usize {
    if acked & (bit(feature::F_VERSION_1) | bit(feature::NET_F_MRG_RXBUF)) != 0 {
        VNET_HDR_LEN
    } else {
        10
    }
}

fn short(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().chars().take(9).collect()).unwrap_or_default()
}

/// A server port replaces a stale socket file, but never anything else.
fn refuse_non_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket; not replacing it", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Gives the listening socket its group, then its mode (group first: a
/// mode opening the socket to a group must not briefly open it to the
/// kernel's default group).
fn set_socket_owner(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            let _ = fs::remove_file(path);
            io::Error::new(e.kind(), format!("cannot give {} group {gid}: {e}", path.display()))
        })?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777)).map_err(|e| {
        let _ = fs::remove_file(path);
        io::Error::new(e.kind(), format!("cannot set mode {mode:04o} on {}: {e}", path.display()))
    })
}

/// The connection thread: accept (or connect), serve the protocol until the
/// frontend goes away, reset the rings, repeat until stopped.
fn serve(
    listener: Option<Listener>,
    shared: &Arc<Shared>,
    shutdown: &Mutex<Option<vhost_user_backend::ShutdownHandle>>,
) {
    let socket = shared.cfg.socket.clone();
    // The protocol handler listens on a private socket; the relay
    // (vhost_relay.rs) connects the frontend to it.
    let (private_path, mut handler_listener) = match private_listener(&shared.cfg.handler_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(socket = %socket.display(), error = %e, "cannot make the vhost-user handler's socket; port stays down");
            return;
        }
    };
    let mut warned = false;
    while !shared.stop.load(Relaxed) {
        let frontend = match &listener {
            Some(l) => l.accept().map_err(|e| io::Error::other(e.to_string())),
            None => UnixStream::connect(&socket).map(Some),
        };
        let frontend = match frontend {
            Ok(Some(f)) => f,
            Ok(None) => continue,
            Err(e) => {
                if shared.stop.load(Relaxed) {
                    break;
                }
                if listener.is_some() {
                    tracing::warn!(socket = %socket.display(), error = %e, "vhost-user accept failed");
                } else if !warned {
                    tracing::info!(socket = %socket.display(), error = %e, "vhost-user frontend not there yet; retrying every second");
                    warned = true;
                }
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        warned = false;
        // A fresh protocol handler per connection: vhost-user-backend's
        // handler stays "owned" after a frontend leaves and would refuse the
        // next one's SET_OWNER.
        let mut daemon =
            match VhostUserDaemon::new(socket.display().to_string(), Device(shared.clone()), shared.mem.clone()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %e, "cannot set up the vhost-user handler");
                    continue;
                }
            };
        let relay = match UnixStream::connect(&private_path) {
            Ok(backend) => std::thread::Builder::new()
                .name("vhost-relay".into())
                .spawn(move || super::vhost_relay::relay(frontend, backend)),
            Err(e) => Err(e),
        };
        let relay = match relay {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "cannot start the vhost-user relay");
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut handler_listener) {
            tracing::warn!(socket = %socket.display(), error = %e, "vhost-user handler did not start");
            drop(daemon);
            let _ = relay.join();
            continue;
        }
        *shutdown.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
        if shared.stop.load(Relaxed) {
            daemon.request_shutdown();
        }
        shared.connected.store(true, Relaxed);
        shared.counters.connects.fetch_add(1, Relaxed);
        tracing::info!(socket = %socket.display(), "vhost-user frontend connected");
        (shared.on_link)(true);
        let ended = daemon.wait();
        // Ends the vring thread first, so no late event can hand us this
        // connection's rings again after the reset below.
        drop(daemon);
        let _ = relay.join();
        shutdown.lock().unwrap_or_else(|e| e.into_inner()).take();
        shared.connected.store(false, Relaxed);
        shared.counters.disconnects.fetch_add(1, Relaxed);
        reset_rings(shared);
        (shared.on_link)(false);
        match ended {
            Ok(()) => tracing::info!(socket = %socket.display(), "vhost-user frontend disconnected; port is down"),
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "vhost-user connection ended; port is down")
            }
        }
    }
    drop(handler_listener);
    let _ = fs::remove_file(&private_path);
    if listener.is_some() {
        let _ = fs::remove_file(&socket);
    }
}

/// The handler's listening socket, a fresh name in `cfg.handler_dir` (a
/// directory only the daemon's user can enter, emptied at daemon start).
fn private_listener(dir: &Path) -> io::Result<(PathBuf, Listener)> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = dir.join(format!("{}.sock", NEXT.fetch_add(1, Relaxed)));
    let l = Listener::new(&path, true).map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
    Ok((path, l))
}

/// After a disconnect: forget the rings, eventfds and memory of the old
/// connection, so the next frontend starts from scratch.
fn reset_rings(shared: &Shared) {
    shared.acked.store(0, Relaxed);
    for q in &shared.rx_quiet {
        q.store(false, Relaxed);
    }
    // The old kick eventfds close with the old connection, which takes
    // them out of the notifiers; the next ones are added as they come.
    if let Some(vrings) = shared.vrings.swap(None) {
        for v in vrings.iter() {
            v.set_queue_ready(false);
            v.set_enabled(false);
            v.set_kick(None);
            v.set_call(None);
            let mut s = v.get_mut();
            s.get_queue_mut().reset();
        }
    }
    // Unmap the guest's memory: a VM that is gone must not stay resident
    // through our mapping of its memfd. A worker still in a burst keeps the
    // old map alive until it ends (the rings above are no longer ready).
    match shared.mem.lock() {
        Ok(m) => m.replace(GuestMemoryMmap::new()),
        Err(e) => e.into_inner().replace(GuestMemoryMmap::new()),
    }
}

impl Port for VhostPort {
    fn recv_batch(&self, queue: usize, batch: &mut Batch) -> RecvReport {
        let drained = RecvReport { frames: 0, state: RecvState::Drained };
        let vrings = self.shared.vrings.load();
        let Some(vring) = vrings.as_ref().and_then(|v| v.get(queue * 2 + 1)) else { return drained };
        let acked = self.shared.acked.load(Relaxed);
        let hl = hdr_len(acked);
        let mem = self.shared.mem.memory();
        let mut st = vring.get_mut();
        if !st.get_queue().ready() || !st.is_enabled() {
            return drained;
        }
        let mut bad = [0u64; 5];
        let q = st.get_queue_mut();
        let (frames, state, call) = pop_frames(q, &mem, hl, &self.poll[queue], self.shared.cfg.busy, batch, &mut bad);
        if call && st.signal_used_queue().is_ok() {
            self.shared.counters.calls.fetch_add(1, Relaxed);
        }
        drop(st);
        for b in BadChain::ALL {
            if bad[b as usize] > 0 {
                self.shared.counters.bad_chain(b).fetch_add(bad[b as usize], Relaxed);
            }
        }
        RecvReport { frames, state }
    }

    fn send_batch(&self, queue: usize, frames: &[&[u8]]) -> SendReport {
        let mut r = SendReport::default();
        let pairs = usize::from(self.shared.cfg.pairs);
        let vrings = self.shared.vrings.load();
        let Some(vring) = vrings.as_ref().and_then(|v| v.get((queue % pairs) * 2)) else {
            r.link_down = frames.len() as u64;
            return r;
        };
        let acked = self.shared.acked.load(Relaxed);
        let hl = hdr_len(acked);
        let mrg = acked & bit(feature::NET_F_MRG_RXBUF) != 0;
        let mem = self.shared.mem.memory();
        let mut st = vring.get_mut();
        if !self.shared.connected.load(Relaxed) || !st.get_queue().ready() || !st.is_enabled() {
            r.link_down = frames.len() as u64;
            return r;
        }
        let mut bad = [0u64; 5];
        let q = st.get_queue_mut();
        if !self.shared.rx_quiet[queue % pairs].swap(true, Relaxed) {
            // Once per connection: no kicks for posted receive buffers
            // (VRING_USED_F_NO_NOTIFY; with EVENT_IDX avail_event is never
            // advanced, which has the same effect).
            let _ = q.disable_notification(&*mem);
        }
        let (no_buf, too_big, call) = push_frames(q, &mem, hl, mrg, frames, &mut r, &mut bad);
        if call && st.signal_used_queue().is_ok() {
            self.shared.counters.calls.fetch_add(1, Relaxed);
        }
        drop(st);
        r.queue_full = no_buf + too_big;
        let c = &self.shared.counters;
        if no_buf > 0 {
            c.no_rx_buffers.fetch_add(no_buf, Relaxed);
        }
        if too_big > 0 {
            c.rx_too_big.fetch_add(too_big, Relaxed);
        }
        for b in BadChain::ALL {
            if bad[b as usize] > 0 {
                c.bad_chain(b).fetch_add(bad[b as usize], Relaxed);
            }
        }
        r
    }

    fn caps(&self) -> PortCaps {
        let acked = self.shared.acked.load(Relaxed);
        PortCaps { queues: self.shared.cfg.pairs, offloads: guest_offloads(acked), gather: true }
    }

    fn raw_fd(&self, queue: usize) -> Option<RawFd> {
        self.shared.notify.get(queue).map(|n| n.as_raw_fd())
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Clears VIRTIO_NET_S_LINK_UP in the config space while the link is
    /// cut. A driver that negotiated VIRTIO_NET_F_STATUS reads it at its
    /// next config read: we offer no backend request channel
    /// (VHOST_USER_PROTOCOL_F_BACKEND_REQ), so we cannot raise the config
    /// change interrupt ourselves; the switch drops the port's frames either way.
    fn set_carrier(&self, up: bool) -> io::Result<()> {
        self.shared.admin_down.store(!up, Relaxed);
        Ok(())
    }

    fn release(&self) {
        self.stop();
    }
}

impl Drop for VhostPort {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The ring work of this port without a connection, for the fuzz targets
/// (fuzz/, docs/RELIABILITY.md): a guest's transmit ring read exactly as
/// [`Port::recv_batch`] reads it and its receive ring written exactly as
/// [`Port::send_batch`] writes it, on a queue and a guest memory the caller
/// built (from untrusted bytes).
#[doc(hidden)]
pub mod rings {
    use super::*;

    /// One receive burst from the guest's transmit ring `q` into `batch`,
    /// with the features `acked`; the frames taken and the bad chains by
    /// [`BadChain`] reason.
    pub fn guest_tx(
        q: &mut virtio_queue::Queue,
        mem: &GuestMemoryMmap,
        acked: u64,
        batch: &mut Batch,
    ) -> (usize, [u64; 5]) {
        let poll = PollState { armed: AtomicBool::new(true), ..PollState::default() };
        let mut bad = [0u64; 5];
        let (n, _, _) = pop_frames(q, mem, hdr_len(acked), &poll, false, batch, &mut bad);
        (n, bad)
    }

    /// `frames` (each our headroom then the frame, as the data path sends)
    /// written into the guest's receive ring `q`; what was sent, and the bad
    /// chains by reason.
    pub fn guest_rx(
        q: &mut virtio_queue::Queue,
        mem: &GuestMemoryMmap,
        acked: u64,
        frames: &[&[u8]],
    ) -> (SendReport, [u64; 5]) {
        let mut r = SendReport::default();
        let mut bad = [0u64; 5];
        let mrg = acked & bit(feature::NET_F_MRG_RXBUF) != 0;
        let _ = q.disable_notification(mem);
        let (no_buf, too_big, _) = push_frames(q, mem, hdr_len(acked), mrg, frames, &mut r, &mut bad);
        r.queue_full = no_buf + too_big;
        (r, bad)
    }
}

/// The ring work of [`Port::recv_batch`]: takes the guest's transmit chains
/// from `q` into `batch` (each copied out of `mem` once), returns bad chains
/// unused and counts them in `bad` by [`BadChain`] reason. `hl` is the
/// virtio-net header length the guest uses. One pass over the available
/// ring up to the `avail.idx` read at the start, one `used.idx` update at
/// the end (`vring.rs`). Returns the frames taken, whether the ring may
/// hold more, and whether the guest wants a call.
fn pop_frames(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    hl: usize,
    poll: &PollState,
    busy: bool,
    batch: &mut Batch,
    bad: &mut [u64; 5],
) -> (usize, RecvState, bool) {
    let mut gm = GuestMem::new(mem);
    let Some(mut ring) = Ring::open(q, &mut gm) else {
        // Not ready, or rings outside memory: nothing to take.
        return (0, RecvState::Drained, false);
    };
    let mut frames = 0;
    let mut state = RecvState::Drained;
    if poll.armed.swap(false, Relaxed) {
        // Busy again: no kicks while we poll (without EVENT_IDX this sets
        // VRING_USED_F_NO_NOTIFY; with it, avail_event simply stays behind).
        ring.disable_notification();
    }
    let shift = VNET_HDR_LEN - hl;
    loop {
        let Some(buf) = batch.next_free() else {
            state = RecvState::More;
            break;
        };
        let Some(head) = ring.pop() else {
            // Empty. Keep polling for a while (the worker comes back:
            // More) before asking for kicks: a frontend sending steadily
            // then never kicks, which costs it a syscall per burst and us
            // a wake-up. How long adapts: the budget doubles when frames
            // came while we polled, halves when none did. Polling pays
            // when the frontend runs on another core; on the same core it
            // only delays the frontend, and the budget shrinks to IDLE_MIN.
            let idle = poll.idle.load(Relaxed) + 1;
            let budget = poll.budget.load(Relaxed);
            if idle < budget || busy {
                poll.idle.store(idle, Relaxed);
                state = RecvState::More;
                break;
            }
            poll.idle.store(0, Relaxed);
            poll.budget.store((budget / 2).max(IDLE_MIN), Relaxed);
            // Ask for a kick on the next frame, and look once more in
            // case one raced in.
            if ring.enable_notification() {
                ring.disable_notification();
                continue;
            }
            poll.armed.store(true, Relaxed);
            break;
        };
        if poll.idle.load(Relaxed) > 0 {
            poll.idle.store(0, Relaxed);
            poll.budget.store((poll.budget.load(Relaxed) * 2).min(IDLE_MAX), Relaxed);
        }
        // Copy the whole chain into our buffer, one copy per descriptor:
        // the header and the frame are read from guest memory exactly once
        // (module docs).
        let space = buf.hdr_space_mut();
        let mut off = shift;
        let mut verdict = None;
        let mut cut = true;
        let mut chain = ring.chain(head);
        while let Some(desc) = chain.next(&mut gm) {
            cut = desc.has_next();
            if desc.is_write_only() {
                verdict = Some(BadChain::WrongDirection);
                break;
            }
            let len = desc.len as usize;
            let Some(dst) = space.get_mut(off..off + len) else {
                verdict = Some(BadChain::TooLong);
                break;
            };
            if gm.read(desc.addr, dst).is_err() {
                verdict = Some(BadChain::OutsideMemory);
                break;
            }
            off += len;
        }
        if verdict.is_none() && cut {
            verdict = Some(BadChain::Unterminated);
        }
        if verdict.is_none() && off - shift < hl + 14 {
            verdict = Some(BadChain::TooShort);
        }
        // Returned either way: a bad chain must not stall the ring.
        ring.push_used(head, 0);
        if let Some(b) = verdict {
            bad[b as usize] += 1;
            continue;
        }
        if shift > 0 {
            // Legacy 10-byte header: move it to the front, zero num_buffers.
            space.copy_within(shift..shift + hl, 0);
            space[hl..VNET_HDR_LEN].fill(0);
        }
        let n = off - shift - hl;
        buf.set_len(n);
        batch.commit();
        frames += 1;
    }
    ring.publish(q);
    (frames, state, ring.needs_call())
}

/// The ring work of [`Port::send_batch`]: writes each of `frames` (our
/// headroom and frame) into receive buffers the guest posted on `q` in
/// `mem`, `hl` bytes of virtio-net header first; several buffers per frame
/// with `mrg` (`VIRTIO_NET_F_MRG_RXBUF`). Bad chains are returned empty and
/// counted in `bad`; frames sent go into `r`. As in [`pop_frames`], one pass
/// over the available ring (`avail.idx` read again once if the buffers run
/// out) and one `used.idx` update. Returns the frames dropped for want of
/// buffers, and for buffers too small, and whether the guest wants a call.
fn push_frames(
    q: &mut virtio_queue::Queue,
    mem: &GuestMemoryMmap,
    hl: usize,
    mrg: bool,
    frames: &[&[u8]],
    r: &mut SendReport,
    bad: &mut [u64; 5],
) -> (u64, u64, bool) {
    let mut gm = GuestMem::new(mem);
    let Some(mut ring) = Ring::open(q, &mut gm) else {
        // Not ready, or rings outside memory: no buffers.
        let short = frames.iter().filter(|w| w.len() < HEADROOM).count() as u64;
        r.errors += short;
        return (frames.len() as u64 - short, 0, false);
    };
    let (mut no_buf, mut too_big) = (0u64, 0u64);
    let mut refreshed = false;
    // Buffers one frame took: (head, bytes), entries 0..n valid.
    let mut used: [(u16, u32); MAX_MERGED] = [(0, 0); MAX_MERGED];
    for wire in frames {
        let Some(frame) = wire.get(HEADROOM..) else {
            r.errors += 1;
            continue;
        };
        // What the guest reads: its header (hl bytes of ours), then the
        // frame; with the 12-byte header that is `wire` itself, one copy.
        let parts: [&[u8]; 2] = if hl == HEADROOM { [wire, &[]] } else { [&wire[..hl], frame] };
        let total = hl + frame.len();
        let mut n = 0;
        let mut written = 0;
        let mut first_addr = None;
        let mut popped = 0;
        while written < total && n < MAX_MERGED {
            let head = match ring.pop() {
                Some(h) => h,
                // Out of buffers: the guest may have posted more since the
                // burst began; look once.
                None if !refreshed => {
                    refreshed = true;
                    ring.refresh();
                    match ring.pop() {
                        Some(h) => h,
                        None => break,
                    }
                }
                None => break,
            };
            popped += 1;
            let mut chain_written = 0u32;
            let mut verdict = None;
            let mut cut = true;
            let mut chain = ring.chain(head);
            while let Some(desc) = chain.next(&mut gm) {
                cut = desc.has_next();
                if !desc.is_write_only() {
                    verdict = Some(BadChain::WrongDirection);
                    break;
                }
                if first_addr.is_none() {
                    if n == 0 && (desc.len as usize) < hl {
                        verdict = Some(BadChain::TooShort);
                        break;
                    }
                    first_addr = Some(desc.addr);
                }
                let take = (desc.len as usize).min(total - written);
                if write_parts(&mut gm, &parts, written, take, desc.addr).is_err() {
                    verdict = Some(BadChain::OutsideMemory);
                    break;
                }
                written += take;
                chain_written += take as u32;
                if written == total {
                    cut = false;
                    break;
                }
            }
            if verdict.is_none() && cut && written < total {
                verdict = Some(BadChain::Unterminated);
            }
            if let Some(b) = verdict {
                // Give the bad buffer back empty and restart this frame
                // in the next one.
                bad[b as usize] += 1;
                ring.push_used(head, 0);
                written = 0;
                first_addr = None;
                for &(h, _) in &used[..n] {
                    ring.push_used(h, 0);
                }
                n = 0;
                popped = 0;
                continue;
            }
            used[n] = (head, chain_written);
            n += 1;
            if !mrg {
                break;
            }
        }
        if written < total {
            // Not enough room: put the buffers back untouched (the guest
            // sees nothing of what we wrote into them) and drop the frame.
            for _ in 0..popped {
                ring.unpop();
            }
            if popped > 0 && !mrg {
                too_big += 1;
            } else {
                no_buf += 1;
            }
            continue;
        }
        if let (Some(addr), true) = (first_addr, hl == VNET_HDR_LEN) {
            // num_buffers: how many buffers this frame took (virtio 1.2 §5.1.6.3.2).
            if let Some(a) = addr.checked_add(10) {
                let _ = gm.write(a, &(n as u16).to_le_bytes());
            }
        }
        for &(h, l) in &used[..n] {
            ring.push_used(h, l);
        }
        r.sent += 1;
        r.bytes += frame.len() as u64;
    }
    ring.publish(q);
    (no_buf, too_big, ring.needs_call())
}

/// What the guest accepts, from the features it acknowledged: the offloads
/// a frame sent to it may keep (virtio 1.2 §5.1.6.4).
pub fn guest_offloads(acked: u64) -> Offloads {
    use feature::*;
    let mut o = 0;
    if acked & bit(NET_F_GUEST_CSUM) != 0 {
        o |= Offloads::CSUM;
        if acked & bit(NET_F_GUEST_TSO4) != 0 {
            o |= Offloads::TSO4;
        }
        if acked & bit(NET_F_GUEST_TSO6) != 0 {
            o |= Offloads::TSO6;
        }
        if acked & bit(NET_F_GUEST_ECN) != 0 {
            o |= Offloads::TSO_ECN;
        }
    }
    Offloads(o)
}

/// Writes bytes `from..from + len` of the concatenation of `parts` to guest
/// memory at `addr`, one copy per part.
fn write_parts(gm: &mut GuestMem<'_>, parts: &[&[u8]; 2], from: usize, len: usize, addr: u64) -> Result<(), ()> {
    let mut done = 0;
    let mut base = 0;
    for p in parts {
        let (lo, hi) = (base, base + p.len());
        base = hi;
        let start = (from + done).max(lo);
        let end = (from + len).min(hi);
        if start >= end {
            continue;
        }
        let chunk = &p[start - lo..end - lo];
        gm.write(addr.checked_add(done as u64).ok_or(())?, chunk)?;
        done += chunk.len();
    }
    Ok(())
}

#[cfg(test)]
mod ring_tests {
    use super::*;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    /// The ring code before bursts (virtio-queue's `pop_descriptor_chain`
    /// and `add_used`, vm-memory's accessors), kept as the reference the
    /// burst code must agree with on every ring image.
    mod reference {
        use super::super::*;
        use virtio_queue::QueueOwnedT;
        use vm_memory::{Address, Bytes, GuestAddress};

        /// The ring work of [`Port::recv_batch`]: pops the guest's transmit chains
        /// from `q` into `batch` (each copied out of `mem` once), returns bad chains
        /// unused and counts them in `bad` by [`BadChain`] reason. `hl` is the
        /// virtio-net header length the guest uses. Returns the frames taken and
        /// whether the ring may hold more.
        pub(super) fn pop_frames(
            q: &mut virtio_queue::Queue,
            mem: &GuestMemoryMmap,
            hl: usize,
            poll: &PollState,
            busy: bool,
            batch: &mut Batch,
            bad: &mut [u64; 5],
        ) -> (usize, RecvState) {
            let mut frames = 0;
            let mut state = RecvState::Drained;
            if poll.armed.swap(false, Relaxed) {
                // Busy again: no kicks while we poll (without EVENT_IDX this sets
                // VRING_USED_F_NO_NOTIFY; with it, avail_event simply stays behind).
                let _ = q.disable_notification(mem);
            }
            loop {
                let Some(buf) = batch.next_free() else {
                    state = RecvState::More;
                    break;
                };
                let Some(chain) = q.pop_descriptor_chain(mem) else {
                    // Empty. Keep polling for a while (the worker comes back:
                    // More) before asking for kicks: a frontend sending steadily
                    // then never kicks, which costs it a syscall per burst and us
                    // a wake-up. How long adapts: the budget doubles when frames
                    // came while we polled, halves when none did. Polling pays
                    // when the frontend runs on another core; on the same core it
                    // only delays the frontend, and the budget shrinks to IDLE_MIN.
                    let idle = poll.idle.load(Relaxed) + 1;
                    let budget = poll.budget.load(Relaxed);
                    if idle < budget || busy {
                        poll.idle.store(idle, Relaxed);
                        state = RecvState::More;
                        break;
                    }
                    poll.idle.store(0, Relaxed);
                    poll.budget.store((budget / 2).max(IDLE_MIN), Relaxed);
                    // Ask for a kick on the next frame, and look once more in
                    // case one raced in.
                    match q.enable_notification(mem) {
                        Ok(true) => {
                            let _ = q.disable_notification(mem);
                            continue;
                        }
                        _ => {
                            poll.armed.store(true, Relaxed);
                            break;
                        }
                    }
                };
                if poll.idle.load(Relaxed) > 0 {
                    poll.idle.store(0, Relaxed);
                    poll.budget.store((poll.budget.load(Relaxed) * 2).min(IDLE_MAX), Relaxed);
                }
                let head = chain.head_index();
                // Copy the whole chain into our buffer: the header and the frame
                // are read from guest memory exactly once (module docs).
                let space = buf.hdr_space_mut();
                let shift = VNET_HDR_LEN - hl;
                let mut off = shift;
                let mut verdict = None;
                let mut cut = true;
                for desc in chain {
                    cut = desc.has_next();
                    if desc.is_write_only() {
                        verdict = Some(BadChain::WrongDirection);
                        break;
                    }
                    let len = desc.len() as usize;
                    let Some(dst) = space.get_mut(off..off + len) else {
                        verdict = Some(BadChain::TooLong);
                        break;
                    };
                    if mem.read_slice(dst, desc.addr()).is_err() {
                        verdict = Some(BadChain::OutsideMemory);
                        break;
                    }
                    off += len;
                }
                if verdict.is_none() && cut {
                    verdict = Some(BadChain::Unterminated);
                }
                if verdict.is_none() && off - shift < hl + 14 {
                    verdict = Some(BadChain::TooShort);
                }
                // Returned either way: a bad chain must not stall the ring.
                let _ = q.add_used(mem, head, 0);
                if let Some(b) = verdict {
                    bad[b as usize] += 1;
                    continue;
                }
                if shift > 0 {
                    // Legacy 10-byte header: move it to the front, zero num_buffers.
                    space.copy_within(shift..shift + hl, 0);
                    space[hl..VNET_HDR_LEN].fill(0);
                }
                let n = off - shift - hl;
                buf.set_len(n);
                batch.commit();
                frames += 1;
            }
            (frames, state)
        }

        /// The ring work of [`Port::send_batch`]: writes each of `frames` (our
        /// headroom and frame) into receive buffers the guest posted on `q` in
        /// `mem`, `hl` bytes of virtio-net header first; several buffers per frame
        /// with `mrg` (`VIRTIO_NET_F_MRG_RXBUF`). Bad chains are returned empty and
        /// counted in `bad`; frames sent go into `r`. Returns the frames dropped
        /// for want of buffers, and for buffers too small.
        pub(super) fn push_frames(
            q: &mut virtio_queue::Queue,
            mem: &GuestMemoryMmap,
            hl: usize,
            mrg: bool,
            frames: &[&[u8]],
            r: &mut SendReport,
            bad: &mut [u64; 5],
        ) -> (u64, u64) {
            let (mut no_buf, mut too_big) = (0u64, 0u64);
            // Buffers one frame took: (head, bytes), entries 0..n valid.
            let mut used: [(u16, u32); MAX_MERGED] = [(0, 0); MAX_MERGED];
            for wire in frames {
                let Some(frame) = wire.get(HEADROOM..) else {
                    r.errors += 1;
                    continue;
                };
                // What the guest reads: its header (hl bytes of ours), then the frame.
                let parts: [&[u8]; 2] = [&wire[..hl], frame];
                let total = hl + frame.len();
                let mut n = 0;
                let mut written = 0;
                let mut first_addr = None;
                let mut popped = 0;
                while written < total && n < MAX_MERGED {
                    let Some(chain) = q.pop_descriptor_chain(mem) else { break };
                    popped += 1;
                    let head = chain.head_index();
                    let mut chain_written = 0u32;
                    let mut verdict = None;
                    let mut cut = true;
                    for desc in chain {
                        cut = desc.has_next();
                        if !desc.is_write_only() {
                            verdict = Some(BadChain::WrongDirection);
                            break;
                        }
                        if first_addr.is_none() {
                            if n == 0 && (desc.len() as usize) < hl {
                                verdict = Some(BadChain::TooShort);
                                break;
                            }
                            first_addr = Some(desc.addr());
                        }
                        let take = (desc.len() as usize).min(total - written);
                        if write_parts(mem, &parts, written, take, desc.addr()).is_err() {
                            verdict = Some(BadChain::OutsideMemory);
                            break;
                        }
                        written += take;
                        chain_written += take as u32;
                        if written == total {
                            cut = false;
                            break;
                        }
                    }
                    if verdict.is_none() && cut && written < total {
                        verdict = Some(BadChain::Unterminated);
                    }
                    if let Some(b) = verdict {
                        // Give the bad buffer back empty and restart this frame
                        // in the next one.
                        bad[b as usize] += 1;
                        let _ = q.add_used(mem, head, 0);
                        written = 0;
                        first_addr = None;
                        for &(h, _) in &used[..n] {
                            let _ = q.add_used(mem, h, 0);
                        }
                        n = 0;
                        popped = 0;
                        continue;
                    }
                    used[n] = (head, chain_written);
                    n += 1;
                    if !mrg {
                        break;
                    }
                }
                if written < total {
                    // Not enough room: put the buffers back untouched (the guest
                    // sees nothing of what we wrote into them) and drop the frame.
                    for _ in 0..popped {
                        q.go_to_previous_position();
                    }
                    if popped > 0 && !mrg {
                        too_big += 1;
                    } else {
                        no_buf += 1;
                    }
                    continue;
                }
                if let (Some(addr), true) = (first_addr, hl == VNET_HDR_LEN) {
                    // num_buffers: how many buffers this frame took (virtio 1.2 §5.1.6.3.2).
                    if let Some(a) = addr.checked_add(10) {
                        let _ = mem.write_slice(&(n as u16).to_le_bytes(), a);
                    }
                }
                for &(h, l) in &used[..n] {
                    let _ = q.add_used(mem, h, l);
                }
                r.sent += 1;
                r.bytes += frame.len() as u64;
            }
            (no_buf, too_big)
        }

        /// The former `write_parts`, through vm-memory.
        fn write_parts(
            mem: &GuestMemoryMmap,
            parts: &[&[u8]; 2],
            from: usize,
            len: usize,
            addr: GuestAddress,
        ) -> Result<(), ()> {
            let mut done = 0;
            let mut base = 0;
            for p in parts {
                let (lo, hi) = (base, base + p.len());
                base = hi;
                let start = (from + done).max(lo);
                let end = (from + len).min(hi);
                if start >= end {
                    continue;
                }
                let chunk = &p[start - lo..end - lo];
                let at = addr.checked_add(done as u64).ok_or(())?;
                mem.write_slice(chunk, at).map_err(|_| ())?;
                done += chunk.len();
            }
            Ok(())
        }
    }

    /// Guest memory: two adjacent regions (buffers may span them), then a
    /// hole, then a small third region.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x8000),
            (GuestAddress(0x20000), 0x1000),
        ])
        .unwrap()
    }

    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x1800;

    fn queue(size: u16, event_idx: bool) -> Queue {
        let mut q = Queue::new(1024).unwrap();
        q.set_size(size);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&b, GuestAddress(table + 16 * u64::from(i))).unwrap();
    }

    fn offer(mem: &GuestMemoryMmap, heads: &[u16]) {
        let idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
        for (k, h) in heads.iter().enumerate() {
            let slot = (idx as usize + k) % 256;
            mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * slot as u64)).unwrap();
        }
        mem.write_obj(idx.wrapping_add(heads.len() as u16), GuestAddress(AVAIL + 2)).unwrap();
    }

    fn used(mem: &GuestMemoryMmap, size: u16) -> (u16, Vec<(u32, u32)>) {
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let elems = (0..size)
            .map(|i| {
                let a = USED + 4 + 8 * u64::from(i);
                (mem.read_obj(GuestAddress(a)).unwrap(), mem.read_obj(GuestAddress(a + 4)).unwrap())
            })
            .collect();
        (idx, elems)
    }

    const ACKED: u64 = feature::bit(feature::F_VERSION_1) | feature::bit(feature::NET_F_MRG_RXBUF);

    #[test]
    fn a_burst_takes_good_chains_returns_bad_ones_and_publishes_once() {
        let mem = memory();
        let mut q = queue(16, false);
        let frame: Vec<u8> = (0..76u8).collect(); // 12-byte header + 64-byte frame
        mem.write_slice(&frame, GuestAddress(0x4000)).unwrap();
        // 0: one descriptor. 1-2: header and frame split over two.
        desc(&mem, DESC, 0, 0x4000, 76, 0, 0);
        desc(&mem, DESC, 1, 0x4000, 12, 1, 2);
        desc(&mem, DESC, 2, 0x4000 + 12, 64, 0, 0);
        // 3: an indirect table at 0x5000 holding the split chain.
        desc(&mem, DESC, 3, 0x5000, 32, 4, 0);
        desc(&mem, 0x5000, 0, 0x4000, 12, 1, 1);
        desc(&mem, 0x5000, 1, 0x4000 + 12, 64, 0, 0);
        // 4: across the two adjacent regions.
        mem.write_slice(&frame, GuestAddress(0x8000 - 30)).unwrap();
        desc(&mem, DESC, 4, 0x8000 - 30, 76, 0, 0);
        // 5: device-writable; 6: in the hole; 7-8: a loop; 9: too short.
        desc(&mem, DESC, 5, 0x4000, 76, 2, 0);
        desc(&mem, DESC, 6, 0x10000, 76, 0, 0);
        desc(&mem, DESC, 7, 0x4000, 20, 1, 8);
        desc(&mem, DESC, 8, 0x4000, 20, 1, 7);
        desc(&mem, DESC, 9, 0x4000, 8, 0, 0);
        // Head 40 is past the ring: counted, never returned.
        offer(&mem, &[0, 1, 3, 4, 5, 6, 7, 9, 40]);
        let mut batch = Batch::new();
        let (n, bad) = rings::guest_tx(&mut q, &mem, ACKED, &mut batch);
        assert_eq!(n, 4);
        for b in batch.iter() {
            assert_eq!(b.wire(), &frame[..], "header and frame copied whole");
        }
        assert_eq!(bad[BadChain::WrongDirection as usize], 1);
        assert_eq!(bad[BadChain::OutsideMemory as usize], 1);
        assert_eq!(bad[BadChain::Unterminated as usize], 2, "the loop and the head past the ring");
        assert_eq!(bad[BadChain::TooShort as usize], 1);
        let (idx, elems) = used(&mem, 16);
        assert_eq!(idx, 8, "every chain with a head in the ring is returned");
        let ids: Vec<u32> = elems[..8].iter().map(|e| e.0).collect();
        assert_eq!(ids, [0, 1, 3, 4, 5, 6, 7, 9]);
        assert_eq!(q.next_avail(), 9);
        assert_eq!(q.next_used(), 8);
    }

    #[test]
    fn frames_fill_merged_buffers_and_num_buffers_says_how_many() {
        let mem = memory();
        let mut q = queue(8, false);
        for i in 0..8u16 {
            desc(&mem, DESC, i, 0x4000 + 0x100 * u64::from(i), 40, 2, 0);
        }
        offer(&mem, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let mut wire = vec![0xaau8; HEADROOM + 100];
        wire[..HEADROOM].fill(0);
        let (r, bad) = rings::guest_rx(&mut q, &mem, ACKED, &[&wire, &wire]);
        assert_eq!((r.sent, r.queue_full, bad), (2, 0, [0; 5]));
        // 112 bytes in 40-byte buffers: 3 each.
        let (idx, elems) = used(&mem, 8);
        assert_eq!(idx, 6);
        assert_eq!(&elems[..3], &[(0, 40), (1, 40), (2, 32)]);
        let nb: u16 = mem.read_obj(GuestAddress(0x4000 + 10)).unwrap();
        assert_eq!(nb, 3);
        // Two buffers left: the third frame does not fit and they stay posted.
        let (r, _) = rings::guest_rx(&mut q, &mem, ACKED, &[&wire]);
        assert_eq!((r.sent, r.queue_full), (0, 1));
        assert_eq!(q.next_avail(), 6);
        assert_eq!(used(&mem, 8).0, 6);
    }

    #[test]
    fn rings_outside_memory_or_across_regions_are_not_served() {
        // (Misaligned ring addresses never get this far: virtio-queue's
        // setters refuse them, so vhost-user-backend keeps the old ones.)
        let mem = memory();
        let mut q = queue(8, false);
        desc(&mem, DESC, 0, 0x4000, 76, 0, 0);
        offer(&mem, &[0]);
        let mut batch = Batch::new();
        // In the hole after the second region.
        q.set_used_ring_address(Some(0x10000), Some(0));
        assert_eq!(rings::guest_tx(&mut q, &mem, ACKED, &mut batch).0, 0);
        let (r, _) = rings::guest_rx(&mut q, &mem, ACKED, &[&[0u8; HEADROOM + 60][..]]);
        assert_eq!(r.queue_full, 1);
        // Across the boundary of two regions (no driver allocates one so:
        // its rings are one naturally aligned allocation).
        q.set_used_ring_address(Some(0x8000 - 8), Some(0));
        assert_eq!(rings::guest_tx(&mut q, &mem, ACKED, &mut batch).0, 0);
        assert_eq!(q.next_avail(), 0, "nothing taken");
        q.set_used_ring_address(Some(USED as u32), Some(0));
        assert_eq!(rings::guest_tx(&mut q, &mem, ACKED, &mut batch).0, 1);
    }

    #[test]
    fn a_call_only_when_used_event_was_crossed_or_interrupts_are_wanted() {
        let mem = memory();
        for event_idx in [false, true] {
            let mut q = queue(8, event_idx);
            for i in 0..8u16 {
                desc(&mem, DESC, i, 0x4000, 76, 0, 0);
            }
            let mut gm = super::super::vring::GuestMem::new(&mem);
            // Nothing returned: never a call.
            let mut ring = Ring::open(&q, &mut gm).unwrap();
            ring.publish(&mut q);
            assert!(!ring.needs_call());
            // used_event 5 (EVENT_IDX) / NO_INTERRUPT set (without).
            mem.write_obj(5u16, GuestAddress(AVAIL + 4 + 2 * 8)).unwrap();
            mem.write_obj(1u16, GuestAddress(AVAIL)).unwrap();
            offer(&mem, &[0, 1, 2, 3, 4, 5, 6]);
            let mut ring = Ring::open(&q, &mut gm).unwrap();
            for _ in 0..3 {
                let h = ring.pop().unwrap();
                ring.push_used(h, 0);
            }
            ring.publish(&mut q);
            assert!(!ring.needs_call(), "used 0..3 does not reach used_event 5 / no interrupts wanted");
            mem.write_obj(0u16, GuestAddress(AVAIL)).unwrap();
            let mut ring = Ring::open(&q, &mut gm).unwrap();
            for _ in 0..3 {
                let h = ring.pop().unwrap();
                ring.push_used(h, 0);
            }
            ring.publish(&mut q);
            assert!(ring.needs_call(), "used 3..6 crosses used_event 5 / interrupts wanted");
            assert_eq!(used(&mem, 8).0, 6);
            mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
            mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        }
    }

    /// xorshift64*: reproducible ring images without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A hostile-looking ring image: random bytes, with descriptors,
    /// indirect tables and the avail ring biased towards almost valid.
    fn image(rng: &mut Rng, size: u16) -> Vec<u8> {
        let mut m: Vec<u8> = (0..0x10000).map(|_| rng.next() as u8).collect();
        let addr = |rng: &mut Rng| match rng.below(8) {
            0 => 0x10000 + rng.below(0x20000),
            1 => 0x8000 - rng.below(64),
            _ => 0x2000 + rng.below(0xd000),
        };
        let len = |rng: &mut Rng| match rng.below(10) {
            0 => rng.below(70000) as u32,
            1 => rng.below(12) as u32,
            _ => 12 + rng.below(200) as u32,
        };
        let put = |m: &mut Vec<u8>, at: usize, a: u64, l: u32, f: u16, n: u16| {
            m[at..at + 8].copy_from_slice(&a.to_le_bytes());
            m[at + 8..at + 12].copy_from_slice(&l.to_le_bytes());
            m[at + 12..at + 14].copy_from_slice(&f.to_le_bytes());
            m[at + 14..at + 16].copy_from_slice(&n.to_le_bytes());
        };
        let flags = |rng: &mut Rng| -> u16 {
            let mut f = 0;
            if rng.below(3) == 0 {
                f |= 1;
            }
            if rng.below(2) == 0 {
                f |= 2;
            }
            if rng.below(12) == 0 {
                f |= 4;
            }
            f
        };
        for i in 0..usize::from(size) {
            let (a, l, f) = (addr(rng), len(rng), flags(rng));
            let (a, l) = if f & 4 != 0 { (0x6000 + 0x100 * rng.below(16), 16 * rng.below(9) as u32) } else { (a, l) };
            put(&mut m, DESC as usize + 16 * i, a, l, f, rng.below(u64::from(size) + 2) as u16);
        }
        for i in 0..128 {
            let (a, l, f) = (addr(rng), len(rng), flags(rng) & !(if rng.below(4) == 0 { 0 } else { 4 }));
            put(&mut m, 0x6000 + 16 * i, a, l, f, rng.below(10) as u16);
        }
        for i in 0..usize::from(size) {
            let h = rng.below(u64::from(size) + 1) as u16;
            m[AVAIL as usize + 4 + 2 * i..][..2].copy_from_slice(&h.to_le_bytes());
        }
        let idx = if rng.below(10) == 0 { rng.next() as u16 } else { rng.below(u64::from(size) + 1) as u16 };
        m[AVAIL as usize + 2..][..2].copy_from_slice(&idx.to_le_bytes());
        m[USED as usize + 2..][..2].copy_from_slice(&0u16.to_le_bytes());
        m
    }

    fn load(img: &[u8]) -> GuestMemoryMmap {
        let mem = memory();
        mem.write_slice(img, GuestAddress(0)).unwrap();
        mem
    }

    fn dump(mem: &GuestMemoryMmap, size: u16) -> Vec<u8> {
        let mut m = vec![0u8; 0x10000];
        mem.read_slice(&mut m, GuestAddress(0)).unwrap();
        // Notification fields may differ (the burst code does not re-enable
        // kicks on a ring whose avail.idx is invalid): not compared.
        let ae = USED as usize + 4 + 8 * usize::from(size);
        m[USED as usize..USED as usize + 2].fill(0);
        m[ae..ae + 2].fill(0);
        m
    }

    #[test]
    fn bursts_agree_with_the_former_ring_code_on_random_rings() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sizes = [1u16, 2, 4, 8, 16, 64, 256];
        // What the images exercised, so a change to `image` cannot quietly
        // make the comparison vacuous: frames each way, every bad reason.
        let (mut taken, mut sent, mut seen) = (0, 0, [0u64; 5]);
        for round in 0..3000 {
            let size = sizes[rng.below(sizes.len() as u64) as usize];
            let acked = [0, ACKED, feature::bit(feature::F_VERSION_1)][rng.below(3) as usize]
                | if rng.below(2) == 0 { feature::bit(feature::RING_F_EVENT_IDX) } else { 0 };
            let event_idx = acked & feature::bit(feature::RING_F_EVENT_IDX) != 0;
            let img = image(&mut rng, size);
            let hl = hdr_len(acked);
            // The guest's transmit ring.
            let (m_old, m_new) = (load(&img), load(&img));
            let (mut q_old, mut q_new) = (queue(size, event_idx), queue(size, event_idx));
            let (mut b_old, mut b_new) = (Batch::new(), Batch::new());
            let (mut bad_old, mut bad_new) = ([0u64; 5], [0u64; 5]);
            let poll = || PollState { armed: AtomicBool::new(true), budget: 64.into(), ..PollState::default() };
            let (n_old, _) = reference::pop_frames(&mut q_old, &m_old, hl, &poll(), false, &mut b_old, &mut bad_old);
            let (n_new, _, _) = pop_frames(&mut q_new, &m_new, hl, &poll(), false, &mut b_new, &mut bad_new);
            assert_eq!((n_old, bad_old), (n_new, bad_new), "round {round}: frames, bad chains");
            for (a, b) in b_old.iter().zip(b_new.iter()) {
                assert_eq!(a.wire(), b.wire(), "round {round}: frame bytes");
            }
            assert_eq!(
                (q_old.next_avail(), q_old.next_used()),
                (q_new.next_avail(), q_new.next_used()),
                "round {round}"
            );
            assert!(dump(&m_old, size) == dump(&m_new, size), "round {round}: guest memory after a transmit burst");
            taken += n_new;
            seen.iter_mut().zip(bad_new).for_each(|(s, b)| *s += b);
            // The guest's receive ring, on the same image.
            let (m_old, m_new) = (load(&img), load(&img));
            let (mut q_old, mut q_new) = (queue(size, event_idx), queue(size, event_idx));
            let mrg = acked & feature::bit(feature::NET_F_MRG_RXBUF) != 0;
            let big: Vec<u8> = (0..HEADROOM + 3000).map(|i| i as u8).collect();
            let lens: Vec<usize> = (0..6).map(|_| [0, 10, 60, 300, 1500, 2900][rng.below(6) as usize]).collect();
            let frames: Vec<&[u8]> = lens.iter().map(|&l| &big[..HEADROOM + l]).collect();
            let (mut r_old, mut r_new) = (SendReport::default(), SendReport::default());
            let (mut bad_old, mut bad_new) = ([0u64; 5], [0u64; 5]);
            let x_old = reference::push_frames(&mut q_old, &m_old, hl, mrg, &frames, &mut r_old, &mut bad_old);
            let (nb, tb, _) = push_frames(&mut q_new, &m_new, hl, mrg, &frames, &mut r_new, &mut bad_new);
            assert_eq!(x_old, (nb, tb), "round {round}: drops");
            assert_eq!((r_old.sent, r_old.bytes, bad_old), (r_new.sent, r_new.bytes, bad_new), "round {round}");
            assert_eq!(
                (q_old.next_avail(), q_old.next_used()),
                (q_new.next_avail(), q_new.next_used()),
                "round {round}"
            );
            assert!(dump(&m_old, size) == dump(&m_new, size), "round {round}: guest memory after a receive burst");
            sent += r_new.sent;
            seen.iter_mut().zip(bad_new).for_each(|(s, b)| *s += b);
        }
        assert!(taken > 100 && sent > 100, "frames taken {taken}, sent {sent}");
        assert!(seen.iter().all(|&n| n > 0), "bad chains by reason: {seen:?}");
    }
}

#[cfg(test)]
mod counter_tests {
    use super::*;

    #[test]
    fn every_bad_chain_reason_has_its_named_counter() {
        let c = VhostCounters::default();
        for (i, b) in BadChain::ALL.into_iter().enumerate() {
            c.bad_chain(b).fetch_add(i as u64 + 1, Relaxed);
            let name = format!("bad_chain_{}", b.name());
            assert_eq!(c.snapshot()[&name], i as u64 + 1, "{name}");
        }
        assert_eq!(c.snapshot().len(), VhostCounters::NAMES.len());
    }
}
