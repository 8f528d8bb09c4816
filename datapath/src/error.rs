//! The datapath's error type: one variant per thing a user can fix.

use std::{io, net::SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown network interface `{0}`")]
    UnknownInterface(String),
    #[error("UDP address {addr} is already in use by another socket")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("XDP needs CAP_NET_ADMIN and CAP_BPF (run as root) - {context}: {source}")]
    NoPrivilege {
        context: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot load the XDP steering program: {0}")]
    Load(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot attach XDP to `{interface}` in any mode ({reason})")]
    Attach { interface: String, reason: String },
    #[error("cannot create an AF_XDP socket on `{interface}` queue {queue}: {reason}")]
    Socket {
        interface: String,
        queue: u32,
        reason: String,
    },
    #[error("XDP cannot be used on `{interface}`: {reason}")]
    Unsupported { interface: String, reason: String },
    #[error("invalid datapath configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

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
