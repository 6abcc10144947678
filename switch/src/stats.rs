//! Per-port counters: what came in, what went out, and every drop by name
//! (STYLE §5). Written by workers with relaxed atomics, read by the control
//! plane; a worker adds to them once per burst where it can, not per frame.
//!
//! Ordering: counters are statistics, not synchronisation. `Relaxed` is
//! enough because no decision is made from them; the control plane may see a
//! burst's packets before its bytes, never a torn value.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Every reason a frame is not delivered, each with its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than an Ethernet header (counted on the ingress port).
    Runt,
    /// Source MAC is multicast, broadcast or all-zero: no station sends from
    /// one (IEEE 802.1Q §8.7 learns only individual addresses).
    BadSrcMac,
    /// The destination was learned on the port the frame came in on.
    Hairpin,
    /// Larger than the network's MTU plus the Ethernet header.
    Oversize,
    /// The egress interface is down (write returned EIO; counted on the egress port).
    LinkDown,
    /// The egress queue is full (write would block; counted on the egress port).
    QueueFull,
    /// A frame for the gateway found its queue full (or was too large to punt).
    GatewayFull,
    /// An offloaded frame (GSO or partial checksum) whose headers do not
    /// allow finishing it in software for an egress without offloads.
    BadOffload,
    /// A VLAN-tagged frame addressed to a gateway: tagged frames are bridged
    /// as opaque L2 frames, never routed or answered (wire module doc); or
    /// any tagged frame from a port with port security, whose addresses
    /// inside the tag go unchecked.
    VlanTagged,
    /// Routed, larger than the egress MTU, without Don't Fragment: tapyard
    /// does not fragment (also counted as the router's `too_big`).
    TooBig,
    /// Lost on purpose by a port's `loss` impairment (`port set --loss`).
    ImpairLoss,
    /// A port's impairment held `limit` frames (or its frame memory was
    /// full) and could hold no more (`port set --limit`).
    ImpairLimit,
    /// The port's link is cut (`port set --down`): frames to and from it are dropped.
    LinkDownAdmin,
    /// Port security: the source MAC (or a DHCP request's client hardware
    /// address) is not the port's.
    SpoofedMac,
    /// Port security: the IPv4 source is not one of the port's addresses
    /// (or the header cannot be read to check it).
    SpoofedIp,
    /// Port security: an ARP packet whose sender is not the port's MAC and
    /// address (a forged reply or announcement), or not Ethernet/IPv4 ARP.
    SpoofedArp,
    /// Port security: a DHCP server's (or relay's) message from a port: only
    /// the gateway answers DHCP on a network.
    RogueDhcp,
    /// Storm control: a broadcast, multicast or unknown-unicast frame over
    /// the port's flooding limit for this second.
    Storm,
}

impl DropReason {
    pub const ALL: [DropReason; 18] = [
        DropReason::Runt,
        DropReason::BadSrcMac,
        DropReason::Hairpin,
        DropReason::Oversize,
        DropReason::LinkDown,
        DropReason::QueueFull,
        DropReason::GatewayFull,
        DropReason::BadOffload,
        DropReason::VlanTagged,
        DropReason::TooBig,
        DropReason::ImpairLoss,
        DropReason::ImpairLimit,
        DropReason::LinkDownAdmin,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::RogueDhcp,
        DropReason::Storm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::BadSrcMac => "bad_src_mac",
            DropReason::Hairpin => "hairpin",
            DropReason::Oversize => "oversize",
            DropReason::LinkDown => "link_down",
            DropReason::QueueFull => "queue_full",
            DropReason::GatewayFull => "gateway_full",
            DropReason::BadOffload => "bad_offload",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::TooBig => "too_big",
            DropReason::ImpairLoss => "impair_loss",
            DropReason::ImpairLimit => "impair_limit",
            DropReason::LinkDownAdmin => "link_down_admin",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::RogueDhcp => "rogue_dhcp",
            DropReason::Storm => "storm",
        }
    }
}

const N_REASONS: usize = DropReason::ALL.len();

/// Queues whose receive counts are kept apart (`rx_queue_packets`); frames
/// read on higher queues are counted on the last one.
pub const QUEUE_STATS: usize = 8;

/// Declares the per-port counters once: the shared atomic struct
/// ([`PortStats`]), its point-in-time copy as the control socket reports it
/// ([`PortCounters`]), and the copy between them, all from one list of
/// names, so a counter cannot be added to one and forgotten in the other.
macro_rules! port_counters {
    ($($(#[$m:meta])* $field:ident,)*) => {
        /// Counters of one port.
        #[derive(Default)]
        pub struct PortStats {
            $($(#[$m])* pub $field: AtomicU64,)*
            /// Frames read per queue (which worker carried how much).
            pub rx_queue_packets: [AtomicU64; QUEUE_STATS],
            drops: [AtomicU64; N_REASONS],
        }

        /// A point-in-time copy of [`PortStats`], as the control socket reports it.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
        pub struct PortCounters {
            $($(#[$m])* pub $field: u64,)*
            /// Frames read per queue (queue i is read by worker i; the last entry also counts higher queues).
            #[serde(default)]
            pub rx_queue_packets: Vec<u64>,
            /// Drops by reason name, every reason listed (zero included) so scripts can rely on the keys.
            pub drops: std::collections::BTreeMap<String, u64>,
        }

        impl PortStats {
            pub fn snapshot(&self) -> PortCounters {
                PortCounters {
                    $($field: self.$field.load(Relaxed),)*
                    rx_queue_packets: self.rx_queue_packets.iter().map(|c| c.load(Relaxed)).collect(),
                    drops: DropReason::ALL.iter().map(|&r| (r.name().to_string(), self.drops(r))).collect(),
                }
            }
        }
    };
}

port_counters! {
    rx_packets,
    rx_bytes,
    tx_packets,
    tx_bytes,
    /// Read errors other than "no more frames" (the port is then checked for removal).
    rx_errors,
    /// Write errors other than the named drops.
    tx_errors,
    /// Source MACs that could not be learned because the network's table is full.
    /// The frame itself is still forwarded.
    learn_full,
    /// Entries of this port evicted so that a port under its fair share of
    /// the forwarding table could learn.
    learn_evicted,
    /// Forwarding-table entries learned on this port (a gauge the control
    /// plane refreshes every second; workers read it to share the table fairly).
    fdb_entries,
}

impl PortStats {
    #[inline]
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Relaxed);
    }

    #[inline]
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }
}

impl PortCounters {
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// Counts a worker accumulates over one burst and adds to [`PortStats`] once.
#[derive(Default, Clone, Copy)]
pub struct BurstCount {
    pub packets: u64,
    pub bytes: u64,
}

impl BurstCount {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// Declares a struct of named counters once: the field is the name, so a
/// listing cannot forget one or spell it differently (as Firecracker's
/// metrics structs do). Generates `snapshot()`, every counter by name, zeros
/// included, for the control socket; `NAMES` for the docs' tables; `HELP`,
/// each counter's doc comment (Prometheus' `# HELP`), so every field needs one.
macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[doc = $doc:literal])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Default, Debug)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: AtomicU64,)*
        }

        impl $name {
            /// Every counter's name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Every counter's doc comment, in declaration order (lines joined).
            pub const HELP: &'static [&'static str] = &[$(concat!($($doc),*)),*];

            /// Every counter by name, zeros included.
            pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
                [$((stringify!($field), &self.$field)),*]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.load(Relaxed)))
                    .collect()
            }
        }
    };
}

pub(crate) use counters;

counters! {
    /// Counters of one router (RFC 1812 terms), written by workers (once per
    /// burst) and the gateway thread; kept per router and per ingress network.
    pub struct RouterStats {
        /// Packets forwarded between networks.
        routed,
        /// Packets whose TTL would have reached 0 (Time Exceeded sent).
        ttl_expired,
        /// Packets with no route (Network Unreachable sent).
        no_route,
        /// Packets whose next hop has no known MAC (resolved by ARP, else Host Unreachable sent).
        unresolved,
        /// DF packets larger than the egress MTU (Fragmentation Needed sent).
        frag_needed,
        /// Packets without DF larger than the egress MTU: dropped (not fragmented).
        too_big,
        /// ICMP errors sent (after rate limiting).
        icmp_sent,
    }
}

counters! {
    /// Counters of one network's gateway responder (written by the gateway thread).
    pub struct GatewayStats {
        /// DHCPOFFER replies sent.
        dhcp_offer,
        /// DHCPACK replies sent.
        dhcp_ack,
        /// DHCPNAK replies sent.
        dhcp_nak,
        /// DHCP replies of other types sent.
        dhcp_other,
        // DHCP messages dropped by the server, by reason (ipam's `DhcpDrop`):
        /// DHCP messages dropped: shorter than the fixed header, or an option runs past the end.
        truncated,
        /// DHCP messages dropped: without the DHCP magic cookie.
        bad_magic,
        /// DHCP messages dropped: hardware type not Ethernet.
        not_ethernet,
        /// DHCP messages dropped: a BOOTREPLY, or no or an invalid message type option.
        bad_message,
        /// DHCP messages dropped: a message type a server does not handle (OFFER, ACK, NAK from a client).
        unexpected,
        /// DHCP messages dropped: no address left to offer.
        exhausted,
        /// DHCP messages dropped: a REQUEST for another server, or about a lease we do not know.
        not_for_us,
        /// DHCP: a new client refused because its hardware address (its port, with port security) already holds `daemon --dhcp-leases-per-port` addresses.
        per_port_cap,
        /// IPv4/UDP to port 67 whose headers or checksums do not check out.
        dhcp_malformed,
        /// ARP that is truncated or not Ethernet/IPv4.
        arp_malformed,
        /// ARP replies and ICMP echo replies sent by the gateway's smoltcp interface.
        arp_icmp_sent,
        /// Routed packets held while the gateway ARPs for their next hop.
        arp_resolving,
        /// ICMP errors sent for packets the router could not forward.
        icmp_error_sent,
        /// Batches whose DHCP replies were withheld because the lease journal could not be written.
        journal_error,
    }
}

/// Counters of one worker thread, written only by that worker, once per
/// turn of its loop (never per frame), read by the control plane.
///
/// Single writer: the worker adds with a plain load and store (no locked
/// read-modify-write), so a turn costs a few stores to a cache line only
/// its own core writes; the control plane's once-a-second read is the only
/// time the line moves. `CachePadded` keeps two workers' counters off one line.
#[derive(Default, Debug)]
pub struct WorkerStats {
    /// Turns of the loop: one `poll` and the bursts served after it.
    pub turns: AtomicU64,
    /// Turns that found at least one frame.
    pub busy_turns: AtomicU64,
    /// Bursts read (one per port served per turn, frames or not).
    pub bursts: AtomicU64,
    /// Frames read.
    pub frames: AtomicU64,
    /// Nanoseconds spent serving ports in turns that found frames (the
    /// clock is read twice per such turn; a turn without frames counts as idle).
    pub busy_ns: AtomicU64,
    /// Ports on the pending list at the end of the last turn: ports whose
    /// last burst filled up and are served again without waiting in `poll`
    /// (a gauge).
    pub pending: AtomicU64,
}

impl WorkerStats {
    /// Adds one turn's counts. Only the owning worker calls this (see the type's doc).
    #[inline]
    pub fn add_turn(&self, bursts: u64, frames: u64, busy_ns: u64, pending: usize) {
        let add = |c: &AtomicU64, n: u64| c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
        add(&self.turns, 1);
        if frames > 0 {
            add(&self.busy_turns, 1);
            add(&self.bursts, bursts);
            add(&self.frames, frames);
            add(&self.busy_ns, busy_ns);
        } else if bursts > 0 {
            add(&self.bursts, bursts);
        }
        self.pending.store(pending as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counters_list_every_counter_and_read_back() {
        let s = PortStats::default();
        s.tx_errors.fetch_add(3, Relaxed);
        s.drop_n(DropReason::VlanTagged, 2);
        s.rx_queue_packets[1].fetch_add(5, Relaxed);
        let c = s.snapshot();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["tx_errors"], 3);
        assert_eq!(v["rx_queue_packets"][1], 5);
        for r in DropReason::ALL {
            assert!(v["drops"].get(r.name()).is_some(), "{} listed", r.name());
        }
        assert_eq!(v["drops"]["vlan_tagged"], 2);
        assert_eq!(serde_json::from_value::<PortCounters>(v).unwrap(), c, "the CLI reads what the daemon writes");
    }

    #[test]
    fn declared_counters_are_listed_by_their_names() {
        let r = RouterStats::default();
        r.too_big.fetch_add(1, Relaxed);
        let snap = r.snapshot();
        assert_eq!(snap.len(), RouterStats::NAMES.len());
        assert_eq!(snap["too_big"], 1);
        assert_eq!(GatewayStats::default().snapshot().len(), GatewayStats::NAMES.len());
    }
}
