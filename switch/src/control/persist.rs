//! The daemon's persistent state: networks and the ports attached to them,
//! in `STATE_DIR/state.json`, rewritten atomically on every change (temporary
//! file, fsync, rename, fsync of the directory), so a daemon killed at any
//! moment finds either the old or the new state, never a torn one.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tapyard_ipam::{Addressing, Ipv4Net};

use super::publish::Publish;
use crate::impair::LinkSettings;
use crate::port::Offloads;
use crate::wire::MacAddr;

pub const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub addressing: Option<Addressing>,
    pub mtu: u32,
    pub ageing_secs: u32,
    pub fdb_capacity: usize,
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    #[serde(default)]
    pub reservations: BTreeMap<MacAddr, Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Never attached to a router, and no egress.
    #[serde(default)]
    pub internal: bool,
    /// Whether the network reaches the world beyond the host through the
    /// uplink (`network create --egress`). State files from before egress
    /// existed get the default, as `network create` does.
    #[serde(default)]
    pub egress: EgressMode,
    /// `network create --port-security on|off`: the default of its ports
    /// that do not choose; absent: on for ports with an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
}

impl NetworkSpec {
    /// Whether this network's traffic leaves through the uplink: it asked
    /// for egress, has a subnet and is not internal.
    pub fn has_egress(&self) -> bool {
        self.egress == EgressMode::Nat && self.addressing.is_some() && !self.internal
    }
}

/// How a network reaches the world beyond the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Through the uplink, the source translated to the host's address
    /// (masquerade), as Docker's bridge networks.
    #[default]
    Nat,
    /// Not at all.
    None,
}

impl std::fmt::Display for EgressMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EgressMode::Nat => "nat",
            EgressMode::None => "none",
        })
    }
}

pub fn default_lease_secs() -> u32 {
    3600
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub network: String,
    pub netns: String,
    pub ifname: String,
    pub mac: MacAddr,
    pub ip: Option<Ipv4Net>,
    /// Identity of the namespace when the port was made: a namespace
    /// re-created under the same name is a different one, and is not reattached.
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// Created with `--offload off`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_offload: bool,
    /// A vhost-user port (then `netns` and `ifname` are empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VhostSpec>,
    /// An AF_XDP port (`connect --kind afxdp`): `ifname` is the veth's end
    /// in `netns`, this its other end, in the daemon's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub afxdp: Option<XdpSpec>,
    /// Published host ports (`--publish`), with the host port the kernel
    /// chose for those that left it open: a restart reserves the same again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Publish>,
    /// `connect`'s `owner` (the CNI plugin's container id); absent in state
    /// files of ports made without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The container using the port as its engine names it (a Docker
    /// endpoint's container), found by the daemon after the container
    /// starts; shown by `port ls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<super::proto::Container>,
    /// Impairments and link state (`port set`); absent: a plain, connected link.
    #[serde(default, skip_serializing_if = "LinkSettings::is_plain")]
    pub link: LinkSettings,
    /// `--port-security on|off`; absent: the default (on for a TAP port
    /// with an address or on a network with a subnet; `Daemon::security_of`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_security: Option<bool>,
    /// `--storm-limit`: flooded frames per second; absent: the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm_limit: Option<u32>,
}

impl PortSpec {
    /// The offloads to ask the kernel for on this port's TAP.
    pub fn offloads(&self) -> Offloads {
        if self.no_offload {
            Offloads::NONE
        } else {
            Offloads::ALL
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpSpec {
    /// The switch's end of the veth pair (in the daemon's namespace).
    pub switch_ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhostSpec {
    pub socket: PathBuf,
    pub mode: crate::port::vhost::Mode,
    pub queues: u16,
    /// Server mode: the socket's permission bits (`--socket-mode`). State
    /// files from before the option get the default.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// Server mode: the socket's group id (`--socket-group`, resolved when
    /// the port was made); none: the group the kernel gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_gid: Option<u32>,
}

fn default_socket_mode() -> u32 {
    crate::port::vhost::DEFAULT_SOCKET_MODE
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: Vec<NetworkSpec>,
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub routers: Vec<RouterSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterSpec {
    pub name: String,
    /// Attached networks.
    pub networks: Vec<String>,
    /// Static routes: prefix via next hop (which lies in an attached network).
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Loads the state; a missing file is an empty state. A file that does not
/// parse is an error naming it: nothing is discarded silently.
pub fn load(dir: &Path) -> anyhow::Result<State> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(State { version: STATE_VERSION, ..State::default() })
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is corrupt ({e}); move it aside to start with no networks, or fix it by hand",
            path.display()
        )
    })?;
    if state.version != STATE_VERSION {
        anyhow::bail!(
            "{} has state version {}, this tapyard reads version {STATE_VERSION}",
            path.display(),
            state.version
        );
    }
    Ok(state)
}

/// Writes `contents` to `path` atomically and durably.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

pub fn save(dir: &Path, state: &State) -> std::io::Result<()> {
    let mut s = state.clone();
    s.version = STATE_VERSION;
    let mut bytes = serde_json::to_vec_pretty(&s).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(&state_path(dir), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapyard-persist-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_missing_file() {
        let d = tmpdir("rt");
        assert!(load(&d).unwrap().networks.is_empty());
        let st = State {
            version: STATE_VERSION,
            networks: vec![NetworkSpec {
                name: "a".into(),
                addressing: Some(Addressing::new("10.0.0.0/24".parse().unwrap(), None).unwrap()),
                mtu: 1500,
                ageing_secs: 300,
                fdb_capacity: 4096,
                ip_range: None,
                aux_addresses: BTreeMap::from([("host".to_string(), "10.0.0.200".parse().unwrap())]),
                reservations: BTreeMap::from([("02:00:00:00:00:07".parse().unwrap(), "10.0.0.7".parse().unwrap())]),
                dns: vec![],
                domain: None,
                lease_secs: 600,
                internal: false,
                egress: EgressMode::None,
                port_security: None,
            }],
            ports: vec![PortSpec {
                network: "a".into(),
                netns: "ns1".into(),
                ifname: "eth0".into(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                ip: Some("10.0.0.2/24".parse().unwrap()),
                netns_dev: 4,
                netns_ino: 4026532000,
                no_offload: false,
                vhost: None,
                afxdp: None,
                publish: vec![],
                owner: None,
                container: None,
                link: LinkSettings::default(),
                port_security: None,
                storm_limit: None,
            }],
            routers: vec![],
        };
        save(&d, &st).unwrap();
        assert_eq!(load(&d).unwrap(), st);
        // No publish: no key, so a state file reads the same to an older tapyard.
        let text = fs::read_to_string(state_path(&d)).unwrap();
        assert!(!text.contains("publish"), "{text}");
        assert!(!text.contains("owner"), "no owner, no key: {text}");
        // With published ports: kept, address and protocol included.
        let mut with = st.clone();
        with.ports[0].publish = crate::control::publish::parse("127.0.0.1:8080-8081:80-81/udp").unwrap();
        with.ports[0].publish.extend(crate::control::publish::parse("9090:90").unwrap());
        save(&d, &with).unwrap();
        let back = load(&d).unwrap();
        assert_eq!(back, with);
        assert_eq!(back.ports[0].publish.len(), 3);
        // A CNI port's owner (the container id) survives a restart: DEL finds it by it.
        with.ports[0].owner = Some("3f1c0ffee".into());
        save(&d, &with).unwrap();
        assert_eq!(load(&d).unwrap().ports[0].owner.as_deref(), Some("3f1c0ffee"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_port_saved_before_publish_has_none() {
        let old = r#"{"network":"a","netns":"ns1","ifname":"eth0","mac":"02:00:00:00:00:01","ip":null,
                      "netns_dev":4,"netns_ino":4026532000}"#;
        let p: PortSpec = serde_json::from_str(old).unwrap();
        assert!(p.publish.is_empty());
    }

    #[test]
    fn a_vhost_port_saved_before_socket_modes_gets_the_default_mode() {
        let old = r#"{"socket":"/run/vm.sock","mode":"server","queues":2}"#;
        let v: VhostSpec = serde_json::from_str(old).unwrap();
        assert_eq!(v.socket_mode, 0o660);
        assert_eq!(v.socket_gid, None);
        let new = VhostSpec { socket_mode: 0o600, socket_gid: Some(36), ..v };
        let back: VhostSpec = serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back, new);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let d = tmpdir("bad");
        fs::write(state_path(&d), b"{\"version\":1,\"networks\":[{\"name\":").unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
