//! Captures, flight recorders and mirror ports on the control side
//! (docs/capture.md): which ports a `capture` or `port mirror` names, the
//! registry of running captures, recorders and mirrors that every snapshot
//! publication turns into the snapshot's taps ([`Registry::attach`]), and
//! the capture stream of one control connection ([`stream`]).
//!
//! The data path's half (the rings, the recorder, the hooks) is
//! `crate::capture` and `datapath::egress`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::proto::{
    ApiError, CaptureInterface, CaptureRecord, CaptureRequest, CaptureStarted, MirrorInfo, RecordKind, Reply,
    DEFAULT_SNAPLEN,
};
use super::{Daemon, Inner, PortRec};
use crate::capture::{wall_ns, CaptureRing, PortTaps, Recorder, Tap};
use crate::packet::MAX_FRAME;
use crate::port::{Port, PortId};
use crate::snapshot::{PortView, Snapshot};

/// Memory one capture's ring may hold (records × snaplen), and its bounds in records.
const RING_BYTES: usize = 16 << 20;
const RING_MIN: usize = 64;
const RING_MAX: usize = 4096;

/// How long the streaming thread sleeps when the ring is empty.
const IDLE: Duration = Duration::from_millis(2);

/// A port as a registration names it: its id and the port object (ids are
/// reused after a disconnect; the object is not).
#[derive(Clone)]
struct Ident {
    id: PortId,
    port: Weak<dyn Port>,
}

impl Ident {
    fn of(id: PortId, port: &Arc<dyn Port>) -> Ident {
        Ident { id, port: Arc::downgrade(port) }
    }

    fn is(&self, view: &PortView) -> bool {
        self.id == view.id && std::ptr::addr_eq(self.port.as_ptr(), Arc::as_ptr(&view.port))
    }
}

struct MirrorReg {
    src: Ident,
    to: Ident,
    mirrored: Arc<AtomicU64>,
}

/// A running capture: its ports, each with its interface number, and the ring they fill.
type Running = (Vec<(Ident, u32)>, Arc<CaptureRing>);

#[derive(Default)]
struct State {
    /// Each port's flight recorder, made the first time a snapshot holds the port.
    recorders: HashMap<PortId, (Ident, Arc<Recorder>)>,
    /// Running captures: their ports and the ring they fill.
    captures: BTreeMap<u64, Running>,
    next: u64,
    mirrors: HashMap<PortId, MirrorReg>,
}

/// The captures, flight recorders and mirrors of a daemon.
pub struct Registry {
    workers: usize,
    /// Frames per (port, worker) recorder ring; 0: no flight recorder.
    depth: usize,
    state: Mutex<State>,
}

impl Registry {
    pub fn new(workers: usize, depth: usize) -> Registry {
        Registry { workers, depth, state: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `snap.taps` from the registrations (called on every
    /// publication, after `build`), and forgets those of ports gone.
    pub fn attach(&self, snap: &mut Snapshot) {
        let mut st = self.lock();
        let st = &mut *st;
        let live = |i: &Ident| snap.port(i.id).is_some_and(|v| i.is(v));
        st.recorders.retain(|_, (i, _)| live(i));
        st.mirrors.retain(|_, m| live(&m.src) && live(&m.to));
        let mut taps: Vec<Option<PortTaps>> = vec![None; snap.ports.len()];
        let mut any = false;
        for view in snap.ports.iter().flatten() {
            let recorder = (self.depth > 0).then(|| {
                let (_, r) = st.recorders.entry(view.id).or_insert_with(|| {
                    (Ident::of(view.id, &view.port), Arc::new(Recorder::new(self.workers, self.depth)))
                });
                r.clone()
            });
            let captures: Vec<Tap> = st
                .captures
                .values()
                .flat_map(|(ports, ring)| {
                    ports.iter().filter(|(i, _)| i.is(view)).map(|&(_, iface)| Tap { ring: ring.clone(), iface })
                })
                .collect();
            let (mirror, mirrored) = match st.mirrors.get(&view.id) {
                Some(m) => (Some(m.to.id), m.mirrored.clone()),
                None => (None, Arc::default()),
            };
            let t = PortTaps { recorder, captures, mirror, mirrored };
            if t.is_active() {
                any = true;
                taps[view.id.index()] = Some(t);
            }
        }
        // No taps anywhere: the workers skip even the clock read.
        snap.taps = if any { taps } else { Vec::new() };
    }
}

/// A port's name in captures and replies.
fn port_name(p: &PortRec) -> String {
    match &p.spec.vhost {
        Some(v) => format!("{}/vhost:{}", p.spec.network, v.socket.display()),
        None => format!("{}/{}/{}", p.spec.network, p.spec.netns, p.spec.ifname),
    }
}

/// The ports `target` names (docs/capture.md): a port id, `NETWORK` (every
/// port of it, when `whole_network`), `NETWORK/NETNS`, `NETWORK/NETNS/IFNAME`
/// or `NETNS/IFNAME`.
fn resolve<'a>(inner: &'a Inner, target: &str, whole_network: bool) -> Result<Vec<&'a PortRec>, ApiError> {
    let hint = "name a port as NETWORK/NETNS[/IFNAME], NETNS/IFNAME or its id (see `tapyard port ls`)";
    if target.is_empty() {
        return Err(ApiError::bad_request(format!("no port given; {hint}")));
    }
    if let Ok(id) = target.parse::<u16>() {
        return match inner.ports.get(&PortId(id)) {
            Some(p) => Ok(vec![p]),
            None => Err(ApiError::not_found(format!("no port with id {id}; see `tapyard port ls`"))),
        };
    }
    let parts: Vec<&str> = target.split('/').collect();
    let found: Vec<&PortRec> = match parts[..] {
        [net] => {
            if !inner.networks.contains_key(net) {
                return Err(ApiError::not_found(format!("no network or port named {net:?}; {hint}")));
            }
            if !whole_network {
                return Err(ApiError::bad_request(format!("{net:?} is a network, not a port; {hint}")));
            }
            let ports: Vec<&PortRec> = inner.ports.values().filter(|p| p.spec.network == net).collect();
            if ports.is_empty() {
                return Err(ApiError::not_found(format!("network {net:?} has no ports to capture")));
            }
            return Ok(ports);
        }
        [a, b] if inner.networks.contains_key(a) => {
            inner.ports.values().filter(|p| p.spec.network == a && p.spec.netns == b).collect()
        }
        [ns, ifname] => inner.ports.values().filter(|p| p.spec.netns == ns && p.spec.ifname == ifname).collect(),
        [net, ns, ifname] => {
            if !inner.networks.contains_key(net) {
                return Err(ApiError::not_found(format!("no network named {net:?}; {hint}")));
            }
            inner
                .ports
                .values()
                .filter(|p| p.spec.network == net && p.spec.netns == ns && p.spec.ifname == ifname)
                .collect()
        }
        _ => return Err(ApiError::bad_request(format!("cannot read {target:?} as a port; {hint}"))),
    };
    match found.len() {
        0 => Err(ApiError::not_found(format!("no port {target:?}; {hint}"))),
        1 => Ok(found),
        _ => Err(ApiError::bad_request(format!(
            "{target:?} names {} ports ({}); add the interface name",
            found.len(),
            found.iter().map(|p| port_name(p)).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// What a capture streams from.
enum Source {
    Live {
        id: u64,
        ring: Arc<CaptureRing>,
    },
    /// The flight recorders' frames, oldest first: (interface, frame).
    Recent(Vec<(u32, crate::capture::Recorded)>),
}

impl Daemon {
    /// `port_mirror`: sets or (without `to`) removes `port`'s mirror.
    pub(super) fn port_mirror(&self, port: &str, to: Option<&str>) -> Result<MirrorInfo, ApiError> {
        let mut inner = self.lock();
        let src = resolve(&inner, port, false)?[0];
        let (src_id, name) = (src.id, port_name(src));
        let src_ident = Ident::of(src.id, &src.port);
        let to_name = match to {
            None => {
                if self.captures.lock().mirrors.remove(&src_id).is_none() {
                    return Err(ApiError::not_found(format!("port {name} is not mirrored")));
                }
                None
            }
            Some(t) => {
                let dst = resolve(&inner, t, false)?[0];
                if dst.id == src_id {
                    return Err(ApiError::bad_request(format!("port {name} cannot mirror to itself")));
                }
                let reg = MirrorReg { src: src_ident, to: Ident::of(dst.id, &dst.port), mirrored: Arc::default() };
                let to_name = port_name(dst);
                self.captures.lock().mirrors.insert(src_id, reg);
                Some(to_name)
            }
        };
        self.publish(&mut inner);
        Ok(MirrorInfo { port: src_id.0, name, to: to_name })
    }

    /// Registers a capture (or reads the recorders) and says what it covers.
    fn capture_start(&self, req: &CaptureRequest) -> Result<(CaptureStarted, Source), ApiError> {
        let snaplen = req.snaplen.unwrap_or(DEFAULT_SNAPLEN);
        if snaplen == 0 {
            return Err(ApiError::bad_request("--snaplen must be at least 1"));
        }
        if req.count == Some(0) {
            return Err(ApiError::bad_request("--count must be at least 1"));
        }
        let mut inner = self.lock();
        let ports = resolve(&inner, &req.target, true)?;
        let interfaces: Vec<CaptureInterface> = ports
            .iter()
            .map(|p| CaptureInterface {
                port: p.id.0,
                name: port_name(p),
                network: p.spec.network.clone(),
                mac: p.spec.mac.to_string(),
            })
            .collect();
        let idents: Vec<(Ident, u32)> =
            ports.iter().enumerate().map(|(i, p)| (Ident::of(p.id, &p.port), i as u32)).collect();
        let started = CaptureStarted { interfaces, snaplen, recent: req.recent };
        if req.recent {
            if self.captures.depth == 0 {
                return Err(ApiError::bad_request(
                    "the flight recorder is off in this daemon (started with --flight-recorder 0)",
                ));
            }
            let st = self.captures.lock();
            let mut frames: Vec<(u32, crate::capture::Recorded)> = Vec::new();
            for (ident, iface) in &idents {
                if let Some((_, r)) = st.recorders.get(&ident.id) {
                    frames.extend(r.read().into_iter().map(|f| (*iface, f)));
                }
            }
            frames.sort_by_key(|(_, f)| f.ts_ns);
            return Ok((started, Source::Recent(frames)));
        }
        let cap = (snaplen as usize).min(MAX_FRAME);
        let slots = (RING_BYTES / cap).clamp(RING_MIN, RING_MAX);
        let ring = Arc::new(CaptureRing::new(cap, slots));
        let id = {
            let mut st = self.captures.lock();
            st.next += 1;
            let id = st.next;
            st.captures.insert(id, (idents, ring.clone()));
            id
        };
        // Every frame a worker handles after this reply is captured.
        let epoch = self.publish(&mut inner);
        self.wait_adopted(epoch);
        Ok((started, Source::Live { id, ring }))
    }

    fn capture_stop(&self, id: u64) {
        let mut inner = self.lock();
        self.captures.lock().captures.remove(&id);
        self.publish(&mut inner);
    }
}

/// Serves a `capture` request on its connection: the JSON reply, then the
/// records (docs/PROTOCOL.md), until `count` frames, the client writes
/// anything or closes, or the daemon stops; then the end record.
pub(super) fn stream(
    d: &Daemon,
    req: CaptureRequest,
    reader: impl Read + Send + 'static,
    socket: UnixStream,
    out: &mut impl Write,
    reply: impl FnOnce(&mut dyn Write, Result<Reply, ApiError>) -> std::io::Result<()>,
) {
    let (started, source) = match d.capture_start(&req) {
        Ok(s) => s,
        Err(e) => {
            let _ = reply(out, Err(e));
            return;
        }
    };
    if reply(out, Ok(started.into())).is_err() {
        if let Source::Live { id, .. } = source {
            d.capture_stop(id);
        }
        return;
    }
    let limit = req.count.unwrap_or(u64::MAX);
    let (sent, dropped) = match source {
        Source::Recent(frames) => {
            let mut sent = 0;
            for (iface, f) in frames.into_iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
                let rec = CaptureRecord {
                    kind: RecordKind::Frame,
                    dir: f.dir as u8,
                    interface: iface,
                    ts_ns: wall_ns(f.ts_ns),
                    orig_len: f.orig_len,
                    cap_len: f.head.len() as u32,
                };
                if out.write_all(&rec.encode()).and_then(|_| out.write_all(&f.head)).is_err() {
                    return;
                }
                sent += 1;
            }
            (sent, 0)
        }
        Source::Live { id, ring } => {
            // The client asks to stop by writing anything, or by leaving.
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let mut reader = reader;
            let watcher = std::thread::Builder::new().name("tapyard-capw".into()).spawn(move || {
                let _ = reader.read(&mut [0u8; 64]);
                flag.store(true, Ordering::Relaxed);
            });
            if watcher.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let mut sent = 0u64;
            let mut ok = true;
            while ok && sent < limit && !stop.load(Ordering::Relaxed) && !d.stop.load(Ordering::Relaxed) {
                let Some(r) = ring.pop() else {
                    ok = out.flush().is_ok();
                    std::thread::sleep(IDLE);
                    continue;
                };
                let rec = CaptureRecord {
                    kind: RecordKind::Frame,
                    dir: r.dir as u8,
                    interface: r.iface,
                    ts_ns: wall_ns(r.ts_ns),
                    orig_len: r.orig_len,
                    cap_len: r.data.len() as u32,
                };
                ok = out.write_all(&rec.encode()).and_then(|_| out.write_all(&r.data)).is_ok();
                ring.recycle(r);
                sent += 1;
            }
            d.capture_stop(id);
            // Frames still queued were captured but not sent: count them as dropped.
            let mut left = 0;
            while let Some(r) = ring.pop() {
                left += 1;
                ring.recycle(r);
            }
            if !ok {
                return;
            }
            (sent, ring.dropped() + left)
        }
    };
    let end = CaptureRecord { kind: RecordKind::End, dir: 0, interface: 0, ts_ns: 0, orig_len: 0, cap_len: 16 };
    let _ = out.write_all(&end.encode());
    let _ = out.write_all(&sent.to_le_bytes());
    let _ = out.write_all(&dropped.to_le_bytes());
    let _ = out.flush();
    // Ends the watcher's read, should the client still hold the connection open.
    let _ = socket.shutdown(std::net::Shutdown::Both);
}
