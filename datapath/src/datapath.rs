//! Opening the datapath: XDP steering plus one AF_XDP socket per rx queue,
//! or kernel UDP where XDP cannot serve. Auto mode falls back on anything
//! XDP-specific (privilege, driver, loopback) and says why; errors a user
//! must fix (unknown interface, port in use) fail in every mode.

use std::{
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
};

use crate::{
    addresses::{AddressWatcher, interface_addresses},
    counters::CounterSnapshot,
    error::{Error, Result},
    iface::InterfaceInfo,
    io::PacketIo,
    program::{AttachMode, AttachPreference, InitialRate, SteerStats, SteeringProgram},
    source_policy::SourcePolicy,
    udp::UdpQueue,
    wire::ChecksumPolicy,
    xsk::{XskQueue, XskSettings, ZeroCopy},
};

/// Which datapath to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// XDP, failing if it cannot be used.
    Xdp,
    /// Kernel UDP sockets only.
    Udp,
    /// XDP where possible, kernel UDP otherwise (the reason is logged).
    #[default]
    Auto,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "xdp" => Ok(Self::Xdp),
            "udp" => Ok(Self::Udp),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("unknown mode `{s}` (expected xdp, udp or auto)")),
        }
    }
}

/// What `Datapath::open` opens: the mode, the address, and the XDP
/// settings.
#[derive(Debug, Clone)]
pub struct DatapathConfig {
    /// Address and port to serve. An unspecified IPv6 address serves IPv4
    /// too; with XDP it needs `interface`.
    pub listen: SocketAddr,
    /// The interface to steer on; by default the one that owns `listen`.
    pub interface: Option<String>,
    /// XDP, kernel UDP, or XDP where possible (the default).
    pub mode: Mode,
    /// Which XDP attach modes to try (native, generic).
    pub attach: AttachPreference,
    /// Whether the AF_XDP sockets use zero-copy.
    pub zero_copy: ZeroCopy,
    /// Rx queues to bind; by default every active one.
    pub queues: Option<Vec<u32>>,
    /// AF_XDP ring slots (a power of two); each queue's UMEM holds twice
    /// as many 4 KiB frames.
    pub ring_size: u32,
    /// How much of the UDP checksum the AF_XDP sockets verify on receive.
    pub checksum: ChecksumPolicy,
    /// Per-source limit on client Initials, enforced in the XDP program.
    /// Off by default: one address may stand for many clients (NAT, load
    /// generators); set it for what your clients need.
    pub initial_rate: Option<InitialRate>,
    /// The endpoint is a server that speaks only QUIC v1: the XDP program
    /// answers other versions' first packets with Version Negotiation
    /// itself (XDP_TX) and drops them under 1200 bytes. quic-xdp's
    /// endpoint sets it; off by default (quinn on the AF_XDP socket, which
    /// may speak other versions, and clients).
    pub answer_version_negotiation: bool,
    /// Sources allowed or denied the port. Enforced in the XDP program
    /// (nftables never sees steered traffic) and on the kernel sockets.
    pub source_policy: SourcePolicy,
    /// Write every datagram received and sent to this pcap file (tcpdump
    /// does not see steered traffic).
    pub capture: Option<std::path::PathBuf>,
    /// The largest the capture file may grow: capture stops there.
    pub capture_max_bytes: u64,
    /// In copy mode, a batch of datagrams for one peer leaves through the
    /// kernel socket with UDP GSO rather than through AF_XDP: copy mode
    /// makes one skb per frame, GSO one per batch (on veth the kernel
    /// also runs the peer's receive path once per skb, on our CPU). Small
    /// transmits, and all of them in zero-copy mode, use AF_XDP. On by
    /// default.
    pub batches_through_kernel: bool,
}

impl DatapathConfig {
    /// The defaults for serving `listen`: auto mode, every rx queue,
    /// 2048-slot rings, checksums verified, no Initial rate limit and no
    /// source policy.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            interface: None,
            mode: Mode::Auto,
            attach: AttachPreference::Auto,
            zero_copy: ZeroCopy::Auto,
            queues: None,
            ring_size: 2048,
            checksum: ChecksumPolicy::Verify,
            initial_rate: None,
            answer_version_negotiation: false,
            source_policy: SourcePolicy::default(),
            capture: None,
            capture_max_bytes: 1 << 30,
            batches_through_kernel: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if !self.ring_size.is_power_of_two() || !(64..=32768).contains(&self.ring_size) {
            return Err(Error::Config(format!(
                "ring size {} must be a power of two from 64 to 32768",
                self.ring_size
            )));
        }
        if self.queues.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::Config("the queue list is empty".into()));
        }
        Ok(())
    }
}

/// The datapath actually running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveMode {
    /// The XDP program steers into AF_XDP sockets.
    Xdp {
        /// The interface the program is attached to.
        interface: String,
        /// How the program is attached.
        attach: AttachMode,
        /// Whether every AF_XDP socket runs in zero-copy mode.
        zero_copy: bool,
        /// The rx queues with an AF_XDP socket.
        queues: Vec<u32>,
    },
    /// Kernel UDP sockets.
    Udp {
        /// Why XDP is not in use, when it was not explicitly declined.
        fallback_reason: Option<String>,
    },
}

impl fmt::Display for ActiveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xdp {
                interface,
                attach,
                zero_copy,
                queues,
            } => write!(
                f,
                "xdp on {interface} ({attach} attach, {} AF_XDP sockets on queues {queues:?})",
                if *zero_copy { "zero-copy" } else { "copy-mode" }
            ),
            Self::Udp {
                fallback_reason: None,
            } => f.write_str("udp (kernel sockets)"),
            Self::Udp {
                fallback_reason: Some(r),
            } => write!(f, "udp (kernel sockets; XDP unavailable: {r})"),
        }
    }
}

/// An open datapath. Dropping it closes the sockets and detaches the XDP
/// program; so does the process exiting.
pub struct Datapath {
    queues: Vec<Box<dyn PacketIo>>,
    mode: ActiveMode,
    /// Follows the interface's addresses into the program's listener map;
    /// dropped (stopped) before the program.
    _address_watcher: Option<AddressWatcher>,
    steering: Option<Arc<Mutex<SteeringProgram>>>,
    local: SocketAddr,
}

impl Datapath {
    /// Opens the datapath `config` describes. In auto mode, a failure
    /// specific to XDP falls back to kernel UDP (logged, and kept in
    /// `ActiveMode::Udp`); configuration errors fail in every mode.
    pub fn open(config: &DatapathConfig) -> Result<Self> {
        config.validate()?;
        match config.mode {
            Mode::Udp => Self::open_udp(config, None),
            Mode::Xdp => Self::open_xdp(config),
            Mode::Auto => match Self::open_xdp(config) {
                Ok(dp) => Ok(dp),
                Err(
                    e @ (Error::UnknownInterface(_)
                    | Error::AddrInUse { .. }
                    | Error::Bind { .. }
                    | Error::Config(_)),
                ) => Err(e),
                Err(e) => {
                    let reason = crate::error::chain(&e);
                    tracing::warn!(%reason, "XDP unavailable, serving on kernel UDP");
                    Self::open_udp(config, Some(reason))
                }
            },
        }
    }

    fn open_udp(config: &DatapathConfig, fallback_reason: Option<String>) -> Result<Self> {
        let mtu = config
            .interface
            .as_deref()
            .map(InterfaceInfo::lookup)
            .transpose()?
            .map_or(1500, |i| i.mtu);
        let queue = UdpQueue::bind(config.listen, mtu)?
            .with_source_policy(&config.source_policy)
            .with_capture(open_capture(config)?);
        let local = queue.local_addr();
        Ok(Self {
            queues: vec![Box::new(queue)],
            mode: ActiveMode::Udp { fallback_reason },
            _address_watcher: None,
            steering: None,
            local,
        })
    }

    fn open_xdp(config: &DatapathConfig) -> Result<Self> {
        let name = match &config.interface {
            Some(name) => name.clone(),
            None => {
                InterfaceInfo::owning(config.listen.ip()).ok_or_else(|| Error::Unsupported {
                    interface: "?".into(),
                    reason: format!(
                        "no interface given, and {} is not assigned to exactly one interface",
                        config.listen.ip()
                    ),
                })?
            }
        };
        let info = InterfaceInfo::lookup(&name)?;
        if info.loopback {
            return Err(Error::Unsupported {
                interface: name,
                reason: "loopback traffic is delivered locally and never meets XDP".into(),
            });
        }
        // Reserve the port first: a port in use fails before any BPF work,
        // and from here on nothing that escapes steering is lost. Port 0
        // takes a free port (a client's, say), which is then steered.
        let capture = open_capture(config)?;
        let reservation = UdpQueue::bind_reservation(config.listen, info.mtu)?
            .with_source_policy(&config.source_policy)
            .with_capture(capture.clone());
        let listen = SocketAddr::new(config.listen.ip(), reservation.local_addr().port());
        let queue_ids: Vec<u32> = match &config.queues {
            Some(q) => q.clone(),
            None => (0..info.rx_queues).collect(),
        };
        if let Some(bad) = queue_ids.iter().find(|&&q| q >= info.rx_queues) {
            return Err(Error::Config(format!(
                "`{name}` has {} rx queues; queue {bad} does not exist",
                info.rx_queues
            )));
        }
        let mut steering = SteeringProgram::load(
            info.rx_queues,
            Some(crate::xsk::MAX_FRAME_LEN),
            info.mac,
            config.initial_rate,
            config.answer_version_negotiation,
        )?;
        steering.set_local_addresses(&interface_addresses(&name)?)?;
        steering.set_source_policy(&config.source_policy)?;
        steering.add_listener(listen)?;
        let attach = steering.attach(&name, config.attach)?;
        let zero_copy = match (attach, config.zero_copy) {
            (AttachMode::Generic, ZeroCopy::Require) => {
                return Err(Error::Unsupported {
                    interface: name,
                    reason: "zero-copy needs native XDP, which the driver refused".into(),
                });
            }
            (AttachMode::Generic, _) => ZeroCopy::Disable,
            (_, z) => z,
        };
        let settings = XskSettings {
            interface: name.clone(),
            ifindex: info.index,
            mac: info.mac,
            mtu: info.mtu,
            ring_size: config.ring_size,
            zero_copy,
            checksum: config.checksum,
            port: listen.port(),
            default_src: Some(listen.ip().to_canonical()).filter(|ip| !ip.is_unspecified()),
            capture,
            batches_through_kernel: config.batches_through_kernel,
        };
        let mut queues: Vec<Box<dyn PacketIo>> = Vec::new();
        let mut all_zero_copy = true;
        for &queue in &queue_ids {
            let xsk = XskQueue::open(&settings, queue).map_err(|reason| Error::Socket {
                interface: name.clone(),
                queue,
                reason,
            })?;
            steering.bind_socket(queue, xsk.socket_fd())?;
            all_zero_copy &= matches!(
                xsk.kind(),
                crate::io::QueueKind::Xsk {
                    zero_copy: true,
                    ..
                }
            );
            queues.push(Box::new(xsk));
        }
        let local = reservation.local_addr();
        queues.push(Box::new(reservation));
        let steering = Arc::new(Mutex::new(steering));
        let watched = steering.clone();
        let addresses = AddressWatcher::start(name.clone(), move |addrs| {
            let mut prog = watched.lock().unwrap_or_else(PoisonError::into_inner);
            match prog.set_local_addresses(addrs) {
                Ok(()) => tracing::debug!(?addrs, "steering the interface's addresses"),
                Err(e) => tracing::warn!(error = %e, "updating the steered addresses"),
            }
        })?;
        let mode = ActiveMode::Xdp {
            interface: name,
            attach,
            zero_copy: all_zero_copy,
            queues: queue_ids,
        };
        tracing::info!(%mode, %local, "datapath open");
        Ok(Self {
            queues,
            mode,
            _address_watcher: Some(addresses),
            steering: Some(steering),
            local,
        })
    }

    /// The datapath actually running.
    pub fn mode(&self) -> &ActiveMode {
        &self.mode
    }

    /// The bound address (with the real port if 0 was asked for in UDP mode).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The queues still held here (none once taken).
    pub fn queues(&self) -> &[Box<dyn PacketIo>] {
        &self.queues
    }

    /// The queues still held here, to receive and send on.
    pub fn queues_mut(&mut self) -> &mut [Box<dyn PacketIo>] {
        &mut self.queues
    }

    /// Hands the queues to their threads; the XDP program stays attached
    /// until this `Datapath` is dropped.
    pub fn take_queues(&mut self) -> Vec<Box<dyn PacketIo>> {
        std::mem::take(&mut self.queues)
    }

    /// The queues grouped for one thread each: in XDP mode one group per
    /// AF_XDP socket, each with a send handle on the kernel socket (the
    /// first group receives on it); in UDP mode one group. The XDP program
    /// stays attached until this `Datapath` is dropped.
    pub fn take_queue_groups(&mut self) -> Vec<Vec<Box<dyn PacketIo>>> {
        // The kernel socket comes last: the reservation in XDP mode, the
        // only queue in UDP mode.
        let mut queues = self.take_queues();
        let Some(kernel) = queues.pop() else {
            return Vec::new();
        };
        let handles: Vec<_> = queues
            .iter()
            .skip(1)
            .map(|_| kernel.send_handle())
            .collect();
        let mut kernel = Some(kernel);
        let mut handles = handles.into_iter();
        let mut groups: Vec<Vec<Box<dyn PacketIo>>> = queues
            .into_iter()
            .map(|xsk| {
                let mut group = vec![xsk];
                match kernel.take() {
                    Some(receiving) => group.push(receiving),
                    None => group.extend(handles.next().flatten()),
                }
                group
            })
            .collect();
        if let Some(kernel) = kernel {
            groups.push(vec![kernel]);
        }
        groups
    }

    /// The steering program's verdict counts (XDP mode only).
    pub fn steering_stats(&self) -> Option<SteerStats> {
        self.steering().and_then(|s| s.stats().ok())
    }

    /// The steering program, locked (XDP mode only).
    pub fn steering(&self) -> Option<std::sync::MutexGuard<'_, SteeringProgram>> {
        self.steering
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Counters summed over the queues still held here.
    pub fn counters(&self) -> CounterSnapshot {
        let mut total = CounterSnapshot::default();
        for q in &self.queues {
            total += q.counters().snapshot();
        }
        total
    }
}

/// The capture file `config` asks for, created now (before any privilege
/// drop).
fn open_capture(config: &DatapathConfig) -> Result<Option<Arc<crate::capture::Capture>>> {
    config
        .capture
        .as_deref()
        .map(|path| {
            crate::capture::Capture::create(path, config.capture_max_bytes).map_err(|e| {
                Error::Config(format!("cannot write the capture {}: {e}", path.display()))
            })
        })
        .transpose()
}

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datapath")
            .field("mode", &self.mode)
            .field("local", &self.local)
            .field("queues", &self.queues.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_on_loopback_falls_back_to_udp_and_says_why() {
        let mut config = DatapathConfig::new("127.0.0.1:0".parse().unwrap());
        config.listen.set_port(47011);
        let dp = Datapath::open(&config).unwrap();
        match dp.mode() {
            ActiveMode::Udp {
                fallback_reason: Some(r),
            } => assert!(r.contains("loopback"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(dp.queues().len(), 1);
    }

    #[test]
    fn xdp_mode_on_loopback_is_an_error_not_a_fallback() {
        let mut config = DatapathConfig::new("127.0.0.1:47012".parse().unwrap());
        config.mode = Mode::Xdp;
        config.interface = Some("lo".into());
        let err = Datapath::open(&config).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn user_errors_fail_in_auto_mode_too() {
        let mut config = DatapathConfig::new("127.0.0.1:47013".parse().unwrap());
        config.interface = Some("qx-missing0".into());
        let err = Datapath::open(&config).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown network interface `qx-missing0`"),
            "{err}"
        );

        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = DatapathConfig::new(taken.local_addr().unwrap());
        let err = Datapath::open(&config).unwrap_err();
        assert!(matches!(err, Error::AddrInUse { .. }), "{err}");

        let mut config = DatapathConfig::new("127.0.0.1:47014".parse().unwrap());
        config.ring_size = 1000;
        assert!(matches!(Datapath::open(&config), Err(Error::Config(_))));
        config.ring_size = 2048;
        config.listen.set_port(0);
        config.mode = Mode::Xdp;
        // Loopback traffic never meets XDP.
        assert!(matches!(
            Datapath::open(&config),
            Err(Error::Unsupported { .. })
        ));
        config.mode = Mode::Udp;
        let mut dp = Datapath::open(&config).unwrap();
        assert_ne!(dp.local_addr().port(), 0);
        let groups = dp.take_queue_groups();
        assert_eq!(groups.len(), 1);
        assert!(matches!(groups[0][0].kind(), crate::QueueKind::Udp { .. }));
    }
}
