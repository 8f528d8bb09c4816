//! Shared by the integration tests.
#![allow(dead_code)]

/// Tests that load BPF programs or create namespaces need root. They fail
/// without it (a skipped test must never look like a passed one), unless
/// the caller opts out explicitly with QUIC_XDP_SKIP_PRIVILEGED=1.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("QUIC_XDP_SKIP_PRIVILEGED").is_some() {
        eprintln!("skipped: needs root (QUIC_XDP_SKIP_PRIVILEGED is set)");
        return false;
    }
    panic!(
        "this test needs root (CAP_BPF, CAP_NET_ADMIN); set QUIC_XDP_SKIP_PRIVILEGED=1 to skip it"
    );
}
