//! A test-side virtio-net "VM": a vhost-user frontend with its own guest RAM
//! and split virtqueues, driving a vhost-user backend (tapyard's, or DPDK
//! testpmd, which `tests/vhost_harness_selftest.rs` uses to check this file).
//!
//! Read first: the virtio 1.2 spec, 2.7 "Split Virtqueues" and 5.1.6 "Device
//! Operation" (virtio-net header, `num_buffers`); the vhost-user spec
//! (qemu docs/interop/vhost-user.rst), "Starting and stopping rings".
//!
//! Guest RAM is one memfd region at guest physical address 0, mapped here and
//! shared with the backend through `SET_MEM_TABLE`:
//!
//! ```text
//!  0x0000 .. 0x1000    unused (so guest address 0 is valid but never a buffer)
//!  per ring r:         desc table | avail ring (+ used_event) ; used ring (+ avail_event), page-aligned
//!  scratch             SCRATCH_SIZE bytes for `send_raw_chain` payloads
//!  per ring r:         qsize buffer slots of SLOT_SIZE bytes, slot d belongs to descriptor d
//! ```
//!
//! Ring addresses sent with `SET_VRING_ADDR` are *our virtual* addresses
//! (the backend translates them through the memory table's `userspace_addr`);
//! descriptor addresses are guest physical addresses.
//!
//! Queue pair `q` is RX ring `2q` and TX ring `2q+1`. We always kick after
//! posting (spurious kicks are legal), ignore `VRING_USED_F_NO_NOTIFY` and
//! `avail_event`, and with `VIRTIO_RING_F_EVENT_IDX` keep `used_event` at the
//! used index we have consumed, so the backend should signal every completion.
//!
//! The harness panics with a message naming the backend's mistake when the
//! backend breaks the ring protocol (unknown used id, used length larger than
//! the chain, `num_buffers` of 0); tests see a failure, not a hang.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::{virtio_config, virtio_net, virtio_ring};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

// Feature bit numbers (not masks; see `bit`).
pub const VIRTIO_NET_F_CSUM: u32 = virtio_net::VIRTIO_NET_F_CSUM;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = virtio_net::VIRTIO_NET_F_GUEST_CSUM;
pub const VIRTIO_NET_F_MTU: u32 = virtio_net::VIRTIO_NET_F_MTU;
pub const VIRTIO_NET_F_MAC: u32 = virtio_net::VIRTIO_NET_F_MAC;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO4;
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = virtio_net::VIRTIO_NET_F_GUEST_TSO6;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO4;
pub const VIRTIO_NET_F_HOST_TSO6: u32 = virtio_net::VIRTIO_NET_F_HOST_TSO6;
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = virtio_net::VIRTIO_NET_F_MRG_RXBUF;
pub const VIRTIO_NET_F_STATUS: u32 = virtio_net::VIRTIO_NET_F_STATUS;
pub const VIRTIO_NET_F_MQ: u32 = virtio_net::VIRTIO_NET_F_MQ;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_ring::VIRTIO_RING_F_EVENT_IDX;
pub const VIRTIO_F_VERSION_1: u32 = virtio_config::VIRTIO_F_VERSION_1;
pub const VHOST_USER_F_PROTOCOL_FEATURES: u32 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits().trailing_zeros();

/// `virtio_net_hdr.flags`: the checksum at `csum_start + csum_offset` is to be filled in.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
/// `virtio_net_hdr.gso_type` values.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = virtio_net::VIRTIO_NET_HDR_GSO_NONE as u8;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = virtio_net::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = virtio_net::VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// Descriptor flags, for `send_raw_chain`.
pub const VRING_DESC_F_NEXT: u16 = virtio_ring::VRING_DESC_F_NEXT as u16;
pub const VRING_DESC_F_WRITE: u16 = virtio_ring::VRING_DESC_F_WRITE as u16;
pub const VRING_DESC_F_INDIRECT: u16 = virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// The mask of one feature bit number.
pub const fn bit(n: u32) -> u64 {
    1 << n
}

/// Everything this harness can drive: pass as `want` to take whatever the backend offers.
pub const ALL_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MQ)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_F_VERSION_1)
    | bit(VHOST_USER_F_PROTOCOL_FEATURES);

/// Protocol features acked by default (when offered): the ones this harness understands.
pub const DEFAULT_PROTOCOL_FEATURES: u64 = VhostUserProtocolFeatures::MQ.bits()
    | VhostUserProtocolFeatures::REPLY_ACK.bits()
    | VhostUserProtocolFeatures::CONFIG.bits();

/// Bytes of one buffer slot: a 12-byte header plus a 64 KiB TSO frame fits in one descriptor.
pub const SLOT_SIZE: u64 = 0x11000;
/// Bytes of the scratch area (`guest_addr_of_scratch`).
pub const SCRATCH_SIZE: u64 = 1 << 20;
/// How long a vhost-user request may wait for the backend's reply.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What to negotiate and set up; `VmConfig::new` takes the default protocol features.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Virtio features wanted; the acked set is this AND what the backend offers. Include
    /// `VHOST_USER_F_PROTOCOL_FEATURES` to negotiate protocol features and enable rings
    /// with `SET_VRING_ENABLE` (without it, rings start on their first kick).
    pub features: u64,
    /// Protocol features wanted, ANDed with the backend's offer.
    pub protocol_features: u64,
    /// Queue pairs to set up; more than 1 needs `VIRTIO_NET_F_MQ` to mean anything.
    pub pairs: u16,
    /// Entries per ring (a power of two, at most 32768).
    pub qsize: u16,
}

impl VmConfig {
    pub fn new(features: u64, pairs: u16, qsize: u16) -> VmConfig {
        VmConfig { features, protocol_features: DEFAULT_PROTOCOL_FEATURES, pairs, qsize }
    }
}

/// A descriptor we wrote: guest address and length, for reading RX data back.
#[derive(Clone, Copy)]
struct Desc {
    id: u16,
    addr: u64,
    len: u32,
}

/// One split virtqueue as the driver sees it.
struct Ring {
    size: u16,
    /// Guest addresses of the three parts and of buffer slot 0.
    desc: u64,
    avail: u64,
    used: u64,
    slots: u64,
    kick: EventFd,
    call: EventFd,
    free: Vec<u16>,
    /// Chains in flight, by head id (empty when not in flight).
    chains: Vec<Vec<Desc>>,
    /// Our next `avail.idx`, and the used index consumed so far.
    next_avail: u16,
    last_used: u16,
    /// RX: a packet still waiting for its last `num_buffers` buffers.
    partial: Option<([u8; 12], Vec<u8>, u16)>,
}

impl Ring {
    fn slot(&self, id: u16) -> u64 {
        self.slots + u64::from(id) * SLOT_SIZE
    }
}

/// A guest with a virtio-net device backed by a vhost-user backend. Dropping it closes the
/// connection without stopping the rings, as a crashed VM would.
pub struct TestVm {
    frontend: Frontend,
    mem: GuestMemoryMmap<()>,
    mem_size: u64,
    scratch: u64,
    rings: Vec<Ring>,
    features: u64,
    protocol_features: u64,
    hdr_len: usize,
}

/// The listening side, for backends that connect out (tapyard `--client`). The socket file
/// is removed on drop.
pub struct VmListener {
    listener: UnixListener,
    path: PathBuf,
}

impl VmListener {
    /// Waits up to `timeout` for the backend to connect, then sets up the device as `connect`.
    pub fn accept(&self, cfg: &VmConfig, timeout: Duration) -> io::Result<TestVm> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let why = format!("no backend connected to {} within {timeout:?}", self.path.display());
                    return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        TestVm::setup(stream, cfg)
    }
}

impl Drop for VmListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The virtio-net config space fields this harness reads (virtio 1.2, 5.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub status: u16,
    pub max_virtqueue_pairs: u16,
    pub mtu: u16,
}

impl NetConfig {
    /// Parses the first 12 bytes of a `virtio_net_config`; None if shorter.
    pub fn parse(b: &[u8]) -> Option<NetConfig> {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        (b.len() >= 12).then(|| NetConfig {
            mac: b[..6].try_into().unwrap(),
            status: le(6),
            max_virtqueue_pairs: le(8),
            mtu: le(10),
        })
    }
}

fn vhost_err(step: &'static str) -> impl Fn(vhost::Error) -> io::Error {
    move |e| io::Error::other(format!("vhost-user {step}: {e}"))
}

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

/// An anonymous shared-memory file of `size` bytes (sparse until touched).
fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; memfd_create reads nothing else.
    let fd = unsafe { libc::memfd_create(c"tapyard-test-vm".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)?;
    Ok(file)
}

impl TestVm {
    /// Connects to a backend listening on `socket` (tapyard `--server`), retrying for up to
    /// 5 s while the socket is missing or refuses, and sets up the device: see `connect_with`.
    pub fn connect(socket: &Path, want_features: u64, pairs: u16, qsize: u16) -> io::Result<TestVm> {
        TestVm::connect_with(socket, &VmConfig::new(want_features, pairs, qsize))
    }

    /// Connects and sets up as QEMU does: features and protocol features, `SET_OWNER`,
    /// `SET_FEATURES`, the memory table, then for every ring `NUM`, `BASE` 0, `ADDR`, `CALL`,
    /// `KICK`, and (with protocol features) `SET_VRING_ENABLE` for all rings last. With
    /// `REPLY_ACK` every request waits for the backend's ack, so a refused request fails here.
    pub fn connect_with(socket: &Path, cfg: &VmConfig) -> io::Result<TestVm> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        TestVm::setup(stream, cfg)
    }

    /// Binds `socket` (removing a stale file first) for a backend in client mode; see
    /// `VmListener::accept`.
    pub fn listen(socket: &Path) -> io::Result<VmListener> {
        let _ = std::fs::remove_file(socket);
        Ok(VmListener { listener: UnixListener::bind(socket)?, path: socket.to_path_buf() })
    }

    fn setup(stream: UnixStream, cfg: &VmConfig) -> io::Result<TestVm> {
        let (pairs, qsize) = (cfg.pairs, cfg.qsize);
        if pairs == 0 || !qsize.is_power_of_two() || qsize > 32768 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "need pairs >= 1 and a power-of-two qsize"));
        }
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let nrings = usize::from(pairs) * 2;
        // Note: not GET_QUEUE_NUM: the vhost crate then caps the ring index at the reply, which
        // DPDK and QEMU read as queue *pairs* for net. Use `frontend()` after setup to ask.
        let mut fe = Frontend::from_stream(stream, nrings as u64);

        let offered = fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let features = offered & cfg.features;
        let mut protocol_features = 0;
        if features & bit(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            let p = fe.get_protocol_features().map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            let p = p & VhostUserProtocolFeatures::from_bits_truncate(cfg.protocol_features);
            fe.set_protocol_features(p).map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            if p.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            protocol_features = p.bits();
        }
        fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        fe.set_features(features).map_err(vhost_err("SET_FEATURES"))?;

        // Lay out guest RAM (module doc).
        let qs = u64::from(qsize);
        let mut at = 0x1000;
        let mut layout = Vec::with_capacity(nrings);
        for _ in 0..nrings {
            let desc = at;
            let avail = desc + 16 * qs;
            let used = align_up(avail + 6 + 2 * qs, 0x1000);
            at = align_up(used + 6 + 8 * qs, 0x1000);
            layout.push((desc, avail, used));
        }
        let scratch = at;
        at += SCRATCH_SIZE;
        let slots = at;
        let mem_size = align_up(slots + nrings as u64 * qs * SLOT_SIZE, 2 << 20);

        let file = memfd(mem_size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            mem_size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| io::Error::other(format!("mapping guest RAM: {e}")))?;
        let region = mem.find_region(GuestAddress(0)).expect("region at 0");
        let info = VhostUserMemoryRegionInfo::from_guest_region(region).map_err(vhost_err("memory region"))?;
        let host = info.userspace_addr;
        fe.set_mem_table(&[info]).map_err(vhost_err("SET_MEM_TABLE"))?;

        let mut rings = Vec::with_capacity(nrings);
        for (r, &(desc, avail, used)) in layout.iter().enumerate() {
            let ring = Ring {
                size: qsize,
                desc,
                avail,
                used,
                slots: slots + r as u64 * qs * SLOT_SIZE,
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
                free: (0..qsize).rev().collect(),
                chains: vec![Vec::new(); usize::from(qsize)],
                next_avail: 0,
                last_used: 0,
                partial: None,
            };
            fe.set_vring_num(r, qsize).map_err(vhost_err("SET_VRING_NUM"))?;
            fe.set_vring_base(r, 0).map_err(vhost_err("SET_VRING_BASE"))?;
            let addrs = VringConfigData {
                queue_max_size: qsize,
                queue_size: qsize,
                flags: 0,
                desc_table_addr: host + desc,
                used_ring_addr: host + used,
                avail_ring_addr: host + avail,
                log_addr: None,
            };
            fe.set_vring_addr(r, &addrs).map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_call(r, &ring.call).map_err(vhost_err("SET_VRING_CALL"))?;
            fe.set_vring_kick(r, &ring.kick).map_err(vhost_err("SET_VRING_KICK"))?;
            rings.push(ring);
        }
        if features & bit(VHOST_USER_F_PROTOCOL_FEATURES) != 0 {
            for r in 0..nrings {
                fe.set_vring_enable(r, true).map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        // virtio 1.2, 5.1.6: the header has num_buffers with VERSION_1 or MRG_RXBUF.
        let hdr_len = if features & (bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF)) != 0 { 12 } else { 10 };
        Ok(TestVm { frontend: fe, mem, mem_size, scratch, rings, features, protocol_features, hdr_len })
    }

    /// The acked virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The acked vhost-user protocol features (0 without `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Bytes of the virtio-net header on this device: 12, or 10 for a legacy device with
    /// neither `VERSION_1` nor `MRG_RXBUF` (then `send` uses only `hdr[..10]`).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The vhost-user connection, for requests this harness does not wrap.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// `VHOST_USER_GET_CONFIG` of the 12 bytes `NetConfig` reads: None when `CONFIG` was not
    /// negotiated or the backend answered with an empty reply (its way of refusing).
    pub fn get_config(&mut self) -> Option<Vec<u8>> {
        if self.protocol_features & VhostUserProtocolFeatures::CONFIG.bits() == 0 {
            return None;
        }
        match self.frontend.get_config(0, 12, VhostUserConfigFlags::empty(), &[0; 12]) {
            Ok((_, data)) => Some(data),
            Err(vhost::Error::VhostUserProtocol(vhost::vhost_user::Error::BackendInternalError)) => None,
            Err(e) => panic!("vhost-user GET_CONFIG: {e}"),
        }
    }

    /// Posts one frame on TX queue pair `q`: the first `hdr_len()` bytes of `hdr`, then
    /// `frame`, in as few descriptors as `SLOT_SIZE` allows; then kicks. Waits up to 1 s for
    /// free descriptors and panics if the backend returns none.
    pub fn send(&mut self, q: u16, hdr: &[u8; 12], frame: &[u8]) {
        let mut bytes = hdr[..self.hdr_len].to_vec();
        bytes.extend_from_slice(frame);
        let parts: Vec<&[u8]> = bytes.chunks(SLOT_SIZE as usize).collect();
        self.send_chain(q, &parts);
    }

    /// Posts one TX chain with one descriptor per part (each at most `SLOT_SIZE` bytes), for
    /// layouts such as the header alone in the first descriptor; then kicks.
    pub fn send_chain(&mut self, q: u16, parts: &[&[u8]]) {
        let r = usize::from(q) * 2 + 1;
        let ids = self.alloc(r, parts.len());
        let mut descs = Vec::with_capacity(parts.len());
        for (i, (part, &id)) in parts.iter().zip(&ids).enumerate() {
            assert!(part.len() as u64 <= SLOT_SIZE, "a part is larger than SLOT_SIZE");
            let addr = self.rings[r].slot(id);
            self.write_guest(addr, part);
            let more = i + 1 < parts.len();
            descs.push((addr, part.len() as u32, if more { VRING_DESC_F_NEXT } else { 0 }, (i + 1) as u16));
        }
        self.post(r, &ids, &descs);
        self.kick(r);
    }

    /// Posts `n` writable RX buffers of `size` bytes (at most `SLOT_SIZE`), one descriptor each,
    /// on queue pair `q`, then kicks. Panics if fewer than `n` descriptors are free.
    pub fn post_rx(&mut self, q: u16, n: u16, size: u32) {
        for _ in 0..n {
            self.post_rx_chain_nokick(q, &[size]);
        }
        self.kick(usize::from(q) * 2);
    }

    /// Posts one RX chain of writable descriptors of these sizes (Linux's non-mergeable
    /// "big packets" layout is a header-sized descriptor followed by pages), then kicks.
    pub fn post_rx_chain(&mut self, q: u16, sizes: &[u32]) {
        self.post_rx_chain_nokick(q, sizes);
        self.kick(usize::from(q) * 2);
    }

    fn post_rx_chain_nokick(&mut self, q: u16, sizes: &[u32]) {
        let r = usize::from(q) * 2;
        let ids = self.alloc(r, sizes.len());
        let descs: Vec<_> = sizes
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (&size, &id))| {
                assert!(u64::from(size) <= SLOT_SIZE, "an RX buffer is larger than SLOT_SIZE");
                let more = if i + 1 < sizes.len() { VRING_DESC_F_NEXT } else { 0 };
                (self.rings[r].slot(id), size, VRING_DESC_F_WRITE | more, (i + 1) as u16)
            })
            .collect();
        self.post(r, &ids, &descs);
    }

    /// Collects completed RX buffers of queue pair `q` and reassembles packets (with
    /// `MRG_RXBUF`, `num_buffers` in the first buffer's header counts the used entries of one
    /// packet). Returns (header, frame) pairs, the header zero-padded to 12 bytes for a 10-byte
    /// device. Polls until at least `min` packets or `timeout`; RX buffers are not reposted.
    pub fn recv(&mut self, q: u16, min: usize, timeout: Duration) -> Vec<([u8; 12], Vec<u8>)> {
        let r = usize::from(q) * 2;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            while let Some((id, len)) = self.pop_used(r) {
                let chain = std::mem::take(&mut self.rings[r].chains[usize::from(id)]);
                let cap: u64 = chain.iter().map(|d| u64::from(d.len)).sum();
                assert!(
                    u64::from(len) <= cap,
                    "backend used {len} bytes of RX chain {id} on ring {r}, which holds {cap}"
                );
                let mut data = Vec::with_capacity(len as usize);
                for d in &chain {
                    let n = (len as usize - data.len()).min(d.len as usize);
                    data.extend_from_slice(&self.read_guest(d.addr, n));
                }
                self.rings[r].free.extend(chain.iter().map(|d| d.id));
                self.absorb_rx(r, data, &mut out);
            }
            self.publish_used_event(r);
            if out.len() >= min || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn absorb_rx(&mut self, r: usize, data: Vec<u8>, out: &mut Vec<([u8; 12], Vec<u8>)>) {
        let (h, mrg) = (self.hdr_len, self.features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0);
        let ring = &mut self.rings[r];
        let mut done = match ring.partial.take() {
            Some((hdr, mut frame, left)) => {
                frame.extend_from_slice(&data);
                (hdr, frame, left - 1)
            }
            None => {
                assert!(
                    data.len() >= h,
                    "backend wrote {} bytes to an RX buffer on ring {r}, less than a header",
                    data.len()
                );
                let mut hdr = [0u8; 12];
                hdr[..h].copy_from_slice(&data[..h]);
                let num = if mrg { u16::from_le_bytes([hdr[10], hdr[11]]) } else { 1 };
                assert!(num > 0, "backend wrote num_buffers 0 on ring {r}");
                (hdr, data[h..].to_vec(), num - 1)
            }
        };
        if done.2 == 0 {
            out.push((done.0, std::mem::take(&mut done.1)));
        } else {
            ring.partial = Some(done);
        }
    }

    /// The backend's `used.idx` on TX queue pair `q`: how many TX chains it has returned
    /// (wrapping), including malformed ones.
    pub fn tx_used(&self, q: u16) -> u16 {
        let ring = &self.rings[usize::from(q) * 2 + 1];
        self.mem.load(GuestAddress(ring.used + 2), Ordering::Acquire).unwrap()
    }

    /// Posts one arbitrary chain on TX queue pair `q` and kicks. Each entry is
    /// (guest address, length, flags, next); `next` is an index into `descs` (translated to the
    /// descriptor slot used for that entry) when smaller than `descs.len()`, and written
    /// verbatim otherwise (to point outside the table). Flags are written verbatim: set
    /// `VRING_DESC_F_NEXT` yourself. Panics if `descs.len()` descriptors are not free.
    pub fn send_raw_chain(&mut self, q: u16, descs: &[(u64, u32, u16, u16)]) {
        let r = usize::from(q) * 2 + 1;
        let ids = self.alloc(r, descs.len());
        self.post(r, &ids, descs);
        self.kick(r);
    }

    /// A guest address with `SCRATCH_SIZE` bytes that no ring or buffer uses.
    pub fn guest_addr_of_scratch(&self) -> u64 {
        self.scratch
    }

    /// Bytes of guest RAM (guest addresses 0 .. this); anything at or past it is outside.
    pub fn guest_mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Writes guest RAM; panics outside it.
    pub fn write_guest(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).expect("write outside guest RAM");
    }

    /// Reads guest RAM; panics outside it.
    pub fn read_guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).expect("read outside guest RAM");
        v
    }

    /// Reads and clears the call (interrupt) counter of ring `ring` (rx = 2q, tx = 2q+1).
    pub fn take_calls(&self, ring: usize) -> u64 {
        self.rings[ring].call.read().unwrap_or(0)
    }

    /// Closes the connection (same as dropping: the VM crashed).
    pub fn close(self) {}

    /// Takes `n` free descriptor ids of ring `r`, reclaiming returned TX chains first and
    /// waiting up to 1 s for them.
    fn alloc(&mut self, r: usize, n: usize) -> Vec<u16> {
        assert!(n > 0 && n <= usize::from(self.rings[r].size), "a chain of {n} descriptors cannot fit ring {r}");
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if r % 2 == 1 {
                while let Some((id, _)) = self.pop_used(r) {
                    let chain = std::mem::take(&mut self.rings[r].chains[usize::from(id)]);
                    self.rings[r].free.extend(chain.iter().map(|d| d.id));
                }
                self.publish_used_event(r);
            }
            let free = &mut self.rings[r].free;
            if free.len() >= n {
                return free.split_off(free.len() - n).into_iter().rev().collect();
            }
            assert!(r % 2 == 1, "RX ring {r}: {n} descriptors wanted, {} free; recv() first", free.len());
            assert!(
                Instant::now() < deadline,
                "TX ring {r}: {n} descriptors wanted, {} free; the backend is not returning them",
                free.len()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Writes `descs` into descriptor slots `ids` (translating `next` as `send_raw_chain`
    /// says), records the chain under its head and makes the head available.
    fn post(&mut self, r: usize, ids: &[u16], descs: &[(u64, u32, u16, u16)]) {
        let ring = &self.rings[r];
        let mut chain = Vec::with_capacity(descs.len());
        for (&id, &(addr, len, flags, next)) in ids.iter().zip(descs) {
            let next = ids.get(usize::from(next)).copied().unwrap_or(next);
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&next.to_le_bytes());
            self.write_guest(ring.desc + 16 * u64::from(id), &d);
            chain.push(Desc { id, addr, len });
        }
        let (head, slot) = (ids[0], ring.next_avail % ring.size);
        self.write_guest(ring.avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        let next_avail = ring.next_avail.wrapping_add(1);
        // Release: the descriptors and the ring entry are visible before the new index.
        self.mem.store(next_avail, GuestAddress(ring.avail + 2), Ordering::Release).unwrap();
        let ring = &mut self.rings[r];
        ring.next_avail = next_avail;
        ring.chains[usize::from(head)] = chain;
    }

    fn kick(&self, r: usize) {
        self.rings[r].kick.write(1).expect("kick eventfd");
    }

    /// The next used element of ring `r` (id, len), if the backend published one.
    fn pop_used(&mut self, r: usize) -> Option<(u16, u32)> {
        let ring = &self.rings[r];
        let used_idx: u16 = self.mem.load(GuestAddress(ring.used + 2), Ordering::Acquire).unwrap();
        if used_idx == ring.last_used {
            return None;
        }
        let e = ring.used + 4 + 8 * u64::from(ring.last_used % ring.size);
        let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
        assert!(
            id < u32::from(ring.size) && !ring.chains[id as usize].is_empty(),
            "backend returned descriptor {id} on ring {r}, which is not the head of a chain in flight"
        );
        let next = ring.last_used.wrapping_add(1);
        self.rings[r].last_used = next;
        Some((id as u16, len))
    }

    /// With EVENT_IDX: ask for a call as soon as anything past what we consumed is used.
    fn publish_used_event(&self, r: usize) {
        if self.features & bit(VIRTIO_RING_F_EVENT_IDX) != 0 {
            let ring = &self.rings[r];
            let at = GuestAddress(ring.avail + 4 + 2 * u64::from(ring.size));
            self.mem.store(ring.last_used, at, Ordering::Release).unwrap();
        }
    }
}
