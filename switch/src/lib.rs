//! tapyard: a userspace virtual switch for container network namespaces and VMs.
//!
//! # A frame's path, and the file that owns each stage
//! ```text
//!  port ──────────► parse/decide ─────────────► route / punt ─────────────► egress ──────────► port
//!  port/tap.rs      datapath/classify.rs         datapath/route.rs             datapath/egress.rs  port/*.rs
//!  port/vhost.rs    (L2: datapath/mod.rs decide, (LPM, MTU, TTL, neighbour;    (transmit, flood,    send_batch
//!  recv_batch        table/fdb.rs learning)       punt.rs: to the gateway      gather, offload.rs
//!                                                 with the reason)             finishing, counts)
//!  driven by worker.rs (poll, adopt snapshots, pending list) — control/ stays off this path:
//!  it builds snapshots (control/build.rs), and its gateway (control/gateway.rs) drains the punt queue.
//! ```
//!
//! # Layers (imports point down; `scripts/check-layers.sh` enforces them)
//! - [`wire`]: bytes to named fields; imports nothing of the crate.
//! - [`impair`]: a port's link settings (`port set`, lab files) and the state
//!   they share with the workers; imports nothing of the crate.
//! - [`security`]: what a port may send (port security, storm control) and
//!   the storm meter its workers share; imports `wire` only.
//! - [`packet`]: buffers and ids; imports `wire`.
//! - [`table`] (forwarding and route tables), [`stats`], [`punt`] (the
//!   bounded queue to the gateway): import `wire` and `packet` only.
//! - [`capture`]: the capture rings and flight recorders workers write
//!   (and the control plane drains); imports `packet` only.
//! - [`port`]: fds and guest memory, the only place `unsafe` is allowed.
//! - [`snapshot`]: the immutable configuration workers forward with; names
//!   tables, ports and the punt queue, never the forwarding code.
//! - [`datapath`]: classify, route, egress, and the impairment stages
//!   (`datapath/impair.rs`: per-worker delay lines, shared rate buckets);
//!   reads the snapshot; only the egress stage sends through a port.
//! - [`worker`]: joins ports and the data path.
//! - [`control`] owns the mutable state and is never called from the data
//!   path; it reaches workers only through snapshots and the punt queue.
//!
//! # Error classes
//! Per frame: dropped and counted by [`stats::DropReason`]. Per port: reported
//! to the control plane, which removes the port. Per process: exit.

#![deny(unsafe_code)]

pub mod capture;
pub mod cli;
pub mod clock;
pub mod cni;
pub mod control;
pub mod datapath;
pub mod impair;
pub mod packet;
pub mod port;
pub mod punt;
pub mod security;
pub mod snapshot;
pub mod stats;
pub mod table;
pub mod wire;
pub mod worker;
