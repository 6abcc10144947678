//! `datapath::offload` against the Linux kernel's own segmentation and
//! checksumming. In a namespace of its own the test opens two TAPs: A takes
//! checksum and segmentation offloads (`TUNSETOFFLOAD` CSUM|TSO|USO), B takes
//! none. The same UDP data goes out once through each, sent with
//! `UDP_SEGMENT` (USO): A's reader gets one super-frame with a partial
//! checksum, B's gets the segments the kernel cut and checksummed itself.
//! What `segment` makes of A's super-frame must match B's frames; and what
//! `complete_csum` makes of a partially checksummed datagram read from A
//! must match the checksum the kernel computed for B.
//!
//! The two TAPs are in different subnets, so that routing picks the TAP by
//! destination. Their addresses are chosen so the one's-complement sums of
//! source + destination are the same on both (see `V4`/`V6` below): the
//! pseudo-headers then sum alike, and A's and B's UDP checksums must be
//! equal to the bit, not merely valid. The test checks that premise too.
//!
//! Needs CAP_NET_ADMIN: run as root, or through `scripts/test.sh`, which
//! runs the tests inside `unshare --user --map-root-user --net --mount`.
//! All traffic goes to addresses of the test's own namespace, answered by
//! static neighbour entries: nothing leaves it.

mod common;

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::{sh, Netns};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use tapyard_switch::datapath::offload::{complete_csum, segment, segment_frame_len};
use tapyard_switch::wire::vnet::{VnetHdr, VNET_HDR_LEN};

/// UDP port everything is sent to; frames to other ports (IPv6 neighbour
/// discovery, MLD) are the kernel's own chatter and are ignored.
const PORT: u16 = 9000;
const GSO_SIZE: u16 = 1000;
const GSO_PAYLOAD: usize = 8000;
/// Odd, so the checksum's last word is padded.
const SMALL_PAYLOAD: usize = 333;

/// One path: a TAP, its address and prefix, and the peer the test sends to.
struct Path {
    tap: &'static str,
    local: &'static str,
    prefix: u8,
    peer: &'static str,
    peer_mac: &'static str,
}

/// A sends 10.201.1.1 → 10.201.1.2, B 10.200.1.2 → 10.200.1.3: as 16-bit
/// words 0a c9 01 01 + 0a c9 01 02 and 0a c8 01 02 + 0a c8 01 03 sum alike
/// (B's 0ac8s are 2 less, its host parts 2 more).
const V4: [Path; 2] = [
    Path { tap: "offa", local: "10.201.1.1", prefix: 24, peer: "10.201.1.2", peer_mac: "02:00:00:00:0a:02" },
    Path { tap: "offb", local: "10.200.1.2", prefix: 24, peer: "10.200.1.3", peer_mac: "02:00:00:00:0b:02" },
];
/// The same for IPv6: prefix word 000a twice + hosts 3 and 4, against 000b twice + hosts 2 and 3.
const V6: [Path; 2] = [
    Path { tap: "offa", local: "fd00:0:0:a::3", prefix: 64, peer: "fd00:0:0:a::4", peer_mac: "02:00:00:00:0a:02" },
    Path { tap: "offb", local: "fd00:0:0:b::2", prefix: 64, peer: "fd00:0:0:b::3", peer_mac: "02:00:00:00:0b:02" },
];

/// Opens TAP `name` with a 12-byte vnet header and `offload` (`TUN_F_*`),
/// non-blocking. The interface lives as long as the file.
fn open_tap(name: &str, offload: libc::c_uint) -> io::Result<File> {
    let tun = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open("/dev/net/tun")?;
    let fd = tun.as_raw_fd();
    // SAFETY: ifreq is plain old data; all-zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, libc::c_ulong::from(offload)) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

fn set_udp_segment(sock: &UdpSocket, size: u16) {
    let v = libc::c_int::from(size);
    // SAFETY: setsockopt reads an int through the pointer, which outlives the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt(UDP_SEGMENT): {}", io::Error::last_os_error());
}

/// A frame read from a TAP: its vnet header and the frame after it.
struct Frame {
    hdr: VnetHdr,
    bytes: Vec<u8>,
}

impl Frame {
    fn headers(&self) -> PacketHeaders<'_> {
        PacketHeaders::from_ethernet_slice(&self.bytes).expect("the kernel's frame parses")
    }

    fn is_v6(&self) -> bool {
        matches!(self.headers().net, Some(NetHeaders::Ipv6(..)))
    }
}

/// Reads UDP frames to [`PORT`] from `tap` until `want` have come or 5 s pass.
fn read_frames(tap: &File, want: usize) -> Vec<Frame> {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_536 + 1024];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < want && Instant::now() < deadline {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "read from the TAP: {e}");
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = n as usize;
        assert!(n >= VNET_HDR_LEN);
        let hdr = VnetHdr::parse(buf[..VNET_HDR_LEN].try_into().unwrap());
        let bytes = buf[VNET_HDR_LEN..n].to_vec();
        let ours = match PacketHeaders::from_ethernet_slice(&bytes) {
            Ok(h) => matches!(h.transport, Some(TransportHeader::Udp(u)) if u.destination_port == PORT),
            Err(_) => false,
        };
        if ours {
            out.push(Frame { hdr, bytes });
        }
    }
    out
}

/// The one's-complement sum of the source and destination addresses, the
/// part of the pseudo-header in which the two paths differ.
fn address_sum(f: &Frame) -> u16 {
    let words = match f.headers().net.unwrap() {
        NetHeaders::Ipv4(ip, _) => [ip.source, ip.destination].concat(),
        NetHeaders::Ipv6(ip, _) => [ip.source, ip.destination].concat(),
        NetHeaders::Arp(_) => unreachable!(),
    };
    let mut s: u32 = words.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The UDP header, payload and IPv4 ID of a frame, with its IP and UDP
/// checksums verified independently (by etherparse).
struct Udp {
    length: u16,
    checksum: u16,
    ports: (u16, u16),
    ip_id: Option<u16>,
    payload: Vec<u8>,
}

fn udp(frame: &[u8], what: &str) -> Udp {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap_or_else(|e| panic!("{what}: does not parse: {e}"));
    let Some(TransportHeader::Udp(u)) = h.transport else { panic!("{what}: not UDP") };
    let payload = h.payload.slice().to_vec();
    let (want, ip_id) = match h.net.as_ref().unwrap() {
        NetHeaders::Ipv4(ip, _) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{what}: IPv4 header checksum");
            (u.calc_checksum_ipv4(ip, &payload).unwrap(), Some(ip.identification))
        }
        NetHeaders::Ipv6(ip, _) => (u.calc_checksum_ipv6(ip, &payload).unwrap(), None),
        NetHeaders::Arp(_) => unreachable!(),
    };
    assert_eq!(u.checksum, want, "{what}: UDP checksum");
    assert_eq!(usize::from(u.length), 8 + payload.len(), "{what}: UDP length");
    Udp { length: u.length, checksum: u.checksum, ports: (u.source_port, u.destination_port), ip_id, payload }
}

/// Deterministic data, different for each address family.
fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13) ^ (i >> 8) as u8 ^ salt).collect()
}

/// Everything that runs inside the namespace. Returns notes on what was skipped.
fn run_in(ns: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let nsfile = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    // SAFETY: `nsfile` is an open namespace file; this changes the network
    // namespace of the calling thread only, a thread spawned for this test.
    assert_eq!(unsafe { libc::setns(nsfile.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");

    let tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    let (tap_a, uso) = match open_tap("offa", tso | libc::TUN_F_USO4 | libc::TUN_F_USO6) {
        Ok(t) => (t, true),
        // Kernels before 6.2 have no USO on TAPs.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            notes.push("the kernel refused USO on the TAP (EINVAL, Linux < 6.2): segmentation not compared".into());
            (open_tap("offa", tso).expect("open TAP A"), false)
        }
        Err(e) => panic!("open TAP A: {e}"),
    };
    let tap_b = open_tap("offb", 0).expect("open TAP B");

    let v6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    if !v6 {
        notes.push("no IPv6 in this kernel: IPv6 not compared".into());
    }
    let ip = |args: &[&str]| sh(&[&["ip", "-n", ns], args].concat());
    for p in V4.iter().chain(if v6 { &V6[..] } else { &[] }) {
        let addr = format!("{}/{}", p.local, p.prefix);
        if p.local.contains(':') {
            // No duplicate address detection: the address is usable at once.
            ip(&["addr", "add", &addr, "dev", p.tap, "nodad"]);
        } else {
            ip(&["addr", "add", &addr, "dev", p.tap]);
        }
        ip(&["link", "set", p.tap, "up"]);
        // A static neighbour: no ARP/ND to answer, nothing sent anywhere else.
        ip(&["neigh", "replace", p.peer, "lladdr", p.peer_mac, "dev", p.tap, "nud", "permanent"]);
    }

    let families: &[(&[Path; 2], u8)] = if v6 { &[(&V4, 0), (&V6, 0x5a)] } else { &[(&V4, 0)] };
    for &(paths, salt) in families {
        let any: IpAddr = if paths[0].local.contains(':') { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() };
        // One socket, so both paths carry the same source port.
        let sock = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
        let to = |p: &Path| SocketAddr::new(p.peer.parse().unwrap(), PORT);
        let big = data(GSO_PAYLOAD, salt);
        let small = data(SMALL_PAYLOAD, salt ^ 0xff);
        if uso {
            set_udp_segment(&sock, GSO_SIZE);
            for p in paths {
                assert_eq!(sock.send_to(&big, to(p)).unwrap(), GSO_PAYLOAD);
            }
            set_udp_segment(&sock, 0);
        }
        for p in paths {
            assert_eq!(sock.send_to(&small, to(p)).unwrap(), SMALL_PAYLOAD);
        }
        let family = if salt == 0 { "IPv4" } else { "IPv6" };
        let segs = GSO_PAYLOAD.div_ceil(usize::from(GSO_SIZE));
        let a = read_frames(&tap_a, usize::from(uso) + 1);
        let b = read_frames(&tap_b, if uso { segs } else { 0 } + 1);
        assert!(a.iter().chain(&b).all(|f| f.is_v6() == (salt != 0)));
        assert_eq!(a.len(), usize::from(uso) + 1, "{family}: frames read from TAP A");
        assert_eq!(b.len(), if uso { segs } else { 0 } + 1, "{family}: frames read from TAP B");
        assert_eq!(address_sum(&a[0]), address_sum(&b[0]), "{family}: the paths' pseudo-headers sum alike");

        if uso {
            compare_segments(family, &a[0], &b[..segs], &big);
        }
        compare_checksum(family, a.last().unwrap(), b.last().unwrap(), &small);
    }
    notes
}

/// Segments A's super-frame with `segment` and compares with the kernel's segments from B.
fn compare_segments(family: &str, sup: &Frame, kernel: &[Frame], sent: &[u8]) {
    let h = sup.hdr;
    assert_eq!(h.gso(), VnetHdr::GSO_UDP_L4, "{family}: TAP A got a USO super-frame");
    assert_eq!(h.gso_size, GSO_SIZE);
    assert!(h.needs_csum(), "{family}: the super-frame's checksum is partial");
    let hl = sup.bytes.len() - GSO_PAYLOAD;
    assert_eq!(segment_frame_len(&h, &sup.bytes), Ok(hl + usize::from(GSO_SIZE)));

    let mut scratch = vec![0u8; VNET_HDR_LEN + 2048];
    let mut ours = Vec::new();
    let n = segment(&h, &sup.bytes, &mut scratch, |s| ours.push(s.to_vec())).expect("segment");
    assert_eq!(n, kernel.len(), "{family}: as many segments as the kernel cut");
    let mut joined = Vec::new();
    let (mut id0, mut kid0) = (None, None);
    for (i, (o, k)) in ours.iter().zip(kernel).enumerate() {
        assert!(k.hdr.is_plain(), "{family}: the kernel's segment {i} needs nothing finished");
        assert_eq!(o[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        let (ou, ku) = (udp(&o[VNET_HDR_LEN..], "our segment"), udp(&k.bytes, "the kernel's segment"));
        assert_eq!(ou.payload, ku.payload, "{family}: segment {i} payload");
        assert_eq!(ou.length, ku.length, "{family}: segment {i} UDP length");
        assert_eq!(ou.ports, ku.ports, "{family}: segment {i} ports");
        assert_eq!(ou.checksum, ku.checksum, "{family}: segment {i} UDP checksum, bit for bit");
        assert_eq!(o.len() - VNET_HDR_LEN, k.bytes.len(), "{family}: segment {i} frame length");
        // IPv4 IDs count up from the super-frame's, on both sides.
        if let (Some(oid), Some(kid)) = (ou.ip_id, ku.ip_id) {
            assert_eq!(oid, id0.get_or_insert(oid).wrapping_add(i as u16), "{family}: our segment {i} IP ID");
            assert_eq!(kid, kid0.get_or_insert(kid).wrapping_add(i as u16), "{family}: kernel segment {i} IP ID");
        }
        joined.extend_from_slice(&ou.payload);
    }
    assert_eq!(joined, sent, "{family}: the segments carry the data sent");
}

/// Completes the checksum of A's partially checksummed datagram and compares with B's.
fn compare_checksum(family: &str, partial: &Frame, kernel: &Frame, sent: &[u8]) {
    let mut h = partial.hdr;
    assert!(!h.is_gso());
    assert!(h.needs_csum(), "{family}: TAP A got a partial checksum");
    assert!(!kernel.hdr.needs_csum(), "{family}: TAP B got a complete checksum");
    let mut f = partial.bytes.clone();
    complete_csum(&mut h, &mut f).expect("complete_csum");
    assert!(!h.needs_csum());
    let (ou, ku) = (udp(&f, "our datagram"), udp(&kernel.bytes, "the kernel's datagram"));
    assert_eq!(ou.checksum, ku.checksum, "{family}: UDP checksum, bit for bit");
    assert_eq!((ou.length, ou.ports), (ku.length, ku.ports));
    assert_eq!(ou.payload, sent);
    assert_eq!(ku.payload, sent);
}

#[test]
fn software_offloads_match_the_kernels() {
    if !common::net_admin() {
        return;
    }
    // Deleted on drop, also when the test fails. The TAPs and sockets live
    // in the thread below and are closed when it ends, before that.
    let ns = Netns::new("offk");
    let name = ns.name.clone();
    let notes = match std::thread::spawn(move || run_in(&name)).join() {
        Ok(notes) => notes,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    for n in notes {
        println!("note: {n}");
    }
}
