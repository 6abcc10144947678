//! Finishing offloaded frames in software, for egress ports that cannot take
//! them as they are: completing a partial L4 checksum (`NEEDS_CSUM`), and
//! segmenting a GSO super-frame (TCP over IPv4/IPv6, UDP with USO) into
//! frames of at most `gso_size` payload bytes, each with correct lengths,
//! IP IDs, TCP sequence numbers and flags, and checksums.
//!
//! Pure functions over byte slices: no allocation, no I/O. Every input comes
//! from a port, so every offset is checked; a frame that cannot be finished
//! is an [`OffloadError`] (the caller drops and counts it), never a panic.

#![forbid(unsafe_code)]

use crate::wire::vnet::{VnetHdr, VNET_HDR_LEN};

/// Why a frame could not be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers are cut short, or an offset points outside the frame.
    Malformed,
    /// A GSO type we do not segment (UFO), or a GSO frame that is not TCP/UDP over IP.
    Unsupported,
}

/// Completes the L4 checksum of `frame` as `hdr` asks (`NEEDS_CSUM`:
/// one's-complement sum from `csum_start` to the end, stored at
/// `csum_start + csum_offset`), and clears the flag in `hdr`.
pub fn complete_csum(hdr: &mut VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    let _ = (hdr, frame);
    Err(OffloadError::Unsupported)
}

/// The length of the largest frame [`segment`] would produce (headers plus
/// `gso_size`), for MTU checks; the frame's own length if it is not GSO.
pub fn segment_frame_len(hdr: &VnetHdr, frame: &[u8]) -> Result<usize, OffloadError> {
    let _ = hdr;
    Ok(frame.len())
}

/// Splits the GSO super-frame `frame` into segments. Each segment is built in
/// `scratch` as a zeroed 12-byte `virtio_net_hdr` followed by the complete
/// frame (all checksums filled in) and passed to `emit` as one slice, ready
/// to write to a port. Returns the number of segments.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let _ = (hdr, frame, scratch, &mut emit, VNET_HDR_LEN);
    Err(OffloadError::Unsupported)
}
