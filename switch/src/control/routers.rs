//! Routers and their routes: create, attach/detach networks, static
//! routes, describe. A network is attached to at most one router, and a
//! static route's next hop must lie in one of the router's networks.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tapyard_ipam::Ipv4Net;

use super::networks::{check_network_name, network};
use super::persist::RouterSpec;
use super::proto::*;
use super::{Change, Daemon, Inner, RouterRec};

impl Daemon {
    pub(super) fn router_ls(&self) -> Vec<RouterInfo> {
        let inner = self.lock();
        inner.routers.values().map(|r| router_info(&inner, r)).collect()
    }

    pub(super) fn router_inspect(&self, name: &str) -> Result<RouterInfo, ApiError> {
        let inner = self.lock();
        Ok(router_info(&inner, router(&inner, name)?))
    }

    pub(super) fn router_rm(&self, name: String) -> Result<Removed, ApiError> {
        let mut inner = self.lock();
        router(&inner, &name)?;
        inner.routers.remove(&name);
        // Like a detach of every network: no worker routes through it after this returns.
        self.commit(&mut inner, Change::Removed);
        Ok(Removed { removed: name })
    }

    /// The routes of one router, or of all.
    pub(super) fn route_ls(&self, filter: Option<&str>) -> Result<Vec<RouteInfo>, ApiError> {
        let inner = self.lock();
        if let Some(r) = filter {
            router(&inner, r)?;
        }
        Ok(inner
            .routers
            .values()
            .filter(|r| filter.is_none_or(|f| f == r.spec.name))
            .flat_map(|r| router_info(&inner, r).routes)
            .collect())
    }

    pub(super) fn router_create(&self, name: String) -> Result<RouterInfo, ApiError> {
        check_network_name(&name)?;
        let mut inner = self.lock();
        if inner.routers.contains_key(&name) {
            return Err(ApiError::conflict(format!("router {name:?} already exists")));
        }
        let spec = RouterSpec { name: name.clone(), networks: vec![], routes: vec![] };
        inner.routers.insert(name.clone(), RouterRec { spec, stats: Arc::default() });
        self.persist(&inner);
        Ok(router_info(&inner, &inner.routers[&name]))
    }

    pub(super) fn router_attach(&self, rname: &str, net: &str, attach: bool) -> Result<RouterInfo, ApiError> {
        let mut inner = self.lock();
        router(&inner, rname)?;
        let n = network(&inner, net)?;
        if attach {
            if n.spec.internal {
                return Err(ApiError::conflict(format!(
                    "network {net:?} is --internal: it is never attached to a router"
                )));
            }
            if n.spec.addressing.is_none() {
                return Err(ApiError::bad_request(format!(
                    "network {net:?} has no subnet (--ipam none): nothing to route"
                )));
            }
            if let Some(r) = inner.routers.values().find(|r| r.spec.networks.iter().any(|x| x == net)) {
                return Err(ApiError::conflict(format!(
                    "network {net:?} is already attached to router {:?}",
                    r.spec.name
                )));
            }
            inner.routers.get_mut(rname).expect("checked").spec.networks.push(net.to_string());
        } else {
            let r = inner.routers.get_mut(rname).expect("checked");
            if !r.spec.networks.iter().any(|x| x == net) {
                return Err(ApiError::not_found(format!("network {net:?} is not attached to router {rname:?}")));
            }
            r.spec.networks.retain(|x| x != net);
        }
        // Detaching cuts the network off at once: no worker routes with the old table after this returns.
        self.commit(&mut inner, if attach { Change::Added } else { Change::Removed });
        Ok(router_info(&inner, &inner.routers[rname]))
    }

    pub(super) fn route_change(&self, rname: &str, prefix: &str, via: Option<&str>) -> Result<RouterInfo, ApiError> {
        let prefix: Ipv4Net = prefix.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid prefix {prefix:?}: expected CIDR like 10.50.0.0/16"))
        })?;
        let prefix = prefix.trunc();
        let mut inner = self.lock();
        router(&inner, rname)?;
        match via {
            Some(v) => {
                let via: Ipv4Addr =
                    v.parse().map_err(|_| ApiError::bad_request(format!("invalid next hop {v:?}: expected IPv4")))?;
                let r = &inner.routers[rname];
                let ok = r.spec.networks.iter().any(|n| {
                    inner.networks.get(n).and_then(|x| x.spec.addressing).is_some_and(|a| a.subnet.contains(&via))
                });
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "next hop {via} is in none of router {rname:?}'s networks; attach its network first"
                    )));
                }
                let r = inner.routers.get_mut(rname).expect("checked");
                r.spec.routes.retain(|(p, _)| *p != prefix);
                r.spec.routes.push((prefix, via));
            }
            None => {
                let r = inner.routers.get_mut(rname).expect("checked");
                let before = r.spec.routes.len();
                r.spec.routes.retain(|(p, _)| *p != prefix);
                if r.spec.routes.len() == before {
                    return Err(ApiError::not_found(format!("router {rname:?} has no static route to {prefix}")));
                }
            }
        }
        // A route taken away (or replaced) is gone from every worker when this returns.
        self.commit(&mut inner, Change::Removed);
        Ok(router_info(&inner, &inner.routers[rname]))
    }
}

pub(super) fn router<'a>(inner: &'a Inner, name: &str) -> Result<&'a RouterRec, ApiError> {
    inner
        .routers
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no router named {name:?}; see `tapyard router ls`")))
}

pub(super) fn router_info(inner: &Inner, r: &RouterRec) -> RouterInfo {
    let mut routes = Vec::new();
    for n in &r.spec.networks {
        if let Some(a) = inner.networks.get(n).and_then(|x| x.spec.addressing) {
            routes.push(RouteInfo {
                router: r.spec.name.clone(),
                prefix: a.subnet.to_string(),
                via: None,
                network: n.clone(),
            });
        }
    }
    for (p, via) in &r.spec.routes {
        let net = r
            .spec
            .networks
            .iter()
            .find(|n| inner.networks.get(*n).and_then(|x| x.spec.addressing).is_some_and(|a| a.subnet.contains(via)))
            .cloned()
            .unwrap_or_default();
        routes.push(RouteInfo {
            router: r.spec.name.clone(),
            prefix: p.to_string(),
            via: Some(via.to_string()),
            network: net,
        });
    }
    RouterInfo { name: r.spec.name.clone(), networks: r.spec.networks.clone(), routes, counters: r.stats.snapshot() }
}
