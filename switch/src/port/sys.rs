//! System lookups that need `unsafe` FFI, kept in the port layer with the
//! rest of the crate's `unsafe` (STYLE §12).

/// The id of group `name`, through the system's group database (NSS, so
/// LDAP or systemd groups resolve too).
pub fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value to be overwritten (plain
    // integers and null pointers).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local; buf's length is passed, and
    // getgrnam_r writes the strings of `grp` only into buf.
    let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    (rc == 0 && !found.is_null()).then_some(grp.gr_gid)
}
