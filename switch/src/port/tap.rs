//! TAP ports: a `/dev/net/tun` device in TAP mode without packet information,
//! opened with the tun-tap crate and switched to non-blocking I/O.
//!
//! The device is made persistent (`TUNSETPERSIST`) once it is configured, so
//! that a daemon killed with SIGKILL leaves the interface in its namespace,
//! address and routes intact, and the next start reattaches to it
//! ([`TapPort::attach_in`]) instead of making a new one: containers keep their
//! configuration, DHCP clients included. Every orderly removal (disconnect,
//! network removal, SIGTERM/SIGINT) turns persistence off first
//! ([`Port::release`]), so closing the fd deletes the interface. Moving the
//! interface into a container's namespace does not affect the fd the switch holds.
//!
//! Offloads (`IFF_VNET_HDR`, `IFF_MULTI_QUEUE`, `TUNSETOFFLOAD`) need flags
//! tun-tap cannot set; the fast-path issue opens worker queues with libc ioctls.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use tun_tap::{Iface, Mode};

use super::{Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::Batch;

pub struct TapPort {
    iface: Iface,
    name: String,
}

impl TapPort {
    /// Creates TAP interface `name` (at most 15 bytes) in the caller's network namespace.
    pub fn create(name: &str) -> io::Result<TapPort> {
        let iface = Iface::without_packet_info(name, Mode::Tap).map_err(|e| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open /dev/net/tun: {e}. Run as root, or as a user inside \
                         `unshare --user --map-root-user --net` with /dev/net/tun mode 0666"
                    ),
                )
            } else {
                e
            }
        })?;
        iface.set_non_blocking()?;
        let name = iface.name().to_string();
        Ok(TapPort { iface, name })
    }

    /// Turns persistence on or off (see the module doc).
    pub fn set_persist(&self, on: bool) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value (0 or 1), not a
        // pointer; the fd is an open tun file owned by `self.iface`.
        let r = unsafe { libc::ioctl(self.iface.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(on)) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Attaches to the existing (persistent) TAP `ifname` inside the network
    /// namespace at `ns_path`: the interface a killed daemon left behind.
    /// Fails if there is no such interface, or it is not an unattached TAP.
    pub fn attach_in(ns_path: &Path, ifname: &str) -> io::Result<TapPort> {
        let ns = File::open(ns_path)?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: `ns` is an open namespace file; setns changes the
                // network namespace of this short-lived thread only, which
                // ends right after the TUNSETIFF below. The fd it opens keeps
                // working from any thread afterwards.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let iface = Iface::without_packet_info(ifname, Mode::Tap)?;
                iface.set_non_blocking()?;
                Ok(TapPort { iface, name: ifname.to_string() })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the attach thread panicked")))
        })
    }
}

/// EBADFD: the tun file is detached from any device (it was deleted).
const EBADFD: i32 = libc::EBADFD;

fn gone_errno(e: i32) -> bool {
    e == EBADFD || e == libc::ENODEV || e == libc::ENXIO
}

impl Port for TapPort {
    fn recv_batch(&self, batch: &mut Batch) -> RecvReport {
        let mut frames = 0;
        loop {
            let Some(buf) = batch.next_free() else {
                return RecvReport { frames, state: RecvState::More };
            };
            match self.iface.recv(buf.space_mut()) {
                Ok(n) => {
                    buf.set_len(n);
                    batch.commit();
                    frames += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return RecvReport { frames, state: RecvState::Drained };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(0);
                    let state = if gone_errno(errno) { RecvState::Gone } else { RecvState::Error(errno) };
                    return RecvReport { frames, state };
                }
            }
        }
    }

    fn send_batch(&self, frames: &[&[u8]]) -> SendReport {
        let mut r = SendReport::default();
        for f in frames {
            match self.iface.send(f) {
                Ok(_) => {
                    r.sent += 1;
                    r.bytes += f.len() as u64;
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EIO) => r.link_down += 1,
                    Some(libc::EAGAIN) => r.queue_full += 1,
                    Some(errno) if gone_errno(errno) => {
                        r.errors += 1;
                        r.gone = true;
                    }
                    _ => r.errors += 1,
                },
            }
        }
        r
    }

    fn caps(&self) -> PortCaps {
        PortCaps { vnet_hdr: false }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.iface.as_raw_fd())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn release(&self) {
        let _ = self.set_persist(false);
    }
}
