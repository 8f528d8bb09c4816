//! Where replies go on the link: the next hop's MAC, from the kernel's
//! routing and neighbour tables (netlink), as the kernel itself would
//! send. Never from received frames: anyone on the segment can send a
//! frame with another host's IP and its own MAC, and would then receive
//! that host's replies. Gateways, asymmetric routes and the kernel's
//! ARP/ND defences (static entries, arp_ignore, ...) apply as for any
//! socket.
//!
//! Answers are cached briefly (the kernel's table stays the truth); a
//! next hop the kernel has no usable entry for is solicited (RTM_NEWNEIGH
//! with NTF_USE makes the kernel send ARP or NS) and asked again shortly.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use netlink_packet_core::{
    NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};
use smoltcp::wire::EthernetAddress;

/// How long a found MAC is used before the kernel is asked again.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How soon a next hop without a usable entry is asked again.
const MISS_RETRY: Duration = Duration::from_millis(20);
/// Destinations cached at once; spoofed sources cannot grow it further.
const MAX_CACHED: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
struct Cached {
    mac: Option<EthernetAddress>,
    /// The kernel's preferred source address towards the destination.
    source: Option<IpAddr>,
    until: Instant,
}

/// What the kernel says about reaching destinations through one interface.
pub struct KernelNeighbors {
    socket: Socket,
    ifindex: u32,
    seq: u32,
    cache: HashMap<IpAddr, Cached>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for KernelNeighbors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelNeighbors")
            .field("ifindex", &self.ifindex)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl KernelNeighbors {
    /// For the interface with index `ifindex`.
    pub fn new(ifindex: u32) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // The kernel answers a request before send() returns: replies are
        // read without blocking.
        socket.set_non_blocking(true)?;
        Ok(Self {
            socket,
            ifindex,
            seq: 0,
            cache: HashMap::new(),
            buf: vec![0; 16 * 1024],
        })
    }

    /// The MAC to send to `dst` with, through this interface: the next
    /// hop's (the gateway's, for an off-link destination). None when the
    /// route leaves through another interface or the next hop is not
    /// resolved yet (it is being solicited).
    pub fn lookup(&mut self, dst: IpAddr, now: Instant) -> Option<EthernetAddress> {
        self.cached(dst, now).mac
    }

    /// The source address the kernel would send from towards `dst`
    /// (the route's preferred source), for a socket bound to no address.
    pub fn source_for(&mut self, dst: IpAddr, now: Instant) -> Option<IpAddr> {
        self.cached(dst, now).source
    }

    fn cached(&mut self, dst: IpAddr, now: Instant) -> Cached {
        if let Some(c) = self.cache.get(&dst)
            && c.until > now
        {
            return *c;
        }
        let (mac, source) = self.resolve(dst);
        if self.cache.len() >= MAX_CACHED && !self.cache.contains_key(&dst) {
            self.cache.retain(|_, c| c.until > now);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        let ttl = if mac.is_some() { FRESH_FOR } else { MISS_RETRY };
        let entry = Cached {
            mac,
            source,
            until: now + ttl,
        };
        self.cache.insert(dst, entry);
        entry
    }

    /// The next hop's MAC (None: not through us, or not resolved yet) and
    /// the route's preferred source.
    fn resolve(&mut self, dst: IpAddr) -> (Option<EthernetAddress>, Option<IpAddr>) {
        let (hop, source) = match self.next_hop(dst) {
            Ok(Some(found)) => found,
            Ok(None) => return (None, None),
            Err(e) => {
                tracing::debug!(error = %e, %dst, "route lookup failed");
                return (None, None);
            }
        };
        (self.next_hop_mac(hop), source)
    }

    fn next_hop_mac(&mut self, hop: IpAddr) -> Option<EthernetAddress> {
        match self.neighbour(hop) {
            Ok(Some((mac, stale))) => {
                // The kernel confirms a stale entry when it sends through
                // it; ours do not pass there, so ask it to (once a refresh).
                if stale && let Err(e) = self.solicit(hop) {
                    tracing::debug!(error = %e, %hop, "neighbour re-validation failed");
                }
                Some(mac)
            }
            Ok(None) => {
                if let Err(e) = self.solicit(hop) {
                    tracing::debug!(error = %e, %hop, "neighbour solicitation failed");
                }
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, %hop, "neighbour lookup failed");
                None
            }
        }
    }

    /// The next hop towards `dst` if the route leaves through our
    /// interface (the gateway, or `dst` itself when it is on-link), and
    /// the route's preferred source address.
    fn next_hop(&mut self, dst: IpAddr) -> io::Result<Option<(IpAddr, Option<IpAddr>)>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        let Some(RouteNetlinkMessage::NewRoute(route)) =
            self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST)?
        else {
            return Ok(None);
        };
        let mut gateway = None;
        let mut oif = None;
        let mut source = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => source = Some((*v4).into()),
                RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => source = Some((*v6).into()),
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some((*v4).into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some((*v6).into()),
                _ => {}
            }
        }
        Ok((oif == Some(self.ifindex)).then_some((gateway.unwrap_or(dst), source)))
    }

    /// The kernel's entry for `hop` on our interface, if it has a usable
    /// link-layer address, and whether that entry is stale.
    fn neighbour(&mut self, hop: IpAddr) -> io::Result<Option<(EthernetAddress, bool)>> {
        let msg = self.neighbour_message(hop, NeighbourFlags::empty());
        let Some(RouteNetlinkMessage::NewNeighbour(entry)) =
            self.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST)?
        else {
            return Ok(None);
        };
        let usable = matches!(
            entry.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
        );
        let stale = entry.header.state == NeighbourState::Stale;
        Ok(entry.attributes.iter().find_map(|attr| match attr {
            NeighbourAttribute::LinkLayerAddress(mac) if usable && mac.len() == 6 => {
                Some((EthernetAddress::from_bytes(mac), stale))
            }
            _ => None,
        }))
    }

    /// Asks the kernel to resolve `hop` (ARP or NS), as if it had a packet
    /// for it.
    fn solicit(&mut self, hop: IpAddr) -> io::Result<()> {
        let msg = self.neighbour_message(hop, NeighbourFlags::Use);
        // RTM_NEWNEIGH takes CAP_NET_ADMIN: effective only for this call
        // (see `privileges`).
        crate::privileges::with_raised(caps::Capability::CAP_NET_ADMIN, || {
            self.request(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_REQUEST | NLM_F_CREATE,
            )
        })
        .map(drop)
    }

    fn neighbour_message(&self, hop: IpAddr, flags: NeighbourFlags) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(hop);
        msg.header.ifindex = self.ifindex;
        msg.header.flags = flags;
        msg.attributes
            .push(NeighbourAttribute::Destination(match hop {
                IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
                IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
            }));
        msg
    }

    /// Sends one request and reads its answer: the message, None for an
    /// empty answer or "no such entry", an error for other failures.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                // No answer queued: requests without one (a solicitation
                // that succeeded) end here.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut at = 0;
            while at < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (reply.header.length as usize).max(1);
                at += len.next_multiple_of(4);
                // Answers to earlier requests that arrived late: skip.
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                return match reply.payload {
                    NetlinkPayload::InnerMessage(m) => Ok(Some(m)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => Ok(None),
                        Some(code) if -code.get() == libc::ENOENT => Ok(None),
                        Some(_) => Err(e.to_io()),
                    },
                    _ => Ok(None),
                };
            }
        }
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}
