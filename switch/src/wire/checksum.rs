//! The Internet checksum (RFC 1071), the one implementation in the crate:
//! software offload finishing, the TTL rewrite's verification in tests, and
//! the ICMP errors the router builds all use it.

#![forbid(unsafe_code)]

/// Adds `data` to a running one's-complement sum, read as big-endian 16-bit
/// words with an odd last byte padded with zero (RFC 1071 §4.1). The result
/// is not folded; pass it to [`fold`].
///
/// Reads 32-bit words into a 64-bit accumulator: since 2^16 ≡ 1 (mod 2^16 − 1),
/// a big-endian u32 `hi·2^16 + lo` adds the same as the two u16 words `hi` and
/// `lo` once folded (RFC 1071 §2(C), "parallel summation"), and deferring the
/// end-around carries to the fold (§2(B)) leaves a loop without branches that
/// the compiler can vectorise. With 32-bit words in 64 bits the sum cannot
/// overflow for any slice shorter than 2^34 bytes. `data` must start at an
/// even offset of the checksummed region, which every caller here ensures
/// (header lengths are multiples of 2).
#[inline]
pub fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a running sum to 16 bits with end-around carry (RFC 1071 §4.1).
/// Each round strictly shrinks a value above 0xffff; at most four run.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`: the complement of its folded sum.
#[inline]
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(csum_add(0, data))
}
