//! TAP ports: a `/dev/net/tun` device in TAP mode, opened with raw ioctls
//! (tun-tap cannot set the flags below, and cannot attach to a multi-queue
//! TAP at all) as
//! - `IFF_MULTI_QUEUE`: one queue (one fd) per worker, so worker `w` reads
//!   and writes only queue `w` and no fd is shared between workers. The
//!   kernel spreads the container's flows over the queues by hash and sends
//!   a flow's return traffic to the queue we last wrote it on.
//! - `IFF_VNET_HDR` with `TUNSETVNETHDRSZ` 12 (little-endian, virtio 1.x):
//!   every read and write carries a `virtio_net_hdr` in front of the frame.
//! - `TUNSETOFFLOAD` checksum, TSO4/6, TSO-ECN and, where the kernel has
//!   them (6.2+), USO4/6: the container's stack hands us 64 KiB TCP and UDP
//!   super-frames with partial checksums instead of MTU-sized frames, and
//!   takes them back the same way, so a super-frame crosses the switch in
//!   one read and one write. `--offload off` asks for no offloads: the
//!   kernel then segments and checksums before we read, and the worker
//!   finishes frames in software before writing to such a port.
//!
//! Queue steering (`daemon --tap-steering`, [`set_steering`]): which queue
//! the kernel puts a frame the node sends on. `flow` (the default) is the
//! kernel's own: by flow hash, following where we last wrote the flow.
//! `cpu` attaches a two-instruction eBPF program (TUNSETSTEERINGEBPF,
//! [`super::bpf::cpu_steering`]) that picks the queue of the CPU the sender
//! runs on: worker c, pinned to core c, reads it, so the wake-up is local.
//! It halves neither throughput nor wake-ups everywhere: docs/PERFORMANCE.md
//! has the trade-off (request/response latency down, bulk TCP down). A
//! kernel or user that cannot load it (unprivileged BPF is off on Debian)
//! gets `flow`, with a warning.
//!
//! The device is made persistent (`TUNSETPERSIST`, [`Port::keep`]) once it
//! is configured and the state file records it, so that a daemon killed with
//! SIGKILL, or stopped with SIGTERM/SIGINT, leaves the interface in its
//! namespace, address and routes intact, and the next start reattaches to it
//! ([`TapPort::attach_in`], opening one queue per worker of the new daemon)
//! instead of making a new one. Every removal of the port (disconnect,
//! network removal, a vanished namespace) turns persistence off first
//! ([`Port::release`]), so closing the fds deletes the interface.
//!
//! A container's TAP is made inside the container's namespace (the control
//! plane opens its queues from a thread that entered it, [`in_netns`]). The
//! queue fds then hold a reference on that namespace: it outlives `ip netns
//! del` while the port exists, which is why the control plane checks each
//! port's namespace by name and removes the port of one that is gone.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::{Offloads, Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::Batch;
use crate::wire::vnet::VNET_HDR_LEN;

/// Largest number of queues Linux allows on a TAP (`MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// `TUNSETSTEERINGEBPF`, `_IOR('T', 224, int)` (Linux 4.16+; not in libc).
const TUNSETSTEERINGEBPF: libc::c_ulong = 0x8004_54e0;

/// How the kernel picks the queue of a frame the node sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Steering {
    /// The kernel's: by flow hash (automatic queue selection).
    #[default]
    Flow,
    /// The sending CPU's queue, by an eBPF program.
    Cpu,
}

static STEERING: std::sync::OnceLock<Steering> = std::sync::OnceLock::new();

/// Sets the steering of every multi-queue TAP opened from now on, once, at
/// the daemon's start (`daemon --tap-steering`); later calls do nothing.
pub fn set_steering(s: Steering) {
    let _ = STEERING.set(s);
}

/// Puts `want` in force on the device of `q0` (device-wide), and clears a
/// program a previous daemon left on a persistent TAP when `want` is
/// `Flow`. Returns what is in force.
fn steer(q0: &OwnedFd, queues: usize, want: Steering) -> Steering {
    let set = |fd: libc::c_int| {
        // SAFETY: the ioctl reads one int (a program fd, or -1 to detach) through the reference.
        if unsafe { ioctl_with_ref(q0, TUNSETSTEERINGEBPF as _, &fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if want == Steering::Cpu && queues > 1 {
        // The device keeps its own reference to the program; ours closes here.
        match super::bpf::cpu_steering().and_then(|p| set(p.as_raw_fd())) {
            Ok(()) => return Steering::Cpu,
            Err(e) => tracing::warn!(error = %e, "cannot steer TAP queues by CPU; the kernel's flow steering instead"),
        }
    }
    // Nothing to detach on kernels without the ioctl, or with no program.
    let _ = set(-1);
    Steering::Flow
}

pub struct TapPort {
    queues: Vec<OwnedFd>,
    name: String,
    offloads: Offloads,
    steering: Steering,
}

/// Flags of every queue we open: they must be the same on each.
const FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// An all-zero `ifreq` naming `name` (checked by the caller to fit).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of
    // integers, addresses and a pointer); all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

/// Opens one queue of TAP `name` in the calling thread's network namespace
/// (a `%d` pattern or a free name creates a new interface; with `new`, an
/// existing interface of that name is refused with EBUSY instead of joined);
/// returns the fd and the interface's actual name.
fn open_queue(name: &str, new: bool) -> io::Result<(OwnedFd, String)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    // std opens with O_CLOEXEC.
    let tun = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open("/dev/net/tun");
    let fd: OwnedFd = match tun {
        Ok(f) => f.into(),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot open /dev/net/tun: {e}. Run as root, or as a user inside \
                     `unshare --user --map-root-user --net` with /dev/net/tun mode 0666"
                ),
            ));
        }
        Err(e) => return Err(e),
    };
    let mut req = ifreq(name);
    let excl = if new { libc::IFF_TUN_EXCL } else { 0 };
    req.ifr_ifru.ifru_flags = (FLAGS | excl) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which we own for the call.
    if unsafe { ioctl_with_mut_ref(&fd, libc::TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel wrote back a NUL-terminated name of at most IFNAMSIZ-1 bytes.
    let actual: Vec<u8> = req.ifr_name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok((fd, String::from_utf8_lossy(&actual).into_owned()))
}

/// `ioctl(fd, req, &value)` for the TUN ioctls that take a pointer to an int.
fn ioctl_int_ptr(fd: &OwnedFd, req: libc::Ioctl, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the ioctl reads one int through the reference, which outlives the call.
    if unsafe { ioctl_with_ref(fd, req as _, &value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, req, value)` for the TUN ioctls that take their argument by value.
fn ioctl_val(fd: &OwnedFd, req: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the argument is an integer passed by value, not a pointer.
    if unsafe { ioctl_with_val(fd, req as _, value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The TUN flags of the device behind `fd` (`TUNGETIFF`), `IFF_PERSIST` included.
fn tun_flags(fd: &OwnedFd) -> io::Result<libc::c_int> {
    let mut req = ifreq("");
    // SAFETY: TUNGETIFF writes one ifreq, which we own for the call.
    if unsafe { ioctl_with_mut_ref(fd, libc::TUNGETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF wrote the flags member; every member of this union
    // is plain data, so reading any of them is defined.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Runs `f` on a short-lived thread that has entered the network namespace
/// `ns` (an open namespace file), and returns what it returns. Sockets and
/// TAP queues opened there stay in that namespace and work from any thread;
/// no other thread of the daemon ever changes namespace. Each such fd holds
/// a reference on the namespace: while it is open, deleting the namespace
/// does not destroy it (nor the interfaces in it).
pub fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open file for the call; setns changes the
            // network namespace of this thread only, which ends with `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("cannot enter the network namespace: {e}")));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

impl TapPort {
    /// Creates TAP interface `name` (at most 15 bytes, `%d` allowed) in the
    /// caller's network namespace with `queues` queues, asking for
    /// `offloads` (trimmed to what the kernel has). An existing interface
    /// called `name` is an error (EBUSY), never joined.
    pub fn create(name: &str, queues: usize, offloads: Offloads) -> io::Result<TapPort> {
        let (q0, actual) = open_queue(name, true)?;
        TapPort::finish(q0, actual, queues, offloads)
    }

    /// Opens the remaining queues of the interface whose first queue is `q0`
    /// and sets the header size, byte order and offloads (device-wide settings).
    fn finish(q0: OwnedFd, name: String, queues: usize, want: Offloads) -> io::Result<TapPort> {
        ioctl_int_ptr(&q0, libc::TUNSETVNETHDRSZ, VNET_HDR_LEN as libc::c_int)?;
        // virtio 1.x headers are little-endian. Only kernels built with
        // TUN_VNET_CROSS_LE know this ioctl; on a little-endian host the
        // default is already right, so a refusal there is harmless.
        if let Err(e) = ioctl_int_ptr(&q0, libc::TUNSETVNETLE, 1) {
            if cfg!(target_endian = "big") {
                return Err(e);
            }
        }
        let offloads = set_offload(&q0, want)?;
        let mut fds = vec![q0];
        for _ in 1..queues.clamp(1, MAX_QUEUES) {
            fds.push(open_queue(&name, false)?.0);
        }
        let steering = steer(&fds[0], fds.len(), STEERING.get().copied().unwrap_or_default());
        Ok(TapPort { queues: fds, name, offloads, steering })
    }

    /// The queue steering in force on the device.
    pub fn steering(&self) -> Steering {
        self.steering
    }

    /// Sets the carrier the kernel shows for the interface (TUNSETCARRIER,
    /// Linux 5.0+): off, the node sees NO-CARRIER and its stack stops
    /// sending on the interface, as when a cable is pulled.
    pub fn carrier(&self, up: bool) -> io::Result<()> {
        ioctl_int_ptr(&self.queues[0], libc::TUNSETCARRIER, libc::c_int::from(up))
    }

    /// Turns persistence on or off (see the module doc).
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        ioctl_val(&self.queues[0], libc::TUNSETPERSIST, libc::c_ulong::from(on))
    }

    /// Attaches to the existing persistent TAP `ifname` inside the network
    /// namespace at `ns_path`: the interface a killed daemon left behind.
    /// Fails with `NotFound` if there is no such interface (a clean stop
    /// deleted it): TUNSETIFF would otherwise *create* a fresh, unconfigured
    /// `ifname` (down, random MAC, no address) and the caller would take it
    /// for the surviving one. Fails too if it is not a persistent
    /// multi-queue TAP with a vnet header, or is attached elsewhere.
    pub fn attach_in(ns_path: &Path, ifname: &str, queues: usize, offloads: Offloads) -> io::Result<TapPort> {
        let ns = File::open(ns_path)?;
        in_netns(&ns, || {
            let cname = std::ffi::CString::new(ifname)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {ifname:?}")))?;
            // SAFETY: `cname` is a valid NUL-terminated string for the call.
            if unsafe { libc::if_nametoindex(cname.as_ptr()) } == 0 {
                return Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface {ifname} to reattach")));
            }
            let (q0, name) = open_queue(ifname, false)?;
            // Closing q0 deletes the device if it was not persistent: only
            // between the check above and TUNSETIFF could it be one we made.
            if tun_flags(&q0)? & libc::IFF_PERSIST == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{ifname} is not a persistent TAP left by tapyard"),
                ));
            }
            TapPort::finish(q0, name, queues, offloads)
        })
    }
}

/// Asks for `want`; kernels before 6.2 refuse the USO bits with EINVAL, so
/// retry without them. Returns what was set.
fn set_offload(fd: &OwnedFd, want: Offloads) -> io::Result<Offloads> {
    match ioctl_val(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(want.0)) {
        Ok(()) => Ok(want),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && want.0 & (Offloads::USO4 | Offloads::USO6) != 0 => {
            let less = Offloads(want.0 & !(Offloads::USO4 | Offloads::USO6));
            ioctl_val(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(less.0))?;
            Ok(less)
        }
        Err(e) => Err(e),
    }
}

fn gone_errno(e: i32) -> bool {
    // EBADFD: the tun file is detached from any device (it was deleted).
    e == libc::EBADFD || e == libc::ENODEV || e == libc::ENXIO
}

impl TapPort {
    #[inline]
    fn fd(&self, queue: usize) -> RawFd {
        // A queue index past our queues folds back: a port reattached with
        // fewer queues than workers is still served, if with a shared fd.
        self.queues[queue % self.queues.len()].as_raw_fd()
    }
}

impl Port for TapPort {
    fn recv_batch(&self, queue: usize, batch: &mut Batch) -> RecvReport {
        let fd = self.fd(queue);
        let mut frames = 0;
        loop {
            let Some(buf) = batch.next_free() else {
                return RecvReport { frames, state: RecvState::More };
            };
            let space = buf.hdr_space_mut();
            // SAFETY: `space` is a live, writable buffer of `space.len()` bytes.
            let n = unsafe { libc::read(fd, space.as_mut_ptr().cast(), space.len()) };
            if n >= 0 {
                let n = n as usize;
                if n < VNET_HDR_LEN {
                    // Cannot happen with a vnet header set; never index past it.
                    continue;
                }
                buf.set_len(n - VNET_HDR_LEN);
                batch.commit();
                frames += 1;
                continue;
            }
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            match errno {
                libc::EAGAIN => return RecvReport { frames, state: RecvState::Drained },
                libc::EINTR => continue,
                e => {
                    let state = if gone_errno(e) { RecvState::Gone } else { RecvState::Error(e) };
                    return RecvReport { frames, state };
                }
            }
        }
    }

    fn send_batch(&self, queue: usize, frames: &[&[u8]]) -> SendReport {
        let fd = self.fd(queue);
        let mut r = SendReport::default();
        for f in frames {
            // SAFETY: `f` is a live buffer of `f.len()` bytes.
            let n = unsafe { libc::write(fd, f.as_ptr().cast(), f.len()) };
            if n >= 0 {
                r.sent += 1;
                r.bytes += (f.len() - VNET_HDR_LEN.min(f.len())) as u64;
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EIO) => r.link_down += 1,
                Some(libc::EAGAIN) => r.queue_full += 1,
                _ => r.errors += 1,
            }
        }
        r
    }

    fn caps(&self) -> PortCaps {
        PortCaps { queues: self.queues.len() as u16, offloads: self.offloads, gather: false }
    }

    fn raw_fd(&self, queue: usize) -> Option<RawFd> {
        Some(self.fd(queue))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn set_carrier(&self, up: bool) -> io::Result<()> {
        self.carrier(up)
    }

    fn keep(&self) -> io::Result<()> {
        self.set_persist(true)
    }

    fn release(&self) {
        let _ = self.set_persist(false);
    }
}
