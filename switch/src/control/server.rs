//! The daemon process: the control socket, its lock, signals, and an orderly stop.
//!
//! Socket ownership: a lock file beside the socket (`SOCKET.lock`, held with
//! `flock` for the daemon's life) says whether a daemon owns the socket. If
//! the lock is free, a socket file left there was left by a daemon that died
//! and is replaced; if it is held, this daemon refuses to start. The state
//! directory carries a lock of its own, so two daemons never share one. A
//! clean stop removes the socket and its lock file; a lock file is only
//! trusted while it is still the file at its path (see `lock_file`).
//!
//! The connections on the socket (who may connect, limits, deadlines) are
//! `socket.rs`'s.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use crossbeam::channel::bounded;
use signal_hook::consts::{SIGINT, SIGTERM};

use super::{Config, Daemon};

/// Opens and locks `path`. A daemon stopping cleanly deletes its lock file
/// while holding the lock, so a lock won on a file no longer at `path` (the
/// stopping daemon unlinked it between our open and our lock) proves
/// nothing: try again on the file now there.
fn lock_file(path: &Path, what: &str) -> anyhow::Result<File> {
    use std::os::unix::fs::MetadataExt;
    for _ in 0..8 {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!("{what}"),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        let held = f.metadata().with_context(|| format!("cannot inspect {}", path.display()))?;
        match fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(f),
            _ => continue,
        }
    }
    bail!("cannot lock {}: it keeps being replaced", path.display())
}

/// What a daemon without CAP_NET_ADMIN is told (it cannot create TAPs or move links).
pub const NET_ADMIN_HINT: &str = "the daemon lacks CAP_NET_ADMIN: run it as root, or as a user inside \
    `unshare --user --map-root-user --net --mount` (then only namespaces made inside that one are reachable)";

/// Whether this process has CAP_NET_ADMIN in its user namespace (bit 12 of
/// CapEff in /proc/self/status, capabilities(7)); none if that is unreadable.
pub fn has_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let eff = u64::from_str_radix(hex, 16).ok()?;
    Some(eff & (1 << CAP_NET_ADMIN) != 0)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// The socket's directory for `--socket-group`: one the daemon makes is
/// 0750 and owned by the group, so its members can reach the socket; one
/// that exists is left alone, with a warning if the group cannot pass it.
fn create_group_dir(dir: &Path, gid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !dir.exists() {
        create_private_dir(dir)?;
        std::os::unix::fs::chown(dir, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750))
            .with_context(|| format!("cannot set mode 0750 on {}", dir.display()))?;
        return Ok(());
    }
    let md = fs::metadata(dir).with_context(|| format!("cannot inspect {}", dir.display()))?;
    let passable = md.mode() & 0o001 != 0 || (md.gid() == gid && md.mode() & 0o010 != 0);
    if !passable {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:04o}", md.mode() & 0o7777),
            "--socket-group: members of group {gid} cannot reach the socket through this directory; \
             give it to the group (chgrp {gid}, chmod g+x) or choose another --socket"
        );
    }
    Ok(())
}

/// Binds the control socket, replacing a stale one: mode 0600, or with
/// `group` 0660 and owned by that group. Keep the returned lock for the
/// daemon's life.
pub fn bind_socket(path: &Path, group: Option<u32>) -> anyhow::Result<(UnixListener, File)> {
    if let Some(dir) = path.parent() {
        match group {
            Some(gid) => create_group_dir(dir, gid)?,
            None => create_private_dir(dir)?,
        }
    }
    let lock_path = socket_lock_path(path);
    let lock = lock_file(
        &lock_path,
        &format!(
            "another tapyard daemon is already running on {} (it holds {}); stop it first, or start this one with --socket elsewhere",
            path.display(),
            lock_path.display()
        ),
    )?;
    match fs::symlink_metadata(path) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                bail!("{} exists and is not a socket; remove it or choose another --socket", path.display());
            }
            tracing::warn!(socket = %path.display(), "replacing a stale socket left by a daemon that did not stop cleanly");
            fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("cannot give {} to group {gid} (--socket-group)", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:04o} on {}", path.display()))?;
    Ok((listener, lock))
}

/// Runs the daemon until SIGINT, SIGTERM or a `shutdown` request.
pub fn run(cfg: Config) -> anyhow::Result<()> {
    // First of all: a SIGTERM that comes while the daemon starts (which
    // makes the uplink, turns forwarding on and installs its rules) waits
    // for the start to finish and then stops it cleanly, instead of killing
    // it with all that left behind.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    if has_net_admin() == Some(false) {
        // Not fatal: networks, routers and vhost-user ports still work, but
        // every TAP `connect` will fail with EPERM.
        tracing::warn!("{NET_ADMIN_HINT}; `connect NETWORK NETNS` will fail until then");
    }
    let (listener, socket_lock) = bind_socket(&cfg.socket, cfg.socket_group)?;
    let lock_path = socket_lock_path(&cfg.socket);
    let (daemon, _state_lock) = match start(&cfg) {
        Ok(started) => started,
        Err(e) => {
            let _ = fs::remove_file(&cfg.socket);
            let _ = fs::remove_file(&lock_path);
            drop(socket_lock);
            return Err(e);
        }
    };
    // Docker's plugin socket, once the daemon is up: dockerd may call at once.
    let docker = match docker_plugin(&cfg, &daemon) {
        Ok(d) => d,
        Err(e) => {
            daemon.shutdown();
            let _ = fs::remove_file(&cfg.socket);
            let _ = fs::remove_file(&lock_path);
            drop(socket_lock);
            return Err(e);
        }
    };
    let (stop_tx, stop_rx) = bounded::<&'static str>(4);
    let sig_tx = stop_tx.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = sig_tx.send(if sig == SIGINT { "SIGINT" } else { "SIGTERM" });
        }
    });

    // Connections are file descriptors: the soft limit goes up to the hard
    // one, and at most half of it is for control connections (socket.rs).
    let nofile = crate::port::sys::raise_nofile_limit().unwrap_or(1024);
    let limits = super::socket::Limits::for_nofile(nofile);
    let access = super::socket::Access { own_uid: crate::port::sys::effective_uid(), group: cfg.socket_group };
    if let Err(e) = super::socket::spawn(daemon.clone(), listener, access, limits, stop_tx.clone()) {
        daemon.shutdown();
        let _ = fs::remove_file(&cfg.socket);
        let _ = fs::remove_file(&lock_path);
        drop(socket_lock);
        return Err(anyhow::Error::new(e).context("cannot start the control socket's thread"));
    }
    tracing::debug!(nofile, max_connections = limits.max_connections, "control socket limits");

    tracing::info!(socket = %cfg.socket.display(), state_dir = %cfg.state_dir.display(), workers = cfg.workers, pid = std::process::id(), "tapyard daemon ready");
    let why = stop_rx.recv().unwrap_or("channel closed");
    tracing::info!(reason = why, "stopping");
    let _ = fs::remove_file(&cfg.socket);
    if let Some((path, lock)) = docker {
        let _ = fs::remove_file(&path);
        let _ = fs::remove_file(socket_lock_path(&path));
        drop(lock);
    }
    daemon.shutdown();
    // Unlinked while still held: a daemon starting now either finds the
    // lock held or locks a new file (lock_file checks which).
    let _ = fs::remove_file(&lock_path);
    drop(socket_lock);
    Ok(())
}

/// Binds and serves Docker's plugin socket when asked (`--docker-plugin`):
/// its path and lock, to remove at the stop.
fn docker_plugin(cfg: &Config, daemon: &Arc<Daemon>) -> anyhow::Result<Option<(PathBuf, File)>> {
    let Some(path) = &cfg.docker_plugin else {
        return Ok(None);
    };
    let plugin = Arc::new(super::docker::Plugin::open(daemon.clone())?);
    let (listener, lock) = bind_socket(path, None)?;
    super::docker::spawn(plugin, listener).context("cannot start the docker plugin thread")?;
    tracing::info!(socket = %path.display(), "serving Docker's network and IPAM plugin protocol");
    Ok(Some((path.clone(), lock)))
}

fn socket_lock_path(socket: &Path) -> PathBuf {
    PathBuf::from(format!("{}.lock", socket.display()))
}

/// Locks the state directory and starts the control plane and workers.
/// Keep the returned lock for the daemon's life.
fn start(cfg: &Config) -> anyhow::Result<(Arc<Daemon>, File)> {
    create_private_dir(&cfg.state_dir)?;
    let lock = lock_file(
        &cfg.state_dir.join("lock"),
        &format!(
            "another tapyard daemon uses state directory {}; give this one its own --state-dir",
            cfg.state_dir.display()
        ),
    )?;
    Ok((Daemon::start(cfg.clone())?, lock))
}
