//! IEEE 802.1Q / 802.1ad tag, as a typed view like `smoltcp::wire`'s.
//!
//! The tag sits after the source MAC: the outer ethertype (0x8100 or 0x88a8)
//! is read by the Ethernet view; this view covers the 2-byte TCI and the
//! 2-byte inner ethertype that follow it.

use smoltcp::wire::EthernetProtocol;

/// Bytes the tag adds to a frame (outer ethertype and TCI, or equally
/// TCI and inner ethertype).
pub const VLAN_HEADER_LEN: usize = 4;
/// The 802.1Q (customer VLAN) tag ethertype.
pub const ETHERTYPE_8021Q: u16 = 0x8100;
/// The 802.1ad (service VLAN, QinQ outer) tag ethertype.
pub const ETHERTYPE_8021AD: u16 = 0x88a8;

/// A view over the TCI and inner ethertype of a VLAN tag.
#[derive(Debug, Clone, Copy)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// A view over `buffer`, which must hold at least the tag.
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= VLAN_HEADER_LEN).then_some(Self { buffer })
    }

    /// Whether `ethertype` announces a VLAN tag (802.1Q or 802.1ad).
    pub fn is_tag_ethertype(ethertype: EthernetProtocol) -> bool {
        matches!(u16::from(ethertype), ETHERTYPE_8021Q | ETHERTYPE_8021AD)
    }

    /// Tag control information: priority, drop eligibility, VLAN id.
    pub fn tci(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The ethertype of what follows the tag.
    pub fn inner_ethertype(&self) -> EthernetProtocol {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]]).into()
    }

    /// The bytes after the tag.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VLAN_HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets the tag control information.
    pub fn set_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&tci.to_be_bytes());
    }

    /// Sets the ethertype of what follows the tag.
    pub fn set_inner_ethertype(&mut self, ethertype: EthernetProtocol) {
        self.buffer.as_mut()[2..4].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }
}
