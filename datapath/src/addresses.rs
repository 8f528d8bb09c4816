//! The interface's IP addresses, and a watcher that follows them: a
//! wildcard listener steers exactly these (see `program`), so that what is
//! sent to an address this host does not own is never answered.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// rtnetlink multicast groups for address changes (linux/rtnetlink.h).
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// How often the watcher looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);

/// The addresses configured on `interface` now (IPv4 and IPv6, link-local
/// included).
pub fn interface_addresses(interface: &str) -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if ifa.interface_name != interface {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Calls `on_change` with the interface's addresses whenever an address
/// is added or removed anywhere on the host (and once at start), until
/// dropped.
pub struct AddressWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AddressWatcher {
    /// Runs on its own thread, in the caller's network namespace.
    pub fn start(
        interface: String,
        mut on_change: impl FnMut(&[IpAddr]) + Send + 'static,
    ) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))?;
        socket.set_non_blocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("quic-xdp-addrs".into())
            .spawn(move || {
                // Updating the program's map takes CAP_BPF, also after the
                // process drops its privileges (see `privileges`).
                crate::privileges::keep_only_for_this_thread(caps::Capability::CAP_BPF);
                let mut buf = vec![0u8; 64 * 1024];
                let mut last: Option<Vec<IpAddr>> = None;
                let mut changed = true; // read once at start
                while !flag.load(Ordering::Relaxed) {
                    // After a privilege drop: CAP_BPF alone, within one
                    // stop check.
                    crate::privileges::raise(caps::Capability::CAP_BPF);
                    if changed {
                        match interface_addresses(&interface) {
                            Ok(now) if last.as_ref() != Some(&now) => {
                                on_change(&now);
                                last = Some(now);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, interface, "reading addresses"),
                        }
                    }
                    // Wait for the next address event (or the stop check),
                    // then drain what queued: one re-read covers them all.
                    changed = readable(&socket, STOP_CHECK);
                    while changed && socket.recv(&mut &mut buf[..], 0).is_ok() {}
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AddressWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn readable(socket: &Socket, timeout: Duration) -> bool {
    // SAFETY: the socket outlives this call.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0)
}
