//! Serving one control request: [`Daemon::handle`] checks what only the
//! request itself can say, calls the method that owns the change, and
//! returns its reply. Nothing here touches the configuration directly.

use super::proto::*;
use super::*;

impl Daemon {
    /// Serves one request.
    pub fn handle(&self, req: Request) -> ApiResult {
        match req {
            Request::Ping => to_value(PingInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: PROTOCOL_VERSION,
                pid: std::process::id(),
                workers: self.workers.len(),
                socket: self.cfg.socket.display().to_string(),
                state_dir: self.cfg.state_dir.display().to_string(),
            }),
            Request::NetworkCreate(args) => self.network_create(args),
            Request::RouterCreate { name } => self.router_create(name),
            Request::RouterAttach { router, network } => self.router_attach(&router, &network, true),
            Request::RouterDetach { router, network } => self.router_attach(&router, &network, false),
            Request::RouterLs => {
                let inner = self.lock();
                to_value(inner.routers.values().map(|r| router_info(&inner, r)).collect::<Vec<_>>())
            }
            Request::RouterInspect { name } => {
                let inner = self.lock();
                to_value(router_info(&inner, router(&inner, &name)?))
            }
            Request::RouterRm { name } => {
                let mut inner = self.lock();
                router(&inner, &name)?;
                inner.routers.remove(&name);
                // Like a detach of every network: no worker routes through it after this returns.
                self.commit(&mut inner, Change::Removed);
                Ok(json!({ "removed": name }))
            }
            Request::RouteAdd { router, prefix, via } => self.route_change(&router, &prefix, Some(&via)),
            Request::RouteDel { router, prefix } => self.route_change(&router, &prefix, None),
            Request::RouteLs { router: filter } => {
                let inner = self.lock();
                if let Some(r) = &filter {
                    router(&inner, r)?;
                }
                let routes: Vec<RouteInfo> = inner
                    .routers
                    .values()
                    .filter(|r| filter.as_ref().is_none_or(|f| f == &r.spec.name))
                    .flat_map(|r| router_info(&inner, r).routes)
                    .collect();
                to_value(routes)
            }
            Request::NetworkReserve { network, mac, ip } => self.network_reserve(&network, &mac, &ip),
            Request::LeaseLs { network: filter } => {
                if let Some(n) = &filter {
                    network(&self.lock(), n)?;
                }
                let now = unix_now();
                let leases = self.ipam().leases(filter.as_deref());
                to_value(leases.into_iter().map(|(n, l)| lease_info(n, l, now)).collect::<Vec<_>>())
            }
            Request::NetworkLs => {
                let inner = self.lock();
                to_value(inner.networks.values().map(|n| self.network_info(&inner, n)).collect::<Vec<_>>())
            }
            Request::NetworkInspect { name } => {
                let inner = self.lock();
                let net = network(&inner, &name)?;
                to_value(self.network_info(&inner, net))
            }
            Request::NetworkRm { name, force } => self.network_rm(&name, force),
            Request::Connect { network, netns, ifname, mac, ip, offload } => {
                self.check_order("connect", &network, &netns)?;
                self.connect(network, netns, ifname, mac, ip, offload.unwrap_or(true)).map_err(with_privilege_hint)
            }
            Request::Disconnect { network, netns, ifname } => {
                self.check_order("disconnect", &network, &netns)?;
                self.disconnect(&network, &netns, ifname)
            }
            Request::ConnectVhost { network, socket, client, queues, mac, socket_mode, socket_group } => {
                let owner = SocketOwner::parse(client, socket_mode.as_deref(), socket_group.as_deref(), &socket)?;
                self.connect_vhost(network, socket, client, queues.unwrap_or(1), mac, owner)
            }
            Request::DisconnectVhost { network, socket } => self.disconnect_vhost(&network, &socket),
            Request::PortLs { network: filter } => {
                let inner = self.lock();
                if let Some(n) = &filter {
                    network(&inner, n)?;
                }
                to_value(self.port_infos(
                    &inner,
                    inner.ports.values().filter(|p| filter.as_ref().is_none_or(|n| &p.spec.network == n)),
                ))
            }
            Request::FdbShow { network: filter } => self.fdb_show(filter),
            Request::FdbFlush { network: filter } => {
                let inner = self.lock();
                if let Some(n) = &filter {
                    network(&inner, n)?;
                }
                let mut flushed = 0;
                for (name, net) in &inner.networks {
                    if filter.as_ref().is_none_or(|n| n == name) {
                        flushed += net.fdb.flush(None);
                    }
                }
                Ok(json!({ "flushed": flushed }))
            }
            Request::Shutdown => Ok(json!({ "stopping": true })),
        }
    }

    /// `connect`/`disconnect` take NETWORK first: when the first argument is
    /// no network, say so, and spot the two arguments given the other way round
    /// (otherwise the user is told to `ip netns add` a network's name).
    fn check_order(&self, verb: &str, network: &str, ns: &str) -> Result<(), ApiError> {
        let inner = self.lock();
        if inner.networks.contains_key(network) {
            return Ok(());
        }
        if inner.networks.contains_key(ns) {
            return Err(ApiError::bad_request(format!(
                "{network:?} is not a network but {ns:?} is: the order is `tapyard {verb} NETWORK NETNS`; \
                 try `tapyard {verb} {ns} {network}`"
            )));
        }
        let is_ns = if netns::resolve(network).is_ok() {
            format!(" ({network:?} is a network namespace)")
        } else {
            String::new()
        };
        Err(ApiError::not_found(format!(
            "no network named {network:?}{is_ns}; the order is `tapyard {verb} NETWORK NETNS`; see `tapyard network ls`"
        )))
    }
}
