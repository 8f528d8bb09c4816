//! The XDP steering program (ebpf/xdp_steer.c): loading with aya, listener
//! configuration, attachment through a bpf_link, per-queue socket binding,
//! verdict statistics and BPF_PROG_TEST_RUN.
//!
//! The program detaches when this value is dropped, or when the process
//! exits, since aya attaches through a bpf_link owned by this process.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
};

use smoltcp::wire::EthernetAddress;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        HashMap, PerCpuArray, XskMap,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{Xdp, XdpMode},
};
use ipnet::IpNet;

use crate::{
    cid_check::CidCheck,
    error::{Error, Result, chain, is_permission_denied},
    source_policy::{SourcePolicy, SourceVerdict},
};

static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_steer.o"));
const PROGRAM_NAME: &str = "xdp_steer";
const TARGETS_MAP: &str = "STEER_TARGETS";
const SOCKETS_MAP: &str = "XSKS";
const STATS_MAP: &str = "STEER_STATS";
const POLICY_V4_MAP: &str = "SOURCE_POLICY_V4";
const POLICY_V6_MAP: &str = "SOURCE_POLICY_V6";
const CID_CHECK_MAP: &str = "CID_CHECK";
const MAX_FRAME_GLOBAL: &str = "MAX_FRAME_LEN";
const MAC_GLOBAL: &str = "IFACE_MAC";
const INITIAL_INTERVAL_GLOBAL: &str = "INITIAL_INTERVAL_NS";
const INITIAL_BURST_GLOBAL: &str = "INITIAL_BURST_NS";
const VERSION_NEGOTIATION_GLOBAL: &str = "ANSWER_VERSION_NEGOTIATION";

/// The smallest burst allowed: one handshake sends several datagrams with
/// Initials (the first flight, its ACKs, a retransmission, the Initial after
/// a Retry); a smaller burst would cost every handshake a PTO.
pub const MIN_INITIAL_BURST: u32 = 4;

/// A per-source limit on client Initials, enforced in the XDP program
/// (XDP_DROP beyond it): `per_second` on average, with bursts of up to
/// `burst` more (at least [`MIN_INITIAL_BURST`]). Sources are tracked in an
/// LRU map (65536 entries), so a spoofed flood cannot exhaust it. Clients
/// behind one NAT share a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitialRate {
    /// Initials per second on average; 0 for no limit.
    pub per_second: u32,
    /// How many more Initials a burst may send (at least
    /// `MIN_INITIAL_BURST`).
    pub burst: u32,
}

/// `struct steer_key` in the C program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SteerKey {
    family: u8,
    pad: u8,
    port_be: u16,
    addr: [u8; 16],
}

// SAFETY: plain old data with no padding (1 + 1 + 2 + 16 bytes).
unsafe impl aya::Pod for SteerKey {}

impl SteerKey {
    fn new(family: u8, ip: Option<IpAddr>, port: u16) -> Self {
        let mut addr = [0; 16];
        match ip {
            Some(IpAddr::V4(v4)) => addr[..4].copy_from_slice(&v4.octets()),
            Some(IpAddr::V6(v6)) => addr = v6.octets(),
            None => {}
        }
        Self {
            family,
            pad: 0,
            port_be: port.to_be(),
            addr,
        }
    }

    /// The keys that make the program steer datagrams for `listen`, given
    /// the interface's addresses `local`: the exact address, or, for an
    /// unspecified one, each local address of its family (`[::]` also
    /// covers IPv4, as a dual-stack socket does). Never a wildcard: what
    /// is sent to an address that is not ours is not steered.
    fn for_listener(listen: SocketAddr, local: &[IpAddr]) -> Vec<Self> {
        let port = listen.port();
        let key = |ip: IpAddr| match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => Self::new(4, Some(v4), port),
            v6 => Self::new(6, Some(v6), port),
        };
        match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => local
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|&ip| key(ip))
                .collect(),
            IpAddr::V6(v6) if v6.is_unspecified() => local.iter().map(|&ip| key(ip)).collect(),
            ip => vec![key(ip)],
        }
    }
}

/// `struct cid_check` in the C program; `engines == 0` turns it off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct CidCheckValue {
    k0: u64,
    k1: u64,
    engines: u32,
    pad: u32,
}

// SAFETY: plain old data with no padding (8 + 8 + 4 + 4 bytes).
unsafe impl aya::Pod for CidCheckValue {}

impl CidCheckValue {
    fn new(check: Option<&CidCheck>) -> Self {
        let Some(check) = check else {
            return Self::default();
        };
        // The halves of the key as SipHash reads them: little-endian.
        let (k0, k1) = check.key().split_at(8);
        Self {
            k0: u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(k1.try_into().expect("8 bytes")),
            engines: check.engines() as u32,
            pad: 0,
        }
    }
}

/// Makes one of the policy tries hold exactly `entries`: the new entries
/// are written first (the /0 defaults among them), then the stale ones
/// removed, so a policy replaced while attached never fails open.
fn replace_trie<const N: usize>(
    map: &mut aya::maps::Map,
    entries: impl Iterator<Item = (Key<[u8; N]>, SourceVerdict)>,
) -> Result<()> {
    let mut trie: LpmTrie<_, [u8; N], u8> =
        LpmTrie::try_from(map).map_err(|e| Error::Load(Box::new(e)))?;
    let mut wanted: Vec<(u32, [u8; N])> = Vec::new();
    for (key, verdict) in entries {
        trie.insert(&key, verdict.map_value(), 0)
            .map_err(|e| Error::Load(chain(&e).into()))?;
        wanted.push((key.prefix_len(), key.data()));
    }
    let old: Vec<Key<[u8; N]>> = trie
        .keys()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Load(chain(&e).into()))?;
    for key in old {
        if wanted.contains(&(key.prefix_len(), key.data())) {
            continue;
        }
        match trie.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::Load(chain(&e).into())),
        }
    }
    Ok(())
}

/// Why the program gave a frame its verdict (`enum steer_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SteerReason {
    /// Handed to the AF_XDP socket of its rx queue.
    Redirected = 0,
    /// Passed: addressed to a listener, but no socket is bound on this rx
    /// queue.
    PassNoSocket = 1,
    /// Passed: not IP (ARP, LLDP, unknown ethertype).
    PassNotIp = 2,
    /// Passed: not UDP (TCP, ICMP, IPv6 extension headers).
    PassNotUdp = 3,
    /// Passed: an IPv4 fragment, for the kernel to reassemble.
    PassFragment = 4,
    /// Passed: truncated, bad lengths or bad IP version.
    PassMalformed = 5,
    /// Passed: UDP for another port or address.
    PassNoMatch = 6,
    /// Passed: addressed to a listener, but larger than a UMEM frame.
    PassTooBig = 7,
    /// Passed: the destination MAC is another host's, or a group address.
    PassNotOurs = 8,
    /// Passed: VLAN-tagged, and no VLAN is configured here.
    PassVlan = 9,
    /// Passed: IPv4 with options, for the kernel's rules.
    PassIpOptions = 10,
    /// Passed: an impossible source address or source MAC.
    PassMartian = 11,
    /// Dropped: shorter than any QUIC datagram to us can be.
    DropNotQuic = 12,
    /// Dropped: a connection attempt (a v1 Initial, or a long header of
    /// another version) in a datagram under 1200 bytes.
    DropShortInitial = 13,
    /// Dropped: the source is over its Initial rate limit.
    DropInitialRate = 14,
    /// Dropped: the source is in a denied prefix.
    DropDenied = 15,
    /// Dropped: an allow list exists and the source is not in it.
    DropNotAllowed = 16,
    /// Sent back (XDP_TX): a Version Negotiation packet answering a client
    /// that offered a version other than 1.
    TxVersionNegotiation = 17,
    /// XDP_ABORTED: a rewrite failed midway (a program bug; never expected).
    Aborted = 18,
    /// Dropped: a short header or Handshake packet whose destination CID
    /// fails the server's [`CidCheck`] (junk, or a forged CID).
    DropUnknownCid = 19,
}

impl SteerReason {
    /// Every reason, in index order.
    pub const ALL: [SteerReason; 20] = [
        Self::Redirected,
        Self::PassNoSocket,
        Self::PassNotIp,
        Self::PassNotUdp,
        Self::PassFragment,
        Self::PassMalformed,
        Self::PassNoMatch,
        Self::PassTooBig,
        Self::PassNotOurs,
        Self::PassVlan,
        Self::PassIpOptions,
        Self::PassMartian,
        Self::DropNotQuic,
        Self::DropShortInitial,
        Self::DropInitialRate,
        Self::DropDenied,
        Self::DropNotAllowed,
        Self::TxVersionNegotiation,
        Self::Aborted,
        Self::DropUnknownCid,
    ];

    /// The reason's snake_case name, as used in metrics and `SteerStats`'
    /// display.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redirected => "redirected",
            Self::PassNoSocket => "pass_no_socket",
            Self::PassNotIp => "pass_not_ip",
            Self::PassNotUdp => "pass_not_udp",
            Self::PassFragment => "pass_fragment",
            Self::PassMalformed => "pass_malformed",
            Self::PassNoMatch => "pass_no_match",
            Self::PassTooBig => "pass_too_big",
            Self::PassNotOurs => "pass_not_ours",
            Self::PassVlan => "pass_vlan",
            Self::PassIpOptions => "pass_ip_options",
            Self::PassMartian => "pass_martian",
            Self::DropNotQuic => "drop_not_quic",
            Self::DropShortInitial => "drop_short_initial",
            Self::DropInitialRate => "drop_initial_rate",
            Self::DropDenied => "drop_denied",
            Self::DropNotAllowed => "drop_not_allowed",
            Self::TxVersionNegotiation => "tx_version_negotiation",
            Self::Aborted => "aborted",
            Self::DropUnknownCid => "drop_unknown_cid",
        }
    }
}

/// Verdict counts, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerStats([u64; SteerReason::ALL.len()]);

impl SteerStats {
    /// The count for `reason`.
    pub fn get(&self, reason: SteerReason) -> u64 {
        self.0[reason as usize]
    }

    /// Counts accumulated since `earlier`.
    pub fn since(&self, earlier: &SteerStats) -> SteerStats {
        let mut out = *self;
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }
}

impl fmt::Display for SteerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, reason) in SteerReason::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", reason.name(), self.get(*reason))?;
        }
        Ok(())
    }
}

/// An XDP return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAction {
    /// XDP_ABORTED: a program error; the frame is dropped.
    Aborted,
    /// XDP_DROP.
    Drop,
    /// XDP_PASS: on to the kernel stack.
    Pass,
    /// XDP_TX: sent back out of the same interface.
    Tx,
    /// XDP_REDIRECT: to another interface, CPU or AF_XDP socket.
    Redirect,
    /// A code outside the known ones.
    Other(u32),
}

impl From<u32> for XdpAction {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            n => Self::Other(n),
        }
    }
}

/// Where the program runs: in the driver, or generically in the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb is allocated.
    Native,
    /// Generic (skb) mode, in the kernel stack; works with any driver.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic (skb)",
        })
    }
}

/// Which attach modes to try, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachPreference {
    /// Native, then generic if the driver refuses.
    #[default]
    Auto,
    /// Native only: fail if the driver refuses.
    NativeOnly,
    /// Generic (skb) mode only.
    GenericOnly,
}

impl AttachPreference {
    fn candidates(self) -> &'static [AttachMode] {
        match self {
            Self::Auto => &[AttachMode::Native, AttachMode::Generic],
            Self::NativeOnly => &[AttachMode::Native],
            Self::GenericOnly => &[AttachMode::Generic],
        }
    }
}

/// The loaded steering program and its maps.
pub struct SteeringProgram {
    ebpf: Ebpf,
    attached: Option<(String, AttachMode)>,
    listeners: Vec<SocketAddr>,
    /// The interface's addresses: what wildcard listeners expand to.
    local: Vec<IpAddr>,
    /// The keys in the listener map.
    installed: HashSet<SteerKey>,
}

impl fmt::Debug for SteeringProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteeringProgram")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl SteeringProgram {
    /// Loads the program into the kernel (verifier included) without
    /// attaching it. `max_queues` sizes the socket map: rx queue indices
    /// from 0 to `max_queues - 1` can be bound. Matching frames longer than
    /// `max_frame_len` (when given) are left to the kernel, and so are
    /// frames whose destination MAC is not `mac` (the interface's). Client
    /// Initials beyond `initial_rate` per source are dropped. With
    /// `answer_version_negotiation` (for a server that speaks only QUIC
    /// v1), the program answers other versions' first packets itself.
    pub fn load(
        max_queues: u32,
        max_frame_len: Option<u32>,
        mac: EthernetAddress,
        initial_rate: Option<InitialRate>,
        answer_version_negotiation: bool,
    ) -> Result<Self> {
        let permission = |e: &(dyn std::error::Error + 'static)| is_permission_denied(e);
        let max_frame_len = max_frame_len.unwrap_or(0);
        // GCRA: the interval between Initials, and how far ahead of it a
        // burst may run.
        let (interval_ns, burst_ns) = match initial_rate {
            Some(r) if r.per_second > 0 => {
                let interval = 1_000_000_000 / u64::from(r.per_second);
                (
                    interval,
                    interval * u64::from(r.burst.max(MIN_INITIAL_BURST)),
                )
            }
            _ => (0u64, 0u64),
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(SOCKETS_MAP, max_queues.max(1))
            .override_global(MAX_FRAME_GLOBAL, &max_frame_len, true)
            .override_global(MAC_GLOBAL, &mac.0, true)
            .override_global(INITIAL_INTERVAL_GLOBAL, &interval_ns, true)
            .override_global(INITIAL_BURST_GLOBAL, &burst_ns, true)
            .override_global(
                VERSION_NEGOTIATION_GLOBAL,
                &u8::from(answer_version_negotiation),
                true,
            )
            .load(PROGRAM_OBJECT)
            .map_err(|e| {
                if permission(&e) {
                    Error::NoPrivilege {
                        context: "creating BPF maps",
                        source: Box::new(e),
                    }
                } else {
                    Error::Load(Box::new(e))
                }
            })?;
        let prog = xdp_program(&mut ebpf)?;
        prog.load().map_err(|e| {
            if permission(&e) {
                Error::NoPrivilege {
                    context: "loading the XDP program",
                    source: Box::new(e),
                }
            } else {
                Error::Load(chain(&e).into())
            }
        })?;
        Ok(Self {
            ebpf,
            attached: None,
            listeners: Vec::new(),
            local: Vec::new(),
            installed: HashSet::new(),
        })
    }

    /// Steers datagrams addressed to `listen` (address and port; an
    /// unspecified address stands for the interface's addresses, see
    /// [`set_local_addresses`](Self::set_local_addresses)).
    pub fn add_listener(&mut self, listen: SocketAddr) -> Result<()> {
        self.listeners.push(listen);
        self.sync_targets()
    }

    /// The interface's addresses, now: wildcard listeners steer exactly
    /// these. Call again when they change.
    pub fn set_local_addresses(&mut self, local: &[IpAddr]) -> Result<()> {
        self.local = local.to_vec();
        self.sync_targets()
    }

    /// Makes the listener map hold exactly the keys the listeners and
    /// local addresses call for.
    fn sync_targets(&mut self) -> Result<()> {
        let wanted: HashSet<SteerKey> = self
            .listeners
            .iter()
            .flat_map(|&l| SteerKey::for_listener(l, &self.local))
            .collect();
        let mut targets: HashMap<_, SteerKey, u8> =
            HashMap::try_from(self.ebpf.map_mut(TARGETS_MAP).expect("map in object"))
                .map_err(|e| Error::Load(Box::new(e)))?;
        // `installed` follows every change as it is made, so that a failure
        // half way leaves it true and the next sync finishes the job.
        let stale: Vec<SteerKey> = self.installed.difference(&wanted).copied().collect();
        for key in stale {
            match targets.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::Load(chain(&e).into())),
            }
            self.installed.remove(&key);
        }
        for key in wanted {
            if !self.installed.contains(&key) {
                targets
                    .insert(key, 1, 0)
                    .map_err(|e| Error::Load(chain(&e).into()))?;
                self.installed.insert(key);
            }
        }
        Ok(())
    }

    /// Makes the program enforce `policy` on datagrams to the listeners
    /// (dropped and counted as `drop_denied` / `drop_not_allowed`),
    /// replacing the previous policy. Can be called while attached; the
    /// change is not atomic across entries.
    pub fn set_source_policy(&mut self, policy: &SourcePolicy) -> Result<()> {
        let entries = policy.entries();
        let v4 = entries.iter().filter_map(|(p, v)| match p {
            IpNet::V4(p) => Some((
                Key::new(u32::from(p.prefix_len()), p.network().octets()),
                *v,
            )),
            IpNet::V6(_) => None,
        });
        replace_trie(self.ebpf.map_mut(POLICY_V4_MAP).expect("map in object"), v4)?;
        let v6 = entries.iter().filter_map(|(p, v)| match p {
            IpNet::V6(p) => Some((
                Key::new(u32::from(p.prefix_len()), p.network().octets()),
                *v,
            )),
            IpNet::V4(_) => None,
        });
        replace_trie(self.ebpf.map_mut(POLICY_V6_MAP).expect("map in object"), v6)
    }

    /// Makes the program drop short header and Handshake packets whose
    /// destination CID fails `check` (the server's own CIDs), or, with
    /// `None`, pass them all. Only for a server that issues every CID its
    /// clients use with that check (quic-xdp's engines, without QUIC-LB).
    pub fn set_cid_check(&mut self, check: Option<&CidCheck>) -> Result<()> {
        let mut map: aya::maps::Array<_, CidCheckValue> =
            aya::maps::Array::try_from(self.ebpf.map_mut(CID_CHECK_MAP).expect("map in object"))
                .map_err(|e| Error::Load(Box::new(e)))?;
        map.set(0, CidCheckValue::new(check), 0)
            .map_err(|e| Error::Load(chain(&e).into()))
    }

    /// Attaches to `interface`, trying the modes `preference` allows in
    /// order; returns the mode that took. The errors of every refused mode
    /// are reported if none does.
    pub fn attach(&mut self, interface: &str, preference: AttachPreference) -> Result<AttachMode> {
        if let Some((name, _)) = &self.attached {
            return Err(Error::Config(format!(
                "the steering program is already attached to `{name}`"
            )));
        }
        let prog = xdp_program(&mut self.ebpf)?;
        let mut refusals = Vec::new();
        for &mode in preference.candidates() {
            let flags = match mode {
                AttachMode::Native => XdpMode::Driver,
                AttachMode::Generic => XdpMode::Skb,
            };
            match prog.attach(interface, flags) {
                Ok(_link) => {
                    if !refusals.is_empty() {
                        tracing::warn!(
                            interface,
                            %mode,
                            refused = refusals.join("; "),
                            "XDP attached in a fallback mode"
                        );
                    }
                    self.attached = Some((interface.to_string(), mode));
                    return Ok(mode);
                }
                Err(aya::programs::ProgramError::UnknownInterface { name }) => {
                    return Err(Error::UnknownInterface(name));
                }
                Err(e) if is_permission_denied(&e) => {
                    return Err(Error::NoPrivilege {
                        context: "attaching the XDP program",
                        source: Box::new(e),
                    });
                }
                Err(e) => refusals.push(format!("{mode}: {}", chain(&e))),
            }
        }
        Err(Error::Attach {
            interface: interface.to_string(),
            reason: refusals.join("; "),
        })
    }

    /// The interface and mode the program is attached with, if any.
    pub fn attachment(&self) -> Option<(&str, AttachMode)> {
        self.attached.as_ref().map(|(i, m)| (i.as_str(), *m))
    }

    /// Routes datagrams received on rx `queue` to the AF_XDP socket `fd`.
    pub fn bind_socket(&mut self, queue: u32, fd: impl AsRawFd) -> Result<()> {
        let mut sockets = self.sockets_map()?;
        sockets
            .set(queue, fd, 0)
            .map_err(|e| Error::Load(format!("binding queue {queue}: {}", chain(&e)).into()))
    }

    /// Stops routing rx `queue` to a socket: its traffic goes to the kernel.
    pub fn unbind_socket(&mut self, queue: u32) -> Result<()> {
        let mut sockets = self.sockets_map()?;
        match sockets.unset(queue) {
            Ok(()) => Ok(()),
            // Not bound: nothing to undo.
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::Load(
                format!("unbinding queue {queue}: {}", chain(&e)).into(),
            )),
        }
    }

    fn sockets_map(&mut self) -> Result<XskMap<&mut aya::maps::MapData>> {
        XskMap::try_from(self.ebpf.map_mut(SOCKETS_MAP).expect("map in object"))
            .map_err(|e| Error::Load(Box::new(e)))
    }

    /// Verdict counts since the program was loaded.
    pub fn stats(&self) -> Result<SteerStats> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(STATS_MAP).expect("map in object"))
                .map_err(|e| Error::Load(Box::new(e)))?;
        let mut out = SteerStats::default();
        for reason in SteerReason::ALL {
            let per_cpu = stats
                .get(&(reason as u32), 0)
                .map_err(|e| Error::Load(Box::new(e)))?;
            out.0[reason as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// Runs the program once on `frame` in the kernel (BPF_PROG_TEST_RUN)
    /// and returns its verdict. Nothing is sent or redirected.
    pub fn test_run(&self, frame: &[u8]) -> Result<XdpAction> {
        Ok(self.test_run_output(frame)?.0)
    }

    /// Like `test_run`, with the frame as the program left it (what
    /// XDP_TX would send).
    pub fn test_run_output(&self, frame: &[u8]) -> Result<(XdpAction, Vec<u8>)> {
        let prog: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .expect("program in object")
            .try_into()
            .map_err(|e: aya::programs::ProgramError| Error::Load(Box::new(e)))?;
        let fd = prog.fd().map_err(|e| Error::Load(Box::new(e)))?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: frame.len() as u32,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: the buffers outlive the call and their sizes are given.
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(fd.as_fd().as_raw_fd(), &mut opts) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(-rc).into());
        }
        out.truncate(opts.data_size_out as usize);
        Ok((XdpAction::from(opts.retval), out))
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)
        .expect("program in object")
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Load(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_keys() {
        let local: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let keys = SteerKey::for_listener("[::]:4433".parse().unwrap(), &local);
        assert_eq!(
            keys,
            vec![
                SteerKey::new(4, Some(local[0]), 4433),
                SteerKey::new(6, Some(local[1]), 4433)
            ]
        );
        let keys = SteerKey::for_listener("0.0.0.0:4433".parse().unwrap(), &local);
        assert_eq!(keys, vec![SteerKey::new(4, Some(local[0]), 4433)]);
        assert!(SteerKey::for_listener("[::]:4433".parse().unwrap(), &[]).is_empty());
        let keys = SteerKey::for_listener("10.0.0.2:443".parse().unwrap(), &local);
        assert_eq!(
            keys,
            vec![SteerKey::new(4, Some("10.0.0.2".parse().unwrap()), 443)]
        );
        assert_eq!(&keys[0].addr[..4], &[10, 0, 0, 2]);
        let keys = SteerKey::for_listener("[::ffff:10.0.0.2]:443".parse().unwrap(), &local);
        assert_eq!(keys[0].family, 4);
        assert_eq!(size_of::<SteerKey>(), 20);
    }
}
