//! Helpers the example tests share (each test crate uses some of them).
#![allow(dead_code)]

/// The value of the Prometheus series named exactly `series` (name and
/// labels) in a scrape.
pub fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// A port free on 127.0.0.1 for UDP and TCP alike, for a server started
/// next (fixed ports collide with the ephemeral ports of other tests).
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
