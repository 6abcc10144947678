//! One burst on a split virtqueue (virtio 1.2 §2.7) in a vhost-user
//! frontend's memory: what `virtio-queue`'s `pop_descriptor_chain`,
//! `DescriptorChain` and `add_used` do, rearranged so that a burst of 32
//! frames pays the fixed costs once, not per descriptor. Used by `vhost.rs`
//! (`pop_frames`, `push_frames`), which holds the vring's lock around it.
//!
//! Per burst:
//! - [`Ring::open`] translates the descriptor table, the available ring and
//!   the used ring to host addresses once (each must lie inside one memory
//!   region and be aligned as §2.7 requires: 16, 2 and 4 bytes; a ring that
//!   is not is not served, as if empty), and reads `avail.idx` once
//!   (Acquire). Chains are then taken up to that index without reading it
//!   again; [`Ring::refresh`] reads it once more only where the caller asks
//!   (the receive ring, when it ran out of buffers).
//! - [`GuestMem`] translates buffer addresses through the last memory
//!   region used (a range check), and asks vm-memory's lookup (a binary
//!   search) only when an address falls outside it; a buffer spanning two
//!   regions is copied by vm-memory itself.
//! - Used elements are written as chains are returned; [`Ring::publish`]
//!   makes them visible with one Release store of `used.idx` and hands
//!   `next_avail` / `next_used` back to the `Queue`, and
//!   [`Ring::needs_call`] decides once whether the driver wants a call
//!   (EVENT_IDX's `used_event`, §2.7.10, or `VRING_AVAIL_F_NO_INTERRUPT`,
//!   §2.7.7.2).
//!
//! Between bursts the queue state stays in virtio-queue's `Queue`, inside
//! vhost-user-backend's `VringRwLock`: the protocol handler sets and reads
//! it there (SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ADDR, reset), and
//! the caller holds the lock from [`Ring::open`] to [`Ring::publish`].
//!
//! Guest memory is untrusted and shared: the guest (another process, on
//! another core) may change any byte of it at any time. Nothing here makes
//! a Rust reference into it: ring fields are read and written one at a time
//! through raw pointers (volatile or atomic), descriptors and frames are
//! copied into our own memory with `copy_nonoverlapping` (the copies
//! vm-memory makes too), and every decision is taken on our copy. Every
//! index the guest supplies (head, `next`) is checked against the ring or
//! table size before it becomes an offset, and chain walking has the same
//! limits as virtio-queue's (at most `size` descriptors, one level of
//! indirection, lengths that do not overflow).

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// `VRING_DESC_F_NEXT`, `VRING_DESC_F_WRITE`, `VRING_DESC_F_INDIRECT` (§2.7.5).
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// `VRING_USED_F_NO_NOTIFY` (§2.7.10) and `VRING_AVAIL_F_NO_INTERRUPT` (§2.7.7.2).
const USED_F_NO_NOTIFY: u16 = 1;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Size of a descriptor (`struct virtq_desc`).
const DESC_LEN: usize = 16;

/// Guest memory for one burst: host addresses through the last region used.
pub(super) struct GuestMem<'a> {
    mem: &'a GuestMemoryMmap,
    /// The last region used: guest start, length (0: none yet), host address.
    start: u64,
    len: u64,
    host: *mut u8,
}

impl<'a> GuestMem<'a> {
    pub(super) fn new(mem: &'a GuestMemoryMmap) -> Self {
        GuestMem { mem, start: 0, len: 0, host: ptr::null_mut() }
    }

    /// The host address of guest bytes `addr..addr + len`, when they lie in
    /// one region.
    pub(super) fn host(&mut self, addr: u64, len: usize) -> Option<*mut u8> {
        let len = len as u64;
        let mut off = addr.wrapping_sub(self.start);
        if off >= self.len || len > self.len - off {
            let r = self.mem.find_region(GuestAddress(addr))?;
            self.host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            self.start = r.start_addr().raw_value();
            self.len = r.len();
            off = addr - self.start;
            if len > self.len - off {
                return None;
            }
        }
        // SAFETY: off < self.len (find_region returned the region holding
        // addr, or the cached range check above passed), and self.host is
        // the start of that region's mapping, self.len bytes long: the
        // result stays inside the mapping.
        Some(unsafe { self.host.add(off as usize) })
    }

    /// Copies guest bytes at `addr` into `dst`.
    pub(super) fn read(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), ()> {
        if dst.is_empty() {
            return Ok(());
        }
        match self.host(addr, dst.len()) {
            // SAFETY: src is dst.len() bytes inside a live mapping of guest
            // memory (host(); the mapping lives as long as self.mem), dst is
            // our own buffer, and the two cannot overlap (our buffers are
            // not guest memory). No reference into guest memory is made:
            // the guest may be writing these bytes, and we use only the copy.
            Some(src) => unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) },
            // Outside memory, or across two regions: vm-memory walks them.
            None => self.mem.read_slice(dst, GuestAddress(addr)).map_err(|_| ())?,
        }
        Ok(())
    }

    /// Copies `src` into guest memory at `addr`.
    pub(super) fn write(&mut self, addr: u64, src: &[u8]) -> Result<(), ()> {
        if src.is_empty() {
            return Ok(());
        }
        match self.host(addr, src.len()) {
            // SAFETY: dst is src.len() bytes inside a live, writable mapping
            // of guest memory (host()), src is our own memory and cannot
            // overlap it. The guest may read or write the same bytes
            // meanwhile; that only changes what it sees, not our memory.
            Some(dst) => unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) },
            None => self.mem.write_slice(src, GuestAddress(addr)).map_err(|_| ())?,
        }
        Ok(())
    }

    /// `host`, for a ring area that must also be aligned to `align`.
    fn host_aligned(&mut self, addr: u64, len: usize, align: usize) -> Option<*mut u8> {
        self.host(addr, len).filter(|p| (*p as usize).is_multiple_of(align))
    }
}

/// A descriptor as read from the guest (our copy).
#[derive(Debug, Clone, Copy)]
pub(super) struct Desc {
    pub addr: u64,
    pub len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    fn parse(b: &[u8; DESC_LEN]) -> Desc {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = *b;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }

    pub(super) fn has_next(&self) -> bool {
        self.flags & DESC_F_NEXT != 0
    }

    pub(super) fn is_write_only(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }
}

/// The split virtqueue of one burst. See the module documentation.
pub(super) struct Ring<'a> {
    size: u16,
    /// Host addresses of the descriptor table, the available ring and the
    /// used ring, each checked to lie in guest memory whole (with the
    /// event fields) and aligned.
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    /// `next_used` when the burst began.
    start_used: u16,
    /// `avail.idx` as last read.
    avail_end: u16,
    _mem: PhantomData<&'a GuestMemoryMmap>,
}

impl<'a> Ring<'a> {
    /// The ring of `q` for one burst, or none when the queue is not ready
    /// or its rings are not (whole and aligned) in `gm`.
    pub(super) fn open(q: &Queue, gm: &mut GuestMem<'a>) -> Option<Ring<'a>> {
        if !q.ready() || q.size() == 0 {
            return None;
        }
        let size = q.size();
        let s = usize::from(size);
        // §2.7: descriptor table 16 * size (alignment 16); available ring
        // flags, idx, ring[size], used_event (alignment 2); used ring flags,
        // idx, ring[size] of 8 bytes, avail_event (alignment 4).
        let desc = gm.host_aligned(q.desc_table(), DESC_LEN * s, 16)?;
        let avail = gm.host_aligned(q.avail_ring(), 6 + 2 * s, 2)?;
        let used = gm.host_aligned(q.used_ring(), 6 + 8 * s, 4)?;
        let mut ring = Ring {
            size,
            desc,
            avail,
            used,
            event_idx: q.event_idx_enabled(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            start_used: q.next_used(),
            avail_end: q.next_avail(),
            _mem: PhantomData,
        };
        ring.refresh();
        Some(ring)
    }

    /// Reads `avail.idx` again; false (and nothing new) when the driver
    /// claims more than `size` chains beyond what we took, which no driver
    /// can (virtio-queue refuses it the same way).
    pub(super) fn refresh(&mut self) -> bool {
        // SAFETY: avail is the live, 2-aligned available ring (open());
        // avail.idx at offset 2 is 2-aligned. An atomic load is the one way
        // to read a field the driver writes concurrently; Acquire pairs with
        // the driver's write barrier before it publishes the index, so the
        // ring entries and descriptors below it are read after it.
        let idx = unsafe { AtomicU16::from_ptr(self.avail.add(2) as *mut u16) }.load(Ordering::Acquire);
        let idx = u16::from_le(idx);
        if idx.wrapping_sub(self.next_avail) > self.size {
            return false;
        }
        self.avail_end = idx;
        true
    }

    /// The head of the next available chain, if one is left below the
    /// `avail.idx` last read.
    pub(super) fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_end {
            return None;
        }
        let slot = usize::from(self.next_avail % self.size);
        // SAFETY: ring[slot] lies at 4 + 2 * slot < 6 + 2 * size, inside the
        // checked area, 2-aligned. Volatile: read once, into our copy.
        let head = unsafe { ptr::read_volatile(self.avail.add(4 + 2 * slot) as *const u16) };
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(u16::from_le(head))
    }

    /// Puts back the chain `pop` returned last.
    pub(super) fn unpop(&mut self) {
        self.next_avail = self.next_avail.wrapping_sub(1);
    }

    /// The chain starting at `head` (validated as it is walked).
    pub(super) fn chain(&self, head: u16) -> Chain<'a> {
        Chain {
            table: self.desc,
            table_addr: 0,
            size: self.size,
            next: head,
            ttl: self.size,
            indirect: false,
            bytes: 0,
            _mem: PhantomData,
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written; not
    /// visible to it before [`Ring::publish`]. A head outside the ring is
    /// not returned (there is no such chain to give back).
    pub(super) fn push_used(&mut self, head: u16, len: u32) {
        if head >= self.size {
            return;
        }
        let slot = usize::from(self.next_used % self.size);
        // SAFETY: used ring element slot lies at 4 + 8 * slot, within the
        // checked 6 + 8 * size bytes, 4-aligned (used is 4-aligned). The
        // driver reads it only after the Release store in publish().
        unsafe {
            let e = self.used.add(4 + 8 * slot);
            ptr::write_volatile(e as *mut u32, u32::from(head).to_le());
            ptr::write_volatile(e.add(4) as *mut u32, len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Chains returned in this burst so far.
    pub(super) fn used_count(&self) -> u16 {
        self.next_used.wrapping_sub(self.start_used)
    }

    /// Makes this burst's used elements visible (one `used.idx` store) and
    /// gives `q` back its positions.
    pub(super) fn publish(&mut self, q: &mut Queue) {
        if self.used_count() > 0 {
            // SAFETY: used.idx at offset 2 of the checked, 4-aligned used
            // ring. Release: the elements written before are visible to the
            // driver once it sees the new index.
            unsafe { AtomicU16::from_ptr(self.used.add(2) as *mut u16) }
                .store(self.next_used.to_le(), Ordering::Release);
        }
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
    }

    /// After [`Ring::publish`]: whether the driver wants a call for the
    /// chains this burst returned.
    pub(super) fn needs_call(&self) -> bool {
        let added = self.used_count();
        if added == 0 {
            return false;
        }
        // The used.idx store must be visible before we read what the
        // driver asked for (it checks the index after writing used_event).
        fence(Ordering::SeqCst);
        if self.event_idx {
            // SAFETY: used_event follows ring[size] in the checked available
            // ring (4 + 2 * size < 6 + 2 * size), 2-aligned.
            let event = u16::from_le(unsafe {
                ptr::read_volatile(self.avail.add(4 + 2 * usize::from(self.size)) as *const u16)
            });
            // vring_need_event (§2.7.10): used_event in [start_used, next_used).
            return self.next_used.wrapping_sub(event).wrapping_sub(1) < added;
        }
        // SAFETY: avail.flags at offset 0 of the checked, 2-aligned ring.
        let flags = u16::from_le(unsafe { ptr::read_volatile(self.avail as *const u16) });
        flags & AVAIL_F_NO_INTERRUPT == 0
    }

    /// Asks the driver to notify (kick) for the next chain; true when one
    /// arrived meanwhile (take it, then [`Ring::disable_notification`]).
    pub(super) fn enable_notification(&mut self) -> bool {
        if self.event_idx {
            self.set_avail_event(self.next_avail);
        } else {
            self.set_used_flags(0);
        }
        // Our write must be visible before we look at avail.idx again
        // (the driver writes avail.idx, then reads what we asked for).
        fence(Ordering::SeqCst);
        self.refresh() && self.avail_end != self.next_avail
    }

    /// No kicks while we poll: `VRING_USED_F_NO_NOTIFY`; with EVENT_IDX,
    /// `avail_event` simply stays behind.
    pub(super) fn disable_notification(&mut self) {
        if !self.event_idx {
            self.set_used_flags(USED_F_NO_NOTIFY);
        }
    }

    fn set_used_flags(&mut self, v: u16) {
        // SAFETY: used.flags at offset 0 of the checked, 4-aligned used ring.
        unsafe { ptr::write_volatile(self.used as *mut u16, v.to_le()) };
    }

    fn set_avail_event(&mut self, v: u16) {
        // SAFETY: avail_event follows ring[size] in the checked used ring
        // (4 + 8 * size < 6 + 8 * size), 4-aligned.
        unsafe { ptr::write_volatile(self.used.add(4 + 8 * usize::from(self.size)) as *mut u16, v.to_le()) };
    }
}

/// Walks one descriptor chain, with virtio-queue's limits: at most `size`
/// descriptors per table, indices below the table size, one indirect table
/// (a multiple of 16 bytes, not nested), total length without overflow.
/// `next` returns none when the chain ends, and also when it breaks off;
/// the caller tells the two apart by the last descriptor's NEXT flag.
pub(super) struct Chain<'a> {
    /// Host address of the table (the ring's, or an indirect table that
    /// lies in one region), or null: read each descriptor at `table_addr`
    /// through vm-memory.
    table: *const u8,
    table_addr: u64,
    size: u16,
    next: u16,
    ttl: u16,
    indirect: bool,
    bytes: u32,
    _mem: PhantomData<&'a GuestMemoryMmap>,
}

impl Chain<'_> {
    pub(super) fn next(&mut self, gm: &mut GuestMem<'_>) -> Option<Desc> {
        loop {
            if self.ttl == 0 || self.next >= self.size {
                return None;
            }
            let at = usize::from(self.next) * DESC_LEN;
            let mut raw = [0u8; DESC_LEN];
            if self.table.is_null() {
                gm.read(self.table_addr.checked_add(at as u64)?, &mut raw).ok()?;
            } else {
                // SAFETY: next < size, and the table's size * 16 bytes lie in
                // one live mapping (Ring::open, or GuestMem::host for an
                // indirect table); raw is ours. Copied once, then parsed.
                unsafe { ptr::copy_nonoverlapping(self.table.add(at), raw.as_mut_ptr(), DESC_LEN) };
            }
            let d = Desc::parse(&raw);
            if d.flags & DESC_F_INDIRECT != 0 {
                // §2.7.5.3: the chain continues in the table d points to.
                if self.indirect || !(d.len as usize).is_multiple_of(DESC_LEN) {
                    return None;
                }
                let n = u16::try_from(d.len as usize / DESC_LEN).ok()?;
                self.table = gm.host(d.addr, d.len as usize).map_or(ptr::null(), |p| p as *const u8);
                self.table_addr = d.addr;
                self.size = n;
                self.next = 0;
                self.ttl = n;
                self.indirect = true;
                continue;
            }
            self.bytes = self.bytes.checked_add(d.len)?;
            if d.has_next() {
                self.next = d.next;
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(d);
        }
    }
}
