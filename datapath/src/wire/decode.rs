//! Decoding a received Ethernet frame into a UDP datagram.
//!
//! This runs on every frame the XDP program steers to us, so it re-checks
//! everything the program checked (the program and userspace must never
//! disagree on what a valid frame is) and the checksums the program skips.

use std::net::{IpAddr, SocketAddr};

use quinn_udp::EcnCodepoint;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, Ipv6Packet, UdpPacket,
};

use super::{VlanTag, checksum, ecn_from_bits};

/// Why a frame is not a UDP datagram we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is shorter than its headers say.
    #[error("frame shorter than its headers say")]
    Truncated,
    /// Neither IPv4 nor IPv6.
    #[error("not IPv4 or IPv6")]
    NotIp,
    /// A malformed IP header.
    #[error("malformed IP header")]
    BadIpHeader,
    /// The IPv4 header checksum does not match.
    #[error("IPv4 header checksum mismatch")]
    BadIpChecksum,
    /// An IP fragment.
    #[error("IP fragment")]
    Fragment,
    /// Not UDP, or UDP behind IPv6 extension headers.
    #[error("not UDP (or IPv6 extension headers)")]
    NotUdp,
    /// The UDP length disagrees with the IP length.
    #[error("UDP length disagrees with the IP length")]
    BadUdpLength,
    /// The UDP checksum does not match.
    #[error("UDP checksum mismatch")]
    BadUdpChecksum,
}

/// What the UDP checksum field held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpChecksum {
    /// A complete checksum that verified.
    Valid,
    /// Only the pseudo-header sum: the sender left completion to an offload
    /// that never ran, as a local veth peer does (CHECKSUM_PARTIAL).
    Partial,
    /// IPv4 "no checksum" (zero).
    Absent,
    /// Not looked at ([`ChecksumPolicy::Trust`]).
    Unchecked,
}

/// How much of the UDP checksum to verify on receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// Verify; accept complete, partial and (IPv4) absent checksums.
    #[default]
    Verify,
    /// Skip the UDP checksum: QUIC's AEAD rejects corrupted payloads anyway.
    Trust,
}

/// A decoded UDP datagram, borrowing the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// The sender's MAC address.
    pub src_mac: EthernetAddress,
    /// The destination MAC address.
    pub dst_mac: EthernetAddress,
    /// The 802.1Q TCI if the frame carried a tag; replies carry the same.
    pub vlan: Option<u16>,
    /// The sender's address and port.
    pub src: SocketAddr,
    /// The destination address and port.
    pub dst: SocketAddr,
    /// The ECN codepoint from the IP header, if ECN-capable.
    pub ecn: Option<EcnCodepoint>,
    /// What the UDP checksum field held.
    pub checksum: UdpChecksum,
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// Decodes an Ethernet frame (with at most one 802.1Q tag) carrying UDP
/// over IPv4 or IPv6: lengths and the IPv4 header checksum are always
/// checked, the UDP checksum as `policy` says.
pub fn parse_udp_frame(
    frame: &[u8],
    policy: ChecksumPolicy,
) -> Result<UdpDatagram<'_>, DecodeError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DecodeError::Truncated)?;
    let (mut ethertype, mut l3, mut vlan) = (eth.ethertype(), eth.payload(), None);
    if VlanTag::<&[u8]>::is_tag_ethertype(ethertype) {
        let tag = VlanTag::new_checked(l3).ok_or(DecodeError::Truncated)?;
        (ethertype, l3, vlan) = (
            tag.inner_ethertype(),
            &l3[super::VLAN_HEADER_LEN..],
            Some(tag.tci()),
        );
    }

    let (src_ip, dst_ip, ecn, l4) = match ethertype {
        EthernetProtocol::Ipv4 => parse_ipv4(l3)?,
        EthernetProtocol::Ipv6 => parse_ipv6(l3)?,
        _ => return Err(DecodeError::NotIp),
    };

    let udp = UdpPacket::new_checked(l4).map_err(|_| DecodeError::BadUdpLength)?;
    // check_len accepts a UDP length shorter than the IP payload (trailing
    // bytes are ignored, as the kernel does); it must not claim more.
    let udp_len = usize::from(udp.len());
    if udp_len < 8 || udp_len > l4.len() {
        return Err(DecodeError::BadUdpLength);
    }
    let checksum = match policy {
        ChecksumPolicy::Trust => UdpChecksum::Unchecked,
        ChecksumPolicy::Verify => verify_udp_checksum(&udp, src_ip, dst_ip)?,
    };

    Ok(UdpDatagram {
        src_mac: eth.src_addr(),
        dst_mac: eth.dst_addr(),
        vlan,
        src: SocketAddr::new(src_ip, udp.src_port()),
        dst: SocketAddr::new(dst_ip, udp.dst_port()),
        ecn,
        checksum,
        payload: udp.payload(),
    })
}

type L3<'a> = (IpAddr, IpAddr, Option<EcnCodepoint>, &'a [u8]);

fn parse_ipv4(l3: &[u8]) -> Result<L3<'_>, DecodeError> {
    // Length errors first, so a short frame is reported as Truncated.
    if l3.len() < 20 {
        return Err(DecodeError::Truncated);
    }
    let ip = Ipv4Packet::new_checked(l3).map_err(|_| {
        let hdr = usize::from(l3[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
        if hdr >= 20 && total >= hdr && total > l3.len() {
            DecodeError::Truncated
        } else {
            DecodeError::BadIpHeader
        }
    })?;
    if ip.version() != 4 {
        return Err(DecodeError::BadIpHeader);
    }
    if !ip.verify_checksum() {
        return Err(DecodeError::BadIpChecksum);
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Err(DecodeError::Fragment);
    }
    if ip.next_header() != IpProtocol::Udp {
        return Err(DecodeError::NotUdp);
    }
    let total = usize::from(ip.total_len());
    let l4 = &l3[usize::from(ip.header_len())..total];
    Ok((
        IpAddr::V4(ip.src_addr()),
        IpAddr::V4(ip.dst_addr()),
        ecn_from_bits(ip.ecn()),
        l4,
    ))
}

fn parse_ipv6(l3: &[u8]) -> Result<L3<'_>, DecodeError> {
    let ip = Ipv6Packet::new_checked(l3).map_err(|_| DecodeError::Truncated)?;
    if ip.version() != 6 {
        return Err(DecodeError::BadIpHeader);
    }
    if ip.next_header() != IpProtocol::Udp {
        return Err(DecodeError::NotUdp);
    }
    let l4 = &l3[40..ip.total_len()];
    Ok((
        IpAddr::V6(ip.src_addr()),
        IpAddr::V6(ip.dst_addr()),
        ecn_from_bits(ip.traffic_class()),
        l4,
    ))
}

fn verify_udp_checksum(
    udp: &UdpPacket<&[u8]>,
    src: IpAddr,
    dst: IpAddr,
) -> Result<UdpChecksum, DecodeError> {
    let field = udp.checksum();
    if field == 0 {
        // Optional in IPv4; mandatory in IPv6 (RFC 8200 8.1).
        return match src {
            IpAddr::V4(_) => Ok(UdpChecksum::Absent),
            IpAddr::V6(_) => Err(DecodeError::BadUdpChecksum),
        };
    }
    let len = udp.len();
    let pseudo = checksum::pseudo_header_udp(src, dst, u32::from(len));
    // Our own sums (not smoltcp's): a word at a time, and checked under
    // fuzzing too. The cheap case first: a sender that left the sum to
    // offload (a veth peer) put only the pseudo-header's sum in the field.
    if field == pseudo {
        return Ok(UdpChecksum::Partial);
    }
    let datagram = &udp.as_ref()[..usize::from(len)];
    if checksum::combine(&[pseudo, checksum::sum(datagram)]) == 0xffff {
        Ok(UdpChecksum::Valid)
    } else {
        Err(DecodeError::BadUdpChecksum)
    }
}
