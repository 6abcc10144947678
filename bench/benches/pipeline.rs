//! The whole per-frame path, `worker::burst`: receive a burst of 32 frames
//! from a port, classify each (parse, learn, look up, gateway and routing
//! checks), carry out the verdict (transmit, rewrite for routing), apply the
//! send reports and count — everything a worker does per burst except
//! polling, over in-memory ports that neither allocate nor lock
//! (`port::mem::Repeat`), so the port's own cost is a copy per frame in and
//! a counter per send.
//!
//! - `switched_64B`: known unicast, 64-byte frames, port 1 → port 2.
//! - `routed_64B`: 64-byte UDP packets from network n through router r to a
//!   known station on network m (LPM, TTL rewrite, MAC rewrite).
//! - `..._port_security`: the same with port security and storm control on
//!   every port (the guard stage: source MAC, IPv4 source and UDP ports
//!   checked per frame; docs/RELIABILITY.md).
//!
//! `time` is per burst of 32; **ns per frame = 1000 / thrpt in Melem/s**.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapyard_switch::control::build::{build, network_spec, NetworkIn, Plan, PortIn, RouterIn};
use tapyard_switch::control::gateway_mac;
use tapyard_switch::control::persist::RouterSpec;
use tapyard_switch::datapath::egress::Egress;
use tapyard_switch::packet::{Batch, NetId, BATCH};
use tapyard_switch::port::mem::Repeat;
use tapyard_switch::port::{Port, PortId};
use tapyard_switch::punt::PuntQueue;
use tapyard_switch::security::{Security, Storm};
use tapyard_switch::snapshot::Snapshot;
use tapyard_switch::wire::vnet::VnetHdr;
use tapyard_switch::wire::MacAddr;
use tapyard_switch::worker::{burst, Io};

fn udp(src: [u8; 6], dst: [u8; 6], from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(src, dst).ipv4(from, to, 64).udp(40000, 5201).write(&mut f, &[0; 18]).unwrap();
    f
}

/// Networks n (10.0.0.0/24: ports 1, 2, 3) and m (10.1.0.0/24: port 4) on
/// router r; with `guarded`, every port has port security (the MAC and
/// address it sends from) and a storm limit.
fn lab(guarded: bool) -> (Snapshot, Vec<Arc<Repeat>>) {
    let a = [2, 0, 0, 0, 0, 1];
    let b = [2, 0, 0, 0, 0, 2];
    let c = [2, 0, 0, 0, 0, 4];
    let ports = vec![
        Arc::new(Repeat::new(VnetHdr::NONE, &udp(a, b, [10, 0, 0, 1], [10, 0, 0, 2]))),
        Arc::new(Repeat::new(VnetHdr::NONE, &udp(b, a, [10, 0, 0, 2], [10, 0, 0, 1]))),
        Arc::new(Repeat::new(VnetHdr::NONE, &udp(a, gateway_mac("n").0, [10, 0, 0, 1], [10, 1, 0, 4]))),
        Arc::new(Repeat::new(VnetHdr::NONE, &udp(c, [0xff; 6], [10, 1, 0, 4], [10, 1, 0, 255]))),
    ];
    let senders = [(a, [10, 0, 0, 1]), (b, [10, 0, 0, 2]), (a, [10, 0, 0, 1]), (c, [10, 1, 0, 4])];
    let (n, m) = (network_spec("n", Some("10.0.0.0/24")), network_spec("m", Some("10.1.0.0/24")));
    let r = RouterSpec { name: "r".into(), networks: vec!["n".into(), "m".into()], routes: vec![] };
    let net = |id, spec| NetworkIn::new(NetId(id), spec);
    let snap = build(Plan {
        epoch: 1,
        networks: vec![net(1, &n), net(2, &m)],
        routers: vec![RouterIn { spec: &r, stats: Arc::default() }],
        ports: ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortIn {
                id: PortId(i as u16 + 1),
                network: if i == 3 { "m" } else { "n" },
                port: p.clone() as Arc<dyn Port>,
                stats: Arc::default(),
                worker: 0,
                impair: None,
                security: guarded.then(|| Security { mac: MacAddr(senders[i].0), ips: vec![senders[i].1.into()] }),
                storm: guarded.then(|| Storm { limit: 2000, meter: Arc::default() }),
            })
            .collect(),
        neighbors: [("m".to_string(), [("10.1.0.4".parse().unwrap(), MacAddr(c))].into())].into(),
        punt: Arc::new(PuntQueue::new()),
        uplink: None,
    });
    (snap, ports)
}

fn pipeline_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (suffix, guarded) in [("", false), ("_port_security", true)] {
        let (snap, _ports) = lab(guarded);
        let mut batch = Batch::new();
        let mut egress = Egress::new(0);
        // Learn every MAC first, so the measured bursts are the steady state.
        for id in [1, 2, 4] {
            let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
            burst(&mut io, &snap, snap.port(PortId(id)).unwrap(), 0);
        }
        for (name, id) in [("switched_64B", 1u16), ("routed_64B", 3)] {
            g.bench_function(format!("{name}{suffix}"), |b| {
                b.iter(|| {
                    let mut io = Io { batch: &mut batch, egress: &mut egress, queue: 0 };
                    burst(&mut io, &snap, snap.port(PortId(id)).unwrap(), 1)
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = tapyard_bench::criterion_config();
    targets = pipeline_benches
}
criterion_main!(benches);
