//! A quinn endpoint on AF_XDP (`--xdp IFACE`): quinn's socket is the
//! datapath's `XdpUdpSocket`, so the XDP program on `interface` steers the
//! endpoint's address and port into AF_XDP sockets.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;

/// A server (with `server`) or client endpoint bound to `addr` on the
/// AF_XDP datapath of `interface`. Call inside a tokio runtime.
pub fn endpoint(
    addr: SocketAddr,
    interface: &str,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let mut config = datapath::DatapathConfig::new(addr);
    config.interface = Some(interface.into());
    config.mode = datapath::Mode::Xdp;
    let socket = datapath::quinn_socket::XdpUdpSocket::open(&config)
        .with_context(|| format!("opening AF_XDP on {interface}"))?;
    Ok(quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}
