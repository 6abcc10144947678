//! XDP ports: the switch end of a veth pair, read and written through
//! AF_XDP sockets in copy mode. The container's frames skip the switch
//! end's stack: an XDP program redirects each one into the socket of the
//! queue it arrived on, and frames we send go straight to the peer.
//!
//! What this module owns, per port:
//! - a BPF map of type XSKMAP (queue index → socket) and the program
//!   ```text
//!   r2 = *(u32 *)(r1 + 16)      ; xdp_md.rx_queue_index
//!   r1 = map                    ; ld_imm64, src_reg = BPF_PSEUDO_MAP_FD
//!   r3 = XDP_PASS               ; what bpf_redirect_map returns with no socket
//!   call bpf_redirect_map       ; helper 51
//!   exit
//!   ```
//!   assembled here and loaded with `bpf(2)` (no clang, no libbpf), and the
//!   BPF link that attaches it (`BPF_LINK_CREATE`, driver mode, falling
//!   back to generic mode). Closing the link fd (dropping the port, or the
//!   process dying) detaches the program; the netlink attach (`IFLA_XDP`)
//!   is not used because it outlives the process.
//! - per queue, one AF_XDP socket bound to (ifindex, queue) with
//!   `XDP_COPY | XDP_USE_NEED_WAKEUP`, its own UMEM of [`CHUNKS`] chunks of
//!   [`CHUNK`] bytes (the first [`FILL_CHUNKS`] circulate through the fill
//!   and RX rings, the rest through the TX and completion rings), and the
//!   four rings, mmapped. A queue's UMEM is pinned by the kernel:
//!   16 MiB per queue with these constants.
//!
//! The socket/UMEM setup uses `libc` directly rather than the `xdpilone`
//! crate: that crate is EUPL-1.2 (copyleft; the workspace is Apache-2.0),
//! and with it the UMEM area and ring views are still `unsafe` for us to
//! provide, so it would not remove the unsafe code this file needs.
//!
//! Threading (the [`Port`] contract): the RX side of queue `q` (RX and fill
//! rings) is read by one worker, the TX side (TX and completion rings, free
//! chunk list) by any thread. Each side sits behind its own `Mutex`, taken
//! once per call, never per frame: uncontended for RX (one atomic pair per
//! burst); for TX, a blocking lock rather than a `try_lock`, because the
//! gateway's frames (ARP and DHCP replies) to a one-queue port would
//! otherwise be dropped whenever a worker happens to be sending, and the
//! critical section is bounded (at most a burst of copies; the `sendto` kick
//! runs after the lock is released).
//!
//! Memory ordering of the rings (as in the kernel's `xsk_queue.h`): we read
//! the other side's index with Acquire before touching descriptors, and
//! publish ours with Release after writing (or reading) them.
//!
//! Checksums and segmentation (measured on Linux 6.18, native mode, by the
//! tests below): with the container end's default offloads
//! (`tx-checksumming: on`), the container's UDP and TCP frames reach the
//! socket with *partial* checksums (the pseudo-header sum only: the skb was
//! `CHECKSUM_PARTIAL`), and nothing in the frame says so. The control plane
//! must therefore turn transmit checksum offload off on the container end,
//! from a thread inside the container's namespace, before traffic flows:
//! [`disable_tx_checksum`] (`ethtool -K <container end> tx off`). The
//! container's stack then finishes every checksum itself; UDP GSO sends
//! still work (segmented in software). While the program is attached, veth
//! turns TSO and USO off on the peer (`off [fixed]`), so frames from the
//! container are never larger than its MTU. (In generic mode, not reached
//! on veth, none of this was checked.)
//!
//! A deleted veth unbinds the sockets (the kernel reports `ENXIO` on them);
//! `recv_batch` then returns [`RecvState::Gone`] and `send_batch` counts
//! errors. The socket's poll does not signal that event, so it is seen at the
//! next call, not woken for.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::bpf::{
    self, bpf, bpf_fd, name16, Insn, LinkCreate, MapCreate, MapUpdate, BPF_LINK_CREATE, BPF_MAP_CREATE,
    BPF_MAP_UPDATE_ELEM,
};
use super::{Offloads, Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::{Batch, HEADROOM};
use crate::wire::vnet::{VnetHdr, VNET_HDR_LEN};

/// Bytes per UMEM chunk: one frame each (copy mode, no multi-buffer).
pub const CHUNK: usize = 4096;
/// The largest MTU a veth takes native XDP at without multi-buffer
/// programs: a frame and its headroom in one page, `PAGE_SIZE` minus
/// `XDP_PACKET_HEADROOM` (256) minus `skb_shared_info` (320) minus the
/// Ethernet header (14). Measured on Linux 6.18: MTU 3506 attaches in
/// native mode, 3507 only in generic mode (where veth keeps the peer's
/// TSO and frames outgrow a chunk), so the control plane refuses networks
/// above it for AF_XDP ports.
pub const MAX_MTU: u32 = 3506;
/// Chunks per queue's UMEM.
pub const CHUNKS: usize = 4096;
/// Chunks given to the kernel for receiving; the rest are for sending.
pub const FILL_CHUNKS: usize = 2048;
/// Entries in each of the four rings (a power of two). The fill ring holds
/// every RX chunk at once, so refilling never finds it full.
const RING: u32 = 2048;
const _: () = assert!(RING as usize >= FILL_CHUNKS && RING.is_power_of_two() && FILL_CHUNKS < CHUNKS);
/// Shortest frame we send: an Ethernet header.
const ETH_HLEN: usize = 14;

// bpf(2) constants (include/uapi/linux/bpf.h, if_link.h).
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

// SIOCETHTOOL commands (include/uapi/linux/ethtool.h).
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// An mmapped region (a ring or a UMEM), unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping only owns the address range; reading or writing through
// it is done by the ring and UMEM code under the locks described above.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` gives no access to the memory by itself.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize, prot: libc::c_int, flags: libc::c_int, fd: RawFd, offset: libc::off_t) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL): it
        // overlaps nothing of ours; the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast()).map(|ptr| Mapping { ptr, len }).ok_or_else(|| io::Error::other("mmap returned NULL"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, mapped once, and
        // nothing refers to the range after its owner is dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One of the four rings: the kernel on one side, us on the other. The
/// entries are `u64` chunk addresses (fill, completion) or `xdp_desc` (RX, TX).
struct Ring {
    /// Keeps the pointers below valid.
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    desc: *mut u8,
    mask: u32,
}

// SAFETY: the pointers point into `map`, owned by the ring; each ring is
// used behind one Mutex (see the module doc), so one thread at a time.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps ring `off` of socket `fd` at page offset `pgoff`, `RING` entries of `entry` bytes.
    fn map(fd: RawFd, off: &libc::xdp_ring_offset, pgoff: libc::off_t, entry: usize) -> io::Result<Ring> {
        let len = off.desc as usize + RING as usize * entry;
        let map =
            Mapping::new(len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_POPULATE, fd, pgoff)?;
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the ring's mapping of `len` bytes.
            unsafe { map.ptr.as_ptr().add(o as usize) }
        };
        Ok(Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            desc: at(off.desc),
            mask: RING - 1,
            _map: map,
        })
    }

    #[inline]
    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into `self.map`, aligned by the kernel, alive as long as self.
        unsafe { &*self.producer }
    }

    #[inline]
    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for `prod`.
        unsafe { &*self.consumer }
    }

    /// The ring's flags word says the kernel wants a syscall to make progress.
    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `prod`.
        unsafe { &*self.flags }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // Producer side (fill, TX): we alone write the producer index.

    /// Entries we may write, starting at [`Ring::head`].
    #[inline]
    fn free(&self) -> u32 {
        RING - self.prod().load(Ordering::Relaxed).wrapping_sub(self.cons().load(Ordering::Acquire))
    }

    #[inline]
    fn head(&self) -> u32 {
        self.prod().load(Ordering::Relaxed)
    }

    /// Publishes `n` entries written from [`Ring::head`] on.
    #[inline]
    fn submit(&self, n: u32) {
        if n > 0 {
            self.prod().store(self.head().wrapping_add(n), Ordering::Release);
        }
    }

    // Consumer side (RX, completion): we alone write the consumer index.

    /// Entries ready to read, starting at [`Ring::tail`].
    #[inline]
    fn available(&self) -> u32 {
        self.prod().load(Ordering::Acquire).wrapping_sub(self.cons().load(Ordering::Relaxed))
    }

    #[inline]
    fn tail(&self) -> u32 {
        self.cons().load(Ordering::Relaxed)
    }

    /// Gives `n` read entries back, from [`Ring::tail`] on.
    #[inline]
    fn release(&self, n: u32) {
        if n > 0 {
            self.cons().store(self.tail().wrapping_add(n), Ordering::Release);
        }
    }

    /// The `u64` entry at ring index `i` (any u32; masked here).
    #[inline]
    fn addr(&self, i: u32) -> *mut u64 {
        // SAFETY: (i & mask) < RING, and the mapping holds RING entries of 8 bytes after `desc`.
        unsafe { self.desc.cast::<u64>().add((i & self.mask) as usize) }
    }

    /// The `xdp_desc` entry at ring index `i`.
    #[inline]
    fn xdp_desc(&self, i: u32) -> *mut libc::xdp_desc {
        // SAFETY: (i & mask) < RING, and the mapping holds RING entries of 16 bytes after `desc`.
        unsafe { self.desc.cast::<libc::xdp_desc>().add((i & self.mask) as usize) }
    }
}

/// What the worker reading queue `q` touches.
struct RxSide {
    rx: Ring,
    fill: Ring,
    /// Start of the queue's UMEM (owned by [`Queue::umem`]).
    umem: *const u8,
}

// SAFETY: `umem` points into the queue's UMEM mapping, which outlives this
// (same Queue); RX chunks are read only here, under the RX lock.
unsafe impl Send for RxSide {}

/// What a sender to queue `q` touches.
struct TxSide {
    tx: Ring,
    comp: Ring,
    /// TX chunks (UMEM offsets) not in flight. Preallocated; never grows.
    free: Vec<u64>,
    umem: *mut u8,
}

// SAFETY: as for RxSide; TX chunks are written only here, under the TX lock,
// and only while not handed to the kernel.
unsafe impl Send for TxSide {}

struct Queue {
    // Declared first: closing the socket unbinds it before the maps go.
    fd: OwnedFd,
    rx: Mutex<RxSide>,
    tx: Mutex<TxSide>,
    _umem: Mapping,
}

/// The kernel's AF_XDP counters (`struct xdp_statistics`), summed over a port's queues.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct XskStats {
    /// Frames dropped for any reason other than those below (e.g. too long for a chunk).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because our RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

/// A veth's switch end, read and written through one AF_XDP socket per queue
/// (see the module doc for what it owns and how it is locked).
pub struct XdpPort {
    // Field order is drop order: the link first (detaching the program),
    // then the program and map, then the sockets.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
    queues: Vec<Queue>,
    name: String,
    mode: &'static str,
    /// Frames received that did not fit a buffer, or with a bad descriptor.
    rx_dropped: AtomicU64,
}

fn xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut a = MapCreate {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name16("tapyard_xsks"),
    };
    bpf_fd(BPF_MAP_CREATE, &mut a).map_err(|e| io::Error::new(e.kind(), format!("cannot create the XSKMAP: {e}")))
}

fn map_set(map: &OwnedFd, key: u32, value: u32) -> io::Result<()> {
    let mut a = MapUpdate {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        flags: 0,
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// The redirect program of the module doc, referring to `map`.
fn program(map: &OwnedFd) -> [Insn; 6] {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
    const LD_DW_IMM: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM
    const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    [
        Insn::new(LDX_W, 2, 1, 16, 0),
        Insn::new(LD_DW_IMM, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()),
        Insn::new(0, 0, 0, 0, 0), // upper half of the 64-bit immediate
        Insn::new(MOV64_K, 3, 0, 0, XDP_PASS),
        Insn::new(CALL, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        Insn::new(EXIT, 0, 0, 0, 0),
    ]
}

/// Loads `insns` as an XDP program (see [`bpf::load`]).
fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    bpf::load(insns, BPF_PROG_TYPE_XDP, BPF_XDP, "tapyard_xsk")
}

/// Attaches `prog` to `ifindex` through a BPF link: driver mode, else
/// generic mode. Returns the link and the mode's name.
fn attach(prog: &OwnedFd, ifindex: u32) -> io::Result<(OwnedFd, &'static str)> {
    let link = |flags| {
        let mut a =
            LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
        bpf_fd(BPF_LINK_CREATE, &mut a)
    };
    match link(XDP_FLAGS_DRV_MODE) {
        Ok(fd) => Ok((fd, "native")),
        Err(native) => match link(XDP_FLAGS_SKB_MODE) {
            Ok(fd) => Ok((fd, "generic")),
            Err(generic) => Err(io::Error::new(
                generic.kind(),
                format!("cannot attach the XDP program: native mode: {native}; generic mode: {generic}"),
            )),
        },
    }
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed, which the kernel reads.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket (fd in the caller's socket namespace) for ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the result is checked next.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIOCETHTOOL on `ifname` with the command struct `data` (its first u32 is the command).
fn ethtool<T>(ifname: &str, data: &mut T) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    let sock = ioctl_socket()?;
    // SAFETY: ifreq is plain data; all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (data as *mut T).cast();
    // SAFETY: `req` names the interface and points at `data`, both live for
    // the call; the kernel reads and writes at most the command's struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings `ifname` (in the caller's namespace) up or down, as `ip link set
/// IFNAME up|down` does (SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP
/// changed). On a veth the peer then shows carrier or NO-CARRIER.
fn set_link_up(ifname: &str, up: bool) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")));
    }
    let sock = ioctl_socket()?;
    // SAFETY: ifreq is plain data; all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` names the interface and is live for the call; the
    // kernel writes the flags member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS wrote the flags member; every member of the
    // union is plain data.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = libc::IFF_UP as libc::c_short;
    req.ifr_ifru.ifru_flags = if up { flags | up_flag } else { flags & !up_flag };
    // SAFETY: as above; the kernel reads the flags member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receive queues of `ifname` in use (ETHTOOL_GCHANNELS: rx + combined).
fn rx_queues(ifname: &str) -> io::Result<usize> {
    let mut ch = [0u32; 9];
    ch[0] = ETHTOOL_GCHANNELS;
    ethtool(ifname, &mut ch)?;
    // struct ethtool_channels: cmd, max_rx, max_tx, max_other, max_combined,
    // rx_count, tx_count, other_count, combined_count.
    Ok((ch[5] + ch[8]) as usize)
}

/// Turns off transmit checksum offload on `ifname` in the caller's network
/// namespace (`ethtool -K ifname tx off`, ETHTOOL_STXCSUM). Called on the
/// container end of an XDP port's veth, from a thread inside the
/// container's namespace: that stack then sends finished checksums, which an
/// AF_XDP socket (no vnet header) needs. The kernel also turns off TSO,
/// which needs checksum offload; software GSO still segments before the veth.
pub fn disable_tx_checksum(ifname: &str) -> io::Result<()> {
    let mut v = [ETHTOOL_STXCSUM, 0u32]; // struct ethtool_value { cmd, data }
    ethtool(ifname, &mut v)
}

fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")))?;
    // SAFETY: `c` is a NUL-terminated string alive for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifname}"))),
        i => Ok(i),
    }
}

impl Queue {
    /// A socket with its UMEM and rings, bound to (`ifindex`, `queue`).
    fn open(ifindex: u32, queue: u32) -> io::Result<Queue> {
        // SAFETY: socket takes no pointers; the result is checked next.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new(
            CHUNK * CHUNKS,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: CHUNK as u32,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
        for opt in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            setsockopt(&fd, opt, &RING)?;
        }
        // SAFETY: plain integers; all-zeroes is valid, and the kernel fills it.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `len` are live locals; the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if len as usize != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            // Pre-5.4 layout without the flags word: no need_wakeup either.
            return Err(io::Error::new(io::ErrorKind::Unsupported, "kernel too old for AF_XDP need_wakeup"));
        }
        let raw = fd.as_raw_fd();
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let rx = Ring::map(raw, &off.rx, libc::XDP_PGOFF_RX_RING, desc)?;
        let tx = Ring::map(raw, &off.tx, libc::XDP_PGOFF_TX_RING, desc)?;
        let fill = Ring::map(raw, &off.fr, libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t, 8)?;
        let comp = Ring::map(raw, &off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t, 8)?;

        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a live sockaddr_xdp of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot bind an AF_XDP socket to queue {queue}: {e}")));
        }

        // Every RX chunk goes to the fill ring now (RING >= FILL_CHUNKS).
        let head = fill.head();
        for i in 0..FILL_CHUNKS as u32 {
            // SAFETY: a fill ring entry we own (the ring is empty: all RING are free).
            unsafe { fill.addr(head.wrapping_add(i)).write(u64::from(i) * CHUNK as u64) };
        }
        fill.submit(FILL_CHUNKS as u32);

        let mut free = Vec::with_capacity(CHUNKS - FILL_CHUNKS);
        free.extend((FILL_CHUNKS..CHUNKS).map(|c| (c * CHUNK) as u64));
        let base = umem.ptr.as_ptr();
        Ok(Queue {
            fd,
            rx: Mutex::new(RxSide { rx, fill, umem: base }),
            tx: Mutex::new(TxSide { tx, comp, free, umem: base }),
            _umem: umem,
        })
    }
}

impl XdpPort {
    /// Attaches to the switch end `ifname` of a veth (up, in the caller's namespace): loads the
    /// redirect program, binds one AF_XDP socket per queue (Q = `queues`, clamped to the device's rx queue count).
    pub fn open(ifname: &str, queues: usize) -> io::Result<XdpPort> {
        let index = ifindex(ifname)?;
        // A driver without ETHTOOL_GCHANNELS gets one queue.
        let have = rx_queues(ifname).unwrap_or(1).max(1);
        // A frame on a queue with no socket passes (XDP_PASS) to this end's
        // own stack: it would bypass the switch without a counter.
        if have > queues.max(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ifname} has {have} receive queues, more than the {queues} asked for"),
            ));
        }
        let n = queues.clamp(1, have);
        let map = xskmap(n as u32)?;
        let prog = load(&program(&map))?;
        let (link, mode) = attach(&prog, index).map_err(|e| io::Error::new(e.kind(), format!("{ifname}: {e}")))?;
        let mut qs = Vec::with_capacity(n);
        for q in 0..n as u32 {
            let queue = Queue::open(index, q).map_err(|e| io::Error::new(e.kind(), format!("{ifname}: {e}")))?;
            map_set(&map, q, queue.fd.as_raw_fd() as u32)
                .map_err(|e| io::Error::new(e.kind(), format!("{ifname}: cannot add socket {q} to the map: {e}")))?;
            qs.push(queue);
        }
        let mode = if mode == "native" { "native, copy" } else { "generic, copy" };
        Ok(XdpPort {
            _link: link,
            _prog: prog,
            _map: map,
            queues: qs,
            name: ifname.to_owned(),
            mode,
            rx_dropped: AtomicU64::new(0),
        })
    }

    /// Which XDP mode it got ("native" or "generic") and copy/zero-copy, for `port ls`/logs.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Frames received and dropped: too long for a buffer, or a descriptor
    /// outside the queue's RX chunks (never seen; a defence).
    pub fn rx_dropped(&self) -> u64 {
        self.rx_dropped.load(Ordering::Relaxed)
    }

    /// The kernel's counters of the port's sockets (`XDP_STATISTICS`),
    /// summed over the queues: frames it dropped before we saw them.
    pub fn kernel_stats(&self) -> io::Result<XskStats> {
        let mut sum = XskStats::default();
        for q in &self.queues {
            // SAFETY: plain integers; all-zeroes is valid, and the kernel fills it.
            let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::xdp_statistics>() as libc::socklen_t;
            // SAFETY: `st` and `len` are live locals; the kernel writes at most `len` bytes.
            let rc = unsafe {
                libc::getsockopt(
                    q.fd.as_raw_fd(),
                    libc::SOL_XDP,
                    libc::XDP_STATISTICS,
                    (&mut st as *mut libc::xdp_statistics).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            sum.rx_dropped += st.rx_dropped;
            sum.rx_invalid_descs += st.rx_invalid_descs;
            sum.tx_invalid_descs += st.tx_invalid_descs;
            sum.rx_ring_full += st.rx_ring_full;
            sum.rx_fill_ring_empty += st.rx_fill_ring_empty_descs;
            sum.tx_ring_empty += st.tx_ring_empty_descs;
        }
        Ok(sum)
    }

    #[inline]
    fn queue(&self, queue: usize) -> &Queue {
        // Folds back like a TAP's: a port with fewer queues than workers is still served.
        &self.queues[queue % self.queues.len()]
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the ring
    // indices are still consistent (each is published by one store).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The socket was unbound because its device went away.
fn gone_errno(e: i32) -> bool {
    e == libc::ENXIO || e == libc::ENODEV || e == libc::ENETDOWN
}

impl TxSide {
    /// Returns completed TX chunks to the free list.
    fn reap(&mut self) {
        let n = self.comp.available();
        let tail = self.comp.tail();
        for i in 0..n {
            // SAFETY: one of the `n` entries the kernel published (Acquire in `available`).
            let addr = unsafe { self.comp.addr(tail.wrapping_add(i)).read() };
            let chunk = addr - addr % CHUNK as u64;
            // Only our own TX chunks can come back; the list has room for all of them.
            let ours = ((FILL_CHUNKS * CHUNK) as u64..(CHUNKS * CHUNK) as u64).contains(&chunk);
            if ours && self.free.len() < self.free.capacity() {
                self.free.push(chunk);
            }
        }
        self.comp.release(n);
    }
}

impl Port for XdpPort {
    fn recv_batch(&self, queue: usize, batch: &mut Batch) -> RecvReport {
        let q = self.queue(queue);
        let side = lock(&q.rx);
        let avail = side.rx.available();
        // Never less than `avail`: every RX chunk fits in the fill ring.
        let take = avail.min(side.fill.free());
        let (tail, head) = (side.rx.tail(), side.fill.head());
        let (mut used, mut frames, mut dropped) = (0u32, 0usize, 0u64);
        while used < take {
            let Some(buf) = batch.next_free() else { break };
            // SAFETY: one of the `avail` descriptors the kernel published.
            let d = unsafe { side.rx.xdp_desc(tail.wrapping_add(used)).read() };
            let chunk = d.addr - d.addr % CHUNK as u64;
            // The chunk goes back whatever we make of the frame.
            // SAFETY: a fill entry among the `free()` ones we own.
            unsafe { side.fill.addr(head.wrapping_add(used)).write(chunk) };
            used += 1;
            let len = d.len as usize;
            let in_chunk = (d.addr % CHUNK as u64) as usize + len <= CHUNK;
            let space = buf.hdr_space_mut();
            if chunk >= (FILL_CHUNKS * CHUNK) as u64 || !in_chunk || HEADROOM + len > space.len() {
                dropped += 1;
                continue;
            }
            space[..HEADROOM].fill(0);
            // SAFETY: [addr, addr + len) lies in one RX chunk of the UMEM
            // (checked above), which the kernel finished writing before it
            // published the descriptor and will not touch again until we
            // give the chunk back below; `space` has room for `len` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(side.umem.add(d.addr as usize), space[HEADROOM..].as_mut_ptr(), len)
            };
            buf.set_len(len);
            batch.commit();
            frames += 1;
        }
        side.rx.release(used);
        side.fill.submit(used);
        if dropped > 0 {
            self.rx_dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        // Copy mode never asks for this; a zero-copy driver would.
        let kick = side.fill.needs_wakeup();
        drop(side);
        if kick || used == 0 {
            // Also how a vanished device shows: the socket is unbound, and
            // recvfrom says ENXIO. Only paid on a burst that found nothing.
            // SAFETY: a NULL buffer of length 0 is allowed; nothing is written.
            let rc = unsafe {
                libc::recvfrom(
                    q.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                let e = errno();
                if gone_errno(e) {
                    return RecvReport { frames, state: RecvState::Gone };
                }
                if e != libc::EAGAIN && e != libc::EINTR && e != libc::EBUSY {
                    return RecvReport { frames, state: RecvState::Error(e) };
                }
            }
        }
        let state = if batch.is_full() || used < avail { RecvState::More } else { RecvState::Drained };
        RecvReport { frames, state }
    }

    fn send_batch(&self, queue: usize, frames: &[&[u8]]) -> SendReport {
        let q = self.queue(queue);
        let mut r = SendReport::default();
        let (mut n, mut bytes) = (0u32, 0u64);
        {
            let mut side = lock(&q.tx);
            side.reap();
            let room = side.tx.free();
            let head = side.tx.head();
            for f in frames {
                if f.len() < VNET_HDR_LEN + ETH_HLEN || f.len() - VNET_HDR_LEN > CHUNK {
                    r.errors += 1;
                    continue;
                }
                // Our caps say no offloads: a non-plain frame is a caller's bug.
                if !VnetHdr::of(f).is_plain() {
                    r.errors += 1;
                    continue;
                }
                if n == room {
                    r.queue_full += 1;
                    continue;
                }
                let Some(chunk) = side.free.pop() else {
                    r.queue_full += 1;
                    continue;
                };
                let frame = &f[VNET_HDR_LEN..];
                // SAFETY: `chunk` is a TX chunk of the UMEM (CHUNK bytes,
                // frame.len() <= CHUNK) that the kernel does not hold: it was
                // on the free list; the TX entry is one of the `room` we own.
                unsafe {
                    std::ptr::copy_nonoverlapping(frame.as_ptr(), side.umem.add(chunk as usize), frame.len());
                    side.tx.xdp_desc(head.wrapping_add(n)).write(libc::xdp_desc {
                        addr: chunk,
                        len: frame.len() as u32,
                        options: 0,
                    });
                }
                n += 1;
                bytes += frame.len() as u64;
            }
            side.tx.submit(n);
        }
        if n == 0 {
            return r;
        }
        // Copy mode sends only from sendmsg (the TX ring's need_wakeup flag
        // is always set). One call sends at most 32 frames (TX_BATCH_SIZE) and says
        // EAGAIN if more are left, or EBUSY when the device dropped one (its
        // peer is down), which ends that call early. Kick until the ring is
        // empty: at most one kick per frame, plus one.
        let mut failed = 0;
        for _ in 0..=n {
            // SAFETY: a NULL buffer of length 0 and no address are allowed.
            let rc =
                unsafe { libc::sendto(q.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
            if rc >= 0 {
                break;
            }
            match errno() {
                libc::EAGAIN | libc::EBUSY | libc::EINTR => {}
                // No socket buffer for now: the next call's kick sends the rest.
                libc::ENOBUFS => break,
                e => {
                    failed = e;
                    break;
                }
            }
        }
        match failed {
            0 => {
                r.sent += u64::from(n);
                r.bytes += bytes;
            }
            // The device is down: the frames wait in the ring.
            libc::ENETDOWN => r.link_down += u64::from(n),
            // ENXIO: unbound, the device is gone.
            _ => r.errors += u64::from(n),
        }
        r
    }

    fn caps(&self) -> PortCaps {
        PortCaps { queues: self.queues.len() as u16, offloads: Offloads::NONE, gather: true }
    }

    fn raw_fd(&self, queue: usize) -> Option<RawFd> {
        Some(self.queue(queue).fd.as_raw_fd())
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Cuts or restores the link (`port set --down|--up`): the switch's end
    /// goes down or up, so the namespace's end shows NO-CARRIER or carrier,
    /// as a TAP's carrier does. The sockets stay bound (the kernel unbinds
    /// them only when the device goes away).
    fn set_carrier(&self, up: bool) -> io::Result<()> {
        set_link_up(&self.name, up)
    }
}

/// Root-only tests at the kernel boundary: each makes its own namespace and
/// veth pair (198.18.7.0/24), removed by a drop guard even on failure.
#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::net::{SocketAddr, TcpStream, UdpSocket};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};

    use super::*;
    use crate::port::tap::in_netns;

    const A_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x07, 0x01];
    const B_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x07, 0x02];
    const A_IP: [u8; 4] = [198, 18, 7, 1];
    const B_IP: [u8; 4] = [198, 18, 7, 2];
    const WAIT: Duration = Duration::from_secs(3);

    fn ip(args: &[&str]) -> bool {
        Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false)
    }

    fn must(args: &[&str]) {
        assert!(ip(args), "ip {} failed", args.join(" "));
    }

    /// Veth `a` (here) / `b` (in namespace `ns`, 198.18.7.2/24, static
    /// neighbour 198.18.7.1 at A_MAC), two queues each way.
    struct Veth {
        a: String,
        b: String,
        ns: String,
    }

    impl Veth {
        fn new(tag: char) -> Option<Veth> {
            // SAFETY: geteuid takes nothing and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("skipped: needs root");
                return None;
            }
            let pid = std::process::id();
            let v = Veth { a: format!("tyxa{tag}{pid}"), b: format!("tyxb{tag}{pid}"), ns: format!("tyxdp{tag}{pid}") };
            let (a, b, ns) = (v.a.as_str(), v.b.as_str(), v.ns.as_str());
            must(&["netns", "add", ns]);
            // No IPv6 in the namespace: no DAD or MLD frames among the test's own.
            let quiet = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .args(["net.ipv6.conf.default.disable_ipv6=1"])
                .status();
            assert!(quiet.map(|s| s.success()).unwrap_or(false), "sysctl in the namespace");
            must(&[
                "link",
                "add",
                a,
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "type",
                "veth",
                "peer",
                "name",
                b,
                "numtxqueues",
                "2",
                "numrxqueues",
                "2",
                "netns",
                ns,
            ]);
            must(&["link", "set", a, "up"]);
            must(&["-n", ns, "link", "set", "lo", "up"]);
            must(&["-n", ns, "link", "set", b, "address", "02:00:5e:00:07:02"]);
            must(&["-n", ns, "addr", "add", "198.18.7.2/24", "dev", b]);
            must(&["-n", ns, "link", "set", b, "up"]);
            must(&[
                "-n",
                ns,
                "neigh",
                "replace",
                "198.18.7.1",
                "lladdr",
                "02:00:5e:00:07:01",
                "dev",
                b,
                "nud",
                "permanent",
            ]);
            Some(v)
        }

        fn ns(&self) -> File {
            File::open(format!("/run/netns/{}", self.ns)).expect("open the namespace")
        }

        /// A UDP socket in the namespace, bound to `addr`.
        fn udp(&self, addr: &str) -> UdpSocket {
            let s = in_netns(&self.ns(), || UdpSocket::bind(addr)).expect("bind in the namespace");
            s.set_read_timeout(Some(WAIT)).unwrap();
            s
        }
    }

    impl Drop for Veth {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.a]).stderr(std::process::Stdio::null()).status();
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        }
    }

    fn payload(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(salt)).collect()
    }

    /// vnet header (plain) + Ethernet/IPv4/UDP from 198.18.7.1:40000 to B at `dport`.
    fn udp_wire(data: &[u8], dport: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(A_MAC, B_MAC).ipv4(A_IP, B_IP, 64).udp(40000, dport);
        let mut v = vec![0u8; VNET_HDR_LEN];
        b.write(&mut v, data).unwrap();
        v
    }

    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }

    fn folds_to_ones(mut acc: u32) -> bool {
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc == 0xffff
    }

    /// (IPv4 header checksum right, L4 checksum right) of an IPv4 frame.
    fn checksums(f: &[u8]) -> (bool, bool) {
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 15) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let l4 = &ip[ihl..total];
        let pseudo = sum(&ip[12..20], u32::from(ip[9]) + l4.len() as u32);
        (folds_to_ones(sum(&ip[..ihl], 0)), folds_to_ones(sum(l4, pseudo)))
    }

    /// IPv4 with protocol `proto` to destination port `dport`.
    fn is_to(f: &[u8], proto: u8, dport: u16) -> bool {
        f.len() >= 38 && f[12..14] == [0x08, 0x00] && f[23] == proto && {
            let ihl = usize::from(f[14] & 15) * 4;
            f.len() >= 14 + ihl + 4 && u16::from_be_bytes([f[14 + ihl + 2], f[14 + ihl + 3]]) == dport
        }
    }

    /// Every queue's fd, registered edge-triggered (as the worker does).
    fn poller(port: &XdpPort) -> Poll {
        let poll = Poll::new().unwrap();
        for q in 0..usize::from(port.caps().queues) {
            let fd = port.raw_fd(q).unwrap();
            poll.registry().register(&mut SourceFd(&fd), Token(q), Interest::READABLE).unwrap();
        }
        poll
    }

    /// Reads every queue until `count` frames matching `want` showed up
    /// (returned in order) or `WAIT` passed, sleeping in the poller between
    /// drained rounds.
    fn wait_frames(port: &XdpPort, poll: &mut Poll, count: usize, want: impl Fn(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut batch = Batch::new();
        let mut events = Events::with_capacity(8);
        let mut got = Vec::new();
        loop {
            let mut more = false;
            for q in 0..usize::from(port.caps().queues) {
                batch.clear();
                let r = port.recv_batch(q, &mut batch);
                assert!(matches!(r.state, RecvState::More | RecvState::Drained), "{r:?}");
                more |= r.state == RecvState::More;
                for b in batch.iter().filter(|b| want(b.frame())) {
                    assert_eq!(b.wire()[..HEADROOM], [0; HEADROOM], "a plain frame's header");
                    got.push(b.frame().to_vec());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if got.len() >= count || left.is_zero() {
                return got;
            }
            if !more {
                poll.poll(&mut events, Some(left)).unwrap();
            }
        }
    }

    fn wait_frame(port: &XdpPort, poll: &mut Poll, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        wait_frames(port, poll, 1, want).pop()
    }

    fn attached(ifname: &str) -> bool {
        let out = Command::new("ip").args(["-d", "link", "show", ifname]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    #[test]
    fn xdp_sends_into_the_namespace() {
        let Some(v) = Veth::new('s') else { return };
        let port = XdpPort::open(&v.a, 8).expect("open the XDP port");
        assert_eq!(port.caps(), PortCaps { queues: 2, offloads: Offloads::NONE, gather: true }, "clamped to 2 queues");
        assert_eq!(port.mode(), "native, copy", "veth takes native XDP");
        assert_eq!(port.name(), v.a);
        assert!(attached(&v.a));
        let rx = v.udp("198.18.7.2:7001");
        let mut buf = vec![0u8; 2048];
        // A small frame and a 1400-byte frame, on each queue.
        for q in 0..2 {
            for (len, salt) in [(40, 1u8), (1400 - 42, 2)] {
                let data = payload(len, salt + q as u8);
                let wire = udp_wire(&data, 7001);
                let r = port.send_batch(q, &[&wire]);
                assert_eq!((r.sent, r.errors, r.queue_full), (1, 0, 0), "{r:?}");
                assert_eq!(r.bytes, (wire.len() - VNET_HDR_LEN) as u64);
                let (n, from) = rx.recv_from(&mut buf).expect("the datagram arrives");
                assert_eq!(&buf[..n], &data[..]);
                assert_eq!(from, "198.18.7.1:40000".parse::<SocketAddr>().unwrap());
            }
        }
        // A burst of 100 in one call (more than one copy-mode kick's worth).
        let wires: Vec<Vec<u8>> = (0..100).map(|i| udp_wire(&payload(64, i as u8), 7001)).collect();
        let frames: Vec<&[u8]> = wires.iter().map(|w| &w[..]).collect();
        let r = port.send_batch(0, &frames);
        assert_eq!(r.sent, 100, "{r:?}");
        for i in 0..100 {
            let (n, _) = rx.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i} of the burst: {e}"));
            assert_eq!(&buf[..n], &payload(64, i as u8)[..]);
        }
        // Frames a no-offload port must not get, and runts, are errors.
        let mut gso = udp_wire(&payload(40, 0), 7001);
        VnetHdr::tcp4_gso(1448).write_to(&mut gso);
        let r = port.send_batch(0, &[&gso, &[0u8; 12]]);
        assert_eq!((r.sent, r.errors), (0, 2), "{r:?}");
        // The device's own stack down: the kick says ENETDOWN.
        must(&["link", "set", &v.a, "down"]);
        let r = port.send_batch(0, &[&udp_wire(&payload(40, 0), 7001)]);
        assert_eq!((r.sent, r.link_down), (0, 1), "{r:?}");
        must(&["link", "set", &v.a, "up"]);
        let stats = port.kernel_stats().expect("XDP_STATISTICS");
        assert_eq!((stats.rx_ring_full, stats.tx_invalid_descs), (0, 0), "{stats:?}");
        drop(port);
        assert!(!attached(&v.a), "dropping the port detaches the program");
        let few = XdpPort::open(&v.a, 1).err().expect("fewer queues than the device has");
        assert!(few.to_string().contains("2 receive queues"), "{few}");
        assert!(!attached(&v.a), "a failed open leaves nothing attached");
    }

    /// Several threads sending to one queue at once (a one-queue port gets
    /// every worker's frames): every frame arrives once.
    #[test]
    fn xdp_concurrent_senders_share_a_queue() {
        let Some(v) = Veth::new('c') else { return };
        let port = XdpPort::open(&v.a, 2).expect("open the XDP port");
        let rx = v.udp("198.18.7.2:7007");
        let (threads, bursts, burst) = (4u8, 10u8, 5u8);
        std::thread::scope(|s| {
            for t in 0..threads {
                let port = &port;
                s.spawn(move || {
                    for b in 0..bursts {
                        let wires: Vec<Vec<u8>> = (0..burst).map(|i| udp_wire(&[t, b, i], 7007)).collect();
                        let frames: Vec<&[u8]> = wires.iter().map(|w| &w[..]).collect();
                        assert_eq!(port.send_batch(0, &frames).sent, u64::from(burst));
                    }
                });
            }
        });
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 64];
        for _ in 0..usize::from(threads) * usize::from(bursts) * usize::from(burst) {
            let (n, _) = rx.recv_from(&mut buf).expect("every frame arrives");
            assert_eq!(n, 3);
            assert!(seen.insert([buf[0], buf[1], buf[2]]), "a duplicate");
        }
    }

    #[test]
    fn xdp_receives_from_the_namespace_with_edge_triggered_wakeups() {
        let Some(v) = Veth::new('r') else { return };
        let port = XdpPort::open(&v.a, 2).expect("open the XDP port");
        let mut poll = poller(&port);
        let mut events = Events::with_capacity(8);
        // Nothing is waiting (no IPv6 in the namespace): the next event is our frame's.
        let mut batch = Batch::new();
        for q in 0..2 {
            assert_eq!(port.recv_batch(q, &mut batch), RecvReport { frames: 0, state: RecvState::Drained });
        }
        let tx = v.udp("198.18.7.2:0");
        for (len, salt) in [(40, 3u8), (1400 - 42, 4)] {
            let data = payload(len, salt);
            tx.send_to(&data, "198.18.7.1:7002").unwrap();
            // Woken for a frame that arrived after a drain (edge-triggered).
            poll.poll(&mut events, Some(WAIT)).unwrap();
            assert!(!events.is_empty(), "the socket's fd became readable");
            let f = wait_frame(&port, &mut poll, |f| is_to(f, 17, 7002)).expect("the frame arrives");
            assert_eq!(f.len(), 42 + len);
            assert_eq!(f[..6], A_MAC);
            assert_eq!(f[6..12], B_MAC);
            assert_eq!(f[42..], data[..]);
            let (ip_ok, udp_ok) = checksums(&f);
            assert!(ip_ok);
            eprintln!(
                "UDP {} bytes from the namespace: checksum {}",
                f.len(),
                if udp_ok { "complete" } else { "partial" }
            );
        }
        assert_eq!(port.rx_dropped(), 0);
    }

    /// What the container's TCP stack hands the socket: with the veth's
    /// default offloads (tx-checksumming on), and with them turned off by
    /// `disable_tx_checksum`.
    #[test]
    fn xdp_tcp_checksums_from_the_namespace() {
        let Some(v) = Veth::new('t') else { return };
        let port = XdpPort::open(&v.a, 2).expect("open the XDP port");
        let mut poll = poller(&port);
        let mut syn = |dport: u16| {
            let ns = v.ns();
            let t = std::thread::spawn(move || {
                let to: SocketAddr = format!("198.18.7.1:{dport}").parse().unwrap();
                let _ = in_netns(&ns, || TcpStream::connect_timeout(&to, Duration::from_millis(500)).map(|_| ()));
            });
            let f = wait_frame(&port, &mut poll, |f| is_to(f, 6, dport)).expect("the SYN arrives");
            t.join().unwrap();
            checksums(&f)
        };
        let (ip_ok, tcp_default) = syn(7003);
        assert!(ip_ok);
        let ns = v.ns();
        in_netns(&ns, || disable_tx_checksum(&v.b)).expect("ethtool -K tx off in the namespace");
        let (_, tcp_off) = syn(7004);
        eprintln!(
            "TCP SYN checksum with tx-checksumming on: {}; off: {}",
            if tcp_default { "complete" } else { "partial" },
            if tcp_off { "complete" } else { "partial" }
        );
        assert!(tcp_off, "with tx checksumming off the container's stack finishes the checksum");
    }

    #[test]
    fn xdp_deleted_veth_is_gone_not_a_panic() {
        let Some(v) = Veth::new('g') else { return };
        let port = XdpPort::open(&v.a, 2).expect("open the XDP port");
        must(&["link", "del", &v.a]);
        let mut batch = Batch::new();
        for q in 0..2 {
            // Unbinding runs in the kernel's notifier; give it a moment without a fixed sleep.
            let deadline = Instant::now() + WAIT;
            let state = loop {
                batch.clear();
                let r = port.recv_batch(q, &mut batch);
                if r.state == RecvState::Gone || Instant::now() > deadline {
                    break r.state;
                }
                std::thread::yield_now();
            };
            assert_eq!(state, RecvState::Gone, "queue {q}");
            let wire = udp_wire(&payload(40, 0), 7001);
            let r = port.send_batch(q, &[&wire]);
            assert_eq!(r.sent, 0, "{r:?}");
            assert_eq!(r.errors + r.link_down + r.queue_full, 1, "{r:?}");
        }
        drop(port);
        assert!(XdpPort::open(&v.a, 2).is_err(), "no such interface");
    }

    #[test]
    fn xdp_falls_back_to_generic_mode_and_refuses_a_second_program() {
        let Some(v) = Veth::new('m') else { return };
        // Loopback has no native XDP: the port gets generic mode. (The
        // namespace's `lo`, opened from a thread inside it.)
        let port = in_netns(&v.ns(), || XdpPort::open("lo", 4)).expect("open on loopback");
        assert_eq!(port.mode(), "generic, copy");
        assert_eq!(port.caps().queues, 1, "loopback has one rx queue");
        let wire = udp_wire(&payload(40, 0), 7001);
        assert_eq!(port.send_batch(0, &[&wire]).sent, 1);
        drop(port);
        // One program per device: a second port on the veth is an error, and the first keeps working.
        let first = XdpPort::open(&v.a, 2).expect("open the XDP port");
        let second = XdpPort::open(&v.a, 2).err().expect("a second attach fails");
        assert!(second.to_string().contains("cannot attach"), "{second}");
        let rx = v.udp("198.18.7.2:7005");
        assert_eq!(first.send_batch(1, &[&udp_wire(b"still here", 7005)]).sent, 1);
        let mut buf = [0u8; 64];
        let (n, _) = rx.recv_from(&mut buf).expect("the first port still sends");
        assert_eq!(&buf[..n], b"still here");
    }

    #[test]
    fn xdp_verifier_log_is_in_the_load_error() {
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        // `exit` with r0 never written: the verifier refuses it.
        let e = load(&[Insn::new(0x95, 0, 0, 0, 0)]).expect_err("rejected");
        assert!(e.to_string().contains("R0 !read_ok"), "{e}");
    }

    /// A UDP GSO send (3 x 1000 bytes) from the namespace: what reaches the socket.
    #[test]
    fn xdp_udp_gso_from_the_namespace_arrives_segmented() {
        let Some(v) = Veth::new('u') else { return };
        let port = XdpPort::open(&v.a, 2).expect("open the XDP port");
        let mut poll = poller(&port);
        let tx = v.udp("198.18.7.2:0");
        let seg: libc::c_int = 1000;
        // SAFETY: `seg` is a live c_int of the size passed (UDP_SEGMENT, udp(7)).
        let rc = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&seg as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let data = payload(3000, 9);
        tx.send_to(&data, "198.18.7.1:7006").unwrap();
        let frames = wait_frames(&port, &mut poll, 3, |f| is_to(f, 17, 7006));
        let sizes: Vec<usize> = frames.iter().map(|f| f.len()).collect();
        let complete = frames.iter().filter(|f| checksums(f).1).count();
        eprintln!("UDP GSO send of 3 x 1000 bytes: frames of {sizes:?} bytes, {complete} with a complete checksum");
        assert_eq!(sizes, [1042; 3]);
        let got: Vec<u8> = frames.iter().flat_map(|f| f[42..].iter().copied()).collect();
        assert!(got == data, "three segments, in order");
        // With tx checksumming off, UDP GSO still works, and the segments come out finished.
        in_netns(&v.ns(), || disable_tx_checksum(&v.b)).expect("ethtool -K tx off in the namespace");
        tx.send_to(&data, "198.18.7.1:7006").expect("a UDP GSO send with tx checksumming off");
        let frames = wait_frames(&port, &mut poll, 3, |f| is_to(f, 17, 7006));
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| checksums(f) == (true, true)), "complete checksums");
    }
}
