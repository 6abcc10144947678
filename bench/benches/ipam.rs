//! IPAM benchmarks: the address allocator in a /16 (allocate + release
//! pairs), the lease table (offer + bind + forget in a /16 with 30,000
//! leases held), and full DHCP handshakes (DISCOVER → OFFER, REQUEST → ACK)
//! through the server with durability on: the records of each batch of
//! handshakes are committed with one fsync before the batch's ACKs count as
//! sent (group commit, as the gateway responder does). Baseline in the same
//! run: the same handshakes with one fsync per ACK.
//!
//! Reading: `thrpt` is pairs or handshakes per second.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapyard_ipam::dhcp::DhcpConfig;
use tapyard_ipam::lease::{ClientKey, Leases};
use tapyard_ipam::store::Store;
use tapyard_ipam::{Ipv4Net, Pool};

const NOW: u64 = 1_700_000_000;

fn slash16() -> Ipv4Net {
    "172.17.0.0/16".parse().expect("valid")
}

fn pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipam");
    g.throughput(Throughput::Elements(1));
    // Half full, so allocation has to search.
    let mut p = Pool::new(slash16());
    for _ in 0..32_000 {
        p.allocate();
    }
    g.bench_function("pool_allocate_release_slash16", |b| {
        b.iter(|| {
            let a = p.allocate().expect("free addresses remain");
            p.release(black_box(a));
        })
    });
    let mut l = Leases::new(slash16(), slash16(), [Ipv4Addr::new(172, 17, 0, 1)]);
    for i in 0..30_000u32 {
        let mac = mac(i);
        let a = l.offer(&ClientKey::Mac(mac), mac, None, NOW).expect("room");
        l.bind(&ClientKey::Mac(mac), mac, a, 3600, None, NOW).expect("bind");
    }
    let mut i = 1_000_000u32;
    g.bench_function("leases_offer_bind_forget_slash16_30k_held", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let mac = mac(i);
            let key = ClientKey::Mac(mac);
            let a = l.offer(&key, mac, None, NOW).expect("room");
            l.bind(&key, mac, a, 3600, None, NOW).expect("bind");
            black_box(l.forget(&key));
        })
    });
    g.finish();
}

fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [2, 0, b[0], b[1], b[2], b[3]]
}

/// A client message as udhcpc sends it: DISCOVER (1) or REQUEST (3).
fn msg(kind: u8, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[28..34].copy_from_slice(&mac);
    b[236..240].copy_from_slice(&0x6382_5363u32.to_be_bytes());
    b.extend_from_slice(&[53, 1, kind, 55, 4, 1, 3, 6, 15]);
    if let Some(a) = requested {
        b.extend_from_slice(&[54, 4, 172, 17, 0, 1, 50, 4]);
        b.extend_from_slice(&a.octets());
    }
    b.push(255);
    b
}

fn handshakes(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tapyard-bench-dhcp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::open(&dir).expect("journal");
    let cfg = DhcpConfig {
        server: Ipv4Addr::new(172, 17, 0, 1),
        subnet: slash16(),
        dns: vec![],
        domain: None,
        mtu: Some(1500),
        lease_secs: 3600,
        decline_secs: 600,
        // The daemon's default cap, so the handshake pays for its check.
        per_mac_cap: tapyard_switch::control::DEFAULT_LEASES_PER_PORT,
    };
    store.add_network("n", cfg, slash16(), [Ipv4Addr::new(172, 17, 0, 1)], []);
    let mut next = 0u32;
    let mut run = |store: &mut Store, n: u64, batch: u64| -> Duration {
        let t = Instant::now();
        let mut done = 0;
        while done < n {
            for _ in 0..batch.min(n - done) {
                next = next.wrapping_add(1) % 60_000;
                let m = mac(next);
                let offer = store.handle("n", &msg(1, m, None), NOW).expect("network").reply.expect("offer");
                let yiaddr = Ipv4Addr::new(offer.payload[16], offer.payload[17], offer.payload[18], offer.payload[19]);
                let ack = store.handle("n", &msg(3, m, Some(yiaddr)), NOW).expect("network").reply.expect("ack");
                black_box(ack);
                done += 1;
            }
            store.commit().expect("fsync");
        }
        t.elapsed()
    };
    let mut g = c.benchmark_group("dhcp");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.bench_function("dora_durable_group_commit_64", |b| b.iter_custom(|iters| run(&mut store, iters, 64)));
    g.bench_function("dora_durable_fsync_per_ack", |b| b.iter_custom(|iters| run(&mut store, iters, 1)));
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = tapyard_bench::criterion_config();
    targets = pool, handshakes
}
criterion_main!(benches);
