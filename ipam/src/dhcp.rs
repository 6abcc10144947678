//! The DHCPv4 server logic (RFC 2131; options per RFC 2132; Rapid Commit per
//! RFC 4039; client identifiers of any form per RFC 4361). Sans-I/O: a DHCP
//! message (the UDP payload) and the time go in; a reply, where to send it,
//! and the lease records to make durable *before* sending come out.
//!
//! Parsing and emission use smoltcp's wire types (`DhcpPacket` for the fixed
//! fields, `DhcpRepr` to emit). Options are read from the raw option area by
//! our own walk, because `DhcpRepr::parse` rejects client identifiers that
//! are not 7-byte Ethernet ones (RFC 4361 DUIDs, for example) and stops
//! silently at an option that overruns the packet, which we count as
//! malformed instead. Option overload (option 52, options in `sname`/`file`)
//! is not supported: those fields are ignored.
//!
//! Read RFC 2131 §4.3 (server behaviour) and §4.1 (where replies go) first.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use crate::lease::{ClientKey, LeaseError, LeaseState, Leases, Record};

// Option codes (RFC 2132 unless noted).
const OPT_PAD: u8 = 0;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_BROADCAST: u8 = 28;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_T1: u8 = 58;
const OPT_T2: u8 = 59;
const OPT_CLIENT_ID: u8 = 61;
/// RFC 4039 §4.
const OPT_RAPID_COMMIT: u8 = 80;
const OPT_END: u8 = 255;

/// The fixed BOOTP header before the options (RFC 2131 §2), magic cookie included.
const OPTIONS_START: usize = 240;
/// Replies are padded to the BOOTP minimum message size (RFC 1542 §2.1).
const MIN_REPLY: usize = 300;
const MAGIC: u32 = 0x6382_5363;

/// Why a message was dropped without a reply. Counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpDrop {
    /// Shorter than the fixed header, or an option runs past the end.
    Truncated,
    BadMagic,
    /// Not Ethernet (htype 1, hlen 6).
    NotEthernet,
    /// A BOOTREPLY, or no / an invalid message type option.
    BadMessage,
    /// A message type a server does not handle (OFFER, ACK, NAK from a client).
    Unexpected,
    /// No address left to offer.
    Exhausted,
    /// A REQUEST for another server, or about a lease we do not know.
    NotForUs,
    /// A new client whose hardware address already holds
    /// `DhcpConfig::per_mac_cap` addresses (DHCP starvation from one port).
    PerPortCap,
}

impl DhcpDrop {
    pub fn name(self) -> &'static str {
        match self {
            DhcpDrop::Truncated => "truncated",
            DhcpDrop::BadMagic => "bad_magic",
            DhcpDrop::NotEthernet => "not_ethernet",
            DhcpDrop::BadMessage => "bad_message",
            DhcpDrop::Unexpected => "unexpected",
            DhcpDrop::Exhausted => "exhausted",
            DhcpDrop::NotForUs => "not_for_us",
            DhcpDrop::PerPortCap => "per_port_cap",
        }
    }
}

/// A client message, as far as the server needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: DhcpMessageType,
    pub xid: u32,
    pub broadcast: bool,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    /// Option 61, raw (type byte included).
    pub client_id: Option<&'a [u8]>,
    pub hostname: Option<&'a str>,
    pub params: &'a [u8],
    pub rapid_commit: bool,
}

impl Message<'_> {
    pub fn key(&self) -> ClientKey {
        ClientKey::new(self.client_id, self.chaddr)
    }
}

fn ip4(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

/// Parses a client message (checked: every length is verified).
pub fn parse(payload: &[u8]) -> Result<Message<'_>, DhcpDrop> {
    if payload.len() < OPTIONS_START {
        return Err(DhcpDrop::Truncated);
    }
    let p = DhcpPacket::new_checked(payload).map_err(|_| DhcpDrop::Truncated)?;
    if p.magic_number() != MAGIC {
        return Err(DhcpDrop::BadMagic);
    }
    if payload[1] != 1 || p.hardware_len() != 6 {
        return Err(DhcpDrop::NotEthernet);
    }
    if payload[0] != 1 {
        return Err(DhcpDrop::BadMessage); // op must be BOOTREQUEST
    }
    let mut m = Message {
        kind: DhcpMessageType::Unknown(0),
        xid: p.transaction_id(),
        broadcast: payload[10] & 0x80 != 0,
        ciaddr: p.client_ip(),
        giaddr: p.relay_agent_ip(),
        chaddr: p.client_hardware_address().0,
        requested_ip: None,
        server_id: None,
        client_id: None,
        hostname: None,
        params: &[],
        rapid_commit: false,
    };
    let mut kind = None;
    let mut opts = &payload[OPTIONS_START..];
    loop {
        match opts.first().copied() {
            None | Some(OPT_END) => break,
            Some(OPT_PAD) => opts = &opts[1..],
            Some(code) => {
                let len = *opts.get(1).ok_or(DhcpDrop::Truncated)? as usize;
                let data = opts.get(2..2 + len).ok_or(DhcpDrop::Truncated)?;
                opts = &opts[2 + len..];
                match code {
                    OPT_MESSAGE_TYPE if len == 1 => kind = Some(DhcpMessageType::from(data[0])),
                    OPT_MESSAGE_TYPE => return Err(DhcpDrop::BadMessage),
                    OPT_REQUESTED_IP => m.requested_ip = ip4(data),
                    OPT_SERVER_ID => m.server_id = ip4(data),
                    // Keyed on its raw bytes, whatever the type (RFC 4361 §6.1).
                    OPT_CLIENT_ID if len >= 2 => m.client_id = Some(data),
                    OPT_HOSTNAME => m.hostname = std::str::from_utf8(data).ok().filter(|h| !h.is_empty()),
                    OPT_PARAMS => m.params = data,
                    OPT_RAPID_COMMIT => m.rapid_commit = true,
                    _ => {}
                }
            }
        }
    }
    m.kind = kind.ok_or(DhcpDrop::BadMessage)?;
    Ok(m)
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a relay agent (giaddr), UDP port 67.
    Relay(Ipv4Addr),
    /// Ethernet and IP broadcast, UDP port 68.
    Broadcast,
    /// To this MAC and IP, UDP port 68 (for a client without an address yet,
    /// without ARP: the client cannot answer it).
    Unicast { mac: [u8; 6], ip: Ipv4Addr },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: DhcpMessageType,
    /// The DHCP message (UDP payload).
    pub payload: Vec<u8>,
    pub dst: Destination,
}

/// What handling one message produced.
#[derive(Debug, Default)]
pub struct Handled {
    /// Make these durable before sending the reply.
    pub records: Vec<Record>,
    pub reply: Option<Reply>,
    pub dropped: Option<DhcpDrop>,
}

/// Per-network DHCP settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The server identifier and router: the network's gateway.
    pub server: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_secs: u32,
    /// How long a declined address is kept out of use.
    pub decline_secs: u64,
    /// Addresses held at once (offers and active leases) per client
    /// hardware address; 0: no cap. A client cycling client identifiers
    /// (RFC 2132 §9.14) behind one MAC gets no more than this; with port
    /// security a port's clients all carry the port's MAC, so this caps a port.
    pub per_mac_cap: u32,
}

/// The DHCP server of one network: its settings and its leases.
pub struct DhcpServer {
    pub cfg: DhcpConfig,
    pub leases: Leases,
}

impl DhcpServer {
    pub fn new(cfg: DhcpConfig, leases: Leases) -> DhcpServer {
        DhcpServer { cfg, leases }
    }

    /// Handles one client message (the UDP payload) at `now` (Unix seconds).
    pub fn handle(&mut self, payload: &[u8], now: u64) -> Handled {
        let m = match parse(payload) {
            Ok(m) => m,
            Err(d) => return Handled { dropped: Some(d), ..Handled::default() },
        };
        let key = m.key();
        let mut h = Handled::default();
        let binds = matches!(m.kind, DhcpMessageType::Discover | DhcpMessageType::Request);
        if binds && self.over_cap(&key, m.chaddr, now) {
            h.dropped = Some(DhcpDrop::PerPortCap);
            return h;
        }
        match m.kind {
            DhcpMessageType::Discover => match self.leases.offer(&key, m.chaddr, m.requested_ip, now) {
                // RFC 4039 §4: with Rapid Commit the server commits and answers ACK at once.
                Ok(addr) if m.rapid_commit => self.commit(&m, &key, addr, now, &mut h),
                Ok(addr) => h.reply = Some(self.reply(&m, DhcpMessageType::Offer, addr, false)),
                Err(_) => h.dropped = Some(DhcpDrop::Exhausted),
            },
            DhcpMessageType::Request => {
                // §4.3.2: SELECTING carries a server identifier (ours or another
                // server's); INIT-REBOOT a requested address; RENEWING and
                // REBINDING only ciaddr.
                if m.server_id.is_some_and(|s| s != self.cfg.server) {
                    // The client chose another server: withdraw our offer (§4.3.2).
                    self.leases.withdraw_offer(&key);
                    h.dropped = Some(DhcpDrop::NotForUs);
                    return h;
                }
                let addr = match (m.server_id, m.requested_ip) {
                    (Some(_), Some(a)) => a,
                    (Some(_), None) => {
                        h.dropped = Some(DhcpDrop::BadMessage);
                        return h;
                    }
                    (None, Some(a)) => a,
                    (None, None) if !m.ciaddr.is_unspecified() => m.ciaddr,
                    (None, None) => {
                        h.dropped = Some(DhcpDrop::BadMessage);
                        return h;
                    }
                };
                if !self.cfg.subnet.contains(&addr) {
                    // Wrong network (moved to another segment): NAK, §4.3.2.
                    h.reply = Some(self.nak(&m));
                    return h;
                }
                self.commit(&m, &key, addr, now, &mut h);
            }
            DhcpMessageType::Decline => {
                if let Some(a) = m.requested_ip {
                    h.records = self.leases.decline(&key, a, now, self.cfg.decline_secs);
                }
            }
            DhcpMessageType::Release => {
                if let Some(r) = self.leases.release(&key, m.ciaddr, now) {
                    h.records.push(r);
                }
            }
            DhcpMessageType::Inform => {
                // §4.3.5: configuration only; no lease, no yiaddr, unicast to ciaddr.
                h.reply = Some(self.reply(&m, DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED, false));
            }
            _ => h.dropped = Some(DhcpDrop::Unexpected),
        }
        h
    }

    /// Whether `key`, a client without an address of its own yet, would take
    /// one more address for hardware address `mac` than the cap allows.
    /// A client that holds an address now (an offer or an active lease:
    /// renewals, a repeated DISCOVER) is never refused.
    fn over_cap(&self, key: &ClientKey, mac: [u8; 6], now: u64) -> bool {
        let cap = self.cfg.per_mac_cap as usize;
        cap > 0
            && self.leases.get(key).is_none_or(|l| !l.is_active(now) && l.state != LeaseState::Offered)
            && self.leases.held_by_others(mac, key, now) >= cap
    }

    /// Binds `addr` and answers ACK, or NAK when it is not the client's.
    fn commit(&mut self, m: &Message, key: &ClientKey, addr: Ipv4Addr, now: u64, h: &mut Handled) {
        let secs = u64::from(self.cfg.lease_secs);
        match self.leases.bind(key, m.chaddr, addr, secs, m.hostname.map(str::to_string), now) {
            Ok(r) => {
                h.records.push(r);
                h.reply = Some(self.reply(
                    m,
                    DhcpMessageType::Ack,
                    addr,
                    m.rapid_commit && m.kind == DhcpMessageType::Discover,
                ));
            }
            Err(LeaseError::NotYours(_)) => h.reply = Some(self.nak(m)),
            Err(LeaseError::Exhausted) => h.dropped = Some(DhcpDrop::Exhausted),
        }
    }

    fn nak(&self, m: &Message) -> Reply {
        let mut r = self.emit(m, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED, false);
        // §4.1: a NAK is broadcast unless it goes through a relay.
        r.dst = if m.giaddr.is_unspecified() { Destination::Broadcast } else { Destination::Relay(m.giaddr) };
        r
    }

    fn reply(&self, m: &Message, kind: DhcpMessageType, yiaddr: Ipv4Addr, rapid: bool) -> Reply {
        let mut r = self.emit(m, kind, yiaddr, rapid);
        // §4.1: relay first; then a client that has an address (ciaddr);
        // then the broadcast bit; else unicast to chaddr/yiaddr without ARP.
        r.dst = if !m.giaddr.is_unspecified() {
            Destination::Relay(m.giaddr)
        } else if !m.ciaddr.is_unspecified() {
            Destination::Unicast { mac: m.chaddr, ip: m.ciaddr }
        } else if m.broadcast || yiaddr.is_unspecified() {
            Destination::Broadcast
        } else {
            Destination::Unicast { mac: m.chaddr, ip: yiaddr }
        };
        r
    }

    fn emit(&self, m: &Message, kind: DhcpMessageType, yiaddr: Ipv4Addr, rapid: bool) -> Reply {
        let cfg = &self.cfg;
        let wants = |code: u8| m.params.contains(&code);
        let with_config = kind != DhcpMessageType::Nak;
        // OFFER and ACK carry lease times; an ACK to INFORM (no yiaddr) and a NAK do not.
        let with_lease = match kind {
            DhcpMessageType::Offer => true,
            DhcpMessageType::Ack => !yiaddr.is_unspecified(),
            _ => false,
        };
        let lease = cfg.lease_secs;
        // T1 = 50 % and T2 = 87.5 % of the lease (§4.4.5 defaults).
        let t1 = (lease / 2).to_be_bytes();
        let t2 = (lease / 8 * 7).to_be_bytes();
        let mtu = cfg.mtu.map(u16::to_be_bytes);
        let bcast = cfg.subnet.broadcast().octets();
        let mut extra: Vec<DhcpOption> = Vec::new();
        if with_lease {
            extra.push(DhcpOption { kind: OPT_T1, data: &t1 });
            extra.push(DhcpOption { kind: OPT_T2, data: &t2 });
        }
        if with_config {
            if let (Some(d), true) = (&cfg.domain, wants(OPT_DOMAIN)) {
                extra.push(DhcpOption { kind: OPT_DOMAIN, data: d.as_bytes() });
            }
            if let (Some(mtu), true) = (&mtu, wants(OPT_MTU)) {
                extra.push(DhcpOption { kind: OPT_MTU, data: mtu });
            }
            if wants(OPT_BROADCAST) {
                extra.push(DhcpOption { kind: OPT_BROADCAST, data: &bcast });
            }
        }
        // RFC 6842: a server returns the client identifier it was given.
        if let Some(id) = m.client_id {
            extra.push(DhcpOption { kind: OPT_CLIENT_ID, data: id });
        }
        if rapid {
            extra.push(DhcpOption { kind: OPT_RAPID_COMMIT, data: &[] });
        }
        let dns = (with_config && !cfg.dns.is_empty() && wants(OPT_DNS)).then(|| {
            let mut v = heapless::Vec::new();
            for d in cfg.dns.iter().take(smoltcp::wire::DHCP_MAX_DNS_SERVER_COUNT) {
                let _ = v.push(*d);
            }
            v
        });
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: m.xid,
            secs: 0,
            client_hardware_address: EthernetAddress(m.chaddr),
            client_ip: if kind == DhcpMessageType::Nak { Ipv4Addr::UNSPECIFIED } else { m.ciaddr },
            your_ip: yiaddr,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: with_config.then_some(cfg.server),
            subnet_mask: with_config.then(|| cfg.subnet.netmask()),
            relay_agent_ip: m.giaddr,
            broadcast: m.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(cfg.server),
            parameter_request_list: None,
            dns_servers: dns,
            max_size: None,
            lease_duration: with_lease.then_some(lease),
            renew_duration: None,
            rebind_duration: None,
            additional_options: &extra,
        };
        let mut payload = vec![0u8; repr.buffer_len().max(MIN_REPLY)];
        let mut packet = DhcpPacket::new_unchecked(&mut payload[..]);
        repr.emit(&mut packet).expect("the buffer is sized by buffer_len");
        Reply { kind, payload, dst: Destination::Broadcast }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;
    const OPT_SUBNET_MASK: u8 = 1;
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];

    fn server() -> DhcpServer {
        let subnet: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let cfg = DhcpConfig {
            server: SERVER,
            subnet,
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            domain: Some("lab.test".into()),
            mtu: Some(1400),
            lease_secs: 3600,
            decline_secs: 600,
            per_mac_cap: 0,
        };
        DhcpServer::new(cfg, Leases::new(subnet, subnet, [SERVER]))
    }

    /// Builds a client message the way udhcpc/dhclient do.
    struct Msg {
        kind: u8,
        ciaddr: Ipv4Addr,
        broadcast: bool,
        opts: Vec<(u8, Vec<u8>)>,
        mac: [u8; 6],
    }

    impl Msg {
        fn new(kind: u8) -> Msg {
            Msg { kind, ciaddr: Ipv4Addr::UNSPECIFIED, broadcast: false, opts: vec![], mac: MAC }
        }
        fn opt(mut self, code: u8, data: &[u8]) -> Msg {
            self.opts.push((code, data.to_vec()));
            self
        }
        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; OPTIONS_START];
            b[0] = 1;
            b[1] = 1;
            b[2] = 6;
            b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            if self.broadcast {
                b[10] = 0x80;
            }
            b[12..16].copy_from_slice(&self.ciaddr.octets());
            b[28..34].copy_from_slice(&self.mac);
            b[236..240].copy_from_slice(&MAGIC.to_be_bytes());
            b.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, self.kind]);
            for (c, d) in &self.opts {
                b.push(*c);
                b.push(d.len() as u8);
                b.extend_from_slice(d);
            }
            b.push(OPT_END);
            b
        }
    }

    /// Reads back a reply with smoltcp's parser and our option walk.
    fn options(payload: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut v = vec![];
        let mut o = &payload[OPTIONS_START..];
        while let Some(&c) = o.first() {
            if c == OPT_END {
                break;
            }
            if c == OPT_PAD {
                o = &o[1..];
                continue;
            }
            let l = o[1] as usize;
            v.push((c, o[2..2 + l].to_vec()));
            o = &o[2 + l..];
        }
        v
    }

    fn opt(payload: &[u8], code: u8) -> Option<Vec<u8>> {
        options(payload).into_iter().find(|(c, _)| *c == code).map(|(_, d)| d)
    }

    fn yiaddr(r: &Reply) -> Ipv4Addr {
        DhcpPacket::new_checked(&r.payload[..]).unwrap().your_ip()
    }

    #[test]
    fn full_dora_with_the_options_clients_ask_for() {
        let mut s = server();
        let prl = [1, 3, 6, 12, 15, 28, 42, 26];
        let h = s.handle(&Msg::new(1).opt(OPT_PARAMS, &prl).opt(OPT_HOSTNAME, b"c1").bytes(), NOW);
        let offer = h.reply.unwrap();
        assert_eq!(offer.kind, DhcpMessageType::Offer);
        assert!(h.records.is_empty(), "an offer is no commitment");
        let a = yiaddr(&offer);
        assert!(s.cfg.subnet.contains(&a) && a != SERVER);
        // No broadcast flag: unicast to chaddr + yiaddr (§4.1), no ARP.
        assert_eq!(offer.dst, Destination::Unicast { mac: MAC, ip: a });
        assert!(offer.payload.len() >= MIN_REPLY);
        // smoltcp's own parser reads our reply.
        let p = DhcpPacket::new_checked(&offer.payload[..]).unwrap();
        let repr = DhcpRepr::parse(&p).unwrap();
        assert_eq!(repr.message_type, DhcpMessageType::Offer);
        assert_eq!(repr.server_identifier, Some(SERVER));
        assert_eq!(repr.router, Some(SERVER));
        assert_eq!(repr.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(repr.lease_duration, Some(3600));
        assert_eq!(repr.renew_duration, Some(1800));
        assert_eq!(repr.rebind_duration, Some(3150));
        assert_eq!(repr.dns_servers.unwrap().as_slice(), &[Ipv4Addr::new(10, 0, 0, 53)]);
        assert_eq!(opt(&offer.payload, OPT_DOMAIN).unwrap(), b"lab.test");
        assert_eq!(opt(&offer.payload, OPT_MTU).unwrap(), 1400u16.to_be_bytes());
        assert_eq!(opt(&offer.payload, OPT_BROADCAST).unwrap(), [10, 0, 0, 255]);

        let h = s.handle(
            &Msg::new(3)
                .opt(OPT_SERVER_ID, &SERVER.octets())
                .opt(OPT_REQUESTED_IP, &a.octets())
                .opt(OPT_HOSTNAME, b"c1")
                .bytes(),
            NOW,
        );
        let ack = h.reply.unwrap();
        assert_eq!(ack.kind, DhcpMessageType::Ack);
        assert_eq!(yiaddr(&ack), a);
        assert_eq!(h.records.len(), 1, "the ACK carries a record to make durable first");
        let lease = s.leases.get(&ClientKey::Mac(MAC)).unwrap();
        assert_eq!(lease.hostname.as_deref(), Some("c1"));
        assert_eq!(lease.expires, NOW + 3600);
    }

    #[test]
    fn options_not_asked_for_are_left_out() {
        let mut s = server();
        let h = s.handle(&Msg::new(1).opt(OPT_PARAMS, &[1, 3]).bytes(), NOW);
        let p = h.reply.unwrap().payload;
        assert!(opt(&p, OPT_DNS).is_none() && opt(&p, OPT_DOMAIN).is_none() && opt(&p, OPT_MTU).is_none());
        assert!(opt(&p, OPT_SUBNET_MASK).is_some());
    }

    #[test]
    fn renewing_and_rebinding_keep_the_address() {
        let mut s = server();
        let a = yiaddr(&s.handle(&Msg::new(1).bytes(), NOW).reply.unwrap());
        s.handle(&Msg::new(3).opt(OPT_SERVER_ID, &SERVER.octets()).opt(OPT_REQUESTED_IP, &a.octets()).bytes(), NOW);
        // RENEWING/REBINDING: ciaddr set, no server id, no requested address; reply unicast to ciaddr.
        let mut renew = Msg::new(3);
        renew.ciaddr = a;
        let h = s.handle(&renew.bytes(), NOW + 1800);
        let ack = h.reply.unwrap();
        assert_eq!(ack.kind, DhcpMessageType::Ack);
        assert_eq!(yiaddr(&ack), a);
        assert_eq!(ack.dst, Destination::Unicast { mac: MAC, ip: a });
        assert_eq!(s.leases.get(&ClientKey::Mac(MAC)).unwrap().expires, NOW + 1800 + 3600);
    }

    #[test]
    fn init_reboot_gets_ack_for_its_address_and_nak_for_a_foreign_one() {
        let mut s = server();
        // A client rebooting with an address from before (a server that lost state, or ours).
        let h = s.handle(&Msg::new(3).opt(OPT_REQUESTED_IP, &[10, 0, 0, 42]).bytes(), NOW);
        assert_eq!(h.reply.unwrap().kind, DhcpMessageType::Ack);
        // Another client asking for it: NAK, broadcast.
        let mut other = Msg::new(3).opt(OPT_REQUESTED_IP, &[10, 0, 0, 42]);
        other.mac = [2, 0, 0, 0, 0, 0x22];
        let nak = s.handle(&other.bytes(), NOW).reply.unwrap();
        assert_eq!(nak.kind, DhcpMessageType::Nak);
        assert_eq!(nak.dst, Destination::Broadcast);
        // An address from another network: NAK.
        let nak = s.handle(&Msg::new(3).opt(OPT_REQUESTED_IP, &[192, 168, 9, 9]).bytes(), NOW).reply.unwrap();
        assert_eq!(nak.kind, DhcpMessageType::Nak);
    }

    #[test]
    fn a_request_for_another_server_is_ignored() {
        let mut s = server();
        let a = yiaddr(&s.handle(&Msg::new(1).bytes(), NOW).reply.unwrap());
        let h =
            s.handle(&Msg::new(3).opt(OPT_SERVER_ID, &[10, 0, 0, 2]).opt(OPT_REQUESTED_IP, &a.octets()).bytes(), NOW);
        assert!(h.reply.is_none());
        assert_eq!(h.dropped, Some(DhcpDrop::NotForUs));
        assert!(s.leases.get(&ClientKey::Mac(MAC)).is_none(), "the offer is withdrawn");
        assert_eq!(s.leases.usage().0, 1, "only the server's own address is in use");
    }

    #[test]
    fn rapid_commit_answers_discover_with_ack() {
        let mut s = server();
        let h = s.handle(&Msg::new(1).opt(OPT_RAPID_COMMIT, &[]).bytes(), NOW);
        let ack = h.reply.unwrap();
        assert_eq!(ack.kind, DhcpMessageType::Ack);
        assert!(opt(&ack.payload, OPT_RAPID_COMMIT).is_some());
        assert_eq!(h.records.len(), 1);
    }

    #[test]
    fn broadcast_flag_gets_a_broadcast_reply() {
        let mut s = server();
        let mut m = Msg::new(1);
        m.broadcast = true;
        assert_eq!(s.handle(&m.bytes(), NOW).reply.unwrap().dst, Destination::Broadcast);
    }

    #[test]
    fn rfc4361_and_odd_client_identifiers_key_the_lease_and_are_echoed() {
        let mut s = server();
        // Type 255, IAID (4) + DUID-LLT (14): 19 bytes, as systemd-networkd sends.
        let duid: Vec<u8> = [255, 0, 0, 0, 1, 0, 1, 0, 1, 0x2a, 0x2b, 0x2c, 0x2d, 2, 0, 0, 0, 0, 0x11].to_vec();
        let h = s.handle(&Msg::new(1).opt(OPT_CLIENT_ID, &duid).bytes(), NOW);
        let offer = h.reply.unwrap();
        assert_eq!(opt(&offer.payload, OPT_CLIENT_ID).unwrap(), duid);
        let a = yiaddr(&offer);
        s.handle(
            &Msg::new(3)
                .opt(OPT_CLIENT_ID, &duid)
                .opt(OPT_SERVER_ID, &SERVER.octets())
                .opt(OPT_REQUESTED_IP, &a.octets())
                .bytes(),
            NOW,
        );
        assert_eq!(s.leases.get(&ClientKey::Id(duid)).unwrap().addr, a);
        // A 7-byte identifier that is not Ethernet-typed (smoltcp's DhcpRepr rejects it).
        let odd = [0x00, b'h', b'o', b's', b't', b'-', b'7'];
        let h = s.handle(&Msg::new(1).opt(OPT_CLIENT_ID, &odd).bytes(), NOW);
        assert_eq!(h.reply.unwrap().kind, DhcpMessageType::Offer);
    }

    #[test]
    fn release_and_decline() {
        let mut s = server();
        let a = yiaddr(&s.handle(&Msg::new(1).opt(OPT_RAPID_COMMIT, &[]).bytes(), NOW).reply.unwrap());
        let mut rel = Msg::new(7).opt(OPT_SERVER_ID, &SERVER.octets());
        rel.ciaddr = a;
        let h = s.handle(&rel.bytes(), NOW + 5);
        assert!(h.reply.is_none(), "RELEASE has no reply");
        assert_eq!(h.records.len(), 1);
        let h = s.handle(
            &Msg::new(4).opt(OPT_SERVER_ID, &SERVER.octets()).opt(OPT_REQUESTED_IP, &a.octets()).bytes(),
            NOW + 6,
        );
        assert!(h.reply.is_none());
        assert_eq!(h.records.len(), 2, "forget + quarantine");
        // The declined address is not offered again, even to the same client.
        assert_ne!(yiaddr(&s.handle(&Msg::new(1).bytes(), NOW + 7).reply.unwrap()), a);
    }

    #[test]
    fn one_mac_cycling_client_ids_is_capped_and_the_pool_stays_for_others() {
        let mut s = server();
        s.cfg.per_mac_cap = 3;
        let id = |i: u8| [1, 2, 0, 0, 0, 0, i];
        let mut granted = 0;
        for i in 0..50 {
            let h = s.handle(&Msg::new(1).opt(OPT_CLIENT_ID, &id(i)).opt(OPT_RAPID_COMMIT, &[]).bytes(), NOW);
            match h.dropped {
                None => granted += 1,
                Some(d) => assert_eq!(d, DhcpDrop::PerPortCap, "client {i}"),
            }
        }
        assert_eq!(granted, 3, "three addresses for one hardware address");
        // A client already holding one renews as before.
        let a = s.leases.get(&ClientKey::Id(id(0).to_vec())).unwrap().addr;
        let renew = s.handle(&Msg::new(3).opt(OPT_CLIENT_ID, &id(0)).opt(OPT_REQUESTED_IP, &a.octets()).bytes(), NOW);
        assert_eq!(renew.reply.unwrap().kind, DhcpMessageType::Ack);
        // Another port's client still gets an address.
        let mut other = Msg::new(1);
        other.mac = [2, 0, 0, 0, 0, 0x22];
        assert_eq!(s.handle(&other.bytes(), NOW).reply.unwrap().kind, DhcpMessageType::Offer);
        // Offers run out after their hold: the cap counts what is held now.
        let later = NOW + crate::lease::OFFER_HOLD_SECS + 1;
        let h = s.handle(&Msg::new(1).opt(OPT_CLIENT_ID, &id(49)).bytes(), later);
        assert_eq!(h.dropped, Some(DhcpDrop::PerPortCap), "three rapid-commit leases are still bound");
        let mut rel = Msg::new(7).opt(OPT_CLIENT_ID, &id(0)).opt(OPT_SERVER_ID, &SERVER.octets());
        rel.ciaddr = a;
        s.handle(&rel.bytes(), later);
        assert_eq!(
            s.handle(&Msg::new(1).opt(OPT_CLIENT_ID, &id(49)).bytes(), later).dropped,
            None,
            "a release frees a place"
        );
    }

    #[test]
    fn inform_gets_configuration_without_a_lease() {
        let mut s = server();
        let mut m = Msg::new(8).opt(OPT_PARAMS, &[1, 3, 6]);
        m.ciaddr = Ipv4Addr::new(10, 0, 0, 99);
        let h = s.handle(&m.bytes(), NOW);
        let r = h.reply.unwrap();
        assert_eq!(r.kind, DhcpMessageType::Ack);
        assert_eq!(yiaddr(&r), Ipv4Addr::UNSPECIFIED);
        assert!(opt(&r.payload, 51).is_none());
        assert_eq!(r.dst, Destination::Unicast { mac: MAC, ip: Ipv4Addr::new(10, 0, 0, 99) });
        assert!(h.records.is_empty());
    }

    #[test]
    fn exhaustion_gives_no_offer() {
        let subnet: Ipv4Net = "10.0.0.0/30".parse().unwrap(); // .1 (server) and .2
        let mut s = server();
        s.cfg.subnet = subnet;
        s.leases = Leases::new(subnet, subnet, [SERVER]);
        assert!(s.handle(&Msg::new(1).opt(OPT_RAPID_COMMIT, &[]).bytes(), NOW).reply.is_some());
        let mut m = Msg::new(1);
        m.mac = [2, 0, 0, 0, 0, 0x33];
        let h = s.handle(&m.bytes(), NOW);
        assert!(h.reply.is_none());
        assert_eq!(h.dropped, Some(DhcpDrop::Exhausted));
    }

    #[test]
    fn malformed_messages_are_dropped_by_reason() {
        let mut s = server();
        let good = Msg::new(1).opt(OPT_HOSTNAME, b"x").bytes();
        let mut cases: Vec<(Vec<u8>, DhcpDrop)> = vec![
            (good[..100].to_vec(), DhcpDrop::Truncated),
            (good[..good.len() - 3].to_vec(), DhcpDrop::Truncated), // the hostname option overruns
        ];
        let mut bad_magic = good.clone();
        bad_magic[236] = 0;
        cases.push((bad_magic, DhcpDrop::BadMagic));
        let mut hlen = good.clone();
        hlen[2] = 16;
        cases.push((hlen, DhcpDrop::NotEthernet));
        let mut reply_op = good.clone();
        reply_op[0] = 2;
        cases.push((reply_op, DhcpDrop::BadMessage));
        let mut no_type = good.clone();
        no_type[240] = OPT_PAD;
        no_type[241] = OPT_PAD;
        no_type[242] = OPT_PAD;
        cases.push((no_type, DhcpDrop::BadMessage));
        cases.push((Msg::new(2).bytes(), DhcpDrop::Unexpected));
        for (bytes, why) in cases {
            let h = s.handle(&bytes, NOW);
            assert!(h.reply.is_none() && h.records.is_empty());
            assert_eq!(h.dropped, Some(why));
        }
        // Random garbage of every length never panics.
        let mut x: u64 = 7;
        for len in 0..600 {
            let mut b = good.clone();
            b.resize(len.max(1), 0);
            for byte in b.iter_mut().skip(236.min(len)) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            let _ = s.handle(&b, NOW);
        }
    }
}
