//! vhost-user ports against an in-process VM (`common/vhost_frontend.rs`: a
//! vhost-user frontend with its own guest memory and split rings) and a
//! container namespace on the same network: frames both ways, broadcast,
//! offloaded super-frames whole or segmented per receiver, malformed
//! descriptor chains, a frontend that goes away and comes back (server and
//! client mode), queue pairs on workers, and refused bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::vhost_frontend::*;
use common::*;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

const VM_IP: [u8; 4] = [10, 88, 0, 99];
const CT_IP: [u8; 4] = [10, 88, 0, 2];
const WAIT: Duration = Duration::from_secs(5);

struct Lab {
    d: Daemon,
    ct: Netns,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let d = Daemon::start(tag);
        d.ok(&["network", "create", "vn", "--subnet", "10.88.0.0/24"]);
        let ct = Netns::new(&format!("{tag}c"));
        d.ok(&["connect", "vn", &ct.name, "--ip", "10.88.0.2/24"]);
        Lab { d, ct }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.d.dir.join(name)
    }

    /// Adds a vhost-user port on `sock` with `args`; returns its `port ls` entry.
    fn vhost(&self, sock: &Path, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["connect", "vn", "--vhost-user", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        self.d.json(&a)
    }

    fn port_of(&self, sock: &Path) -> serde_json::Value {
        let ports = self.d.json(&["port", "ls"]);
        let s = sock.to_str().unwrap();
        ports.as_array().unwrap().iter().find(|p| p["vhost"]["socket"] == s).cloned().unwrap_or_default()
    }

    fn ct_mac(&self) -> [u8; 6] {
        mac(self.d.port(&self.ct.name)["mac"].as_str().unwrap())
    }
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn arp(op: u16, src_mac: [u8; 6], src_ip: [u8; 4], dst_mac: [u8; 6], dst_ip: [u8; 4]) -> Vec<u8> {
    let eth_dst = if op == 1 { [0xff; 6] } else { dst_mac };
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(if op == 1 { &[0; 6] } else { &dst_mac });
    f.extend_from_slice(&dst_ip);
    f.resize(60, 0);
    f
}

/// (op, sender MAC, sender IP, target IP) of an ARP frame.
type Arp = (u16, [u8; 6], [u8; 4], [u8; 4]);

fn parse_arp(f: &[u8]) -> Option<Arp> {
    if f.len() < 42 || f[12..14] != [0x08, 0x06] {
        return None;
    }
    Some((
        u16::from_be_bytes([f[20], f[21]]),
        f[22..28].try_into().ok()?,
        f[28..32].try_into().ok()?,
        f[38..42].try_into().ok()?,
    ))
}

const PLAIN: [u8; 12] = [0; 12];

/// The VM asks who has the container's address and must get the container's answer.
fn vm_resolves_container(lab: &Lab, vm: &mut TestVm, vm_mac: [u8; 6], q: u16) {
    vm.send(q, &PLAIN, &arp(1, vm_mac, VM_IP, [0; 6], CT_IP));
    let ct_mac = lab.ct_mac();
    let mut got = false;
    for _ in 0..3 {
        for (_, f) in vm.recv(q, 1, WAIT) {
            if let Some((2, sender, ip, _)) = parse_arp(&f) {
                assert_eq!((sender, ip), (ct_mac, CT_IP), "ARP reply from the container");
                got = true;
            }
        }
        if got {
            break;
        }
    }
    assert!(got, "the VM got no ARP reply from the container; daemon log:\n{}", lab.d.log());
}

fn feature_names(p: &serde_json::Value) -> Vec<String> {
    p["vhost"]["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_vm_and_a_container_exchange_frames_both_ways() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vx");
    let sock = lab.sock("vm.sock");
    let p = lab.vhost(&sock, &[]);
    assert_eq!(p["vhost"]["connected"], false);
    let vm_mac = mac(p["mac"].as_str().unwrap());

    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == true));
    let p = lab.port_of(&sock);
    let names = feature_names(&p);
    for f in
        ["version_1", "mac", "mtu", "status", "mrg_rxbuf", "event_idx", "csum", "guest_csum", "host_tso4", "guest_tso4"]
    {
        assert!(names.iter().any(|n| n == f), "feature {f} not negotiated: {names:?}");
    }
    assert!(!names.iter().any(|n| n == "mq"), "MQ is offered only with --queues > 1: {names:?}");
    assert_eq!(p["queues"], 1);
    // The device config: our MAC, link up, the network's MTU (virtio 1.2 §5.1.4).
    let cfg = NetConfig::parse(&vm.get_config().expect("CONFIG protocol feature")).unwrap();
    assert_eq!(cfg.mac, vm_mac);
    assert_eq!(cfg.status & 1, 1, "link up");
    assert_eq!(cfg.mtu, 1500);

    vm.post_rx(0, 128, 2048);
    // VM → container (broadcast ARP out, unicast reply back).
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);

    // Container → VM: the container pings the VM, which answers ARP and ICMP itself.
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.ct.name, "ping", "-n", "-c", "2", "-i", "0.3", "-W", "3", "10.88.0.99"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut answered = 0;
    for _ in 0..20 {
        for (_, f) in vm.recv(0, 1, Duration::from_millis(500)) {
            if let Some((1, sender, sip, tip)) = parse_arp(&f) {
                assert_eq!(f[..6], [0xff; 6], "ARP request is broadcast");
                if tip == VM_IP {
                    vm.send(0, &PLAIN, &arp(2, vm_mac, VM_IP, sender, sip));
                }
                continue;
            }
            let Ok(pkt) = SlicedPacket::from_ethernet(&f) else { continue };
            if let Some(TransportSlice::Icmpv4(icmp)) = &pkt.transport {
                if let etherparse::Icmpv4Type::EchoRequest(echo) = icmp.icmp_type() {
                    let src = f[6..12].try_into().unwrap();
                    let b = PacketBuilder::ethernet2(vm_mac, src)
                        .ipv4(VM_IP, CT_IP, 64)
                        .icmpv4_echo_reply(echo.id, echo.seq);
                    let mut out = Vec::new();
                    b.write(&mut out, icmp.payload()).unwrap();
                    vm.send(0, &PLAIN, &out);
                    answered += 1;
                }
            }
        }
        vm.post_rx(0, 8, 2048);
        if answered >= 2 {
            break;
        }
    }
    let status = ping.wait_with_output().unwrap().status;
    assert!(answered >= 2, "the VM saw {answered} echo requests from the container");
    assert!(status.success(), "the container's ping got no replies from the VM");

    let p = lab.port_of(&sock);
    assert!(p["counters"]["rx_packets"].as_u64().unwrap() >= 3);
    assert!(p["counters"]["tx_packets"].as_u64().unwrap() >= 3);
    for b in ["too_short", "too_long", "unterminated", "outside_memory", "wrong_direction"] {
        assert_eq!(p["vhost"]["counters"][format!("bad_chain_{b}")], 0, "{p}");
    }
}

/// A TCP/IPv4 super-frame of `payload` bytes from `src` to `dst`, with its
/// virtio_net_hdr asking for TSO at `mss` and a partial checksum.
fn tcp_super_frame(src: [u8; 6], dst: [u8; 6], dst_ip: [u8; 4], payload: usize, mss: u16) -> ([u8; 12], Vec<u8>) {
    let b = PacketBuilder::ethernet2(src, dst).ipv4(VM_IP, dst_ip, 64).tcp(40000, 9, 1000, 64000);
    let mut f = Vec::new();
    let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
    b.write(&mut f, &data).unwrap();
    // Partial checksum: the pseudo-header sum only, as a stack with
    // checksum offload leaves it (virtio 1.2 §5.1.6.2).
    let tcp_len = (f.len() - 34) as u32;
    let mut sum: u32 = 0;
    for w in [VM_IP, dst_ip] {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]])) + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    sum += 6 + tcp_len;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[50..52].copy_from_slice(&(sum as u16).to_be_bytes());
    let mut h = [0u8; 12];
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    (h, f)
}

fn kernel_rx(ns: &Netns) -> (u64, u64) {
    let out = Command::new("ip").args(["-n", &ns.name, "-j", "-s", "link", "show", "eth0"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v[0]["stats64"]["rx"]["packets"].as_u64().unwrap(), v[0]["stats64"]["rx"]["bytes"].as_u64().unwrap())
}

#[test]
fn super_frames_cross_whole_or_are_segmented_for_the_receiver() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vs");
    let (s1, s2, s3) = (lab.sock("a.sock"), lab.sock("b.sock"), lab.sock("c.sock"));
    let m1 = mac(lab.vhost(&s1, &[])["mac"].as_str().unwrap());
    let m2 = mac(lab.vhost(&s2, &[])["mac"].as_str().unwrap());
    let m3 = mac(lab.vhost(&s3, &[])["mac"].as_str().unwrap());
    let mut vm1 = TestVm::connect(&s1, ALL_FEATURES, 1, 256).unwrap();
    // vm2 takes super-frames; vm3 takes neither TSO nor partial checksums.
    let mut vm2 = TestVm::connect(&s2, ALL_FEATURES, 1, 256).unwrap();
    let plain =
        ALL_FEATURES & !(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6));
    let mut vm3 = TestVm::connect(&s3, plain, 1, 256).unwrap();
    for s in [&s1, &s2, &s3] {
        assert!(wait_for(5, || lab.port_of(s)["vhost"]["connected"] == true));
    }
    vm2.post_rx(0, 64, 2048);
    vm3.post_rx(0, 64, 2048);
    const PAYLOAD: usize = 20_000;
    const MSS: u16 = 1448;

    // To vm2: one super-frame, whole, still asking for TSO.
    let (h, f) = tcp_super_frame(m1, m2, [10, 88, 0, 98], PAYLOAD, MSS);
    vm1.send(0, &h, &f);
    let got = vm2.recv(0, 1, WAIT);
    assert_eq!(got.len(), 1, "vm2 should get the super-frame whole");
    assert_eq!(got[0].0[1], VIRTIO_NET_HDR_GSO_TCPV4);
    assert_eq!(u16::from_le_bytes([got[0].0[4], got[0].0[5]]), MSS);
    assert_eq!(got[0].1, f, "the super-frame crossed unchanged");

    // To vm3: segmented by tapyard into MSS-sized frames with full checksums.
    let (h, f) = tcp_super_frame(m1, m3, [10, 88, 0, 97], PAYLOAD, MSS);
    vm1.send(0, &h, &f);
    let want = PAYLOAD.div_ceil(usize::from(MSS));
    let mut segs = Vec::new();
    for _ in 0..5 {
        segs.extend(vm3.recv(0, want - segs.len(), WAIT));
        if segs.len() >= want {
            break;
        }
    }
    assert_eq!(segs.len(), want, "vm3 should get {want} segments");
    let mut total = 0;
    for (h, seg) in &segs {
        assert_eq!(h[..2], [0, 0], "a plain frame for a guest without offloads");
        assert!(seg.len() <= 1514);
        let pkt = SlicedPacket::from_ethernet(seg).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &pkt.net else { panic!("not IPv4") };
        let Some(TransportSlice::Tcp(tcp)) = &pkt.transport else { panic!("not TCP") };
        let want_sum = tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap();
        assert_eq!(tcp.checksum(), want_sum, "TCP checksum of a segment");
        total += tcp.payload().len();
    }
    assert_eq!(total, PAYLOAD);

    // To the container (TAP with offloads): whole, one packet for its kernel.
    let (p0, b0) = kernel_rx(&lab.ct);
    let (h, f) = tcp_super_frame(m1, lab.ct_mac(), CT_IP, PAYLOAD, MSS);
    vm1.send(0, &h, &f);
    assert!(wait_for(5, || kernel_rx(&lab.ct).1 >= b0 + PAYLOAD as u64), "the container did not get the super-frame");
    let (p1, _) = kernel_rx(&lab.ct);
    assert!(p1 - p0 <= 2, "the super-frame reached the container as {} packets, not whole", p1 - p0);
}

#[test]
fn malformed_chains_are_returned_counted_and_the_port_keeps_working() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vm");
    let sock = lab.sock("vm.sock");
    let vm_mac = mac(lab.vhost(&sock, &[])["mac"].as_str().unwrap());
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    vm.post_rx(0, 64, 2048);
    let scratch = vm.guest_addr_of_scratch();
    vm.write_guest(scratch, &arp(1, vm_mac, VM_IP, [0; 6], CT_IP));
    let before = vm.tx_used(0);
    let outside = vm.guest_mem_size() + 0x10_0000;
    // Too short: 8 bytes, less than a header and an Ethernet header.
    vm.send_raw_chain(0, &[(scratch, 8, 0, 0)]);
    // Outside the memory table.
    vm.send_raw_chain(0, &[(outside, 100, 0, 0)]);
    // A loop: two descriptors pointing at each other.
    vm.send_raw_chain(0, &[(scratch, 20, VRING_DESC_F_NEXT, 1), (scratch, 20, VRING_DESC_F_NEXT, 0)]);
    // Device-writable buffer in a transmit chain.
    vm.send_raw_chain(0, &[(scratch, 72, VRING_DESC_F_WRITE, 0)]);
    // Too long: three 64 KiB descriptors, more than the largest frame.
    vm.send_raw_chain(
        0,
        &[(scratch, 65535, VRING_DESC_F_NEXT, 1), (scratch, 65535, VRING_DESC_F_NEXT, 2), (scratch, 65535, 0, 0)],
    );
    assert!(
        wait_for(5, || vm.tx_used(0).wrapping_sub(before) == 5),
        "every bad chain must be returned; {} were",
        vm.tx_used(0).wrapping_sub(before)
    );
    let p = lab.port_of(&sock);
    for b in ["too_short", "outside_memory", "unterminated", "wrong_direction", "too_long"] {
        assert_eq!(p["vhost"]["counters"][format!("bad_chain_{b}")], 1, "bad_chain_{b}: {p}");
    }
    assert_eq!(p["counters"]["rx_packets"], 0, "no bad chain was forwarded");
    // The ring and the worker carry on.
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
}

#[test]
fn a_frontend_that_goes_away_leaves_the_port_down_and_the_next_one_brings_it_back() {
    if !common::net_admin() {
        return;
    }
    let mut lab = Lab::new("vr");
    let sock = lab.sock("vm.sock");
    let vm_mac = mac(lab.vhost(&sock, &[])["mac"].as_str().unwrap());
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
    let id = lab.port_of(&sock)["id"].clone();

    let maps = || std::fs::read_to_string(format!("/proc/{}/maps", lab.d.pid())).unwrap_or_default();
    assert!(maps().contains("memfd:tapyard-test-vm"), "the guest's memory is mapped while it is connected");
    // The VM crashes: the port stays, down; frames for it are counted, not sent.
    vm.close();
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == false));
    // And the dead VM's memory is no longer mapped by tapyard.
    assert!(wait_for(5, || !maps().contains("memfd:tapyard-test-vm")), "tapyard still maps the gone VM's memory");
    let p = lab.port_of(&sock);
    assert_eq!(p["id"], id, "the port stays");
    lab.ct.run(&["ping", "-c", "1", "-W", "1", "10.88.0.99"]);
    assert!(wait_for(5, || lab.port_of(&sock)["counters"]["drops"]["link_down"].as_u64().unwrap() > 0));

    // The VM comes back: same port, same MAC, FDB entry for it refreshed.
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == true));
    let p = lab.port_of(&sock);
    assert_eq!((p["id"].clone(), p["vhost"]["counters"]["connects"].clone()), (id.clone(), 2.into()));
    let fdb = lab.d.json(&["fdb", "show"]);
    let mine = p["mac"].as_str().unwrap();
    assert!(
        fdb.as_array().unwrap().iter().any(|e| e["mac"] == mine && e["port"] == id),
        "the VM's MAC points at its port again: {fdb}"
    );
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
    drop(vm);

    // The daemon is killed and restarted: the port is restored and listens again.
    assert_eq!(lab.d.signal("KILL"), None);
    lab.d.spawn();
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == true));
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
}

#[test]
fn in_client_mode_tapyard_keeps_trying_until_the_frontend_listens() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vc");
    let sock = lab.sock("qemu.sock");
    let p = lab.vhost(&sock, &["--client"]);
    assert_eq!(p["vhost"]["mode"], "client");
    let vm_mac = mac(p["mac"].as_str().unwrap());
    // The frontend starts listening only now (like QEMU with server=on started after tapyard).
    std::thread::sleep(Duration::from_millis(1500));
    let listener = TestVm::listen(&sock).unwrap();
    let cfg = VmConfig::new(ALL_FEATURES, 1, 256);
    let mut vm = listener.accept(&cfg, Duration::from_secs(10)).expect("tapyard connects to the listening frontend");
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == true));
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
    // And again after the frontend restarts.
    drop(vm);
    // tapyard notices, and connects again at once (the listener is still there).
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["counters"]["disconnects"] == 1), "{}", lab.d.log());
    let mut vm = listener.accept(&cfg, Duration::from_secs(10)).expect("tapyard reconnects");
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);
}

#[test]
fn queue_pairs_are_served_by_their_workers() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vq");
    let sock = lab.sock("vm.sock");
    // The test daemon has 2 workers: 3 pairs cannot be served.
    let out = lab.d.cli(&["connect", "vn", "--vhost-user", sock.to_str().unwrap(), "--queues", "3"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker"), "{}", String::from_utf8_lossy(&out.stderr));
    let p = lab.vhost(&sock, &["--queues", "2"]);
    assert_eq!(p["queues"], 2);
    let vm_mac = mac(p["mac"].as_str().unwrap());
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 2, 256).unwrap();
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == true));
    assert!(feature_names(&lab.port_of(&sock)).iter().any(|n| n == "mq"));
    let cfg = NetConfig::parse(&vm.get_config().unwrap()).unwrap();
    assert_eq!(cfg.max_virtqueue_pairs, 2);
    for q in 0..2 {
        vm.post_rx(q, 32, 2048);
    }
    for q in 0..2 {
        vm.send(q, &PLAIN, &arp(1, vm_mac, VM_IP, [0; 6], CT_IP));
    }
    // The replies may come back on either pair (the egress pair is the worker's).
    let mut replies = 0;
    for _ in 0..10 {
        for q in 0..2 {
            let got = vm.recv(q, 1, Duration::from_millis(200));
            replies += got.iter().filter(|(_, f)| parse_arp(f).is_some_and(|a| a.0 == 2)).count();
        }
        if replies >= 2 {
            break;
        }
    }
    assert!(replies >= 2, "both requests were answered ({replies}): {}", lab.d.json(&["port", "ls"]));
    let per_queue = lab.port_of(&sock)["counters"]["rx_queue_packets"].clone();
    assert_eq!(
        (per_queue[0].as_u64(), per_queue[1].as_u64()),
        (Some(1), Some(1)),
        "one frame read on each pair: {per_queue}"
    );
}

#[test]
fn bad_vhost_user_requests_are_refused_with_a_reason() {
    if !common::net_admin() {
        return;
    }
    let lab = Lab::new("vb");
    let file = lab.sock("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = lab.d.cli(&["connect", "vn", "--vhost-user", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me", "a file that is not a socket is left alone");

    let sock = lab.sock("vm.sock");
    lab.vhost(&sock, &[]);
    let again = lab.d.cli(&["connect", "vn", "--vhost-user", sock.to_str().unwrap()]);
    assert!(!again.status.success(), "one port per socket");
    let other = lab.d.cli(&["connect", "vn", &lab.ct.name, "--client"]);
    assert!(!other.status.success(), "--client needs --vhost-user");
    let gone = lab.d.cli(&["disconnect", "vn", "--vhost-user", "/nonexistent/x.sock"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no vhost-user port"));
    let badmac = lab.d.cli(&[
        "connect",
        "vn",
        "--vhost-user",
        lab.sock("m.sock").to_str().unwrap(),
        "--mac",
        "01:00:5e:00:00:01",
    ]);
    assert!(!badmac.status.success(), "a multicast MAC is refused");

    // A frontend that speaks garbage is dropped; the port stays and serves the next one.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(&[0xff; 64]);
    }
    assert!(wait_for(5, || lab.port_of(&sock)["vhost"]["connected"] == false));
    let vm_mac = mac(lab.port_of(&sock)["mac"].as_str().unwrap());
    let mut vm = TestVm::connect(&sock, ALL_FEATURES, 1, 256).unwrap();
    vm.post_rx(0, 64, 2048);
    vm_resolves_container(&lab, &mut vm, vm_mac, 0);

    // disconnect removes the port and its socket file.
    drop(vm);
    lab.d.ok(&["disconnect", "vn", "--vhost-user", sock.to_str().unwrap()]);
    assert!(lab.port_of(&sock).is_null());
    assert!(!exists(&sock), "the socket file is removed");
}
