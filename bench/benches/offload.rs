//! Software offload finishing: what it costs to segment a 64 KiB TCP
//! super-frame (45 segments of 1448 bytes, each with fresh checksums) and to
//! complete the partial checksum of one 1500-byte frame, for egress ports that
//! cannot take offloaded frames.
//!
//! Baseline in the same run: `copy_only` copies the same 64 KiB into the same
//! scratch buffer segment by segment (headers and payload, no checksum, no
//! header edits): the floor any segmentation pays. Quote `segment_64k` as a
//! ratio to it. `thrpt` is in payload bytes.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapyard_switch::datapath::offload::{complete_csum, segment};
use tapyard_switch::packet::{HEADROOM, MAX_FRAME};
use tapyard_switch::wire::vnet::VnetHdr;

/// An Ethernet + IPv4 + TCP (20-byte header) super-frame with `payload` bytes
/// and a partial checksum, as Linux hands it over.
fn super_frame(payload: usize) -> (VnetHdr, Vec<u8>) {
    let mut f = vec![0u8; 54 + payload];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (40 + payload) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x18; // ACK|PSH
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i * 31) as u8;
    }
    let h = VnetHdr::tcp4_gso(1448);
    (h, f)
}

fn offload(c: &mut Criterion) {
    let payload = 45 * 1448;
    let (h, f) = super_frame(payload);
    let mut scratch = vec![0u8; HEADROOM + MAX_FRAME];
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(payload as u64));
    g.bench_function("segment_64k", |b| {
        b.iter(|| {
            let mut n = 0usize;
            segment(&h, black_box(&f), &mut scratch, |s| n += s.len()).unwrap();
            black_box(n)
        })
    });
    g.bench_function("copy_only_baseline", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for chunk in black_box(&f[54..]).chunks(1448) {
                scratch[HEADROOM..HEADROOM + 54].copy_from_slice(&f[..54]);
                scratch[HEADROOM + 54..HEADROOM + 54 + chunk.len()].copy_from_slice(chunk);
                n += black_box(&scratch[..HEADROOM + 54 + chunk.len()]).len();
            }
            black_box(n)
        })
    });
    g.finish();
    let (_, one) = super_frame(1446);
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(1446));
    g.bench_function("complete_csum_1500", |b| {
        let mut frame = one.clone();
        b.iter(|| {
            let mut hh = VnetHdr { gso_type: 0, gso_size: 0, ..h };
            complete_csum(&mut hh, black_box(&mut frame)).unwrap();
            // Re-arm: the next iteration sums over the stored checksum, which is fine for timing.
            black_box(hh)
        })
    });
    g.finish();
}

criterion_group! { name = benches; config = tapyard_bench::criterion_config(); targets = offload }
criterion_main!(benches);
