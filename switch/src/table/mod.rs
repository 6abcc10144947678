//! The lookup tables the data path consults: the MAC forwarding table each
//! network learns into ([`fdb`], written by workers, shared across snapshots)
//! and the route tables of routers ([`route`], built by the control plane
//! and swapped in whole with a snapshot).
//!
//! They sit below [`snapshot`](crate::snapshot), which names them, and below
//! [`datapath`](crate::datapath), which reads them; they import only `wire`
//! and `packet`. That keeps the arrows one way: the snapshot never reaches
//! into the forwarding code, so the forwarding code can take the snapshot.

#![forbid(unsafe_code)]

pub mod fdb;
pub mod route;

pub use fdb::{Fdb, Learned, Table};
pub use route::{Route, RouteTable};
