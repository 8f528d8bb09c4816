//! quic-xdp's datapath: moves UDP datagrams between the NIC and the QUIC
//! layer.
//!
//! - [`program`]: the XDP program that steers QUIC datagrams into AF_XDP
//!   sockets and passes everything else to the kernel.
//! - [`cid_check`]: the check in the server's own connection IDs, which the
//!   program can verify.
//! - [`wire`]: the minimal Ethernet/VLAN/IPv4/IPv6/UDP codec.
//! - [`xsk`]: AF_XDP sockets (one per rx queue) and their UMEM.
//! - [`udp`]: kernel UDP sockets: the fallback, and the port reservation.
//! - [`io::PacketIo`]: what both offer the QUIC layer.
//! - [`datapath`]: opens the right one for a configuration.

#![warn(missing_docs)]
pub mod addresses;
pub mod capture;
pub mod cid_check;
pub mod datapath;
pub mod echo;
pub mod error;
pub mod privileges;
pub mod program;
pub mod wire;

pub use error::{Error, Result};
pub mod counters;
pub mod iface;
pub mod io;
#[cfg(feature = "quinn")]
pub mod quinn_socket;
pub mod route;
pub mod source_policy;
#[cfg(feature = "testbed")]
pub mod testbed;
#[cfg(feature = "quinn")]
mod tx_room;
pub mod udp;
pub mod xsk;

pub use datapath::{ActiveMode, Datapath, DatapathConfig, Mode};
pub use io::{PacketIo, QueueKind, RxMeta, Transmit};
pub use source_policy::{SourcePolicy, SourceVerdict};
