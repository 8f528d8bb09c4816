//! The minimal UDP/IP/Ethernet stack: typed views over frame bytes in the
//! style of `smoltcp::wire` (which supplies Ethernet, IPv4, IPv6 and UDP),
//! plus an 802.1Q tag view. Sans-IO: it neither owns nor moves buffers.

pub mod checksum;
mod decode;
mod encode;
mod vlan;

pub use decode::{ChecksumPolicy, DecodeError, UdpChecksum, UdpDatagram, parse_udp_frame};
pub use encode::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers, header_len};
pub use vlan::{VLAN_HEADER_LEN, VlanTag};

use quinn_udp::EcnCodepoint;

/// ECN codepoint from the two low bits of the IP TOS / traffic class.
pub fn ecn_from_bits(bits: u8) -> Option<EcnCodepoint> {
    EcnCodepoint::from_bits(bits & 0b11)
}

/// The two ECN bits to put in the IP TOS / traffic class.
pub fn ecn_to_bits(ecn: Option<EcnCodepoint>) -> u8 {
    ecn.map_or(0, |e| e as u8)
}

#[cfg(test)]
mod tests;
