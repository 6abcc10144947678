//! An in-memory port for tests and benchmarks: frames pushed into its
//! receive queue come out of `recv_batch`, frames sent to it are kept for
//! inspection. It takes a mutex per call, which is fine off the real data path.
//! One queue; no offloads unless made with [`MemPort::with_offloads`].

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::{Offloads, Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::Batch;
use crate::wire::vnet::{VnetHdr, VNET_HDR_LEN};

#[derive(Default)]
pub struct MemPort {
    name: String,
    rx: Mutex<VecDeque<(VnetHdr, Vec<u8>)>>,
    /// Sent frames with their vnet headers.
    tx: Mutex<Vec<Vec<u8>>>,
    offloads: Offloads,
    /// When set, sends fail as if the link were down.
    down: std::sync::atomic::AtomicBool,
}

impl MemPort {
    pub fn new(name: &str) -> MemPort {
        MemPort { name: name.to_string(), ..Default::default() }
    }

    /// A port that takes (and may deliver) these offloads.
    pub fn with_offloads(name: &str, offloads: Offloads) -> MemPort {
        MemPort { name: name.to_string(), offloads, ..Default::default() }
    }

    /// Queues a plain frame for the switch to receive.
    pub fn inject(&self, frame: &[u8]) {
        self.inject_wire(VnetHdr::NONE, frame);
    }

    /// Queues a frame with a vnet header (an offloaded frame) for the switch to receive.
    pub fn inject_wire(&self, hdr: VnetHdr, frame: &[u8]) {
        self.rx.lock().unwrap().push_back((hdr, frame.to_vec()));
    }

    /// Takes every frame the switch sent to this port (without the vnet headers).
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        self.take_sent_wire().into_iter().map(|(_, f)| f).collect()
    }

    /// Takes every frame the switch sent to this port, with its vnet header.
    pub fn take_sent_wire(&self) -> Vec<(VnetHdr, Vec<u8>)> {
        let sent = std::mem::take(&mut *self.tx.lock().unwrap());
        sent.into_iter().map(|w| (VnetHdr::of(&w), w[VNET_HDR_LEN..].to_vec())).collect()
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Port for MemPort {
    fn recv_batch(&self, _queue: usize, batch: &mut Batch) -> RecvReport {
        let mut rx = self.rx.lock().unwrap();
        let mut frames = 0;
        while !batch.is_full() {
            let Some((h, f)) = rx.pop_front() else {
                return RecvReport { frames, state: RecvState::Drained };
            };
            if batch.push_wire(&h, &f) {
                frames += 1;
            }
        }
        let state = if rx.is_empty() { RecvState::Drained } else { RecvState::More };
        RecvReport { frames, state }
    }

    fn send_batch(&self, _queue: usize, frames: &[&[u8]]) -> SendReport {
        let mut r = SendReport::default();
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            r.link_down = frames.len() as u64;
            return r;
        }
        let mut tx = self.tx.lock().unwrap();
        for f in frames {
            // A frame must never ask for an offload this port does not take.
            let h = VnetHdr::of(f);
            assert!(self.offloads.accepts(&h), "{h:?} sent to a port with offloads {:?}", self.offloads);
            tx.push(f.to_vec());
            r.sent += 1;
            r.bytes += (f.len() - VNET_HDR_LEN) as u64;
        }
        r
    }

    fn caps(&self) -> PortCaps {
        PortCaps { queues: 1, offloads: self.offloads, gather: false }
    }

    fn raw_fd(&self, _queue: usize) -> Option<RawFd> {
        None
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A port for the allocation test and the pipeline benchmark: every receive
/// yields a full batch of one fixed frame (with its vnet header), every send
/// is counted and dropped. Neither allocates nor locks.
pub struct Repeat {
    hdr: VnetHdr,
    frame: Vec<u8>,
    caps: PortCaps,
    sent: std::sync::atomic::AtomicU64,
}

impl Repeat {
    pub fn new(hdr: VnetHdr, frame: &[u8]) -> Repeat {
        let caps = PortCaps { queues: 1, offloads: Offloads::default(), gather: false };
        Repeat { hdr, frame: frame.to_vec(), caps, sent: Default::default() }
    }

    /// Frames sent to this port so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Port for Repeat {
    fn recv_batch(&self, _queue: usize, batch: &mut Batch) -> RecvReport {
        let mut n = 0;
        while batch.push_wire(&self.hdr, &self.frame) {
            n += 1;
        }
        RecvReport { frames: n, state: RecvState::More }
    }

    fn send_batch(&self, _queue: usize, frames: &[&[u8]]) -> SendReport {
        self.sent.fetch_add(frames.len() as u64, std::sync::atomic::Ordering::Relaxed);
        SendReport {
            sent: frames.len() as u64,
            bytes: frames.iter().map(|f| f.len() as u64).sum(),
            ..Default::default()
        }
    }

    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn raw_fd(&self, _queue: usize) -> Option<RawFd> {
        None
    }

    fn name(&self) -> &str {
        "repeat"
    }
}
