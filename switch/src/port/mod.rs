//! Ports: the only code that touches file descriptors, and the only layer
//! where `unsafe` is allowed (each use carries a `SAFETY:` comment).
//!
//! A port moves whole Ethernet frames in and out, a batch at a time. The
//! forwarding code sees only the [`Port`] trait, so TAP devices, vhost-user
//! backends, veth ends read through AF_XDP ([`xdp`]) and the in-memory test
//! ports plug in without touching it.
//!
//! Error classes (STYLE §6): a per-frame problem is a counted drop inside a
//! [`SendReport`]; a port that is gone reports [`RecvState::Gone`] and the
//! control plane removes it; nothing here ends the worker.

// The one layer where `unsafe` is allowed (the crate root denies it):
// ioctls, raw fds and guest memory. Every block carries a SAFETY note.
#![allow(unsafe_code)]

mod bpf;
pub mod mem;
pub mod ns;
pub mod sys;
pub mod tap;
pub mod vhost;
/// Public for the fuzz targets only (fuzz/): [`vhost_relay::relay`] on two sockets.
#[doc(hidden)]
pub mod vhost_relay;
mod vring;
pub mod xdp;

use std::os::fd::RawFd;

use crate::packet::Batch;
pub use crate::packet::PortId;
pub use crate::wire::vnet::Offloads;

/// How a receive burst ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvState {
    /// The batch filled up; more frames may be waiting (edge-triggered
    /// readiness will not say so again, so the worker must come back).
    More,
    /// The port has no more frames right now.
    Drained,
    /// The device is gone (its namespace was deleted, or it was removed).
    Gone,
    /// A read failed with this errno; the burst ended early.
    Error(i32),
}

/// What one receive burst did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvReport {
    pub frames: usize,
    pub state: RecvState,
}

/// What one send did: frames that left, and those that did not, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendReport {
    pub sent: u64,
    pub bytes: u64,
    /// The interface is down (EIO).
    pub link_down: u64,
    /// The device queue is full (EAGAIN).
    pub queue_full: u64,
    /// Any other write error.
    pub errors: u64,
}

impl SendReport {
    /// Adds another report's counts to this one.
    #[inline]
    pub fn add(&mut self, r: &SendReport) {
        self.sent += r.sent;
        self.bytes += r.bytes;
        self.link_down += r.link_down;
        self.queue_full += r.queue_full;
        self.errors += r.errors;
    }
}

/// What a port can do, for the forwarding code and `port ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortCaps {
    /// Independent queues. With more than one, worker `w` reads and writes
    /// only queue `w` (one TAP queue per worker: no fd shared between
    /// workers); a one-queue port is read by its owner worker alone.
    pub queues: u16,
    /// Non-plain frames (GSO, partial checksum) the port takes as they are;
    /// the worker finishes anything else in software before sending.
    pub offloads: Offloads,
    /// A call to `send_batch` costs much more than a frame in it (a
    /// vhost-user ring: a lock, a notification check, maybe a syscall), so
    /// the worker gathers a burst's frames for the port and sends them in
    /// one call. Off for TAPs (one write per frame either way).
    #[serde(skip)]
    pub gather: bool,
}

/// A source and sink of Ethernet frames.
///
/// Every frame crosses this interface with its 12-byte `virtio_net_hdr` in
/// front (`wire` slices; a plain frame has a zeroed header): received frames
/// may be offloaded (GSO super-frames, partial checksums) as far as
/// [`PortCaps::offloads`] allows, and frames sent never ask for more than it.
///
/// Threading: queue `q` is read by one worker only. Sends may come from
/// several threads (a one-queue port gets frames from every worker, the
/// gateway responder writes to queue 0), so `send_batch` must be safe to call
/// concurrently (a TAP write is one atomic syscall per frame).
pub trait Port: Send + Sync {
    /// Reads frames from `queue` into the free buffers of `batch` until it is full or the queue is drained.
    fn recv_batch(&self, queue: usize, batch: &mut Batch) -> RecvReport;

    /// Writes each frame (vnet header + frame) to `queue`; never blocks.
    fn send_batch(&self, queue: usize, frames: &[&[u8]]) -> SendReport;

    fn caps(&self) -> PortCaps;

    /// The descriptor of `queue` a worker registers with its poller, if the port has one.
    fn raw_fd(&self, queue: usize) -> Option<RawFd>;

    /// Kernel interface name, for logs and `port ls`.
    fn name(&self) -> &str;

    /// Tells the node the link is up or cut (`port set --up|--down`): the
    /// carrier it sees. A port with no such notion does nothing (the switch
    /// drops its frames while the link is cut either way).
    fn set_carrier(&self, _up: bool) -> std::io::Result<()> {
        Ok(())
    }

    /// Makes the port outlive the daemon's descriptors (a TAP: persistent),
    /// once the state file records it: a daemon killed or stopped then
    /// leaves it in place for the next start. Ports that never outlive
    /// their descriptors do nothing.
    fn keep(&self) -> std::io::Result<()> {
        Ok(())
    }

    /// Called once before the port is dropped for good (not when the daemon
    /// is killed or stopped): a port that outlives its fd (a persistent TAP)
    /// lets go.
    fn release(&self) {}
}
