//! Network namespaces and the interfaces tapyard puts into them.
//!
//! A namespace is named the way `connect` accepts it: a name under
//! `/run/netns` (what `ip netns add` makes), a path to a namespace file
//! (`/proc/123/ns/net`, a bind mount), or `pid:N`. It is identified by the
//! device and inode of that file, so a namespace deleted and re-created under
//! the same name is recognised as a different one.
//!
//! Moving and configuring links is done with iproute2 (`ip`), entering a
//! namespace with util-linux `nsenter`: both are on every machine that has
//! network namespaces, and they keep this module free of hand-written
//! netlink. It runs only on the control plane, never per packet.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tapyard_ipam::Ipv4Net;

use super::proto::ApiError;
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
            "invalid namespace {spec:?}: give a name under {NETNS_RUN_DIR}, a path, or pid:N"
        )));
    }
    Ok(Path::new(NETNS_RUN_DIR).join(spec))
}

/// Resolves `spec` to an existing namespace.
pub fn resolve(spec: &str) -> Result<Netns, ApiError> {
    let path = spec_path(spec)?;
    let md = std::fs::metadata(&path).map_err(|e| {
        ApiError::not_found(format!(
            "network namespace {spec:?} not found ({}: {e}); create it first, e.g. `ip netns add NAME`",
            path.display()
        ))
    })?;
    Ok(Netns { spec: spec.to_string(), path, dev: md.dev(), ino: md.ino() })
}

impl Netns {
    /// Whether the namespace file still names the same namespace.
    pub fn still_exists(&self) -> bool {
        std::fs::metadata(&self.path).map(|md| md.dev() == self.dev && md.ino() == self.ino).unwrap_or(false)
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

fn run(cmd: &mut Command, what: &str) -> Result<(), ApiError> {
    let out = cmd.output().map_err(|e| {
        ApiError::system(format!(
            "{what}: cannot run {:?}: {e}; is iproute2 (ip) and util-linux (nsenter) installed?",
            cmd.get_program()
        ))
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(ApiError::system(format!("{what}: {}", err.trim())))
}

fn in_ns(ns: &Netns) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path.display())).arg("--").arg("ip");
    c
}

/// Moves interface `dev` (in the daemon's namespace) into `ns`, renames it
/// `ifname`, sets its MAC and MTU, brings it up, and assigns `ip` if given.
pub fn move_and_configure(
    dev: &str,
    ns: &Netns,
    ifname: &str,
    mac: MacAddr,
    mtu: u32,
    ip: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
) -> Result<(), ApiError> {
    run(
        Command::new("ip").args(["link", "set", "dev", dev, "netns"]).arg(&ns.path),
        &format!("moving {dev} into namespace {}", ns.spec),
    )?;
    run(
        in_ns(ns).args([
            "link",
            "set",
            "dev",
            dev,
            "name",
            ifname,
            "address",
            &mac.to_string(),
            "mtu",
            &mtu.to_string(),
        ]),
        &format!("configuring {ifname} in namespace {}", ns.spec),
    )
    .map_err(|e| {
        if e.message.contains("File exists") {
            ApiError::conflict(format!(
                "interface {ifname} already exists in namespace {}; pick another with --ifname",
                ns.spec
            ))
        } else {
            e
        }
    })?;
    run(in_ns(ns).args(["link", "set", "dev", ifname, "up"]), &format!("bringing up {ifname} in {}", ns.spec))?;
    if let Some(ip) = ip {
        run(
            in_ns(ns).args(["addr", "add", &ip.to_string(), "dev", ifname]),
            &format!("assigning {ip} to {ifname} in {}", ns.spec),
        )?;
    }
    if let Some(gw) = gateway {
        run(
            in_ns(ns).args(["route", "replace", "default", "via", &gw.to_string(), "dev", ifname]),
            &format!("adding the default route via {gw} in {}", ns.spec),
        )?;
    }
    Ok(())
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

    #[test]
    fn ip_parsing() {
        assert_eq!(parse_ip("10.0.0.2").unwrap(), ("10.0.0.2".parse().unwrap(), None));
        assert_eq!(parse_ip("10.0.0.2/24").unwrap(), ("10.0.0.2".parse().unwrap(), Some(24)));
        assert!(parse_ip("10.0.0.2/33").is_err());
        assert!(parse_ip("10.0.0").is_err());
    }
}
