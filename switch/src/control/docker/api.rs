//! Asking dockerd which container owns an endpoint: the plugin protocol
//! never names the container (Join carries only the sandbox's namespace
//! path), so the plugin asks Docker's Engine API, `GET /containers/json`,
//! whose entries list each network's `EndpointID`.
//!
//! One request per call, HTTP/1.0 so that dockerd answers without chunked
//! transfer coding and closes the connection at the end of the body; a
//! bounded reply and short timeouts, so a stuck dockerd only delays names.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::control::proto::Container;

/// The most of an answer read: a few hundred bytes per container.
const MAX_REPLY: u64 = 32 << 20;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A container as `GET /containers/json` lists it (only what is used).
#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "NetworkSettings", default)]
    settings: Option<Settings>,
}

#[derive(Debug, Default, Deserialize)]
struct Settings {
    #[serde(rename = "Networks", default)]
    networks: std::collections::BTreeMap<String, Net>,
}

#[derive(Debug, Deserialize)]
struct Net {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
}

/// Every container dockerd knows (running or not) whose networks name one
/// of `endpoints`: endpoint id → the container.
pub fn names(api: &Path, endpoints: &[String]) -> Result<Vec<(String, Container)>, String> {
    from_body(&get(api, "/containers/json?all=1")?, endpoints)
}

fn from_body(body: &[u8], endpoints: &[String]) -> Result<Vec<(String, Container)>, String> {
    let listed: Vec<Listed> =
        serde_json::from_slice(body).map_err(|e| format!("unexpected answer from dockerd: {e}"))?;
    Ok(listed
        .into_iter()
        .flat_map(|c| {
            let shown = shown(&c);
            c.settings
                .unwrap_or_default()
                .networks
                .into_values()
                .filter(|n| endpoints.contains(&n.endpoint_id))
                .map(move |n| (n.endpoint_id, shown.clone()))
                .collect::<Vec<_>>()
        })
        .collect())
}

/// The name `docker ps` shows (its short id when it has none) and the id.
fn shown(c: &Listed) -> Container {
    let name = match c.names.first().map(|n| n.trim_start_matches('/')) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => c.id.chars().take(12).collect(),
    };
    Container { name, id: c.id.clone() }
}

fn get(api: &Path, path: &str) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(api).map_err(|e| format!("cannot reach dockerd at {}: {e}", api.display()))?;
    let io = |e: std::io::Error| format!("dockerd at {}: {e}", api.display());
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(io)?;
    let mut reply = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut reply).map_err(io)?;
    split(&reply)
}

/// The body of a complete HTTP/1.0 answer, if its status is 200.
fn split(reply: &[u8]) -> Result<Vec<u8>, String> {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or("dockerd's answer has no header end")?;
    let head = String::from_utf8_lossy(&reply[..end]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let first = head.lines().next().unwrap_or("");
        return Err(format!("dockerd answered {first:?}"));
    }
    Ok(reply[end + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_container_of_an_endpoint() {
        let body = br#"[{"Id":"3f2a1b9c0d4e5f60718293a4b5c6d7e8","Names":["/web"],
            "NetworkSettings":{"Networks":{"red":{"EndpointID":"ep1"},"blue":{"EndpointID":"ep2"}}}},
            {"Id":"aaaaaaaaaaaaaaaa","Names":[],"NetworkSettings":{"Networks":{"red":{"EndpointID":"ep3"}}}},
            {"Id":"bbbbbbbbbbbbbbbb","Names":["/idle"],"NetworkSettings":null}]"#;
        let reply = [b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n".as_slice(), body].concat();
        let wanted = ["ep2".to_string(), "ep3".to_string(), "ep9".to_string()];
        let mut found = from_body(&split(&reply).unwrap(), &wanted).unwrap();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let c = |name: &str, id: &str| Container { name: name.into(), id: id.into() };
        assert_eq!(
            found,
            [
                ("ep2".to_string(), c("web", "3f2a1b9c0d4e5f60718293a4b5c6d7e8")),
                ("ep3".to_string(), c("aaaaaaaaaaaa", "aaaaaaaaaaaaaaaa"))
            ]
        );
        assert!(from_body(b"{\"message\":\"x\"}", &wanted).is_err());
        assert!(split(b"HTTP/1.0 404 Not Found\r\n\r\n{}").unwrap_err().contains("404"));
        assert!(split(b"garbage").is_err());
    }
}
