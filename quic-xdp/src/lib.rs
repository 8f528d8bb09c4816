//! A QUIC server endpoint whose datapath is AF_XDP.
//!
//! An engine thread owns the `quinn_proto::Endpoint` and its connections
//! and runs them to completion on the datapath's queues (see
//! [`datapath`]); the tokio API below mirrors quinn's.
//!
//! ```no_run
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoint = quic_xdp::Endpoint::builder("[::]:4433".parse()?)
//!     .interface("eth0")
//!     .alpn(["echo"])
//!     .bind()?;
//! println!("{}", endpoint.mode());
//! while let Some(incoming) = endpoint.accept().await {
//!     tokio::spawn(async move {
//!         let conn = incoming.accept().await?;
//!         while let Ok((mut send, mut recv)) = conn.accept_bi().await {
//!             tokio::io::copy(&mut recv, &mut send).await?;
//!         }
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     });
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod builder;
mod cid;
mod connection;
mod core;
mod endpoint;
mod engine;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(feature = "h3")]
pub mod h3;
mod initial_budget;
mod metrics;
#[cfg(feature = "qlog")]
mod qlog;
pub mod quic_lb;
mod shared;
mod streams;

pub use builder::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_RECEIVE_WINDOW,
    DEFAULT_SEND_WINDOW, DEFAULT_STREAM_RECEIVE_WINDOW, EndpointBuilder, RetryPolicy,
};
pub use connection::{Connecting, Connection, Incoming, SendDatagramError};
pub use datapath::{ActiveMode, Mode};
pub use endpoint::{Endpoint, EndpointCounters, EndpointStats};
pub use error::Error;
pub use quic_lb::QuicLbConfig;
pub use quinn_proto::{
    ClosedStream, ConnectionError, ConnectionStats, StreamId, TransportConfig, VarInt,
};
pub use streams::{ReadError, ReadToEndError, RecvStream, SendStream, WriteError};

/// The datapath crate, for finer configuration and counters.
pub use datapath;
/// The Prometheus client `Endpoint::register_metrics` registers with.
pub use prometheus_client;

// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
