//! Serving one control request: [`Daemon::handle`] checks what only the
//! request itself can say, calls the method that owns the change, and
//! returns its reply. Nothing here touches the configuration directly.

use super::netns;
use super::ports::{with_privilege_hint, Guard, SocketOwner};
use super::proto::*;
use super::Daemon;

impl Daemon {
    /// Serves one request: its typed reply, or the error to send back.
    pub fn handle(&self, req: Request) -> Result<Reply, ApiError> {
        match req {
            Request::Ping => Ok(self.ping().into()),
            Request::NetworkCreate(args) => self.network_create(args).map(Reply::from),
            Request::NetworkLs => Ok(self.network_ls().into()),
            Request::NetworkInspect { name } => self.network_inspect(&name).map(Reply::from),
            Request::NetworkRm { name, force } => self.network_rm(&name, force).map(Reply::from),
            Request::NetworkReserve { network, mac, ip } => self.network_reserve(&network, &mac, &ip).map(Reply::from),
            Request::RouterCreate { name } => self.router_create(name).map(Reply::from),
            Request::RouterAttach { router, network } => self.router_attach(&router, &network, true).map(Reply::from),
            Request::RouterDetach { router, network } => self.router_attach(&router, &network, false).map(Reply::from),
            Request::RouterLs => Ok(self.router_ls().into()),
            Request::RouterInspect { name } => self.router_inspect(&name).map(Reply::from),
            Request::RouterRm { name } => self.router_rm(name).map(Reply::from),
            Request::RouteAdd { router, prefix, via } => {
                self.route_change(&router, &prefix, Some(&via)).map(Reply::from)
            }
            Request::RouteDel { router, prefix } => self.route_change(&router, &prefix, None).map(Reply::from),
            Request::RouteLs { router } => self.route_ls(router.as_deref()).map(Reply::from),
            Request::LeaseLs { network } => self.lease_ls(network.as_deref()).map(Reply::from),
            Request::Connect {
                network,
                netns,
                ifname,
                mac,
                ip,
                offload,
                publish,
                owner,
                port_security,
                storm_limit,
                kind,
            } => {
                self.check_order("connect", &network, &netns)?;
                let guard = Guard { port_security, storm_limit };
                let offload = offload.unwrap_or(true);
                let kind = kind.unwrap_or_default();
                let port = self.connect(network, netns, ifname, mac, ip, offload, publish, owner, guard, kind);
                port.map(Reply::from).map_err(with_privilege_hint)
            }
            Request::PortPublish { network, netns, ifname, spec } => {
                self.check_order("port publish", &network, &netns)?;
                self.port_publish(&network, &netns, ifname, &spec).map(Reply::from)
            }
            Request::PortUnpublish { network, netns, ifname, spec } => {
                self.check_order("port unpublish", &network, &netns)?;
                self.port_unpublish(&network, &netns, ifname, &spec).map(Reply::from)
            }
            Request::Disconnect { network, netns, ifname } => {
                self.check_order("disconnect", &network, &netns)?;
                self.disconnect(&network, &netns, ifname).map(Reply::from)
            }
            Request::ConnectVhost {
                network,
                socket,
                client,
                queues,
                mac,
                socket_mode,
                socket_group,
                port_security,
                storm_limit,
            } => {
                let owner = SocketOwner::parse(client, socket_mode.as_deref(), socket_group.as_deref(), &socket)?;
                let guard = Guard { port_security, storm_limit };
                self.connect_vhost(network, socket, client, queues.unwrap_or(1), mac, owner, guard).map(Reply::from)
            }
            Request::DisconnectVhost { network, socket } => self.disconnect_vhost(&network, &socket).map(Reply::from),
            Request::PortSet(req) => {
                if let Some(ns) = &req.netns {
                    self.check_order("port set", &req.network, ns)?;
                }
                self.port_set(req).map(Reply::from)
            }
            Request::PortMirror { port, to } => self.port_mirror(&port, to.as_deref()).map(Reply::from),
            // The server streams captures itself (control/capture.rs): they need the connection.
            Request::Capture(_) => Err(ApiError::bad_request("capture is served on a control connection only")),
            Request::PortLs { network } => self.port_ls(network.as_deref()).map(Reply::from),
            Request::FdbShow { network } => self.fdb_show(network.as_deref()).map(Reply::from),
            Request::FdbFlush { network } => self.fdb_flush(network.as_deref()).map(Reply::from),
            Request::Stats { network } => self.stats(network.as_deref()).map(Reply::from),
            // The server stops the daemon once this reply is sent.
            Request::Shutdown => Ok(Stopping { stopping: true }.into()),
        }
    }

    fn ping(&self) -> PingInfo {
        PingInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            workers: self.workers.len(),
            socket: self.cfg.socket.display().to_string(),
            state_dir: self.cfg.state_dir.display().to_string(),
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
