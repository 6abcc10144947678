//! The control protocol between the CLI (or any program) and the daemon:
//! JSON lines over a UNIX stream socket, one request and one response per
//! line, in order. Documented for other programs in `docs/PROTOCOL.md`.
//!
//! ```text
//! → {"op":"network_create","name":"blue","subnet":"10.10.0.0/24"}
//! ← {"ok":true,"result":{"name":"blue",...}}
//! → {"op":"network_rm","name":"nope"}
//! ← {"ok":false,"error":{"kind":"not_found","message":"no network named \"nope\"; ..."}}
//! ```

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use crate::stats::PortCounters;

/// Protocol version, reported by `ping`; bumped on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ping,
    NetworkCreate {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subnet: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gateway: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ageing_secs: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fdb_capacity: Option<usize>,
    },
    NetworkLs,
    NetworkInspect {
        name: String,
    },
    NetworkRm {
        name: String,
        #[serde(default)]
        force: bool,
    },
    Connect {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mac: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<String>,
    },
    Disconnect {
        network: String,
        netns: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ifname: Option<String>,
    },
    PortLs {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    FdbShow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    FdbFlush {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Stops the daemon as SIGTERM does: ports removed, socket removed.
    Shutdown,
}

/// The class of an error, for programs; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or an argument is invalid.
    BadRequest,
    /// A named network, namespace or port does not exist.
    NotFound,
    /// The thing already exists, or would clash with something that does.
    Conflict,
    /// The thing is in use (a network with ports attached).
    Busy,
    /// The operating system refused (TAP creation, moving an interface, ...).
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::Conflict, m)
    }
    pub fn system(m: impl Into<String>) -> ApiError {
        Self::new(ErrorKind::System, m)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    pub fn from_result(r: Result<serde_json::Value, ApiError>) -> Response {
        match r {
            Ok(v) => Response { ok: true, result: Some(v), error: None },
            Err(e) => Response { ok: false, result: None, error: Some(e) },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInfo {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub workers: usize,
    pub socket: String,
    pub state_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub mtu: u32,
    pub ageing_secs: u32,
    pub fdb_capacity: usize,
    pub fdb_entries: usize,
    pub ports: Vec<PortInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: u16,
    pub network: String,
    /// The namespace as given to `connect`.
    pub netns: String,
    pub ifname: String,
    pub mac: String,
    pub ip: Option<String>,
    pub worker: usize,
    pub counters: PortCounters,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryInfo {
    pub mac: String,
    pub network: String,
    pub port: u16,
    pub netns: String,
    pub ifname: String,
    pub age_secs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_json_with_an_op() {
        let r = Request::NetworkCreate {
            name: "a".into(),
            subnet: Some("10.0.0.0/24".into()),
            gateway: None,
            mtu: None,
            ageing_secs: None,
            fdb_capacity: None,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"op":"network_create","name":"a","subnet":"10.0.0.0/24"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert_eq!(serde_json::from_str::<Request>(r#"{"op":"ping"}"#).unwrap(), Request::Ping);
    }

    #[test]
    fn unknown_ops_and_fields_are_rejected() {
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"network_rm","name":"a","bogus":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"name":"a"}"#).is_err());
    }
}
