#!/usr/bin/env python3
"""Writes the starting corpus of each fuzz target into fuzz/seeds/<target>/
(valid inputs in each harness's format, see fuzz/src/lib.rs). Run from the
repository top: python3 fuzz/make-seeds.py"""
import json, os, shutil, struct, zlib

OUT = "fuzz/seeds"

def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

def ipv4(src, dst, proto, payload, ttl=64, df=True):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000 if df else 0, ttl, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload

def udp(src, dst, sport, dport, payload):
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 17, len(u))
    c = csum(pseudo + u) or 0xFFFF
    return u[:6] + struct.pack("!H", c) + u[8:]

def eth(dst, src, etype, payload):
    return bytes(dst) + bytes(src) + struct.pack("!H", etype) + payload

BC = [0xFF] * 6
H1 = [2, 0, 0, 0, 1, 5]

def dhcp_msg(kind, mac, opts=b"", ciaddr=b"\0\0\0\0"):
    m = struct.pack("!BBBBIHH", 1, 1, 6, 0, 0x1234, 0, 0x8000) + ciaddr + b"\0" * 12
    m += bytes(mac) + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
    m += bytes([53, 1, kind]) + opts + b"\xff"
    return m

def arp_req(smac, sip, tip):
    return eth(BC, smac, 0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes(smac) + bytes(sip) + b"\0" * 6 + bytes(tip)).ljust(60, b"\0")

def icmp_echo(src, dst):
    body = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping" * 8
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return ipv4(src, dst, 1, body)

# gateway MACs are derived from the network name; frames to them are built by the fuzzer.
disc = dhcp_msg(1, H1, bytes([55, 3, 1, 3, 6]))
req = dhcp_msg(3, H1, bytes([50, 4, 10, 0, 0, 2, 54, 4, 10, 0, 0, 1]))

def lp(b):
    return struct.pack("<H", len(b)) + b

# frame_path: [now] then per frame [sel][vnet hdr if sel&0x80][u16 len][frame]
udp_frame = eth(BC, H1, 0x0800, ipv4([10, 1, 0, 5], [10, 2, 0, 7], 17, udp([10, 1, 0, 5], [10, 2, 0, 7], 4000, 7, b"x" * 40)))
tcp_payload = bytes(range(256)) * 16
tcp = struct.pack("!HHIIBBHHH", 1000, 2000, 7, 1, 0x50, 0x18, 65535, 0, 0) + tcp_payload
tcp_frame = eth(BC, H1, 0x0800, ipv4([10, 1, 0, 5], [10, 1, 0, 9], 6, tcp))
gso = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)
put("frame_path", "arp", b"\0" + b"\x00" + lp(arp_req(H1, [10, 1, 0, 5], [10, 1, 0, 1])))
put("frame_path", "routed_udp", b"\0" + b"\x40" + lp(udp_frame) + b"\x41" + lp(udp_frame))
put("frame_path", "tso_superframe", b"\0" + b"\x80" + gso + lp(tcp_frame))
put("frame_path", "l2_pair", b"\0" + b"\x04" + lp(eth(BC, [2, 0, 0, 0, 0, 5], 0x88b5, b"a" * 46)) + b"\x05" + lp(eth([2, 0, 0, 0, 0, 5], [2, 0, 0, 0, 0, 6], 0x88b5, b"b" * 46)))

# dhcp: per message [time step][u16 len][payload]
put("dhcp", "discover_request", b"\0" + lp(disc) + b"\1" + lp(dhcp_msg(3, H1, bytes([50, 4, 10, 0, 0, 2, 54, 4, 10, 0, 0, 1]))))
put("dhcp", "release_decline", b"\0" + lp(disc) + b"\0" + lp(req) + b"\1" + lp(dhcp_msg(7, H1, bytes([54, 4, 10, 0, 0, 1]), b"\x0a\0\0\x02")) + b"\1" + lp(dhcp_msg(4, H1, bytes([50, 4, 10, 0, 0, 3, 54, 4, 10, 0, 0, 1]))))
put("dhcp", "inform_rapid", b"\0" + lp(dhcp_msg(8, H1, b"", b"\x0a\0\0\x09")) + b"\0" + lp(dhcp_msg(1, [2, 0, 0, 0, 0, 0x11], bytes([80, 0, 61, 7, 1, 2, 0, 0, 0, 0, 0x11]))))

# gateway: [sel: reason = sel % 5, network = (sel >> 4) % 4 (n, m, l, none), port bit 0][extra][u16 len][frame]
dhcp_frame = eth(BC, H1, 0x0800, ipv4([0, 0, 0, 0], [255, 255, 255, 255], 17, udp([0, 0, 0, 0], [255, 255, 255, 255], 68, 67, disc)))
put("gateway", "arp_and_dhcp", b"\x00" + lp(arp_req(H1, [10, 1, 0, 5], [10, 1, 0, 1])) + b"\x00" + lp(dhcp_frame))
put("gateway", "icmp_echo", b"\x04" + lp(eth(BC, H1, 0x0800, icmp_echo([10, 1, 0, 5], [10, 1, 0, 1]))))
put("gateway", "errors", b"\x01" + lp(udp_frame) + b"\x06" + lp(udp_frame) + b"\x04" + struct.pack("<H", 1400) + lp(udp_frame))
put("gateway", "unresolved_then_arp_reply", b"\x03\x01" + bytes([9, 0, 2, 10]) + lp(udp_frame) + b"\x10" + lp(eth(BC, [2, 0, 0, 0, 2, 9], 0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + bytes([2, 0, 0, 0, 2, 9, 10, 2, 0, 9]) + bytes(6) + bytes([10, 2, 0, 1])).ljust(60, b"\0")))

# vhost_chains: [size exp][flags][4 x u16 rx sizes][memory image]
def chains(flags, n_tx):
    mem = bytearray(0x3000)
    for i in range(n_tx):
        addr = 0x2100 + i * 0x100
        struct.pack_into("<QIHH", mem, i * 16, addr, 12 + 60, 0, 0)
        mem[addr + 12:addr + 12 + 14] = bytes(BC + H1) + b"\x88\xb5"
    # avail ring at 0x1000: flags, idx, ring[]
    struct.pack_into("<HH", mem, 0x1000, 0, n_tx)
    for i in range(n_tx):
        struct.pack_into("<H", mem, 0x1004 + 2 * i, i)
    return bytes([4, flags]) + struct.pack("<4H", 60, 1500, 0, 9000) + bytes(mem)
put("vhost_chains", "two_tx_version1", chains(0x01, 2))
put("vhost_chains", "mrg_event_idx", chains(0x07, 3))
put("vhost_chains", "legacy_header", chains(0x00, 1))
# A chain of two descriptors (NEXT), and an indirect table.
m = bytearray(chains(0x01, 0)[10:])
struct.pack_into("<QIHH", m, 0, 0x2100, 12, 1, 1)
struct.pack_into("<QIHH", m, 16, 0x2200, 60, 0, 0)
struct.pack_into("<QIHH", m, 32, 0x2400, 32, 4, 0)  # indirect: 2 descriptors at 0x2400
struct.pack_into("<QIHH", m, 0x2400, 0x2100, 12, 1, 1)
struct.pack_into("<QIHH", m, 0x2410, 0x2200, 60, 0, 0)
struct.pack_into("<HHHH", m, 0x1000, 0, 2, 0, 2)
put("vhost_chains", "next_and_indirect", bytes([4, 0x01]) + struct.pack("<4H", 60, 60, 60, 60) + bytes(m))

# vhost_relay: vhost-user messages (request u32, flags u32, size u32, body)
def vu(req, flags, body=b""):
    return struct.pack("<III", req, flags, len(body)) + body
enable = lambda i: struct.pack("<II", i, 1)
put("vhost_relay", "early_enable", vu(1, 1) + vu(15, 1) + vu(16, 1, struct.pack("<Q", 0x8001)) + vu(18, 9, enable(0)) + vu(18, 1, enable(1)) + vu(2, 1, struct.pack("<Q", 1 << 30 | 1 << 32)) + vu(18, 9, enable(0)))
put("vhost_relay", "mem_table", vu(5, 1, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0x10000, 0x7f0000000000, 0)) + vu(8, 1, struct.pack("<II", 0, 256)))

# control_json: one request line each
for i, r in enumerate([
    {"op": "ping"},
    {"op": "network_create", "name": "red", "subnet": "10.89.1.0/24", "gateway": "10.89.1.1", "mtu": 1400},
    {"op": "network_reserve", "network": "red", "mac": "02:00:00:00:00:01", "ip": "10.89.1.9"},
    {"op": "router_create", "name": "r"},
    {"op": "route_add", "router": "r", "prefix": "10.9.0.0/16", "via": "10.89.1.9"},
    {"op": "connect_vhost", "network": "red", "socket": "/tmp/x.sock", "client": False, "queues": 2},
    {"op": "port_set", "network": "red", "netns": "ns1", "delay_ms": 10},
    {"op": "fdb_show", "network": "red"},
    {"op": "lease_ls"},
    {"op": "shutdown"},
]):
    put("control_json", "req%02d" % i, (json.dumps(r) + "\n").encode())

# journal: [sel: bit 0 = snapshot piece first, bit 1 = journal.next piece next][u16 len][snapshot][u16 len][next][journal]
def frame(rec):
    p = json.dumps(rec, separators=(",", ":")).encode()
    return struct.pack("<II", len(p), zlib.crc32(p)) + p
lease = {"network": "n", "record": {"lease": {"key": {"Mac": [2, 0, 0, 0, 1, 5]}, "mac": [2, 0, 0, 0, 1, 5], "addr": "10.1.0.5", "hostname": "h1", "expires": 1900000000, "state": "bound"}}}
forget = {"network": "n", "record": {"forget": {"Id": [1, 2, 3]}}}
quar = {"network": "m", "record": {"quarantine": {"addr": "10.2.0.4", "until": 1900000000}}}
j = frame(lease) + frame(quar) + frame(forget)
put("journal", "clean", b"\0" + j)
put("journal", "torn_tail", b"\0" + j + frame(lease)[:13])
snap = frame(lease)
put("journal", "snapshot_and_journal", b"\1" + struct.pack("<H", len(snap)) + snap + frame(quar))
nxt = frame(forget) + frame(lease)[:9]
put("journal", "background_compaction", b"\3" + struct.pack("<H", len(snap)) + snap + struct.pack("<H", len(nxt)) + nxt + frame(quar))

# topology: the shipped examples
for f in sorted(os.listdir("examples")):
    if f.endswith(".toml"):
        shutil.copy(os.path.join("examples", f), os.path.join(OUT, "topology", f)) if os.path.isdir(os.path.join(OUT, "topology")) else (os.makedirs(os.path.join(OUT, "topology")), shutil.copy(os.path.join("examples", f), os.path.join(OUT, "topology", f)))
