//! Ports: the only code that touches file descriptors, and the only layer
//! where `unsafe` is allowed (each use carries a `SAFETY:` comment).
//!
//! A port moves whole Ethernet frames in and out, a batch at a time. The
//! forwarding code sees only the [`Port`] trait, so TAP devices, the
//! in-memory test port and, later, vhost-user, capture taps and VXLAN
//! tunnels plug in without touching it.
//!
//! Error classes (STYLE §6): a per-frame problem is a counted drop inside a
//! [`SendReport`]; a port that is gone reports [`RecvState::Gone`] and the
//! control plane removes it; nothing here ends the worker.

pub mod mem;
pub mod tap;

use std::os::fd::RawFd;

use crate::packet::Batch;
pub use crate::packet::PortId;

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
    /// Set when the device is gone; the control plane removes the port.
    pub gone: bool,
}

/// What a port can do, for the forwarding code and `port ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortCaps {
    /// Frames carry a `virtio_net_hdr` in the buffer headroom (off until the fast-path issue).
    pub vnet_hdr: bool,
}

/// A source and sink of Ethernet frames.
///
/// Threading: a port is read by exactly one worker (its owner) and may be
/// written by every worker, since frames arriving on any worker can be
/// forwarded to it; implementations must make `send_batch` safe to call
/// concurrently (a TAP write is one atomic syscall per frame).
pub trait Port: Send + Sync {
    /// Reads frames into the free buffers of `batch` until it is full or the port is drained.
    fn recv_batch(&self, batch: &mut Batch) -> RecvReport;

    /// Writes each frame; never blocks.
    fn send_batch(&self, frames: &[&[u8]]) -> SendReport;

    fn caps(&self) -> PortCaps;

    /// The descriptor a worker registers with its poller, if the port has one.
    fn raw_fd(&self) -> Option<RawFd>;

    /// Kernel interface name, for logs and `port ls`.
    fn name(&self) -> &str;

    /// Called once before the port is dropped for good (not when the daemon
    /// is killed): a port that outlives its fd (a persistent TAP) lets go.
    fn release(&self) {}
}
