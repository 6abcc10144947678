//! The forwarding pipeline, one stage per module. A frame's whole path:
//!
//! ```text
//!  worker: port.recv_batch ─► classify::classify ─────────────► egress::Egress::apply ─► port.send_batch
//!          (worker.rs)         L2: decide (this file)             Forward / Flood: transmit, gather
//!                              gateway: for it, or routed? ──►    Route: route::rewrite, deliver
//!                              route::decide (LPM, MTU, TTL,      Local / Punt(reason): punt queue
//!                                neighbour) → Verdict              Drop(reason): counted
//!                                                                 offload finishing per egress (offload.rs)
//!                                                                 per-burst accounting (egress::Tally)
//! ```
//!
//! [`classify`](classify::classify) is a pure function of (frame, ingress
//! port, snapshot, table, now) that returns a [`Verdict`] saying what happens
//! and why; [`egress`] carries it out. Nothing here makes a syscall of its
//! own (ports do, behind their trait), allocates, locks or logs; it never
//! sees the control plane, which is what makes every case a unit test with
//! in-memory ports (STYLE §2, §10). Frames the router cannot forward go to
//! the gateway responder with the reason found here ([`crate::punt`]).
//!
//! The L2 step, [`decide`] (IEEE 802.1Q §8.7–8.8, as a learning bridge does it):
//! 1. Parse the Ethernet header (nothing deeper: bridging needs no L3).
//! 2. Check the frame fits the network's MTU.
//! 3. Drop frames whose source is a group or all-zero address; learn the
//!    source MAC on the ingress port otherwise.
//! 4. Group destination → flood; known unicast → that port, unless it is the
//!    ingress port (hairpin: dropped, as a bridge does); unknown → flood.

#![forbid(unsafe_code)]

pub mod classify;
pub mod egress;
pub mod guard;
pub mod impair;
pub mod offload;
pub mod route;

use crate::packet::PortId;
use crate::stats::DropReason;
pub use crate::table::fdb::{Fdb, Learned, Table};
use crate::wire::{EthAddrs, ETH_HEADER_LEN};
pub use classify::{classify, NextHop, Verdict};

/// Where the L2 step sends a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// To this one port.
    Unicast(PortId),
    /// To every port of the network except the ingress port.
    Flood,
    Drop(DropReason),
}

/// The outcome of [`decide`] plus what learning did, so the caller can count
/// a full table without the decision touching counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Verdict {
    pub decision: Decision,
    pub learned: Option<Learned>,
}

/// Largest frame accepted on a network with this MTU: the Ethernet header
/// plus one 802.1Q tag on top of the L3 MTU.
#[inline]
pub fn max_frame_len(mtu: u32) -> usize {
    mtu as usize + ETH_HEADER_LEN + 4
}

/// Decides what happens to `frame`, received on `in_port` of a network whose
/// table is `table` and whose largest frame is `max_frame`, at second `now`.
#[inline]
pub fn decide(frame: &[u8], in_port: PortId, table: &Table, max_frame: usize, now: u32) -> L2Verdict {
    let drop = |r| L2Verdict { decision: Decision::Drop(r), learned: None };
    let Ok(eth) = EthAddrs::parse(frame) else {
        return drop(DropReason::Runt);
    };
    if frame.len() > max_frame {
        return drop(DropReason::Oversize);
    }
    if eth.src.is_multicast() || eth.src.is_zero() {
        return drop(DropReason::BadSrcMac);
    }
    let learned = Some(table.learn(eth.src, in_port, now));
    let decision = if eth.dst.is_multicast() {
        Decision::Flood
    } else {
        match table.lookup(eth.dst) {
            Some(p) if p == in_port => Decision::Drop(DropReason::Hairpin),
            Some(p) => Decision::Unicast(p),
            None => Decision::Flood,
        }
    };
    L2Verdict { decision, learned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MacAddr;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    const MAX: usize = 1518;

    fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    fn table() -> Fdb {
        Fdb::new(64, 300)
    }

    #[test]
    fn unknown_unicast_floods_and_learns_source() {
        let f = table();
        let t = f.table();
        let v = decide(&frame(B, A, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Flood);
        assert_eq!(v.learned, Some(Learned::New));
        assert_eq!(t.lookup(A), Some(PortId(1)));
    }

    #[test]
    fn known_unicast_goes_to_its_port() {
        let f = table();
        let t = f.table();
        decide(&frame(A, B, 60), PortId(2), &t, MAX, 0);
        let v = decide(&frame(B, A, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Unicast(PortId(2)));
    }

    #[test]
    fn broadcast_and_multicast_flood_even_when_known() {
        let f = table();
        let t = f.table();
        let v = decide(&frame(MacAddr::BROADCAST, A, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Flood);
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert_eq!(decide(&frame(mcast, A, 60), PortId(1), &t, MAX, 0).decision, Decision::Flood);
    }

    #[test]
    fn never_back_out_the_ingress_port() {
        let f = table();
        let t = f.table();
        t.learn(B, PortId(1), 0);
        let v = decide(&frame(B, A, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Drop(DropReason::Hairpin));
    }

    #[test]
    fn a_mac_that_moves_is_followed() {
        let f = table();
        let t = f.table();
        decide(&frame(B, A, 60), PortId(1), &t, MAX, 0);
        let v = decide(&frame(B, A, 60), PortId(3), &t, MAX, 1);
        assert_eq!(v.learned, Some(Learned::Moved { from: PortId(1) }));
        assert_eq!(decide(&frame(A, B, 60), PortId(2), &t, MAX, 1).decision, Decision::Unicast(PortId(3)));
    }

    #[test]
    fn malformed_frames_are_dropped_by_reason() {
        let f = table();
        let t = f.table();
        for len in [0, 1, 13] {
            let v = decide(&frame(B, A, 14)[..len], PortId(1), &t, MAX, 0);
            assert_eq!(v.decision, Decision::Drop(DropReason::Runt), "len {len}");
        }
        let v = decide(&frame(B, MacAddr::BROADCAST, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Drop(DropReason::BadSrcMac));
        let v = decide(&frame(B, MacAddr::ZERO, 60), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Drop(DropReason::BadSrcMac));
        let v = decide(&frame(B, A, MAX + 1), PortId(1), &t, MAX, 0);
        assert_eq!(v.decision, Decision::Drop(DropReason::Oversize));
        // Dropped frames teach the table nothing.
        assert!(t.is_empty());
        // A bare Ethernet header with nothing above it is still a frame (bridging needs no L3).
        assert_eq!(decide(&frame(B, A, 14), PortId(1), &t, MAX, 0).decision, Decision::Flood);
        assert_eq!(t.lookup(A), Some(PortId(1)));
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random frames of every small length.
        let f = table();
        let t = f.table();
        let mut x: u64 = 0x1234_5678;
        for len in 0..200 {
            let mut buf = vec![0u8; len];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = decide(&buf, PortId(1), &t, MAX, 0);
        }
    }

    #[test]
    fn full_table_still_forwards() {
        let f = Fdb::new(1, 300);
        let t = f.table();
        decide(&frame(B, A, 60), PortId(1), &t, MAX, 0);
        let v = decide(&frame(A, B, 60), PortId(2), &t, MAX, 0);
        assert_eq!(v.learned, Some(Learned::Full));
        assert_eq!(v.decision, Decision::Unicast(PortId(1)));
    }
}
