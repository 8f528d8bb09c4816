//! Giving up root once the datapath is open. Attaching the XDP program,
//! creating AF_XDP sockets and binding the port need privileges; serving
//! does not, except for two capabilities the running datapath still uses:
//! CAP_BPF (the listener map follows address changes, the verdict counters
//! are read: with `kernel.unprivileged_bpf_disabled` set, every bpf(2) call
//! needs it) and CAP_NET_ADMIN (asking the kernel to resolve a neighbour,
//! RTM_NEWNEIGH). Everything else is dropped, for good.
//!
//! Capability sets belong to threads, while a uid change reaches every
//! thread of the process: threads that exist at the drop lose every
//! capability, except those that kept their own (the address watcher keeps
//! CAP_BPF, see [`keep_only_for_this_thread`]); threads created after it
//! inherit the kept set from their creator. So drop on the thread that
//! will create the serving threads, before it does (`EndpointBuilder::
//! run_as` does this inside `bind`).

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

use crate::error::{Error, Result};

/// The capabilities a serving datapath keeps.
pub const KEPT: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_NET_ADMIN];
/// What the threads that send need: asking the kernel to resolve a
/// neighbour (RTM_NEWNEIGH).
pub const NEIGHBOUR_CAP: Capability = Capability::CAP_NET_ADMIN;

/// Switches the whole process to `user` (its uid, primary gid, no
/// supplementary groups), keeping only [`KEPT`] as effective and
/// permitted capabilities and removing every other one from the bounding
/// set, so that no later exec can regain them. Call after
/// `Datapath::open` (or `EndpointBuilder::bind`), before serving.
pub fn drop_to_user(user: &str) -> Result<()> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::Config(format!("dropping privileges to `{user}`: {what}: {e}"))
    };
    let account = User::from_name(user)
        .map_err(|e| fail("looking up the user", &e))?
        .ok_or_else(|| fail("looking up the user", &"no such user"))?;
    if account.uid.is_root() {
        return Err(fail("refused", &"the user is root"));
    }
    let kept: CapsHashSet = KEPT.into_iter().collect();
    // The bounding set first: that takes CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| fail("bounding set", &e))?;
        }
    }
    // Keep the permitted set across the uid change.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_KEEPCAPS", &std::io::Error::last_os_error()));
    }
    nix::unistd::setgroups(&[]).map_err(|e| fail("setgroups", &e))?;
    set_ids(account.gid, account.uid).map_err(|e| fail("setresgid/setresuid", &e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| fail("permitted set", &e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| fail("effective set", &e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("inheritable set", &e))?;
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    tracing::info!(user, uid = account.uid.as_raw(), kept = ?KEPT, "privileges dropped");
    Ok(())
}

/// Makes this thread keep `cap` through a later uid change of the process:
/// for a helper thread created before the drop that still needs one
/// capability. Until the change the thread also keeps CAP_SETUID and
/// CAP_SETGID: glibc has every thread carry out the process's id changes
/// itself, and aborts the process if one thread cannot. [`raise`] sheds
/// them once the process runs as a user. Errors (not running as root) are
/// ignored: the thread then has what it had.
pub fn keep_only_for_this_thread(cap: Capability) {
    let until_drop: CapsHashSet = [cap, Capability::CAP_SETUID, Capability::CAP_SETGID]
        .into_iter()
        .collect();
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let _ = caps::set(None, CapSet::Effective, &until_drop);
    let _ = caps::set(None, CapSet::Permitted, &until_drop);
}

/// Makes `cap` effective in this thread if it is permitted (a uid change
/// clears the effective set of threads that kept their permitted one);
/// once the process runs as a user, the thread keeps `cap` alone.
pub fn raise(cap: Capability) {
    if !caps::has_cap(None, CapSet::Permitted, cap).unwrap_or(false) {
        return;
    }
    if Uid::current().is_root() {
        let _ = caps::raise(None, CapSet::Effective, cap);
    } else {
        let only: CapsHashSet = [cap].into_iter().collect();
        let _ = caps::set(None, CapSet::Effective, &only);
        let _ = caps::set(None, CapSet::Permitted, &only);
    }
}

/// For a thread that runs untrusted work after the drop (the engines run
/// connection handlers): no effective capability, and only `cap` left
/// permitted, raised with [`with_raised`] where it is needed. Does nothing
/// while the process runs as root (it then keeps what it has).
pub fn lower_for_this_thread(cap: Capability) {
    if Uid::current().is_root() {
        return;
    }
    let only: CapsHashSet = caps::read(None, CapSet::Permitted)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| *c == cap)
        .collect();
    let _ = caps::clear(None, CapSet::Effective);
    let _ = caps::set(None, CapSet::Permitted, &only);
}

/// Runs `f` with `cap` effective if this thread may raise it, then
/// lowers it again (when it was not effective before).
pub fn with_raised<R>(cap: Capability, f: impl FnOnce() -> R) -> R {
    let was = caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if !was {
        raise(cap);
    }
    let result = f();
    if !was && !Uid::current().is_root() {
        let _ = caps::drop(None, CapSet::Effective, cap);
    }
    result
}

/// Real, effective and saved ids for every thread of the process (glibc's
/// wrappers broadcast the change to all threads).
fn set_ids(gid: Gid, uid: Uid) -> nix::Result<()> {
    nix::unistd::setresgid(gid, gid, gid)?;
    nix::unistd::setresuid(uid, uid, uid)
}
