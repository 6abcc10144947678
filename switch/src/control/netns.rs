//! Network namespaces and the interfaces tapyard puts into them.
//!
//! A namespace is named the way `connect` accepts it: a name under
//! `/run/netns` (what `ip netns add` makes), a path to a namespace file
//! (`/proc/123/ns/net`, a bind mount), or `pid:N`. It is identified by the
//! device and inode of that file, so a namespace deleted and re-created under
//! the same name is recognised as a different one.
//!
//! A container's TAP is made inside the container's namespace, by a
//! short-lived thread that enters it ([`in_netns`]), so no daemon thread
//! ever stays in a container's namespace: the thread opens the queues with
//! the final interface name, then sets MAC, MTU, IFF_UP, address and
//! default route over a NETLINK_ROUTE socket opened there. Making it in the
//! daemon's namespace and moving it in would cost a `dev_change_net_namespace`,
//! which waits for RCU and was most of a connect's time. The queue fds then
//! pin the namespace, so its deletion is noticed by polling ([`Netns::check`],
//! from the housekeeping thread) rather than by the device vanishing.
//! Messages are rtnetlink (RFC 3549):
//! `netlink-packet-route` for the types, `netlink-sys` for the socket, and
//! a small synchronous request/ack helper (`Rtnl`), since the control
//! plane is synchronous and an async client (rtnetlink, tokio) would bring
//! a runtime for five messages. This replaced five `ip` and `nsenter`
//! processes. It runs only on the control plane, never per packet.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use tapyard_ipam::Ipv4Net;

use super::proto::ApiError;
use crate::port::tap::{in_netns, TapPort};
use crate::port::Offloads;
use crate::wire::MacAddr;

/// A resolved namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// As the user gave it.
    pub spec: String,
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

/// Directory where `ip netns add` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Namespace spec of the daemon's own network namespace (the host's, or
/// dockerd's when it serves Docker: Join makes its TAPs there).
pub const OWN_NETNS: &str = "/proc/self/ns/net";

/// Where named namespaces are looked up when not in [`NETNS_RUN_DIR`]: a
/// rootless daemon's own directory (`cli::rootless`), set once at its start.
static NAMED_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes names resolve under `dir` instead of [`NETNS_RUN_DIR`] for the
/// rest of the process (a rootless daemon: see docs/ROOTLESS.md).
pub fn set_named_dir(dir: PathBuf) {
    let _ = NAMED_DIR.set(dir);
}

/// The directory named namespaces live in for this daemon.
pub fn named_dir() -> &'static Path {
    NAMED_DIR.get().map_or(Path::new(NETNS_RUN_DIR), |d| d.as_path())
}

/// Maps a namespace spec to the file that names it, without touching the file system.
pub fn spec_path(spec: &str) -> Result<PathBuf, ApiError> {
    if let Some(pid) = spec.strip_prefix("pid:") {
        let pid: u32 = pid
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid namespace {spec:?}: pid:N takes a process id")))?;
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    if spec.contains('/') {
        return Ok(PathBuf::from(spec));
    }
    if spec.is_empty() || spec == "." || spec == ".." || spec.chars().any(|c| c.is_whitespace() || c == '\0') {
        return Err(ApiError::bad_request(format!(
            "invalid namespace {spec:?}: give a name under {}, a path, or pid:N",
            named_dir().display()
        )));
    }
    Ok(named_dir().join(spec))
}

/// Resolves `spec` to an existing namespace.
pub fn resolve(spec: &str) -> Result<Netns, ApiError> {
    let path = spec_path(spec)?;
    let md = std::fs::metadata(&path).map_err(|e| {
        ApiError::not_found(format!(
            "network namespace {spec:?} not found ({}: {e}); create it first, e.g. `{} NAME`",
            path.display(),
            if NAMED_DIR.get().is_some() { "tapyard netns add" } else { "ip netns add" }
        ))
    })?;
    Ok(Netns { spec: spec.to_string(), path, dev: md.dev(), ino: md.ino() })
}

impl Netns {
    /// Opens the namespace file, checking it still names the namespace
    /// resolved earlier: a namespace deleted (and maybe re-created under the
    /// same name) since is "vanished", not silently a different container.
    fn open(&self) -> Result<File, ApiError> {
        let vanished = |why: String| {
            ApiError::not_found(format!("network namespace {:?} vanished ({}: {why})", self.spec, self.path.display()))
        };
        let f = File::open(&self.path).map_err(|e| vanished(e.to_string()))?;
        let md = f.metadata().map_err(|e| vanished(e.to_string()))?;
        if md.dev() != self.dev || md.ino() != self.ino {
            return Err(vanished("the name now refers to another namespace".into()));
        }
        Ok(f)
    }

    /// Whether the namespace is still there under the name it was given:
    /// the file still exists and is still the same namespace (device and
    /// inode). A TAP's queue fds keep its namespace alive after `ip netns
    /// del`, or after the last process of a `pid:N` container exits, so
    /// the interface never vanishes by itself; this is how such a port is
    /// noticed. For `pid:N` a reused pid shows a different inode (the old
    /// namespace is held by our fds, so its inode number is not reused).
    /// Any error counts as gone, with its text as the reason: the daemon
    /// could read the file when the port was connected.
    pub fn check(&self) -> Result<(), String> {
        let md = std::fs::metadata(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if md.dev() != self.dev || md.ino() != self.ino {
            return Err(format!("{} now refers to another namespace", self.path.display()));
        }
        Ok(())
    }
}

/// Checks an interface name the way the kernel does (dev_valid_name).
pub fn check_ifname(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid interface name {name:?}: 1 to 15 characters, no '/', ':' or spaces"
        )))
    }
}

/// A failed netlink request: the errno and, when the kernel gave one, its
/// extended-ack message (e.g. "MTU greater than device maximum").
#[derive(Debug)]
struct NlError {
    err: io::Error,
    ext: Option<String>,
}

impl NlError {
    fn errno(&self) -> Option<i32> {
        self.err.raw_os_error()
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.ext {
            Some(m) => write!(f, "{} ({m})", self.err),
            None => write!(f, "{}", self.err),
        }
    }
}

impl From<io::Error> for NlError {
    fn from(err: io::Error) -> NlError {
        NlError { err, ext: None }
    }
}

/// `NLMSGERR_ATTR_MSG` (linux/netlink.h): the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A synchronous NETLINK_ROUTE socket: one request in flight, answered by
/// its ack (or error) before the next is sent.
struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    fn open() -> io::Result<Rtnl> {
        let sock = Socket::new(NETLINK_ROUTE)?;
        // Ask for the kernel's error text, and for acks without the echoed request.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Rtnl { sock, seq: 0, buf: Vec::with_capacity(32 * 1024) })
    }

    /// Sends `msg` with `flags` (plus REQUEST|ACK) and returns the replies
    /// that came before the ack.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0)?;
            let mut at = 0;
            while at < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad netlink reply: {e}")))?;
                let len = m.header.length as usize;
                if len == 0 {
                    break;
                }
                at += len.next_multiple_of(4);
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    // An ack ends a request, NLMSG_DONE a dump (which gets no ack).
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(replies),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        let ext = ext_ack_text(&e.header, m.header.flags & NLM_F_CAPPED != 0);
                        return Err(NlError { err: e.to_io(), ext });
                    }
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    _ => {}
                }
            }
        }
    }

    /// The index of interface `name`, or None if there is none.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>, NlError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The text of an extended ack: the TLVs after the echoed request, which is
/// just its 16-byte header when `capped`, else the whole request.
fn ext_ack_text(payload: &[u8], capped: bool) -> Option<String> {
    let skip = if capped {
        16
    } else {
        let len = payload.get(..4)?;
        u32::from_ne_bytes(len.try_into().ok()?) as usize
    };
    let mut tlvs = payload.get(skip.checked_next_multiple_of(4)?..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// How a container's interface is to look.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig<'a> {
    pub ifname: &'a str,
    pub mac: MacAddr,
    pub mtu: u32,
    /// Address to assign, if any.
    pub ip: Option<Ipv4Net>,
    /// Default route via this gateway, if any.
    pub gateway: Option<Ipv4Addr>,
}

/// Creates the TAP `cfg.ifname` with `queues` queues directly inside `ns`,
/// sets its MAC and MTU, brings it up, and assigns the address and default
/// route if given. All of it runs on one short-lived thread that has
/// entered `ns` ([`in_netns`]): the queues are opened and the device
/// registered there, and the rest is three or four rtnetlink requests on a
/// socket in `ns`. On error nothing is left behind: the TAP is not yet
/// persistent, so dropping its fds deletes it.
///
/// Made inside, not made here and moved in: moving a device between
/// namespaces (`dev_change_net_namespace`) waits for RCU grace periods
/// while it unlists the device, about 18 ms of a 25 ms connect. The price
/// is that the queue fds' sockets now hold a reference on `ns`, so a
/// deleted namespace lives on while the port does; the housekeeping thread
/// therefore checks each port's namespace ([`Netns::check`]) and removes
/// the port of one that is gone.
pub fn create_tap(ns: &Netns, cfg: LinkConfig<'_>, queues: usize, offloads: Offloads) -> Result<TapPort, ApiError> {
    let nsfile = ns.open()?;
    let enter = |e: io::Error| ApiError::system(format!("cannot enter namespace {}: {e}", ns.spec));
    in_netns(&nsfile, || Ok(configure_here(ns, cfg, queues, offloads))).map_err(enter)?
}

/// The name of the interface whose MAC is `mac` in namespace `ns`, if
/// any: where a TAP handed to another program (Docker moves and renames
/// the TAP its plugin made) is now, found by the MAC it kept.
pub fn link_by_mac(ns: &Netns, mac: MacAddr) -> Result<Option<String>, ApiError> {
    let nsfile = ns.open()?;
    let found = in_netns(&nsfile, || {
        let mut nl = Rtnl::open()?;
        let links = nl.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP).map_err(|e| e.err)?;
        Ok(links.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => {
                let has = l.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(m) if m[..] == mac.0[..]));
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) if has => Some(n),
                    _ => None,
                })
            }
            _ => None,
        }))
    });
    found.map_err(|e| ApiError::system(format!("cannot list the interfaces of namespace {}: {e}", ns.spec)))
}

/// [`create_tap`]'s work, in the calling thread's namespace (which is `ns`).
fn configure_here(ns: &Netns, cfg: LinkConfig<'_>, queues: usize, offloads: Offloads) -> Result<TapPort, ApiError> {
    let ifname = cfg.ifname;
    let sys = |what: &str, e: &dyn std::fmt::Display| ApiError::system(format!("{what} in namespace {}: {e}", ns.spec));
    // IFF_TUN_EXCL: an existing interface of that name is EBUSY, never joined.
    let tap = TapPort::create(ifname, queues, offloads).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => ApiError::conflict(format!(
            "interface {ifname} already exists in namespace {}; pick another with --ifname",
            ns.spec
        )),
        _ => sys(&format!("cannot create TAP {ifname}"), &e),
    })?;
    configure_link(ns, cfg)?;
    Ok(tap)
}

/// Sets MAC, MTU, up, address and default route of `cfg.ifname`, in the
/// calling thread's namespace (which is `ns`).
fn configure_link(ns: &Netns, cfg: LinkConfig<'_>) -> Result<(), ApiError> {
    let LinkConfig { ifname, mac, mtu, ip, gateway } = cfg;
    let sys = |what: &str, e: &dyn std::fmt::Display| ApiError::system(format!("{what} in namespace {}: {e}", ns.spec));
    let mut nl = Rtnl::open().map_err(|e| sys("cannot open a netlink socket", &e))?;
    let index = nl
        .link_index(ifname)
        .map_err(|e| sys(&format!("looking up {ifname}"), &e))?
        .ok_or_else(|| ApiError::system(format!("{ifname} vanished from namespace {} as it was made", ns.spec)))?;
    // What `ip link set IFNAME address MAC mtu MTU up` sends.
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes = vec![LinkAttribute::Address(mac.0.to_vec()), LinkAttribute::Mtu(mtu)];
    nl.request(RouteNetlinkMessage::SetLink(link), 0)
        .map_err(|e| sys(&format!("setting {ifname} to MAC {mac}, MTU {mtu}, up"), &e))?;
    if let Some(ip) = ip {
        // What `ip addr add A.B.C.D/P dev IFNAME` sends.
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        a.header.prefix_len = ip.prefix_len();
        a.header.index = index;
        let addr = IpAddr::V4(ip.addr());
        a.attributes = vec![AddressAttribute::Local(addr), AddressAttribute::Address(addr)];
        nl.request(RouteNetlinkMessage::NewAddress(a), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| sys(&format!("assigning {ip} to {ifname}"), &e))?;
    }
    if let Some(gw) = gateway {
        // What `ip route replace default via GW dev IFNAME` sends.
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Boot;
        r.header.scope = RouteScope::Universe;
        r.header.kind = RouteType::Unicast;
        r.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gw)), RouteAttribute::Oif(index)];
        nl.request(RouteNetlinkMessage::NewRoute(r), NLM_F_CREATE | NLM_F_REPLACE)
            .map_err(|e| sys(&format!("adding the default route via {gw} on {ifname}"), &e))?;
    }
    Ok(())
}

/// Creates the veth pair of an AF_XDP port: `switch_ifname` in the
/// daemon's namespace and `cfg.ifname` in `ns` (made there directly, as a
/// TAP is, through IFLA_NET_NS_FD on the peer: no move between namespaces),
/// each with `queues` RX and TX queues so that worker q owns queue q. The
/// namespace end is configured like a TAP ([`configure_link`]); the
/// switch end comes up without IPv6 (no link-local address, no router
/// solicitations of the host's leaking into the container's segment).
///
/// Transmit checksum offload is turned off on the namespace end (the
/// container's stack finishes its checksums: an AF_XDP socket gets frames
/// without the skb's checksum state).
///
/// A `switch_ifname` already there is one a daemon killed mid-connect left
/// (the name is derived from the port's identity): it is deleted and made
/// again. On error the pair is deleted; nothing is left behind.
pub fn create_veth(ns: &Netns, cfg: LinkConfig<'_>, switch_ifname: &str, queues: usize) -> Result<(), ApiError> {
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
    use std::os::fd::AsRawFd;
    let nsfile = ns.open()?;
    let sys = |what: &str, e: &dyn std::fmt::Display| ApiError::system(format!("{what}: {e}"));
    let mut nl = Rtnl::open().map_err(|e| sys("cannot open a netlink socket", &e))?;
    let q = u32::try_from(queues.clamp(1, 256)).unwrap_or(1);
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(cfg.ifname.to_string()),
        LinkAttribute::Address(cfg.mac.0.to_vec()),
        LinkAttribute::Mtu(cfg.mtu),
        LinkAttribute::NumTxQueues(q),
        LinkAttribute::NumRxQueues(q),
        LinkAttribute::NetNsFd(nsfile.as_raw_fd()),
    ];
    // What `ip link add SWITCH numtxqueues Q numrxqueues Q mtu MTU type veth
    // peer name IFNAME address MAC mtu MTU netns NS numtxqueues Q numrxqueues Q` sends.
    let mut link = LinkMessage::default();
    link.attributes = vec![
        LinkAttribute::IfName(switch_ifname.to_string()),
        LinkAttribute::Mtu(cfg.mtu),
        LinkAttribute::NumTxQueues(q),
        LinkAttribute::NumRxQueues(q),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    let mut retried = false;
    loop {
        match nl.request(RouteNetlinkMessage::NewLink(link.clone()), NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => break,
            Err(e) if e.errno() == Some(libc::EEXIST) && !retried => {
                // Ours from a killed daemon, or the namespace's interface name is taken.
                if nl.link_index(switch_ifname).map_err(|e| sys("looking up the veth", &e))?.is_none() {
                    return Err(ApiError::conflict(format!(
                        "interface {} already exists in namespace {}; pick another with --ifname",
                        cfg.ifname, ns.spec
                    )));
                }
                tracing::warn!(ifname = %switch_ifname, "deleting a veth left by a daemon killed mid-connect");
                delete_here(&mut nl, switch_ifname).map_err(|e| sys(&format!("deleting {switch_ifname}"), &e))?;
                retried = true;
            }
            Err(e) => {
                return Err(sys(&format!("cannot create veth {switch_ifname} / {} in {}", cfg.ifname, ns.spec), &e))
            }
        }
    }
    let made = (|| {
        // No IPv6 on the switch's end (before it is up: no link-local address at all).
        let knob = format!("/proc/sys/net/ipv6/conf/{switch_ifname}/disable_ipv6");
        if Path::new(&knob).exists() {
            std::fs::write(&knob, "1").map_err(|e| sys(&format!("writing {knob}"), &e))?;
        }
        let index = nl
            .link_index(switch_ifname)
            .map_err(|e| sys(&format!("looking up {switch_ifname}"), &e))?
            .ok_or_else(|| ApiError::system(format!("{switch_ifname} vanished as it was made")))?;
        let mut up = LinkMessage::default();
        up.header.index = index;
        up.header.flags = LinkFlags::Up;
        up.header.change_mask = LinkFlags::Up;
        nl.request(RouteNetlinkMessage::SetLink(up), 0).map_err(|e| sys(&format!("setting {switch_ifname} up"), &e))?;
        let enter = |e: io::Error| ApiError::system(format!("cannot enter namespace {}: {e}", ns.spec));
        in_netns(&nsfile, || {
            Ok(configure_link(ns, cfg).and_then(|()| {
                // The container's frames reach the AF_XDP socket as they
                // leave its stack: with checksum offload on, TCP and UDP
                // ones would carry partial checksums nobody finishes
                // (port/xdp.rs, "Checksums and segmentation").
                crate::port::xdp::disable_tx_checksum(cfg.ifname)
                    .map_err(|e| sys(&format!("turning transmit checksum offload off on {}", cfg.ifname), &e))
            }))
        })
        .map_err(enter)?
    })();
    if made.is_err() {
        let _ = delete_here(&mut nl, switch_ifname);
    }
    made
}

/// Whether interface `name` exists in the daemon's namespace.
pub fn own_link_exists(name: &str) -> Result<bool, ApiError> {
    let mut nl = Rtnl::open().map_err(|e| ApiError::system(format!("cannot open a netlink socket: {e}")))?;
    nl.link_index(name).map(|i| i.is_some()).map_err(|e| ApiError::system(format!("looking up {name}: {e}")))
}

/// Deletes interface `name` of the daemon's namespace (a veth takes its
/// peer with it); one that is already gone is not an error.
pub fn delete_own_link(name: &str) -> Result<(), ApiError> {
    let mut nl = Rtnl::open().map_err(|e| ApiError::system(format!("cannot open a netlink socket: {e}")))?;
    delete_here(&mut nl, name).map_err(|e| ApiError::system(format!("deleting {name}: {e}")))
}

fn delete_here(nl: &mut Rtnl, name: &str) -> Result<(), NlError> {
    let Some(index) = nl.link_index(name)? else { return Ok(()) };
    let mut m = LinkMessage::default();
    m.header.index = index;
    match nl.request(RouteNetlinkMessage::DelLink(m), 0) {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// An interface as seen inside a namespace: what CNI's CHECK compares
/// with what ADD made (see `crate::cni`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// Its IPv4 addresses with their prefix lengths.
    pub addrs: Vec<Ipv4Net>,
    /// Gateways of the main table's IPv4 default routes through it.
    pub default_gateways: Vec<Ipv4Addr>,
}

/// The interface `ifname` of the namespace file at `path` (a bind mount
/// like /run/netns/NAME or /proc/PID/ns/net), or None if it has no such
/// interface. Read with rtnetlink dumps from a thread inside it.
pub fn link_state(path: &Path, ifname: &str) -> Result<Option<LinkState>, ApiError> {
    let f = File::open(path)
        .map_err(|e| ApiError::not_found(format!("network namespace {} cannot be opened: {e}", path.display())))?;
    let sys = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::system(format!("cannot read the {what} of namespace {}: {e}", path.display()))
    };
    let read = || -> io::Result<Result<Option<LinkState>, ApiError>> {
        let mut nl = Rtnl::open()?;
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(ifname.to_string()));
        let link = match nl.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(r) => r.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            }),
            Err(e) if e.errno() == Some(libc::ENODEV) => None,
            Err(e) => return Ok(Err(sys("interfaces", &e))),
        };
        let Some(link) = link else { return Ok(Ok(None)) };
        let index = link.header.index;
        let mac = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok().map(MacAddr),
            _ => None,
        });
        let up = link.header.flags.contains(LinkFlags::Up);
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        let addrs = match nl.request(RouteNetlinkMessage::GetAddress(addr), NLM_F_DUMP) {
            Ok(a) => a,
            Err(e) => return Ok(Err(sys("addresses", &e))),
        };
        let addrs = addrs
            .into_iter()
            .filter_map(|a| match a {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                        _ => None,
                    })?;
                    Ipv4Net::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            })
            .collect();
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        let routes = match nl.request(RouteNetlinkMessage::GetRoute(route), NLM_F_DUMP) {
            Ok(r) => r,
            Err(e) => return Ok(Err(sys("routes", &e))),
        };
        let default_gateways = routes
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && r.header.table == RouteHeader::RT_TABLE_MAIN
                        && r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index)) =>
                {
                    r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect();
        Ok(Ok(Some(LinkState { index, mac, up, addrs, default_gateways })))
    };
    in_netns(&f, read).map_err(|e| sys("interfaces", &e))?
}

/// A prefix the daemon's own namespace already reaches: a route or an
/// interface address, which a network's subnet must not overlap once the
/// network's traffic reaches the host (Docker's `CheckRouteOverlaps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPrefix {
    pub net: Ipv4Net,
    /// For people, like `ip` prints it: "route 172.17.0.0/16 dev docker0",
    /// "address 10.0.2.15/24 on eth0".
    pub what: String,
}

/// The IPv4 routes and addresses of the calling thread's namespace (the
/// daemon's, on the control thread): three rtnetlink dumps (links for the
/// names, routes, addresses).
///
/// Kept: every route of the main table but the default one (0.0.0.0/0
/// overlaps everything, and Docker ignores it too), the local table's
/// `local` routes wider than a host (AnyIP, `ip route add local
/// 198.18.0.0/16 dev lo`), and every address with its prefix. Left out:
/// the local table's broadcast routes and its `local` host entries, which
/// only repeat the addresses. Routes through the interface `own` (the
/// uplink, which carries a route to every network with egress) are
/// tapyard's own and skipped, or a network would block itself; the
/// uplink's transit address is kept, so no network overlaps it.
pub fn host_prefixes(own: Option<&str>) -> Result<Vec<HostPrefix>, ApiError> {
    let sys = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::system(format!("cannot read the {what} of the daemon's namespace: {e}"))
    };
    let mut nl = Rtnl::open().map_err(|e| sys("routes", &e))?;
    let links = nl
        .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
        .map_err(|e| sys("interfaces", &e))?;
    let names: std::collections::HashMap<u32, String> = links
        .into_iter()
        .filter_map(|r| match r {
            RouteNetlinkMessage::NewLink(l) => l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                _ => None,
            }),
            _ => None,
        })
        .collect();
    let name = |index: u32| names.get(&index).cloned().unwrap_or_else(|| format!("if{index}"));
    let mut out = Vec::new();
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    let routes = nl.request(RouteNetlinkMessage::GetRoute(route), NLM_F_DUMP).map_err(|e| sys("routes", &e))?;
    let own_index = own.and_then(|o| names.iter().find(|(_, n)| n.as_str() == o).map(|(i, _)| *i));
    for r in routes {
        let RouteNetlinkMessage::NewRoute(r) = r else { continue };
        let via_own = r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if Some(*i) == own_index));
        if via_own {
            continue;
        }
        if let Some(p) = route_prefix(&r, &name) {
            out.push(p);
        }
    }
    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    let addrs = nl.request(RouteNetlinkMessage::GetAddress(addr), NLM_F_DUMP).map_err(|e| sys("addresses", &e))?;
    for a in addrs {
        let RouteNetlinkMessage::NewAddress(a) = a else { continue };
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's
        // on a point-to-point link and the same address elsewhere.
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let address = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let Some(ip) = local.or(address) else { continue };
        let Ok(net) = Ipv4Net::new(ip, a.header.prefix_len) else { continue };
        out.push(HostPrefix { net: net.trunc(), what: format!("address {net} on {}", name(a.header.index)) });
    }
    Ok(out)
}

/// Adds (or replaces) the route `net via gw dev ifname` in the calling
/// thread's namespace, or with `add` false deletes it (a route already
/// gone is not an error). What `ip route replace|del` sends.
pub fn set_route(net: Ipv4Net, gw: Ipv4Addr, ifname: &str, add: bool) -> Result<(), ApiError> {
    let sys = |e: &dyn std::fmt::Display| {
        ApiError::system(format!(
            "cannot {} the route {net} via {gw} dev {ifname}: {e}",
            if add { "add" } else { "delete" }
        ))
    };
    let mut nl = Rtnl::open().map_err(|e| sys(&e))?;
    let index = nl.link_index(ifname).map_err(|e| sys(&e))?.ok_or_else(|| sys(&"no such interface"))?;
    let mut r = RouteMessage::default();
    r.header.address_family = AddressFamily::Inet;
    r.header.table = RouteHeader::RT_TABLE_MAIN;
    r.header.protocol = RouteProtocol::Static;
    r.header.scope = RouteScope::Universe;
    r.header.kind = RouteType::Unicast;
    r.header.destination_prefix_length = net.prefix_len();
    r.attributes = vec![
        RouteAttribute::Destination(RouteAddress::Inet(net.network())),
        RouteAttribute::Gateway(RouteAddress::Inet(gw)),
        RouteAttribute::Oif(index),
    ];
    let res = if add {
        nl.request(RouteNetlinkMessage::NewRoute(r), NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        nl.request(RouteNetlinkMessage::DelRoute(r), 0)
    };
    match res {
        Ok(_) => Ok(()),
        Err(e) if !add && e.errno() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(sys(&e)),
    }
}

/// The prefix a dumped route claims, if it is one [`host_prefixes`] keeps.
fn route_prefix(r: &RouteMessage, name: &dyn Fn(u32) -> String) -> Option<HostPrefix> {
    const RT_TABLE_LOCAL: u32 = 255;
    let h = &r.header;
    // RTA_TABLE carries tables above 255; the header's byte is then RT_TABLE_COMPAT.
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    let keep = match table {
        t if t == u32::from(RouteHeader::RT_TABLE_MAIN) => h.destination_prefix_length > 0,
        RT_TABLE_LOCAL => h.kind == RouteType::Local && h.destination_prefix_length < 32,
        _ => false,
    };
    if !keep {
        return None;
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    })?;
    let net = Ipv4Net::new(dst, h.destination_prefix_length).ok()?.trunc();
    let mut what = match h.kind {
        RouteType::Unicast => format!("route {net}"),
        RouteType::Local => format!("route local {net}"),
        RouteType::BlackHole => format!("route blackhole {net}"),
        RouteType::Unreachable => format!("route unreachable {net}"),
        RouteType::Prohibit => format!("route prohibit {net}"),
        other => format!("route {net} ({other:?})"),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => what.push_str(&format!(" via {g}")),
            RouteAttribute::Oif(i) => what.push_str(&format!(" dev {}", name(*i))),
            _ => {}
        }
    }
    Some(HostPrefix { net, what })
}

/// The first of `host` that `net` overlaps.
pub fn overlapping<'a>(net: &Ipv4Net, host: &'a [HostPrefix]) -> Option<&'a HostPrefix> {
    host.iter().find(|h| h.net.contains(&net.network()) || net.contains(&h.net.network()))
}

/// Parses `A.B.C.D` or `A.B.C.D/P`.
pub fn parse_ip(s: &str) -> Result<(Ipv4Addr, Option<u8>), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid address {s:?}: expected IPv4 like 10.0.0.2 or 10.0.0.2/24"));
    match s.split_once('/') {
        Some((a, p)) => {
            let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
            let p: u8 = p.parse().map_err(|_| bad())?;
            if p > 32 {
                return Err(bad());
            }
            Ok((a, Some(p)))
        }
        None => Ok((s.parse().map_err(|_| bad())?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_map_to_paths() {
        assert_eq!(spec_path("blue").unwrap(), PathBuf::from("/run/netns/blue"));
        assert_eq!(spec_path("pid:42").unwrap(), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(spec_path("/var/run/x").unwrap(), PathBuf::from("/var/run/x"));
        assert!(spec_path("pid:x").is_err());
        assert!(spec_path("").is_err());
        assert!(spec_path("..").is_err());
        assert!(spec_path("a b").is_err());
    }

    /// A dumped route: `table` in the header (and in RTA_TABLE when `attr`).
    fn route(table: u32, attr: bool, kind: RouteType, dst: &str, oif: Option<u32>) -> RouteMessage {
        let net: Ipv4Net = dst.parse().unwrap();
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = if attr { 252 } else { table as u8 };
        r.header.kind = kind;
        r.header.destination_prefix_length = net.prefix_len();
        if net.prefix_len() > 0 {
            r.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(net.addr())));
        }
        if attr {
            r.attributes.push(RouteAttribute::Table(table));
        }
        if let Some(i) = oif {
            r.attributes.push(RouteAttribute::Oif(i));
        }
        r
    }

    #[test]
    fn host_prefixes_keep_real_routes_and_skip_the_default_and_the_local_tables_repeats() {
        let name = |i: u32| if i == 3 { "docker0".to_string() } else { format!("if{i}") };
        let what = |r: RouteMessage| route_prefix(&r, &name).map(|p| (p.net.to_string(), p.what));
        let main = u32::from(RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            what(route(main, false, RouteType::Unicast, "172.17.0.0/16", Some(3))),
            Some(("172.17.0.0/16".into(), "route 172.17.0.0/16 dev docker0".into()))
        );
        // Host bits in the dump are cleared; an unreachable route claims its prefix too.
        assert_eq!(
            what(route(main, true, RouteType::Unreachable, "10.9.0.0/16", None)),
            Some(("10.9.0.0/16".into(), "route unreachable 10.9.0.0/16".into()))
        );
        assert_eq!(what(route(main, false, RouteType::Unicast, "0.0.0.0/0", Some(3))), None, "the default route");
        assert_eq!(what(route(255, false, RouteType::Broadcast, "10.0.2.255/32", Some(2))), None);
        assert_eq!(what(route(255, false, RouteType::Local, "10.0.2.15/32", Some(2))), None, "an address's own");
        assert_eq!(
            what(route(255, false, RouteType::Local, "198.19.0.0/16", Some(1))),
            Some(("198.19.0.0/16".into(), "route local 198.19.0.0/16 dev if1".into())),
            "AnyIP"
        );
        // Policy-routing tables are not what the host's own traffic uses.
        assert_eq!(what(route(100, true, RouteType::Unicast, "10.8.0.0/16", Some(3))), None);
    }

    #[test]
    fn overlaps_either_way() {
        let host = |s: &str| HostPrefix { net: s.parse().unwrap(), what: s.into() };
        let hosts = [host("172.17.0.0/16"), host("10.0.2.0/24")];
        let over = |s: &str| overlapping(&s.parse().unwrap(), &hosts).map(|h| h.what.clone());
        assert_eq!(over("172.17.5.0/24").as_deref(), Some("172.17.0.0/16"));
        assert_eq!(over("10.0.0.0/8").as_deref(), Some("10.0.2.0/24"));
        assert_eq!(over("172.18.0.0/16"), None);
        assert_eq!(over("10.0.3.0/24"), None);
    }

    /// The real dump, in the test's own namespace: it answers, and never
    /// returns the default route.
    #[test]
    fn the_hosts_prefixes_can_be_read() {
        let all = host_prefixes(None).unwrap();
        assert!(all.iter().all(|h| h.net.prefix_len() > 0), "{all:?}");
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let e = resolve("tapyard-no-such-ns-xyz").unwrap_err();
        assert_eq!(e.kind, super::super::proto::ErrorKind::NotFound);
    }

    #[test]
    fn ifnames_follow_kernel_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("").is_err());
    }

    /// An extended-ack payload: `echoed` bytes of request, then TLVs.
    fn ext_ack(echoed: &[u8], tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = echoed.to_vec();
        for (kind, value) in tlvs {
            p.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(value);
            p.resize(p.len().next_multiple_of(4), 0);
        }
        p
    }

    #[test]
    fn extended_ack_text_is_found_after_the_echoed_request() {
        let capped = ext_ack(&[0; 16], &[(2, &[0, 0, 0, 0]), (NLMSGERR_ATTR_MSG, b"MTU too big\0")]);
        assert_eq!(ext_ack_text(&capped, true).as_deref(), Some("MTU too big"));
        // Not capped: the whole request is echoed, its length first.
        let mut req = vec![0u8; 22];
        req[..4].copy_from_slice(&22u32.to_ne_bytes());
        req.resize(24, 0);
        let full = ext_ack(&req, &[(NLMSGERR_ATTR_MSG, b"name taken\0")]);
        assert_eq!(ext_ack_text(&full, false).as_deref(), Some("name taken"));
        // No text, truncated or lying lengths: None, never a panic.
        assert_eq!(ext_ack_text(&[0; 16], true), None);
        assert_eq!(ext_ack_text(&[0; 3], false), None);
        assert_eq!(ext_ack_text(&ext_ack(&[0; 16], &[(1, b"x")])[..18], true), None);
        let mut lying = capped.clone();
        lying[16..18].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(ext_ack_text(&lying, true), None);
        let mut huge = capped;
        huge[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(ext_ack_text(&huge, false), None);
    }

    #[test]
    fn ip_parsing() {
        assert_eq!(parse_ip("10.0.0.2").unwrap(), ("10.0.0.2".parse().unwrap(), None));
        assert_eq!(parse_ip("10.0.0.2/24").unwrap(), ("10.0.0.2".parse().unwrap(), Some(24)));
        assert!(parse_ip("10.0.0.2/33").is_err());
        assert!(parse_ip("10.0.0").is_err());
    }
}
