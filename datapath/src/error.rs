//! The datapath's error type: one variant per thing a user can fix.

use std::{io, net::SocketAddr};

/// Why the datapath could not be opened or configured.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No network interface has this name.
    #[error("unknown network interface `{0}`")]
    UnknownInterface(String),
    /// Another socket holds the UDP address.
    #[error("UDP address {addr} is already in use by another socket")]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The UDP socket could not be bound for another reason.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The error from the kernel.
        source: io::Error,
    },
    /// The kernel refused a BPF or XDP operation for lack of privilege.
    #[error("XDP needs CAP_NET_ADMIN and CAP_BPF (run as root) - {context}: {source}")]
    NoPrivilege {
        /// The operation refused.
        context: &'static str,
        /// The error from the kernel.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The steering program could not be loaded, or its maps updated.
    #[error("cannot load the XDP steering program: {0}")]
    Load(Box<dyn std::error::Error + Send + Sync>),
    /// Every attach mode allowed was refused.
    #[error("cannot attach XDP to `{interface}` in any mode ({reason})")]
    Attach {
        /// The interface.
        interface: String,
        /// Why each mode was refused.
        reason: String,
    },
    /// An AF_XDP socket could not be created or bound.
    #[error("cannot create an AF_XDP socket on `{interface}` queue {queue}: {reason}")]
    Socket {
        /// The interface.
        interface: String,
        /// The rx queue.
        queue: u32,
        /// What went wrong.
        reason: String,
    },
    /// XDP cannot serve on this interface (loopback, no interface found,
    /// zero-copy refused).
    #[error("XDP cannot be used on `{interface}`: {reason}")]
    Unsupported {
        /// The interface (`?` when none could be chosen).
        interface: String,
        /// Why not.
        reason: String,
    },
    /// Settings out of range or inconsistent, or privileges that could
    /// not be dropped.
    #[error("invalid datapath configuration: {0}")]
    Config(String),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A result with the datapath's error type by default.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `err` (or anything in its source chain) is EPERM/EACCES: the
/// kernel's answer when CAP_BPF / CAP_NET_ADMIN are missing.
pub(crate) fn is_permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The error and its causes on one line, for logs and fallback reasons.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}
