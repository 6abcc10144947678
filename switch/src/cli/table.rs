//! Human-readable tables for the listings (`--json` gives the full data).

#![forbid(unsafe_code)]

use crate::control::proto::{FdbEntryInfo, LeaseInfo, NetworkInfo, PortInfo, PublishInfo, RouteInfo, RouterInfo};

/// Prints rows with columns padded to their widest cell.
fn print(header: &[&str], rows: &[Vec<String>]) {
    super::out(render(header, rows).trim_end_matches('\n'));
}

/// Rows with columns padded to their widest cell, a line each (`print`'s text).
pub(super) fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:<1$}", c, w[i])).collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn networks(nets: &[NetworkInfo]) {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.subnet.clone().unwrap_or_else(|| "-".into()),
                n.gateway.clone().unwrap_or_else(|| "-".into()),
                n.mtu.to_string(),
                n.ports.len().to_string(),
                format!("{}/{}", n.fdb_entries, n.fdb_capacity),
                if n.pool_size > 0 { format!("{}/{}", n.pool_used, n.pool_size) } else { "-".into() },
            ]
        })
        .collect();
    print(&["NAME", "SUBNET", "GATEWAY", "MTU", "PORTS", "FDB", "POOL"], &rows);
}

pub fn ports(ports: &[PortInfo]) {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let c = &p.counters;
            let drops: Vec<String> = c.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
            // A vhost-user port has no namespace: show its socket, link
            // state and the virtio features its frontend acknowledged.
            let (netns, ifname, features) = match &p.vhost {
                Some(v) => (
                    format!("vhost-user({})", v.mode),
                    v.socket.clone(),
                    if v.connected { format!("up:{}", v.features.join(",")) } else { "down".into() },
                ),
                // A container's port: its name says more than its sandbox's path.
                None => (
                    p.container.as_ref().map_or_else(|| p.netns.clone(), |c| c.name.clone()),
                    p.ifname.clone(),
                    // An AF_XDP port has no offloads: say what it is instead.
                    match &p.afxdp {
                        Some(x) => format!("afxdp({}):{}", x.mode.split(',').next().unwrap_or(""), x.switch_ifname),
                        None => p.offloads.join(","),
                    },
                ),
            };
            vec![
                p.id.to_string(),
                p.network.clone(),
                netns,
                ifname,
                p.mac.clone(),
                p.ip.clone().unwrap_or_else(|| "-".into()),
                workers(p),
                format!("{}/{}", c.rx_packets, c.rx_bytes),
                format!("{}/{}", c.tx_packets, c.tx_bytes),
                if drops.is_empty() { "0".into() } else { drops.join(",") },
                format!("{}/{}", c.rx_errors, c.tx_errors),
                p.queues.to_string(),
                if features.is_empty() { "-".into() } else { features },
                link(p),
                publish(p),
            ]
        })
        .collect();
    print(
        &[
            "ID",
            "NETWORK",
            "NETNS",
            "IF",
            "MAC",
            "IP",
            "WORKERS",
            "RX PKTS/BYTES",
            "TX PKTS/BYTES",
            "DROPS",
            "ERR RX/TX",
            "QUEUES",
            "OFFLOADS/FEATURES",
            "LINK",
            "PUBLISH",
        ],
        &rows,
    );
}

/// Its published ports as `docker ps` shows them, comma-separated; those
/// not forwarded marked `(waiting)` (no address yet) or `(inactive)` (the
/// host port was taken while the daemon was down).
fn publish(p: &PortInfo) -> String {
    if p.publish.is_empty() {
        return "-".into();
    }
    p.publish.iter().map(PublishInfo::shown).collect::<Vec<_>>().join(",")
}

/// The workers serving a port, queue by queue: `0,1` is queue 0 on worker 0,
/// queue 1 on worker 1 (a single number was always worker 0 for a
/// multi-queue port, which every worker serves).
fn workers(p: &PortInfo) -> String {
    if p.workers.is_empty() {
        // A daemon from before the `workers` field.
        return p.worker.to_string();
    }
    p.workers.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(",")
}

pub fn fdb(entries: &[FdbEntryInfo]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.mac.clone(),
                e.network.clone(),
                if e.netns.is_empty() { e.port.to_string() } else { format!("{} ({} {})", e.port, e.netns, e.ifname) },
                format!("{}s", e.age_secs),
            ]
        })
        .collect();
    print(&["MAC", "NETWORK", "PORT", "AGE"], &rows);
}

pub fn leases(leases: &[LeaseInfo]) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            let left = l.expires.saturating_sub(now);
            vec![
                l.network.clone(),
                l.ip.clone(),
                l.mac.clone(),
                l.client_id.clone().unwrap_or_else(|| "-".into()),
                l.hostname.clone().unwrap_or_else(|| "-".into()),
                l.state.clone(),
                if left > 50 * 365 * 24 * 3600 { "never".into() } else { format!("{left}s") },
            ]
        })
        .collect();
    print(&["NETWORK", "IP", "MAC", "CLIENT ID", "HOSTNAME", "STATE", "EXPIRES IN"], &rows);
}

pub fn routers(routers: &[RouterInfo]) {
    let rows: Vec<Vec<String>> = routers
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.networks.is_empty() { "-".into() } else { r.networks.join(",") },
                r.routes.iter().filter(|x| x.via.is_some()).count().to_string(),
                r.counters.get("routed").copied().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    print(&["NAME", "NETWORKS", "STATIC ROUTES", "ROUTED"], &rows);
}

pub fn routes(routes: &[RouteInfo]) {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.router.clone(),
                r.prefix.clone(),
                r.via.clone().map_or_else(|| "connected".into(), |v| format!("via {v}")),
                r.network.clone(),
            ]
        })
        .collect();
    print(&["ROUTER", "PREFIX", "NEXT HOP", "NETWORK"], &rows);
}

/// The LINK column of `port ls`: `up`, `down`, and `impaired` when `port
/// set` changed what the link does (the settings: `port ls --json`).
fn link(p: &PortInfo) -> String {
    let state = if p.link_up { "up" } else { "down" };
    if p.impair_in.is_some() || p.impair_out.is_some() {
        format!("{state},impaired")
    } else {
        state.to_string()
    }
}

/// What `port set` prints: the port and its link settings, a line per direction.
pub fn link_settings(p: &PortInfo) -> String {
    let name = match &p.vhost {
        Some(v) => v.socket.clone(),
        None => format!("{}/{}", p.netns, p.ifname),
    };
    let show = |i: &Option<crate::impair::Impairment>| i.map_or_else(|| "none".to_string(), |i| i.to_string());
    format!(
        "port {} ({name}) on {}: link {}\n  in:  {}\n  out: {}\n",
        p.id,
        p.network,
        if p.link_up { "up" } else { "down" },
        show(&p.impair_in),
        show(&p.impair_out)
    )
}
