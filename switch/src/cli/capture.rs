//! `tapyard capture`: reads a capture stream from the daemon (docs/PROTOCOL.md)
//! and writes it as pcapng (`-w FILE`, `-w -` for stdout) or prints one
//! summary line per frame. The pcapng file has one interface description
//! block per port, named `NETWORK/NETNS/IFNAME`, with nanosecond timestamps;
//! each packet's `epb_flags` say whether the port received or was sent it,
//! and an interface statistics block per port at the end gives the frames
//! the capture lost (docs/capture.md).

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use super::client::Client;
use crate::control::proto::{CaptureRecord, CaptureRequest, CaptureStarted, RecordKind, Request};

#[derive(Args, Debug, Clone)]
pub struct CaptureArgs {
    /// What to capture: NETWORK (every port of it), NETWORK/NETNS[/IFNAME],
    /// NETNS/IFNAME, or a port id from `tapyard port ls`.
    pub target: String,
    /// Write pcapng to FILE (`-` for stdout) instead of printing a line per frame.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after N frames.
    #[arg(long, short = 'c', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Keep at most N bytes of each frame [default: 262144].
    #[arg(long, short = 's', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub snaplen: Option<u32>,
    /// Write the frames the ports saw before now (the flight recorder: the
    /// last frames of each port, first 128 bytes of each) and stop.
    #[arg(long)]
    pub recent: bool,
}

/// Where frames go.
enum Sink {
    Pcap(PcapNgWriter<BufWriter<Box<dyn Write>>>),
    Lines,
}

/// Runs `tapyard capture`; returns the process's exit code.
pub fn run(socket: &Path, a: CaptureArgs) -> anyhow::Result<i32> {
    let to_stdout = a.write.as_deref() == Some(Path::new("-"));
    // The file first: a path that cannot be written is an error before anything starts.
    let out: Option<Box<dyn Write>> = match &a.write {
        Some(_) if to_stdout => Some(Box::new(std::io::stdout())),
        Some(path) => {
            Some(Box::new(std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?))
        }
        None => None,
    };
    let req = CaptureRequest { target: a.target.clone(), snaplen: a.snaplen, count: a.count, recent: a.recent };
    let mut client = Client::connect(socket)?;
    let started: CaptureStarted = client.call(&Request::Capture(req)).map_err(anyhow::Error::from)?;
    let (mut reader, mut writer) = client.into_stream();
    let mut sink = match out {
        Some(out) => {
            let mut w = PcapNgWriter::new(BufWriter::new(out)).context("cannot write the pcapng header")?;
            for i in &started.interfaces {
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: started.snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(i.name.clone())),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                            "tapyard port {} ({}) on network {}",
                            i.port, i.mac, i.network
                        ))),
                        // pcap-file writes timestamps in nanoseconds.
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                w.write_pcapng_block(idb).context("cannot write the pcapng interfaces")?;
            }
            w.get_mut().flush().ok();
            Sink::Pcap(w)
        }
        None => Sink::Lines,
    };
    if !a.recent {
        let names: Vec<&str> = started.interfaces.iter().map(|i| i.name.as_str()).collect();
        eprintln!("tapyard: capturing on {} (Ctrl-C to stop)", names.join(", "));
    }
    // Ctrl-C asks the daemon to stop, so the end record (with the loss count) still comes.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let mut asked_stop = false;
    let mut frames = 0u64;
    let mut buf = vec![0u8; 1 << 17];
    // Short read timeouts let the loop see Ctrl-C while no frame comes.
    let _ = reader.get_ref().set_read_timeout(Some(Duration::from_millis(200)));
    let (captured, dropped) = loop {
        if interrupted.load(Ordering::Relaxed) && !asked_stop {
            asked_stop = true;
            let _ = writer.write_all(b"stop\n");
        }
        let mut hdr = [0u8; CaptureRecord::LEN];
        match read_full(&mut reader, &mut hdr, &interrupted) {
            Ok(true) => {}
            Ok(false) => bail!("the daemon ended the capture without its end record"),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("lost the capture stream"),
        }
        let Some(rec) = CaptureRecord::decode(&hdr) else {
            bail!("the daemon sent a capture record this CLI cannot read (kind {})", hdr[0]);
        };
        let len = rec.cap_len as usize;
        if len > buf.len() {
            bail!("the daemon sent a capture record of {len} bytes, more than a frame");
        }
        if !read_full(&mut reader, &mut buf[..len], &interrupted).context("lost the capture stream")? {
            bail!("the capture stream ended inside a record");
        }
        match rec.kind {
            RecordKind::End => {
                if len < 16 {
                    bail!("short end record from the daemon");
                }
                let n = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap_or_default());
                break (n(0), n(8));
            }
            RecordKind::Frame => {
                if a.count.is_some_and(|c| frames >= c) {
                    continue;
                }
                frames += 1;
                let data = &buf[..len];
                match &mut sink {
                    Sink::Pcap(w) => {
                        let epb = EnhancedPacketBlock {
                            interface_id: rec.interface,
                            timestamp: Duration::from_nanos(rec.ts_ns),
                            original_len: rec.orig_len,
                            data: Cow::Borrowed(data),
                            options: vec![EnhancedPacketOption::Flags(u32::from(rec.dir & 3))],
                        };
                        if let Err(e) = w.write_pcapng_block(epb) {
                            return write_failed(e.to_string());
                        }
                        if let Err(e) = w.get_mut().flush() {
                            return write_failed(e.to_string());
                        }
                    }
                    Sink::Lines => {
                        let name = started.interfaces.get(rec.interface as usize).map_or("?", |i| i.name.as_str());
                        super::out(&summary(rec.ts_ns, name, rec.dir, rec.orig_len, data));
                    }
                }
            }
        }
    };
    if let Sink::Pcap(w) = &mut sink {
        // pcapng §4.6: the loss, per interface, as the capture's statistics.
        for (i, _) in started.interfaces.iter().enumerate() {
            let isb = InterfaceStatisticsBlock {
                interface_id: i as u32,
                timestamp: 0,
                options: vec![
                    InterfaceStatisticsOption::IsbIfDrop(if i == 0 { dropped } else { 0 }),
                    InterfaceStatisticsOption::IsbOsDrop(if i == 0 { dropped } else { 0 }),
                ],
            };
            let _ = w.write_pcapng_block(isb);
        }
        let _ = w.get_mut().flush();
    }
    let what = if a.recent { "recorded" } else { "captured" };
    eprintln!(
        "tapyard: {frames} frames {what} ({captured} sent by the daemon), {dropped} dropped (the reader was behind)"
    );
    Ok(0)
}

fn write_failed(e: String) -> anyhow::Result<i32> {
    // A reader that went away (`... -w - | head`) ends the capture quietly.
    if e.contains("Broken pipe") {
        return Ok(0);
    }
    bail!("cannot write the capture: {e}")
}

/// Fills `buf`; false on a clean end of stream before the first byte. Read
/// timeouts only let the caller look at `interrupted` (and ask the daemon
/// to stop); they are retried here after that.
fn read_full(r: &mut impl Read, buf: &mut [u8], interrupted: &AtomicBool) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if got == 0 && interrupted.load(Ordering::Relaxed) {
                    return Err(std::io::ErrorKind::Interrupted.into());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One line per frame, tcpdump-like: time, port and direction, then what
/// the headers say (Ethernet; ARP, IPv4 with ICMP, TCP or UDP).
pub fn summary(ts_ns: u64, port: &str, dir: u8, len: u32, frame: &[u8]) -> String {
    let secs = ts_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let us = (ts_ns % 1_000_000_000) / 1000;
    let arrow = match dir {
        1 => "In ",
        2 => "Out",
        _ => "?  ",
    };
    format!("{h:02}:{m:02}:{s:02}.{us:06} {port} {arrow} {} length {len}", describe(frame))
}

fn describe(frame: &[u8]) -> String {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return "malformed Ethernet frame".into();
    };
    let macs = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => {
            let f = |m: [u8; 6]| crate::wire::MacAddr(m).to_string();
            format!("{} > {}", f(e.source()), f(e.destination()))
        }
        _ => String::new(),
    };
    let l3 = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
            let l4 = match &p.transport {
                Some(TransportSlice::Icmpv4(i)) => {
                    use etherparse::Icmpv4Type::*;
                    match i.icmp_type() {
                        EchoRequest(e) => format!("ICMP echo request, id {}, seq {}", e.id, e.seq),
                        EchoReply(e) => format!("ICMP echo reply, id {}, seq {}", e.id, e.seq),
                        t => format!("ICMP {t:?}"),
                    }
                }
                Some(TransportSlice::Tcp(t)) => {
                    return format!("{macs}, IPv4 {src}.{} > {dst}.{}: TCP", t.source_port(), t.destination_port())
                }
                Some(TransportSlice::Udp(u)) => {
                    return format!("{macs}, IPv4 {src}.{} > {dst}.{}: UDP", u.source_port(), u.destination_port())
                }
                _ => format!("protocol {}", ip.header().protocol().0),
            };
            format!("IPv4 {src} > {dst}: {l4}")
        }
        Some(NetSlice::Ipv6(ip)) => {
            format!("IPv6 {} > {}", ip.header().source_addr(), ip.header().destination_addr())
        }
        Some(NetSlice::Arp(arp)) => match arp.operation() {
            etherparse::ArpOperation::REQUEST => format!(
                "ARP who-has {} tell {}",
                ipv4_of(arp.target_protocol_addr()),
                ipv4_of(arp.sender_protocol_addr())
            ),
            etherparse::ArpOperation::REPLY => {
                format!("ARP reply {} is-at {}", ipv4_of(arp.sender_protocol_addr()), mac_of(arp.sender_hw_addr()))
            }
            op => format!("ARP op {}", op.0),
        },
        None => match &p.link {
            Some(etherparse::LinkSlice::Ethernet2(e)) => format!("ethertype {:#06x}", e.ether_type().0),
            _ => "unknown".into(),
        },
    };
    format!("{macs}, {l3}")
}

fn ipv4_of(b: &[u8]) -> String {
    <[u8; 4]>::try_from(b).map(|a| std::net::Ipv4Addr::from(a).to_string()).unwrap_or_else(|_| "?".into())
}

fn mac_of(b: &[u8]) -> String {
    <[u8; 6]>::try_from(b).map(|a| crate::wire::MacAddr(a).to_string()).unwrap_or_else(|_| "?".into())
}
