//! bpf(2) without libbpf: the `bpf_attr` prefixes tapyard uses, the
//! syscall, and a loader that returns the verifier's log with its error.
//! Two programs are assembled from these: AF_XDP's redirect program
//! (`xdp.rs`) and the TAP queue steering program ([`cpu_steering`], used by
//! `tap.rs` for `daemon --tap-steering cpu`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

pub(super) const BPF_MAP_CREATE: libc::c_int = 0;
pub(super) const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
pub(super) const BPF_PROG_LOAD: libc::c_int = 5;
pub(super) const BPF_LINK_CREATE: libc::c_int = 28;

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    pub(super) const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        // The register nibbles are a C bitfield: dst is the low one on
        // little-endian hosts, the high one on big-endian hosts.
        let regs = if cfg!(target_endian = "little") { dst | (src << 4) } else { (dst << 4) | src };
        Insn { code, regs, off, imm }
    }
}

/// `bpf_attr` for BPF_MAP_CREATE (the prefix we use; the kernel zeroes the rest).
#[repr(C)]
pub(super) struct MapCreate {
    pub(super) map_type: u32,
    pub(super) key_size: u32,
    pub(super) value_size: u32,
    pub(super) max_entries: u32,
    pub(super) map_flags: u32,
    pub(super) inner_map_fd: u32,
    pub(super) numa_node: u32,
    pub(super) map_name: [u8; 16],
}

/// `bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
pub(super) struct MapUpdate {
    pub(super) map_fd: u32,
    pub(super) _pad: u32,
    pub(super) key: u64,
    pub(super) value: u64,
    pub(super) flags: u64,
}

/// `bpf_attr` for BPF_PROG_LOAD (prefix).
#[repr(C)]
pub(super) struct ProgLoad {
    pub(super) prog_type: u32,
    pub(super) insn_cnt: u32,
    pub(super) insns: u64,
    pub(super) license: u64,
    pub(super) log_level: u32,
    pub(super) log_size: u32,
    pub(super) log_buf: u64,
    pub(super) kern_version: u32,
    pub(super) prog_flags: u32,
    pub(super) prog_name: [u8; 16],
    pub(super) prog_ifindex: u32,
    pub(super) expected_attach_type: u32,
}

/// `bpf_attr` for BPF_LINK_CREATE (prefix).
#[repr(C)]
pub(super) struct LinkCreate {
    pub(super) prog_fd: u32,
    pub(super) target_ifindex: u32,
    pub(super) attach_type: u32,
    pub(super) flags: u32,
}

/// bpf(2) with `attr`; returns the new fd for commands that make one.
pub(super) fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live repr(C) prefix of `union bpf_attr`, of the
    // size passed; the kernel reads it (and zeroes the rest of its copy).
    // Pointers inside it are to buffers the caller keeps alive for the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, (attr as *mut T).cast::<libc::c_void>(), std::mem::size_of::<T>() as u32)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub(super) fn bpf_fd<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)? as RawFd;
    // SAFETY: the kernel just returned this new fd (O_CLOEXEC); we own it alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn name16(s: &str) -> [u8; 16] {
    let mut n = [0u8; 16];
    for (d, c) in n.iter_mut().zip(s.bytes().take(15)) {
        *d = c;
    }
    n
}

/// Loads `insns` as a program of `prog_type` (expected attach type
/// `attach`), named `name`. On failure, loads again with a log buffer and
/// puts the verifier's log in the error.
pub(super) fn load(insns: &[Insn], prog_type: u32, attach: u32, name: &str) -> io::Result<OwnedFd> {
    static LICENSE: &[u8] = b"Dual MIT/GPL\0";
    let attr = |log: &mut [u8]| ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: u32::from(!log.is_empty()),
        log_size: log.len() as u32,
        log_buf: if log.is_empty() { 0 } else { log.as_mut_ptr() as u64 },
        kern_version: 0,
        prog_flags: 0,
        prog_name: name16(name),
        prog_ifindex: 0,
        expected_attach_type: attach,
    };
    match bpf_fd(BPF_PROG_LOAD, &mut attr(&mut [])) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            let mut log = vec![0u8; 64 * 1024];
            let again = bpf_fd(BPF_PROG_LOAD, &mut attr(&mut log));
            let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(log.len())]);
            match again {
                Ok(fd) => Ok(fd),
                Err(_) => Err(io::Error::new(
                    first.kind(),
                    format!("cannot load the {name} program: {first}; verifier log: {}", text.trim_end()),
                )),
            }
        }
    }
}

/// `BPF_PROG_TYPE_SOCKET_FILTER`: what TUNSETSTEERINGEBPF takes.
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
/// `bpf_get_smp_processor_id`.
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// The TAP steering program: `r0 = bpf_get_smp_processor_id(); exit`. The
/// kernel takes its return value modulo the queue count as the queue a
/// frame the node sends goes to (tun.c, `tun_ebpf_select_queue`), so a
/// frame sent on CPU c lands on queue c, which worker c reads, pinned to
/// core c: the wake-up stays on the sender's core instead of crossing to
/// another (an inter-processor interrupt, on a VM an exit). Measured in
/// docs/PERFORMANCE.md.
pub(super) fn cpu_steering() -> io::Result<OwnedFd> {
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    let insns = [Insn::new(CALL, 0, 0, 0, BPF_FUNC_GET_SMP_PROCESSOR_ID), Insn::new(EXIT, 0, 0, 0, 0)];
    load(&insns, BPF_PROG_TYPE_SOCKET_FILTER, 0, "tapyard_steer")
}
