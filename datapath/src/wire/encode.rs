//! Building the Ethernet/IP/UDP headers of an outgoing datagram.
//!
//! Headers are built in a small buffer with complete checksums (the
//! payload's sum is folded in without copying it), then the caller writes
//! headers and payload into the TX frame back to back.

use std::net::{IpAddr, SocketAddr};

use quinn_udp::EcnCodepoint;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket,
};

use super::{VLAN_HEADER_LEN, VlanTag, checksum, ecn_to_bits, vlan::ETHERTYPE_8021Q};

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const HOP_LIMIT: u8 = 64;

/// Ethernet + 802.1Q + IPv6 + UDP.
pub const MAX_HEADER_LEN: usize = ETH_LEN + VLAN_HEADER_LEN + IPV6_LEN + UDP_LEN;

/// Link-layer addressing of a datagram: learned from what the peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRoute {
    /// Our MAC address: the frame's source.
    pub src_mac: EthernetAddress,
    /// The next hop's MAC address: the frame's destination.
    pub dst_mac: EthernetAddress,
    /// The 802.1Q TCI to tag the frame with, if any.
    pub vlan: Option<u16>,
}

/// Header bytes in front of the payload for this route and address family.
pub fn header_len(route: &FrameRoute, dst: &SocketAddr) -> usize {
    let vlan = if route.vlan.is_some() {
        VLAN_HEADER_LEN
    } else {
        0
    };
    let ip = if dst.is_ipv4() { IPV4_LEN } else { IPV6_LEN };
    ETH_LEN + vlan + ip + UDP_LEN
}

/// Writes Ethernet, IP and UDP headers for `payload` from `src` to `dst`
/// into `out` and returns their length. IPv4 gets DF set (QUIC does its own
/// path MTU discovery) and both checksums; IPv6 gets the UDP checksum.
///
/// Panics if `src` and `dst` differ in family or the datagram does not fit
/// in the IP length fields; callers check the MTU first.
pub fn emit_udp_headers(
    out: &mut [u8; MAX_HEADER_LEN],
    route: &FrameRoute,
    src: SocketAddr,
    dst: SocketAddr,
    ecn: Option<EcnCodepoint>,
    payload: &[u8],
) -> usize {
    let udp_len = UDP_LEN + payload.len();
    let mut eth = EthernetFrame::new_unchecked(&mut out[..]);
    eth.set_dst_addr(route.dst_mac);
    eth.set_src_addr(route.src_mac);
    let ethertype = match dst {
        SocketAddr::V4(_) => EthernetProtocol::Ipv4,
        SocketAddr::V6(_) => EthernetProtocol::Ipv6,
    };
    let mut at = ETH_LEN;
    if let Some(tci) = route.vlan {
        eth.set_ethertype(ETHERTYPE_8021Q.into());
        let mut tag = VlanTag::new_checked(&mut out[at..at + VLAN_HEADER_LEN]).expect("sized");
        tag.set_tci(tci);
        tag.set_inner_ethertype(ethertype);
        at += VLAN_HEADER_LEN;
    } else {
        eth.set_ethertype(ethertype);
    }

    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_LEN + udp_len).expect("datagram exceeds IPv4 length");
            let mut ip = Ipv4Packet::new_unchecked(&mut out[at..at + IPV4_LEN]);
            ip.set_version(4);
            ip.set_header_len(IPV4_LEN as u8);
            ip.set_dscp(0);
            ip.set_ecn(ecn_to_bits(ecn));
            ip.set_total_len(total);
            ip.set_ident(0); // allowed with DF set (RFC 6864)
            ip.clear_flags();
            ip.set_dont_frag(true);
            ip.set_frag_offset(0);
            ip.set_hop_limit(HOP_LIMIT);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            ip.fill_checksum();
            at += IPV4_LEN;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u16::try_from(udp_len).expect("datagram exceeds IPv6 payload length");
            let mut ip = Ipv6Packet::new_unchecked(&mut out[at..at + IPV6_LEN]);
            ip.set_version(6);
            ip.set_traffic_class(ecn_to_bits(ecn));
            ip.set_flow_label(0);
            ip.set_payload_len(len);
            ip.set_next_header(IpProtocol::Udp);
            ip.set_hop_limit(HOP_LIMIT);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            at += IPV6_LEN;
        }
        _ => panic!("source {src} and destination {dst} differ in address family"),
    }

    let mut udp = UdpPacket::new_unchecked(&mut out[at..at + UDP_LEN]);
    udp.set_src_port(src.port());
    udp.set_dst_port(dst.port());
    udp.set_len(udp_len as u16);
    udp.set_checksum(0);
    // The header is 8 bytes, so its sum and the payload's combine directly.
    let sum = !checksum::combine(&[
        checksum::pseudo_header_udp(src.ip(), dst.ip(), udp_len as u32),
        checksum::sum(&out[at..at + UDP_LEN]),
        checksum::sum(payload),
    ]);
    // Zero means "no checksum": send its one's-complement twin instead.
    let sum = if sum == 0 { 0xffff } else { sum };
    UdpPacket::new_unchecked(&mut out[at..at + UDP_LEN]).set_checksum(sum);
    at + UDP_LEN
}
