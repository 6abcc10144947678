//! tapyard: a userspace virtual switch for container network namespaces.
//!
//! # Layers (data flows one way)
//! ```text
//!   control (CLI socket, config, persistence)      may allocate, block, log
//!      │ publishes Arc<Snapshot>, wakes workers      ▲ bounded WorkerEvent queue
//!      ▼                                             │
//!   worker ── port.recv_batch ─► datapath::decide ─► port.send_batch
//!            (TAP / in-memory)   (parse → learn →     (egress port(s))
//!                                 lookup → verdict)
//! ```
//! - [`wire`] and [`packet`] are at the bottom and import nothing above them.
//! - [`port`] (fds; the only place `unsafe` may appear) and [`datapath`]
//!   (pure decisions) do not know each other.
//! - [`worker`] joins them; [`snapshot`] is the immutable configuration it
//!   forwards with; [`stats`] holds the per-port counters.
//! - [`control`] owns the mutable state and is never called from the data path.
//!   `scripts/check-layers.sh` checks these import rules in CI.
//!
//! # Error classes
//! Per frame: dropped and counted by [`stats::DropReason`]. Per port: reported
//! to the control plane, which removes the port. Per process: exit.

#![deny(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod control;
pub mod datapath;
pub mod packet;
pub mod port;
pub mod punt;
pub mod snapshot;
pub mod stats;
pub mod wire;
pub mod worker;
