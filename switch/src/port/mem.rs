//! An in-memory port for tests and benchmarks: frames pushed into its
//! receive queue come out of `recv_batch`, frames sent to it are kept for
//! inspection. It takes a mutex per call, which is fine off the real data path.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Mutex;

use super::{Port, PortCaps, RecvReport, RecvState, SendReport};
use crate::packet::Batch;

#[derive(Default)]
pub struct MemPort {
    name: String,
    rx: Mutex<VecDeque<Vec<u8>>>,
    tx: Mutex<Vec<Vec<u8>>>,
    /// When set, sends fail as if the link were down.
    down: std::sync::atomic::AtomicBool,
}

impl MemPort {
    pub fn new(name: &str) -> MemPort {
        MemPort { name: name.to_string(), ..Default::default() }
    }

    /// Queues a frame for the switch to receive.
    pub fn inject(&self, frame: &[u8]) {
        self.rx.lock().unwrap().push_back(frame.to_vec());
    }

    /// Takes every frame the switch sent to this port.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.tx.lock().unwrap())
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Port for MemPort {
    fn recv_batch(&self, batch: &mut Batch) -> RecvReport {
        let mut rx = self.rx.lock().unwrap();
        let mut frames = 0;
        while !batch.is_full() {
            let Some(f) = rx.pop_front() else {
                return RecvReport { frames, state: RecvState::Drained };
            };
            if batch.push_copy(&f) {
                frames += 1;
            }
        }
        let state = if rx.is_empty() { RecvState::Drained } else { RecvState::More };
        RecvReport { frames, state }
    }

    fn send_batch(&self, frames: &[&[u8]]) -> SendReport {
        let mut r = SendReport::default();
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            r.link_down = frames.len() as u64;
            return r;
        }
        let mut tx = self.tx.lock().unwrap();
        for f in frames {
            tx.push(f.to_vec());
            r.sent += 1;
            r.bytes += f.len() as u64;
        }
        r
    }

    fn caps(&self) -> PortCaps {
        PortCaps { vnet_hdr: false }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    fn name(&self) -> &str {
        &self.name
    }
}
