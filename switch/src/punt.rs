//! The punt queue: frames the data path hands to the gateway responder
//! (frames to a gateway's MAC, broadcast ARP for a gateway address, DHCP to
//! port 67). Bounded and allocation-free on the worker side: buffers come
//! from a fixed free list, and when the list or the queue is empty or full
//! the frame is dropped and counted (`gateway_full`) — a worker never waits
//! for the control plane (STYLE, "Anything unbounded").

#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};
use std::thread::Thread;

use crossbeam::queue::ArrayQueue;

use crate::packet::PortId;
use crate::snapshot::NetworkView;

/// Largest frame punted: ARP, DHCP and ICMP echo up to the usual MTU fit.
pub const PUNT_FRAME: usize = 2048;
/// Frames waiting for the gateway at most.
pub const PUNT_DEPTH: usize = 512;

pub struct Punted {
    pub network: Arc<NetworkView>,
    pub in_port: PortId,
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
    pub fn new() -> PuntQueue {
        let free = ArrayQueue::new(PUNT_DEPTH);
        for _ in 0..PUNT_DEPTH {
            let _ = free.push(vec![0u8; PUNT_FRAME].into_boxed_slice());
        }
        PuntQueue { free, ready: ArrayQueue::new(PUNT_DEPTH), consumer: OnceLock::new() }
    }

    /// Registers the thread to wake when frames arrive.
    pub fn set_consumer(&self, t: Thread) {
        let _ = self.consumer.set(t);
    }

    /// Copies `frame` into the queue; false when it cannot (full, or too large).
    #[inline]
    pub fn push(&self, network: &Arc<NetworkView>, in_port: PortId, frame: &[u8]) -> bool {
        if frame.len() > PUNT_FRAME {
            return false;
        }
        let Some(mut buf) = self.free.pop() else { return false };
        buf[..frame.len()].copy_from_slice(frame);
        let p = Punted { network: network.clone(), in_port, len: frame.len(), buf };
        if let Err(p) = self.ready.push(p) {
            let _ = self.free.push(p.buf);
            return false;
        }
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
        true
    }

    pub fn pop(&self) -> Option<Punted> {
        self.ready.pop()
    }

    /// Returns a buffer to the free list.
    pub fn recycle(&self, buf: Box<[u8]>) {
        let _ = self.free.push(buf);
    }
}
