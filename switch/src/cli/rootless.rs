//! Rootless mode: a `tapyard daemon` started by an unprivileged user, not
//! already in a user namespace, makes its own user, network and mount
//! namespaces (as rootlesskit does) and an uplink to the host through pasta
//! (or slirp4netns), then runs as root inside them; and `tapyard netns` /
//! `tapyard exec`, which make and enter container namespaces inside it.
//! This module owns that setup, the supervisor process that stays outside,
//! and the per-user paths; docs/ROOTLESS.md tells the whole story.
//!
//! Startup, step by step (user_namespaces(7) for the map rules):
//! 1. The `tapyard daemon` the user started becomes the *supervisor*. It
//!    checks the uplink's needs first (the tool on PATH, `/dev/net/tun`
//!    openable), then starts itself again (`/proc/self/exe`, same
//!    arguments) with [`CHILD_ENV`] naming its end of a socket pair.
//! 2. The child, still single-threaded (unshare(2) refuses CLONE_NEWUSER to
//!    a threaded process), unshares user + network + mount namespaces and
//!    says `u`.
//! 3. The supervisor writes the child's uid and gid maps: with newuidmap /
//!    newgidmap and the user's /etc/subuid and /etc/subgid ranges when all
//!    are there (`0 UID 1` plus `1 START COUNT`), else `0 UID 1` itself
//!    after `deny` to setgroups; it says `m`.
//! 4. The child, now uid 0 with every capability in its namespaces, asks
//!    for SIGTERM if the supervisor dies, mounts a tmpfs on the directory
//!    for named namespaces (`<socket dir>/netns`, private to its mount
//!    namespace) and says `r`.
//! 5. The supervisor starts the uplink attached to the child's pid (pasta:
//!    `--config-net`, the host's addresses and routes copied in, ports
//!    bound in the namespace forwarded from the host), waits until it is
//!    ready, and says `g`; the child goes on as a daemon, its socket under
//!    `$XDG_RUNTIME_DIR/tapyard/`.
//! 6. The supervisor forwards SIGINT / SIGTERM (SIGHUP as SIGTERM) to the
//!    child; when the child exits it stops the uplink (the pid it started)
//!    and exits with the child's status.
//!
//! A step that fails closes the socket pair: the other side exits, and the
//! one that failed says why.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::client::ClientError;
use crate::port::ns;

/// Names the child's end of the setup socket (an fd number); set only by
/// the supervisor for the child it starts.
pub const CHILD_ENV: &str = "TAPYARD_ROOTLESS_SETUP_FD";

/// How long an uplink may take to come up.
const UPLINK_DEADLINE: Duration = Duration::from_secs(10);

/// How long a stopping uplink gets after SIGTERM before SIGKILL.
const UPLINK_STOP_GRACE: Duration = Duration::from_secs(2);

/// Set once this process is the daemon inside its own namespaces: its uid
/// is 0 there, but its paths are the user's (see `cli::default_runtime_dir`).
static CHILD: AtomicBool = AtomicBool::new(false);

/// Whether this process is a rootless daemon inside the namespaces it made.
pub fn is_child() -> bool {
    CHILD.load(Ordering::Relaxed)
}

/// The rootless daemon's uplink to the host (`--rootless-uplink`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink {
    /// pasta (Debian `passt`): egress, and ports bound in the daemon's
    /// namespace forwarded from the host (`-t auto -u auto`).
    Pasta,
    /// slirp4netns: egress only; published ports are not forwarded.
    Slirp4netns,
    /// No uplink: networks stay closed to the outside.
    None,
}

impl Uplink {
    fn program(self) -> Option<&'static str> {
        match self {
            Uplink::Pasta => Some("pasta"),
            Uplink::Slirp4netns => Some("slirp4netns"),
            Uplink::None => None,
        }
    }
}

/// What `tapyard daemon` does after [`daemon_start`].
pub enum Start {
    /// Run the daemon in this process as it is (root, or already in a user
    /// namespace: nothing changes).
    Plain,
    /// Run the daemon: this process is the child, inside its namespaces.
    Child,
    /// This process was the supervisor; the daemon has exited with this status.
    Supervised(i32),
}

/// Decides how `tapyard daemon` runs, and for a rootless start does it:
/// the child side sets up its namespaces and returns [`Start::Child`]; the
/// supervisor side returns only when the daemon has exited. Must be called
/// before the process starts any thread.
pub fn daemon_start(uplink: Option<Uplink>, socket: &Path, socket_given: bool) -> anyhow::Result<Start> {
    if let Some(fd) = std::env::var_os(CHILD_ENV) {
        // Not for the daemon's own children.
        std::env::remove_var(CHILD_ENV);
        let fd: i32 = fd
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{CHILD_ENV} must name a file descriptor"))?;
        let sock = UnixStream::from(ns::inherited_fd(fd).with_context(|| format!("{CHILD_ENV}={fd}"))?);
        child_setup(sock, socket)?;
        return Ok(Start::Child);
    }
    let (uid, _) = ns::ids();
    let plain = uid == 0 || super::euid() == Some(0) || in_user_namespace();
    if plain {
        if uplink.is_some() {
            tracing::info!(
                "--rootless-uplink applies only when the daemon makes its own namespaces (started by a user other \
                 than root, outside any user namespace); ignored"
            );
        }
        if uid != 0 || in_user_namespace() {
            tracing::debug!("already in a user namespace: the daemon uses it as it is (no namespaces of its own)");
        }
        return Ok(Start::Plain);
    }
    if !socket_given && std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| d.is_empty()) {
        return Err(super::BadArgs(
            "XDG_RUNTIME_DIR is not set: a rootless tapyard keeps its socket and namespaces in \
             $XDG_RUNTIME_DIR/tapyard; log in through a session that sets it (pam_systemd), set it to a \
             private directory of yours (mode 0700), or give --socket"
                .into(),
        )
        .into());
    }
    supervise(uplink.unwrap_or(Uplink::Pasta), socket).map(Start::Supervised)
}

/// Whether this process is in a user namespace other than the initial one:
/// the initial namespace's uid map is the identity over all 2^32-1 ids.
pub fn in_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| !is_initial_uid_map(&map))
}

fn is_initial_uid_map(map: &str) -> bool {
    map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

/// The directory named namespaces of a rootless daemon on `socket` live
/// in: beside its socket, mounted over (a tmpfs) in its mount namespace only.
pub fn named_dir(socket: &Path) -> PathBuf {
    socket.parent().unwrap_or(Path::new("/")).join("netns")
}

fn pasta_pid_file(socket: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pasta.pid", socket.display()))
}

// ---------------------------------------------------------------- checks

/// The plain errors for what an uplink needs; a missing tool is named with
/// its package.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn check_uplink_program(uplink: Uplink) -> anyhow::Result<Option<PathBuf>> {
    let Some(name) = uplink.program() else { return Ok(None) };
    match find_program(name) {
        Some(p) => Ok(Some(p)),
        None => {
            let pkg = if uplink == Uplink::Pasta { "passt" } else { "slirp4netns" };
            bail!(
                "{name} not found: install the {pkg} package (apt-get install {pkg}), or start with \
                 --rootless-uplink none (no egress, no published ports)"
            )
        }
    }
}

/// Whether this user can open /dev/net/tun, with the reason and the fix
/// when not. TAP ports and both uplinks need it.
fn check_tun() -> anyhow::Result<()> {
    const TUN: &str = "/dev/net/tun";
    match OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(TUN) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(TUN).map(|m| format!("mode {:04o}", m.permissions().mode() & 0o7777));
            let mode = mode.unwrap_or_else(|_| "not accessible".into());
            bail!(
                "{TUN} is {mode} (root only): TAP ports and the uplink need it; `chmod 0666 {TUN}` (the \
                 distributions' default; a udev rule KERNEL==\"tun\", MODE=\"0666\" keeps it), or run tapyard as root"
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("{TUN} does not exist: load the tun module (`modprobe tun`), or run with --rootless-uplink none")
        }
        Err(e) => bail!("cannot open {TUN}: {e}"),
    }
}

// ------------------------------------------------------------ supervisor

/// The supervisor side of a rootless start; returns the daemon's exit status.
fn supervise(uplink: Uplink, socket: &Path) -> anyhow::Result<i32> {
    let program = check_uplink_program(uplink)?;
    if let Err(e) = check_tun() {
        if uplink != Uplink::None {
            return Err(e);
        }
        tracing::warn!("{e:#}; `connect NETWORK NETNS` will fail until then");
    }
    let socket = std::path::absolute(socket).with_context(|| format!("bad socket path {}", socket.display()))?;
    let dir = named_dir(&socket);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).with_context(|| {
        format!("cannot create {} (for the socket and named namespaces of a rootless daemon)", dir.display())
    })?;

    // A daemon already on this socket: refused here, before an uplink is
    // started for nothing (the daemon checks again when it binds; see
    // control::server for the lock).
    let lock_path = PathBuf::from(format!("{}.lock", socket.display()));
    if let Ok(f) = OpenOptions::new().write(true).open(&lock_path) {
        if let Err(fs::TryLockError::WouldBlock) = f.try_lock() {
            bail!(
                "another tapyard daemon is already running on {} (it holds {}); stop it first, or start this one \
                 with --socket elsewhere",
                socket.display(),
                lock_path.display()
            );
        }
    }

    // Installed before the child exists, so that no signal in between can
    // end the supervisor without the child hearing of it.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("cannot install signal handlers")?;

    let (mut sock, theirs) = UnixStream::pair().context("cannot make the setup socket pair")?;
    ns::set_inheritable(&theirs).context("cannot pass the setup socket")?;
    // By its path, so that ps and top name it `tapyard`; /proc/self/exe
    // if the binary was replaced since (the path then reads "... (deleted)").
    let exe = std::env::current_exe().ok().filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .context("cannot start the daemon process")?;
    drop(theirs);
    let pid = child.id();

    // Signal forwarding, until the child has exited (and not a moment
    // after: its pid is not reaped before `exited` is set).
    let exited = Arc::new(Mutex::new(false));
    let handle = signals.handle();
    let fwd_exited = exited.clone();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            let to = if sig == libc::SIGHUP { libc::SIGTERM } else { sig };
            let done = fwd_exited.lock().unwrap_or_else(|p| p.into_inner());
            if !*done {
                let _ = ns::kill(pid, to);
            }
        }
    });

    let mut uplink_proc = None;
    let setup = (|| -> anyhow::Result<()> {
        if !expect(&mut sock, b'u')? {
            return Ok(()); // the child failed and said why
        }
        let how = write_maps(pid).context("cannot write the user namespace's uid and gid maps")?;
        tracing::info!(pid, maps = %how, "rootless: the daemon has its own user, network and mount namespaces");
        sock.write_all(b"m")?;
        if !expect(&mut sock, b'r')? {
            return Ok(());
        }
        if let Some(program) = &program {
            uplink_proc = Some(start_uplink(uplink, program, pid, &socket)?);
        }
        sock.write_all(b"g")?;
        Ok(())
    })();
    if let Err(e) = setup {
        // The child reads EOF and exits; then say why.
        drop(sock);
        let _ = wait_child(&mut child, &exited);
        if let Some(p) = uplink_proc.take() {
            stop_uplink(p);
        }
        let _ = fs::remove_file(pasta_pid_file(&socket));
        handle.close();
        let _ = forwarder.join();
        return Err(e);
    }
    drop(sock);

    let status = wait_child(&mut child, &exited);
    if let Some(p) = uplink_proc.take() {
        stop_uplink(p);
    }
    let _ = fs::remove_file(pasta_pid_file(&socket));
    handle.close();
    let _ = forwarder.join();
    let status = status.context("cannot wait for the daemon process")?;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// Reads one setup byte; false when the other side closed (it failed).
fn expect(sock: &mut UnixStream, want: u8) -> anyhow::Result<bool> {
    let mut b = [0u8];
    match sock.read(&mut b) {
        Ok(0) => Ok(false),
        Ok(_) if b[0] == want => Ok(true),
        Ok(_) => bail!("rootless setup: unexpected message {:?} (wanted {:?})", b[0] as char, want as char),
        Err(e) => Err(e).context("rootless setup: the setup socket failed"),
    }
}

/// Waits for the child without letting the forwarder signal a reaped pid.
fn wait_child(child: &mut Child, exited: &Mutex<bool>) -> io::Result<ExitStatus> {
    ns::wait_exited_nowait(child.id())?;
    *exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
    child.wait()
}

/// A subordinate id range of this user from /etc/subuid or /etc/subgid
/// (subuid(5): `NAME_OR_ID:START:COUNT`; the first matching line).
fn sub_range(file: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    parse_sub_range(&fs::read_to_string(file).ok()?, name, id)
}

fn parse_sub_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if Some(who) != name && who != id.to_string() {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

/// The login name of `uid` from /etc/passwd (passwd(5)).
fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

fn run_tool(program: &Path, args: &[String]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes the child's uid and gid maps; says which kind it wrote.
fn write_maps(pid: u32) -> anyhow::Result<String> {
    let (uid, gid) = ns::ids();
    let name = user_name(uid);
    let subs = (sub_range("/etc/subuid", name.as_deref(), uid), sub_range("/etc/subgid", name.as_deref(), gid));
    let tools = (find_program("newuidmap"), find_program("newgidmap"));
    if let ((Some((us, uc)), Some((gs, gc))), (Some(nu), Some(ng))) = (subs, tools) {
        let args = |own: u32, start: u32, count: u32| {
            [pid, 0, own, 1, 1, start, count].iter().map(u32::to_string).collect::<Vec<_>>()
        };
        // newuidmap first: if it fails nothing is written and the single
        // map below still can be.
        match run_tool(&nu, &args(uid, us, uc)) {
            Ok(()) => {
                run_tool(&ng, &args(gid, gs, gc))?;
                return Ok(format!("0 {uid} 1, 1 {us} {uc} (newuidmap, /etc/subuid and /etc/subgid)"));
            }
            Err(e) => tracing::warn!("{e:#}; falling back to a single-uid map"),
        }
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    fs::write(proc.join("uid_map"), format!("0 {uid} 1\n")).context("uid_map")?;
    // An unprivileged writer may map its gid only with setgroups(2) denied.
    fs::write(proc.join("setgroups"), "deny").context("setgroups")?;
    fs::write(proc.join("gid_map"), format!("0 {gid} 1\n")).context("gid_map")?;
    Ok(format!("0 {uid} 1 only (no newuidmap or no /etc/subuid range: one uid)"))
}

/// Whether the network namespace of `pid` has an IPv4 default route, and
/// on which interface (from /proc/PID/net/route, proc(5)).
fn default_route_dev(pid: u32) -> Option<String> {
    parse_default_route(&fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?)
}

/// The interface of the first IPv4 default route (destination and mask 0)
/// in the text of /proc/net/route.
fn parse_default_route(text: &str) -> Option<String> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_string())
    })
}

/// Starts the uplink attached to the user and network namespaces of
/// `pid`, and waits until it is ready: pasta has written its pid file
/// (after its setup, pasta(1) `--pid`) and the namespace has a default
/// route; slirp4netns has configured its default route.
fn start_uplink(uplink: Uplink, program: &Path, pid: u32, socket: &Path) -> anyhow::Result<Child> {
    let name = uplink.program().unwrap_or_default();
    let pid_file = pasta_pid_file(socket);
    let _ = fs::remove_file(&pid_file);
    let mut cmd = Command::new(program);
    match uplink {
        // pasta(1): --config-net copies the host's addresses and routes onto
        // its interface and brings it (and lo) up; -t/-u auto forward the
        // ports bound in the namespace from the host (published ports);
        // -T/-U stay at their default, auto (the host's bound ports are
        // bound in the namespace and forwarded to the host): the pasta of
        // Debian 12 (2023-03-09) forwards nothing with `-t auto -T none`;
        // the gateway address reaches the host's loopback (pasta NOTES).
        Uplink::Pasta => cmd
            .args(["--config-net", "--quiet", "--foreground", "-t", "auto", "-u", "auto"])
            .arg("--pid")
            .arg(&pid_file)
            .arg(pid.to_string()),
        // slirp4netns(1): tap0 with 10.0.2.100/24 via 10.0.2.2; no host
        // loopback (as rootlesskit); no port forwarding without its API.
        Uplink::Slirp4netns => {
            cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"]).arg(pid.to_string()).arg("tap0")
        }
        Uplink::None => bail!("--rootless-uplink none starts no program"),
    };
    // Its own process group: a Ctrl-C meant for the daemon does not cut the
    // uplink before the daemon has stopped; the supervisor stops it after,
    // and the kernel does if the supervisor is killed.
    ns::die_with_parent(&mut cmd, libc::SIGTERM);
    let mut proc = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let deadline = Instant::now() + UPLINK_DEADLINE;
    loop {
        if let Some(st) = proc.try_wait()? {
            bail!("{name} exited ({st}) before the uplink was up; its messages are above");
        }
        let ready = match uplink {
            Uplink::Pasta => fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty()),
            _ => default_route_dev(pid).is_some(),
        };
        if ready {
            break;
        }
        if Instant::now() > deadline {
            stop_uplink(proc);
            bail!("{name} did not bring the uplink up within {} s", UPLINK_DEADLINE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match default_route_dev(pid) {
        Some(dev) => tracing::info!(pid = proc.id(), dev, "rootless: {name} is the uplink"),
        None => tracing::warn!(
            pid = proc.id(),
            "rootless: {name} runs, but the namespace has no IPv4 default route (has the host one?)"
        ),
    }
    Ok(proc)
}

/// Stops the uplink we started: SIGTERM, then SIGKILL after a grace time.
/// `proc` is not reaped before, so its pid cannot be someone else's.
fn stop_uplink(mut proc: Child) {
    if let Ok(Some(_)) = proc.try_wait() {
        tracing::warn!("the uplink had exited before the daemon");
        return;
    }
    let _ = ns::kill(proc.id(), libc::SIGTERM);
    let deadline = Instant::now() + UPLINK_STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = proc.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = proc.kill();
    let _ = proc.wait();
}

// ----------------------------------------------------------------- child

/// The child side of a rootless start (steps 2 and 4 of the module docs).
/// Failures are reported here; the supervisor sees the socket close.
fn child_setup(mut sock: UnixStream, socket: &Path) -> anyhow::Result<()> {
    let supervisor = ns::parent_pid();
    let socket = std::path::absolute(socket).with_context(|| format!("bad socket path {}", socket.display()))?;
    ns::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS).map_err(|e| {
        anyhow!(
            "cannot create a user namespace: {e}; unprivileged user namespaces may be disabled here \
             (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, \
             kernel.apparmor_restrict_unprivileged_userns): enable them, or run tapyard as root"
        )
    })?;
    sock.write_all(b"u")?;
    if !expect(&mut sock, b'm')? {
        std::process::exit(1); // the supervisor failed and says why
    }
    // Asked for only now: unshare(CLONE_NEWUSER) made new credentials,
    // which may clear the setting (prctl(2)).
    ns::set_parent_death_signal(libc::SIGTERM).context("PR_SET_PDEATHSIG")?;
    if ns::parent_pid() != supervisor {
        bail!("the supervisor exited during setup");
    }
    let dir = named_dir(&socket);
    ns::mount(
        "tapyard-netns",
        &dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755"),
    )
    .with_context(|| format!("cannot mount a tmpfs on {} for named namespaces", dir.display()))?;
    crate::control::netns::set_named_dir(dir);
    // pasta does this too; slirp4netns and `none` do not.
    if let Err(e) = ns::loopback_up() {
        tracing::warn!("cannot bring lo up in the daemon's namespace: {e}");
    }
    CHILD.store(true, Ordering::Relaxed);
    sock.write_all(b"r")?;
    if !expect(&mut sock, b'g')? {
        std::process::exit(1);
    }
    Ok(())
}

// ------------------------------------------------- `netns` and `exec`

/// Where the CLI's `netns` and `exec` act: in this process's namespaces
/// (root, or root of a user namespace: `/run/netns`, as `ip netns`), or
/// inside the rootless daemon's user and mount namespaces (its own dir).
struct Place {
    dir: PathBuf,
    rootless: bool,
}

/// Enters the namespaces `netns` and `exec` act in. Must run before the
/// process starts a thread (setns(2) refuses CLONE_NEWUSER and CLONE_NEWNS
/// to a threaded process).
fn enter(socket: &Path) -> anyhow::Result<Place> {
    if super::euid() == Some(0) {
        return Ok(Place { dir: PathBuf::from(crate::control::netns::NETNS_RUN_DIR), rootless: false });
    }
    let socket = std::path::absolute(socket).with_context(|| format!("bad socket path {}", socket.display()))?;
    let conn = UnixStream::connect(&socket).map_err(|source| ClientError::Connect { path: socket.clone(), source })?;
    let pid = ns::peer_pid(&conn).context("cannot tell which process the daemon is (SO_PEERCRED)")?;
    drop(conn);
    let open = |kind: &str| {
        File::open(format!("/proc/{pid}/ns/{kind}"))
            .with_context(|| format!("cannot open the daemon's (pid {pid}) {kind} namespace"))
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    let same = |a: &File, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        matches!((a.metadata(), fs::metadata(b)), (Ok(a), Ok(b)) if a.ino() == b.ino() && a.dev() == b.dev())
    };
    if same(&user, Path::new("/proc/self/ns/user")) {
        bail!(
            "the daemon at {} runs in your own user namespace, where you are not root: named namespaces need \
             root there. Run this as root, or start `tapyard daemon` as your user outside any user namespace \
             (it then makes its own)",
            socket.display()
        );
    }
    ns::setns(&user, libc::CLONE_NEWUSER).context("cannot enter the daemon's user namespace")?;
    ns::setns(&mnt, libc::CLONE_NEWNS).context("cannot enter the daemon's mount namespace")?;
    Ok(Place { dir: named_dir(&socket), rootless: true })
}

/// Checks a namespace name the way `ip netns` would accept it as a file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(super::BadArgs(format!("invalid namespace name {name:?}: a file name, without '/'")).into());
    }
    Ok(())
}

fn ip_netns(args: &[&str]) -> anyhow::Result<i32> {
    let st = Command::new("ip").arg("netns").args(args).status().context("cannot run `ip netns` (iproute2)")?;
    Ok(st.code().unwrap_or(1))
}

/// `tapyard netns add NAME`: a new network namespace, bound to a name.
pub fn netns_add(socket: &Path, name: &str) -> anyhow::Result<i32> {
    check_name(name)?;
    let place = enter(socket)?;
    if !place.rootless {
        return ip_netns(&["add", name]);
    }
    let file = place.dir.join(name);
    OpenOptions::new().write(true).create_new(true).mode(0o444).open(&file).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            anyhow!("namespace {name:?} already exists")
        } else {
            anyhow!("cannot create {}: {e}", file.display())
        }
    })?;
    // As `ip netns add` does: a new namespace for this process, kept alive
    // by a bind mount of its nsfs file (this process exits next).
    let made =
        ns::unshare(libc::CLONE_NEWNET).and_then(|()| ns::mount("/proc/self/ns/net", &file, None, libc::MS_BIND, None));
    if let Err(e) = made {
        let _ = fs::remove_file(&file);
        bail!("cannot make namespace {name:?}: {e}");
    }
    Ok(0)
}

/// `tapyard netns del NAME`.
pub fn netns_del(socket: &Path, name: &str) -> anyhow::Result<i32> {
    check_name(name)?;
    let place = enter(socket)?;
    if !place.rootless {
        return ip_netns(&["del", name]);
    }
    let file = place.dir.join(name);
    if !file.exists() {
        return Err(ClientError::Api(crate::control::proto::ApiError::not_found(format!(
            "no namespace {name:?} (see `tapyard netns ls`)"
        )))
        .into());
    }
    if let Err(e) = ns::umount2(&file, libc::MNT_DETACH) {
        if e.raw_os_error() != Some(libc::EINVAL) {
            bail!("cannot unmount {}: {e}", file.display());
        }
    }
    fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    Ok(0)
}

/// `tapyard netns ls`: the names, one a line, sorted.
pub fn netns_ls(socket: &Path) -> anyhow::Result<Vec<String>> {
    let place = enter(socket)?;
    let mut names: Vec<String> = match fs::read_dir(&place.dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", place.dir.display())),
    };
    names.sort();
    Ok(names)
}

/// `tapyard exec NETNS -- CMD...`: runs CMD in that network namespace,
/// with the caller's working directory and environment; rootless, as uid 0
/// of the daemon's user namespace. Returns only on failure.
pub fn exec(socket: &Path, spec: &str, argv: &[std::ffi::OsString]) -> anyhow::Result<i32> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(
            super::BadArgs("exec: give a command after the namespace (tapyard exec NAME -- CMD...)".into()).into()
        );
    };
    let cwd = std::env::current_dir().ok();
    let place = enter(socket)?;
    let path = if let Some(pid) = spec.strip_prefix("pid:") {
        let pid: u32 = pid.parse().map_err(|_| super::BadArgs(format!("invalid namespace {spec:?}: pid:N")))?;
        PathBuf::from(format!("/proc/{pid}/ns/net"))
    } else if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        check_name(spec)?;
        place.dir.join(spec)
    };
    let f = File::open(&path).map_err(|e| {
        ClientError::Api(crate::control::proto::ApiError::not_found(format!(
            "network namespace {spec:?} not found ({}: {e})",
            path.display()
        )))
    })?;
    ns::setns(&f, libc::CLONE_NEWNET)
        .with_context(|| format!("cannot enter {} (a network namespace?)", path.display()))?;
    drop(f);
    // Entering a mount namespace moves the working directory to its root.
    if let (true, Some(cwd)) = (place.rootless, cwd) {
        if let Err(e) = std::env::set_current_dir(&cwd) {
            tracing::warn!("cannot return to {} in the daemon's mount namespace: {e}", cwd.display());
        }
    }
    let e = Command::new(prog).args(args).exec();
    eprintln!("tapyard: cannot run {}: {e}", prog.to_string_lossy());
    Ok(if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_match_the_name_or_the_id() {
        let text = "alice:100000:65536\n1002:165536:65536\nbob:231072:0\n";
        assert_eq!(parse_sub_range(text, Some("alice"), 1001), Some((100000, 65536)));
        assert_eq!(parse_sub_range(text, Some("carol"), 1002), Some((165536, 65536)));
        // An empty range is no range.
        assert_eq!(parse_sub_range(text, Some("bob"), 1003), None);
        assert_eq!(parse_sub_range(text, None, 1004), None);
        assert_eq!(parse_sub_range("garbage\nalice:x:1\n", Some("alice"), 1), None);
    }

    #[test]
    fn default_route_is_found_in_proc_net_route() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_default_route(text).as_deref(), Some("eth0"));
        let no_default = text.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_default_route(&no_default), None);
    }

    #[test]
    fn only_the_identity_map_is_the_initial_user_namespace() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1001          1\n"));
        assert!(!is_initial_uid_map("0 1001 1\n1 100000 65536\n"));
    }

    #[test]
    fn named_namespaces_live_beside_the_socket() {
        assert_eq!(
            named_dir(Path::new("/run/user/1000/tapyard/tapyard.sock")),
            Path::new("/run/user/1000/tapyard/netns")
        );
    }

    #[test]
    fn namespace_names_are_file_names() {
        assert!(check_name("c1").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
