//! The raw system calls behind rootless mode (`cli::rootless`): making and
//! entering namespaces, mounts, the peer of a unix socket, and the few
//! process calls the supervisor needs. Thin safe wrappers, each `unsafe`
//! block with its SAFETY note (STYLE §12); the logic lives in the caller.
//! Namespaces: namespaces(7), unshare(2), setns(2), user_namespaces(7).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{} contains a NUL byte", p.display())))
}

/// unshare(2) with CLONE_* `flags`. CLONE_NEWUSER needs a single-threaded
/// caller (EINVAL otherwise), which is why rootless mode does it first thing.
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; it only changes this process's
    // namespaces.
    check(unsafe { libc::unshare(flags) })
}

/// setns(2): moves this thread (for CLONE_NEWUSER and CLONE_NEWNS, this
/// single-threaded process) into the namespace `fd` refers to.
pub fn setns(fd: &impl AsRawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor borrowed for the call; setns reads
    // no memory of ours.
    check(unsafe { libc::setns(fd.as_raw_fd(), nstype) })
}

/// mount(2). `data` is passed as given (e.g. "mode=0755" for tmpfs).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "mount argument contains a NUL byte");
    let src = CString::new(source).map_err(invalid)?;
    let tgt = cpath(target)?;
    let fs = fstype.map(CString::new).transpose().map_err(invalid)?;
    let data = data.map(CString::new).transpose().map_err(invalid)?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call,
    // or null where mount(2) allows it (fstype for bind mounts, data).
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref().map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })
}

/// umount2(2).
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let tgt = cpath(target)?;
    // SAFETY: `tgt` is a NUL-terminated string alive for the call.
    check(unsafe { libc::umount2(tgt.as_ptr(), flags) })
}

/// The pid of the process at the other end of a connected unix socket, as
/// the kernel recorded it at connect time (SO_PEERCRED, unix(7)).
pub fn peer_pid(sock: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals; `len` holds the size of
    // `cred`, and the kernel writes at most that many bytes.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    u32::try_from(cred.pid).map_err(|_| io::Error::other("the peer's pid is not visible from this pid namespace"))
}

/// Clears FD_CLOEXEC so that a child started next inherits `fd`
/// (the rootless child gets its end of the setup socket this way).
pub fn set_inheritable(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: F_SETFD on an open descriptor takes an integer argument only.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) })
}

/// Takes ownership of an inherited descriptor named by number (from the
/// environment). Refuses numbers that are not open, and the standard
/// streams, so a wrong number cannot close something else of ours later.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is a standard stream")));
    }
    // SAFETY: F_GETFD only queries the descriptor's flags.
    check(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: the descriptor is open (checked above), was inherited for
    // this purpose by the parent, and nothing else in this process owns it:
    // it is taken once, at start, before anything else opens files.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not to be inherited further (the daemon's own children).
    // SAFETY: as in set_inheritable.
    check(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(owned)
}

/// kill(2).
pub fn kill(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes no pointers.
    check(unsafe { libc::kill(pid, sig) })
}

/// Waits until child `pid` has exited without reaping it (waitid(2) with
/// WNOWAIT): its pid stays reserved, so signals sent to it until the caller
/// reaps it (`Child::wait`) cannot reach a process that reused the pid.
pub fn wait_exited_nowait(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for the kernel to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live local of the type waitid fills.
        let rc = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        match check(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// PR_SET_PDEATHSIG (prctl(2)): `sig` is sent to this process when the
/// thread that started it (the supervisor's main thread) exits.
pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes an integer argument only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) })
}

/// Makes the process `cmd` starts get `sig` when the thread that starts it
/// exits (PR_SET_PDEATHSIG, prctl(2)): an uplink started by the rootless
/// supervisor does not outlive a supervisor killed with SIGKILL. If the
/// starting process is already gone when the child runs, the start fails.
pub fn die_with_parent(cmd: &mut std::process::Command, sig: libc::c_int) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec; it calls
    // only prctl and getppid, which are async-signal-safe, allocates
    // nothing and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the setting took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("the starting process exited"));
            }
            Ok(())
        })
    }
}

/// Brings `lo` up in this thread's network namespace (SIOCGIFFLAGS and
/// SIOCSIFFLAGS, netdevice(7)), as pasta does for the namespace it joins.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes no pointers; the result is checked next.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    // SAFETY: `fd` was just returned by socket and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid (integers and a name of NULs).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `ifr` is a live ifreq, which SIOCGIFFLAGS reads and fills.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads `ifr`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) })
}

/// The real user and group ids of this process (never fail).
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// The parent's pid (getppid(2), never fails).
pub fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}
