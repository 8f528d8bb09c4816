//! What the datapath needs to know about a network interface, asked of the
//! kernel with ioctls on a socket. Sockets (unlike /sys) answer for the
//! network namespace of the calling thread.

use std::{
    ffi::CString,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use smoltcp::wire::EthernetAddress;

use crate::error::{Error, Result};

/// A network interface's name, index, MAC address, MTU and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The interface name.
    pub name: String,
    /// The interface index.
    pub index: u32,
    /// The hardware address.
    pub mac: EthernetAddress,
    /// The MTU: the largest IP packet, without the Ethernet header.
    pub mtu: u32,
    /// Whether it is a loopback interface.
    pub loopback: bool,
    /// Active rx queues: one AF_XDP socket is needed on each.
    pub rx_queues: u32,
}

impl InterfaceInfo {
    /// Asks the kernel about the interface `name`, in the calling thread's
    /// network namespace.
    pub fn lookup(name: &str) -> Result<Self> {
        let cname = CString::new(name).map_err(|_| Error::UnknownInterface(name.into()))?;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(Error::UnknownInterface(name.into()));
        }
        // SAFETY: cname is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(Error::UnknownInterface(name.into()));
        }
        let sock = control_socket()?;
        let mut req = ifreq(name);
        ioctl(&sock, libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mac = EthernetAddress(std::array::from_fn(|i| hw.sa_data[i] as u8));
        let mut req = ifreq(name);
        ioctl(&sock, libc::SIOCGIFMTU, &mut req)?;
        // SAFETY: SIOCGIFMTU filled the mtu member.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu } as u32;
        let mut req = ifreq(name);
        ioctl(&sock, libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let loopback = flags & libc::IFF_LOOPBACK as libc::c_short != 0;
        let rx_queues = rx_queue_count(&sock, name);
        Ok(Self {
            name: name.into(),
            index,
            mac,
            mtu,
            loopback,
            rx_queues,
        })
    }

    /// The interface `ip` is assigned to, if exactly one has it.
    pub fn owning(ip: IpAddr) -> Option<String> {
        let addrs = nix::ifaddrs::getifaddrs().ok()?;
        let mut names: Vec<String> = addrs
            .filter(|a| {
                a.address.as_ref().is_some_and(|s| {
                    s.as_sockaddr_in().map(|v4| IpAddr::V4(v4.ip())) == Some(ip)
                        || s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())) == Some(ip)
                })
            })
            .map(|a| a.interface_name)
            .collect();
        names.dedup();
        (names.len() == 1).then(|| names.remove(0))
    }
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl(sock: &OwnedFd, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: req is a valid ifreq for these requests.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct ethtool_channels` from <linux/ethtool.h>.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// Rx queues in use: ethtool's rx-only plus combined channels. Devices
/// without channel support have one.
fn rx_queue_count(sock: &OwnedFd, name: &str) -> u32 {
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    match ioctl(sock, libc::SIOCETHTOOL, &mut req) {
        Ok(()) => (channels.rx_count + channels.combined_count).max(1),
        Err(e) => {
            tracing::debug!(interface = name, error = %e, "no ethtool channel info: assuming one rx queue");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_recognised() {
        let lo = InterfaceInfo::lookup("lo").unwrap();
        assert!(lo.loopback);
        assert_eq!(lo.index, 1);
        assert!(lo.mtu >= 1500);
        assert_eq!(
            InterfaceInfo::owning("127.0.0.1".parse().unwrap()).as_deref(),
            Some("lo")
        );
    }

    #[test]
    fn unknown_interfaces_are_named_in_the_error() {
        for name in ["qx-no-such-if", "", "x".repeat(40).as_str(), "a\0b"] {
            let err = InterfaceInfo::lookup(name).unwrap_err();
            assert!(
                matches!(err, Error::UnknownInterface(ref n) if n == name),
                "{err}"
            );
        }
    }
}
