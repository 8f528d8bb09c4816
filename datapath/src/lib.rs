//! quic-xdp's datapath: moves UDP datagrams between the NIC and the QUIC
//! layer.
//!
//! - [`program`]: the XDP program that steers QUIC datagrams into AF_XDP
//!   sockets and passes everything else to the kernel.
//! - [`wire`]: the minimal Ethernet/VLAN/IPv4/IPv6/UDP codec.
pub mod error;
pub mod program;
pub mod wire;

pub use error::{Error, Result};
