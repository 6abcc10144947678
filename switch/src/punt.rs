//! The punt queue: frames the data path hands to the gateway responder, each
//! with the reason the worker already found ([`PuntReason`]), so the slow
//! path acts on it instead of classifying the frame again (as Open vSwitch's
//! upcalls carry their type). Bounded and allocation-free on the worker side:
//! buffers come from a fixed free list, and when the list or the queue is
//! empty or full the frame is dropped and counted (`gateway_full`) — a worker
//! never waits for the control plane (STYLE, "Anything unbounded").
//!
//! A punted frame names its network by [`NetId`], not by a view of the
//! snapshot: this module sits below the snapshot (which holds the queue)
//! and imports only `packet`.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::thread::Thread;

use crossbeam::queue::ArrayQueue;

use crate::packet::{NetId, PortId};

/// Largest frame punted: ARP, DHCP and ICMP echo up to the usual MTU fit.
pub const PUNT_FRAME: usize = 2048;
/// Frames waiting for the gateway at most, by default (`daemon --punt-depth`).
/// At 20,000 DHCP handshakes a second (40,000 punted frames) 4096 frames are
/// ~100 ms of slack: enough to ride out an fsync or a journal compaction on
/// a loaded machine. 512 overflowed (`gateway_full`) from ~5,000/s. The
/// buffers are allocated up front: 8 MiB.
pub const PUNT_DEPTH: usize = 4096;
/// The fewest frames a punt queue holds (`daemon --punt-depth`).
pub const PUNT_DEPTH_MIN: usize = 64;

/// Why the data path hands a frame to the gateway responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PuntReason {
    /// For the gateway itself: addressed to its MAC and not to be routed
    /// (ARP, ICMP echo to a router address, DHCP to its MAC), or a broadcast
    /// it answers (ARP for its address, DHCP to port 67), copied.
    Local,
    /// Routed, but the TTL ran out: Time Exceeded (RFC 1812 §5.3.1).
    TtlExpired,
    /// No route to the destination: Network Unreachable (RFC 1812 §5.2.7.1).
    NoRoute,
    /// Routed to network `egress`, but the next hop `hop` has no known MAC:
    /// the gateway resolves it (ARP) and forwards, or sends Host Unreachable.
    Unresolved { egress: NetId, hop: Ipv4Addr },
    /// Larger than the egress MTU with Don't Fragment set: Fragmentation
    /// Needed with that MTU (RFC 1191 §4).
    FragNeeded { mtu: u16 },
}

pub struct Punted {
    pub network: NetId,
    pub in_port: PortId,
    pub reason: PuntReason,
    pub len: usize,
    pub buf: Box<[u8]>,
}

impl Punted {
    pub fn frame(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub struct PuntQueue {
    free: ArrayQueue<Box<[u8]>>,
    ready: ArrayQueue<Punted>,
    consumer: OnceLock<Thread>,
}

impl Default for PuntQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl PuntQueue {
    /// A queue of [`PUNT_DEPTH`] frames.
    pub fn new() -> PuntQueue {
        Self::with_depth(PUNT_DEPTH)
    }

    /// A queue of `depth` frames (at least [`PUNT_DEPTH_MIN`]).
    pub fn with_depth(depth: usize) -> PuntQueue {
        let depth = depth.max(PUNT_DEPTH_MIN);
        let free = ArrayQueue::new(depth);
        for _ in 0..depth {
            let _ = free.push(vec![0u8; PUNT_FRAME].into_boxed_slice());
        }
        PuntQueue { free, ready: ArrayQueue::new(depth), consumer: OnceLock::new() }
    }

    /// Frames the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.ready.capacity()
    }

    /// Registers the thread to wake when frames arrive.
    pub fn set_consumer(&self, t: Thread) {
        let _ = self.consumer.set(t);
    }

    /// Copies `frame` into the queue; false when it cannot (full, or too large).
    #[inline]
    pub fn push(&self, network: NetId, in_port: PortId, reason: PuntReason, frame: &[u8]) -> bool {
        if frame.len() > PUNT_FRAME {
            return false;
        }
        let Some(mut buf) = self.free.pop() else { return false };
        buf[..frame.len()].copy_from_slice(frame);
        let p = Punted { network, in_port, reason, len: frame.len(), buf };
        if let Err(p) = self.ready.push(p) {
            let _ = self.free.push(p.buf);
            return false;
        }
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
        true
    }

    /// Frames waiting for the gateway thread now (at most [`PuntQueue::capacity`]); for statistics.
    pub fn depth(&self) -> usize {
        self.ready.len()
    }

    pub fn pop(&self) -> Option<Punted> {
        self.ready.pop()
    }

    /// Returns a buffer to the free list.
    pub fn recycle(&self, buf: Box<[u8]>) {
        let _ = self.free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_drops_when_full_or_too_large() {
        let q = PuntQueue::new();
        assert!(!q.push(NetId(1), PortId(1), PuntReason::Local, &[0u8; PUNT_FRAME + 1]));
        for _ in 0..PUNT_DEPTH {
            assert!(q.push(NetId(1), PortId(1), PuntReason::NoRoute, &[1, 2, 3]));
        }
        assert!(!q.push(NetId(1), PortId(1), PuntReason::NoRoute, &[1, 2, 3]), "full");
        let p = q.pop().unwrap();
        assert_eq!(
            (p.network, p.in_port, p.reason, p.frame()),
            (NetId(1), PortId(1), PuntReason::NoRoute, &[1u8, 2, 3][..])
        );
        q.recycle(p.buf);
        assert!(q.push(NetId(2), PortId(3), PuntReason::TtlExpired, &[9]), "a recycled buffer is reused");
    }
}
