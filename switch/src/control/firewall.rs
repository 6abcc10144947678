// TEMPORARY local stub (not committed): replaced by the helper's module.
use super::publish::Publish;
use std::path::Path;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressNet {
    pub name: String,
    pub subnet: tapyard_ipam::Ipv4Net,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub publish: Publish,
    pub container: std::net::Ipv4Addr,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub uplink: String,
    pub egress: Vec<EgressNet>,
    pub published: Vec<Dnat>,
    pub guard: bool,
}
pub struct Firewall;
impl Firewall {
    pub fn new() -> Firewall {
        Firewall
    }
    pub fn check(&self) -> Result<(), String> {
        Ok(())
    }
    pub fn apply(&self, s: &FirewallSpec) -> Result<(), String> {
        let mut t = String::from("table ip tapyard\ndelete table ip tapyard\ntable ip tapyard {\n chain post { type nat hook postrouting priority srcnat;\n");
        for e in &s.egress {
            t += &format!("  ip saddr {} oifname != \"{}\" masquerade\n", e.subnet, s.uplink);
        }
        t += " }\n}\n";
        let mut c = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        use std::io::Write;
        c.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        c.wait().unwrap();
        Ok(())
    }
    pub fn remove(&self) -> Result<(), String> {
        let _ = std::process::Command::new("nft").args(["delete", "table", "ip", "tapyard"]).status();
        Ok(())
    }
}
pub fn enable_forwarding(_: &Path, _: &str) -> Result<bool, String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| e.to_string())?;
    Ok(false)
}
pub fn restore_forwarding(_: &Path) -> Result<(), String> {
    Ok(())
}
