//! TAP ports: a `/dev/net/tun` device in TAP mode without packet information,
//! opened with the tun-tap crate and switched to non-blocking I/O.
//!
//! The device is not persistent: when the switch closes the fd (port removed,
//! daemon stopped or killed) the kernel deletes the interface, wherever it
//! lives by then. Moving the interface into a container's namespace does not
//! affect the fd the switch holds.
//!
//! Offloads (`IFF_VNET_HDR`, `IFF_MULTI_QUEUE`, `TUNSETOFFLOAD`) need flags
//! tun-tap cannot set; the fast-path issue opens worker queues with libc ioctls.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

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
}
