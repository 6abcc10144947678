//! Frame buffers: fixed-capacity storage, allocated once per worker at start
//! and reused for every frame after that. Knows nothing of ports or policy.
//!
//! Each buffer keeps [`HEADROOM`] bytes in front of the frame for the 12-byte
//! `virtio_net_hdr` (virtio 1.x §5.1.6) that TAP ports read and write with
//! the frame, so one `read` and one `write` move header and frame together
//! with no copy; and it holds frames up to [`MAX_FRAME`] bytes: a 64 KiB GSO
//! super-frame plus its Ethernet and 802.1Q headers. Ports without offloads
//! leave a zeroed ("plain frame") header there.

#![forbid(unsafe_code)]

use std::fmt;

use crate::wire::vnet::{VnetHdr, VNET_HDR_LEN};

/// Room reserved in front of every frame for a `virtio_net_hdr_v1`.
pub const HEADROOM: usize = VNET_HDR_LEN;

/// Largest frame a buffer holds: a 64 KiB GSO super-frame (Linux's
/// `gso_max_size` is 65536 bytes from the IP header on), the Ethernet header
/// and one VLAN tag, with a little slack so a maximal one is never truncated.
pub const MAX_FRAME: usize = 65_536 + 14 + 4 + 46;

/// One frame's storage. Never reallocates after construction.
pub struct PacketBuf {
    data: Box<[u8]>,
    len: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> PacketBuf {
        PacketBuf { data: vec![0u8; HEADROOM + MAX_FRAME].into_boxed_slice(), len: 0 }
    }

    /// The frame bytes (after the headroom).
    #[inline]
    pub fn frame(&self) -> &[u8] {
        &self.data[HEADROOM..HEADROOM + self.len]
    }

    /// The whole frame area, for a port without a vnet header to read into;
    /// follow with [`PacketBuf::set_len`] (the header is cleared here: a plain frame).
    #[inline]
    pub fn space_mut(&mut self) -> &mut [u8] {
        self.data[..HEADROOM].fill(0);
        &mut self.data[HEADROOM..]
    }

    /// Header and frame area together, for a port that reads both in one go;
    /// follow with [`PacketBuf::set_len`] of the frame alone.
    #[inline]
    pub fn hdr_space_mut(&mut self) -> &mut [u8] {
        &mut self.data[..]
    }

    /// Header and frame as one slice: what a port with a vnet header writes.
    #[inline]
    pub fn wire(&self) -> &[u8] {
        &self.data[..HEADROOM + self.len]
    }

    /// Header and frame, writable: a port-level view for finishing offloads in place.
    #[inline]
    pub fn wire_mut(&mut self) -> &mut [u8] {
        &mut self.data[..HEADROOM + self.len]
    }

    /// Sets the frame length, clamped to the buffer so that a port reporting
    /// more than it wrote can never make [`PacketBuf::frame`] panic.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(MAX_FRAME);
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A port's number, unique in the daemon while the port exists. 0 is never
/// used, so a forwarding-table slot of all zeroes means "empty".
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PortId(pub u16);

impl PortId {
    /// The largest id handed out; `u16::MAX` is reserved by the forwarding table.
    pub const MAX: u16 = u16::MAX - 1;

    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// A network's number: its identity in the data path for as long as it
/// exists. Route targets, punted frames and held packets name networks by
/// it; it never changes when other networks come or go (ids are not reused
/// while the daemon runs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NetId(pub u32);

impl NetId {
    /// No network has this id (ids start at 1): the target of a reject
    /// route, which the router answers with Network Unreachable.
    pub const NONE: NetId = NetId(0);

    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net{}", self.0)
    }
}

/// Frames a worker reads from one port in one burst (STYLE §7: bounded work per port per turn).
pub const BATCH: usize = 32;

/// A reusable set of [`BATCH`] buffers and the count of those holding a frame.
pub struct Batch {
    bufs: Vec<PacketBuf>,
    len: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch { bufs: (0..BATCH).map(|_| PacketBuf::new()).collect(), len: 0 }
    }

    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// The next free buffer, or `None` when the batch is full. A port fills it
    /// and then calls [`Batch::commit`].
    #[inline]
    pub fn next_free(&mut self) -> Option<&mut PacketBuf> {
        self.bufs.get_mut(self.len)
    }

    /// Counts the buffer returned by the last [`Batch::next_free`] as holding a frame.
    #[inline]
    pub fn commit(&mut self) {
        if self.len < self.bufs.len() {
            self.len += 1;
        }
    }

    /// Appends a copy of `frame` as a plain frame (tests and the in-memory port); false if full or too large.
    pub fn push_copy(&mut self, frame: &[u8]) -> bool {
        self.push_wire(&VnetHdr::NONE, frame)
    }

    /// Appends a copy of `frame` with header `hdr`; false if full or too large.
    pub fn push_wire(&mut self, hdr: &VnetHdr, frame: &[u8]) -> bool {
        match self.next_free() {
            Some(buf) if frame.len() <= MAX_FRAME => {
                let d = buf.hdr_space_mut();
                hdr.write_to(d);
                d[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
                buf.set_len(frame.len());
                self.commit();
                true
            }
            _ => false,
        }
    }

    /// Header and frame of buffer `i` (below [`Batch::len`]), writable.
    #[inline]
    pub fn wire_mut(&mut self, i: usize) -> &mut [u8] {
        self.bufs[i].wire_mut()
    }

    #[inline]
    pub fn get(&self, i: usize) -> &PacketBuf {
        &self.bufs[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &PacketBuf> {
        self.bufs[..self.len].iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_fills_to_capacity_and_clears() {
        let mut b = Batch::new();
        for i in 0..BATCH {
            assert!(b.push_copy(&[i as u8; 60]));
        }
        assert!(b.is_full());
        assert!(!b.push_copy(&[0; 60]));
        assert_eq!(b.iter().nth(3).unwrap().frame(), &[3u8; 60][..]);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn set_len_is_clamped() {
        let mut p = PacketBuf::new();
        p.set_len(usize::MAX);
        assert_eq!(p.len(), MAX_FRAME);
        assert_eq!(p.frame().len(), MAX_FRAME);
        assert!(!p.space_mut().is_empty());
    }
}
