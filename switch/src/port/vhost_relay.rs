//! A vhost-user message relay between the frontend's socket and the
//! protocol handler (vhost-user-backend), on the control path only.
//!
//! Why: QEMU's vhost-user netdev sends `SET_VRING_ENABLE` right after
//! `SET_PROTOCOL_FEATURES`, before `SET_FEATURES` (at netdev init, and again
//! before the guest driver starts the device). QEMU counts the protocol
//! features as negotiated once the backend offered
//! `VHOST_USER_F_PROTOCOL_FEATURES` and the frontend sent
//! `SET_PROTOCOL_FEATURES`; the rust-vmm crates (vhost 0.18's request
//! handler and vhost-user-backend 0.24) accept `SET_VRING_ENABLE` only after
//! `SET_FEATURES` acknowledged that bit, and otherwise end the connection, so
//! a QEMU guest never came up. The relay holds such early `SET_VRING_ENABLE`
//! messages (acknowledging them itself when the frontend asked for a reply)
//! and delivers them right after `SET_FEATURES`, which is what they mean.
//! Everything else, file descriptors included, passes through unchanged.
//!
//! Messages (vhost-user spec "Message Specification"): a 12-byte header
//! (request u32, flags u32, size u32, little-endian), `size` bytes of body;
//! descriptors travel as SCM_RIGHTS with the message.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR: usize = 12;
/// Far above any message tapyard handles (SET_MEM_TABLE with 8 regions is 264 bytes).
const MAX_BODY: usize = 64 * 1024;
/// Descriptors one message may carry (SET_MEM_TABLE: one per region, at most 8).
const MAX_FDS: usize = 32;

const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
/// Header flags: version 1, reply, need reply.
const F_VERSION: u32 = 0x1;
const F_REPLY: u32 = 0x4;
const F_NEED_REPLY: u32 = 0x8;

struct Msg {
    hdr: [u8; HDR],
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.hdr[4], self.hdr[5], self.hdr[6], self.hdr[7]])
    }

    fn set_flags(&mut self, f: u32) {
        self.hdr[4..8].copy_from_slice(&f.to_le_bytes());
    }
}

/// Reads `buf.len()` bytes, collecting any descriptors that come with them.
/// `Ok(false)`: the peer closed before the first byte.
fn read_full(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
        let rest = &mut buf[got..];
        let mut iov = [libc::iovec { iov_base: rest.as_mut_ptr().cast(), iov_len: rest.len() }];
        // SAFETY: the iovec points into `rest`, a live buffer we borrow
        // mutably for this call; any bytes may be written to it.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }.map_err(io::Error::other)?;
        for &fd in &raw[..nfds.min(MAX_FDS)] {
            // SAFETY: recvmsg gave us these descriptors; we are their only owner.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

fn read_msg(s: &UnixStream) -> io::Result<Option<Msg>> {
    let mut m = Msg { hdr: [0; HDR], body: Vec::new(), fds: Vec::new() };
    if !read_full(s, &mut m.hdr, &mut m.fds)? {
        return Ok(None);
    }
    let size = u32::from_le_bytes([m.hdr[8], m.hdr[9], m.hdr[10], m.hdr[11]]) as usize;
    if size > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("vhost-user message of {size} bytes")));
    }
    m.body = vec![0; size];
    if size > 0 && !read_full(s, &mut m.body, &mut m.fds)? {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(m))
}

fn write_msg(s: &UnixStream, m: &Msg) -> io::Result<()> {
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut out: Vec<u8> = Vec::with_capacity(HDR + m.body.len());
    out.extend_from_slice(&m.hdr);
    out.extend_from_slice(&m.body);
    let mut sent = s.send_with_fds(&[&out[..]], &raw).map_err(io::Error::other)?;
    // The descriptors went with the first byte; the rest (rare) goes plain.
    while sent < out.len() {
        let n = s.send_with_fds(&[&out[sent..]], &[]).map_err(io::Error::other)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// Relays between `frontend` and `backend` until either closes; then shuts
/// both down, so the other side sees the end too.
pub fn relay(frontend: UnixStream, backend: UnixStream) {
    let _ = run(&frontend, &backend);
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
}

fn run(fe: &UnixStream, be: &UnixStream) -> io::Result<()> {
    let mut features_set = false;
    let mut held: Vec<Msg> = Vec::new();
    loop {
        let mut pfd = [
            libc::pollfd { fd: fe.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: be.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: pfd is a live array of two pollfd for the two sockets we borrow.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfd[0].revents != 0 {
            let Some(mut m) = read_msg(fe)? else { return Ok(()) };
            match m.request() {
                SET_VRING_ENABLE if !features_set => {
                    if m.flags() & F_NEED_REPLY != 0 {
                        // Acknowledge it now (0: success), as the backend
                        // will when it gets it after SET_FEATURES.
                        let mut hdr = [0u8; HDR];
                        hdr[0..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                        hdr[4..8].copy_from_slice(&(F_VERSION | F_REPLY).to_le_bytes());
                        hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
                        write_msg(fe, &Msg { hdr, body: vec![0; 8], fds: Vec::new() })?;
                        m.set_flags(m.flags() & !F_NEED_REPLY);
                    }
                    held.push(m);
                }
                SET_FEATURES => {
                    features_set = true;
                    write_msg(be, &m)?;
                    for h in held.drain(..) {
                        write_msg(be, &h)?;
                    }
                }
                _ => write_msg(be, &m)?,
            }
        }
        if pfd[1].revents != 0 {
            let Some(m) = read_msg(be)? else { return Ok(()) };
            write_msg(fe, &m)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn msg(req: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&req.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn early_enables_wait_for_set_features_and_are_acknowledged_when_asked() {
        use std::io::Write;
        let (mut qemu, fe) = UnixStream::pair().unwrap();
        let (be, mut handler) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(fe, be));
        let enable = |i: u32| [i.to_le_bytes(), 1u32.to_le_bytes()].concat();
        qemu.write_all(&msg(SET_VRING_ENABLE, F_VERSION | F_NEED_REPLY, &enable(0))).unwrap();
        qemu.write_all(&msg(SET_VRING_ENABLE, F_VERSION, &enable(1))).unwrap();
        // The first asked for a reply: the relay acknowledges it.
        let mut ack = [0u8; 20];
        qemu.read_exact(&mut ack).unwrap();
        assert_eq!(ack[..], msg(SET_VRING_ENABLE, F_VERSION | F_REPLY, &[0; 8])[..]);
        qemu.write_all(&msg(SET_FEATURES, F_VERSION, &(1u64 << 30).to_le_bytes())).unwrap();
        // The handler sees SET_FEATURES first, then both enables, with no reply asked.
        let mut got = [0u8; 20 + 20 + 20];
        handler.read_exact(&mut got).unwrap();
        assert_eq!(got[..20], msg(SET_FEATURES, F_VERSION, &(1u64 << 30).to_le_bytes())[..]);
        assert_eq!(got[20..40], msg(SET_VRING_ENABLE, F_VERSION, &enable(0))[..]);
        assert_eq!(got[40..], msg(SET_VRING_ENABLE, F_VERSION, &enable(1))[..]);
        // Later enables and replies pass straight through.
        qemu.write_all(&msg(SET_VRING_ENABLE, F_VERSION | F_NEED_REPLY, &enable(0))).unwrap();
        let mut m = [0u8; 20];
        handler.read_exact(&mut m).unwrap();
        assert_eq!(m[..], msg(SET_VRING_ENABLE, F_VERSION | F_NEED_REPLY, &enable(0))[..]);
        handler.write_all(&msg(SET_VRING_ENABLE, F_VERSION | F_REPLY, &[0; 8])).unwrap();
        qemu.read_exact(&mut ack).unwrap();
        drop(qemu);
        t.join().unwrap();
        // The relay closed the handler's side too.
        assert_eq!(handler.read(&mut m).unwrap(), 0);
    }

    #[test]
    fn descriptors_pass_through_and_oversized_messages_end_the_relay() {
        use std::io::Write;
        let (qemu, fe) = UnixStream::pair().unwrap();
        let (be, handler) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay(fe, be));
        let file = std::fs::File::open("/dev/null").unwrap();
        qemu.send_with_fds(&[&msg(12, F_VERSION, &8u64.to_le_bytes())[..]], &[file.as_raw_fd()]).unwrap();
        let m = read_msg(&handler).unwrap().unwrap();
        assert_eq!((m.request(), m.fds.len(), m.body.len()), (12, 1, 8));
        let mut q = qemu.try_clone().unwrap();
        q.write_all(&msg(1, F_VERSION, &[])[..8]).unwrap();
        q.write_all(&(MAX_BODY as u32 + 1).to_le_bytes()).unwrap();
        t.join().unwrap();
        let mut b = [0u8; 1];
        assert_eq!((&handler).read(&mut b).unwrap(), 0, "the handler side is closed");
    }
}
