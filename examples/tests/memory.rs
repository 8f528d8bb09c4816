//! The documented worst case per connection (README, "Limits and
//! memory"): 1,000 connections whose clients send and then stop reading
//! make echo-server buffer at most its windows plus a fixed overhead per
//! connection, measured as the server process's resident memory.
//! Loopback, kernel UDP: no privileges needed.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

/// Window the server is given, on every level (small, so that 1,000
/// connections reach it quickly).
const WINDOW: u64 = 64 * 1024;
/// The fixed cost of a connection the README documents: quinn-proto's
/// state (streams, CIDs, ACK ranges, crypto, congestion), the engine's
/// bookkeeping, the handler task.
const OVERHEAD_PER_CONNECTION: u64 = 96 * 1024;
const CONNECTIONS: usize = 1000;
/// Each client sends this much and reads nothing back.
const SENT: usize = 512 * 1024;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

fn client(ca: &std::path::Path) -> quinn::Endpoint {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"echo".to_vec()];
    // The client keeps its own buffering small too: it is in this process.
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(64 * 1024))
        .receive_window(quinn::VarInt::from_u32(64 * 1024))
        .max_idle_timeout(Some(Duration::from_secs(60).try_into().unwrap()));
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint
}

#[test]
fn a_thousand_connections_that_stop_reading_stay_within_the_bound() {
    let dir = std::env::temp_dir().join(format!("qx-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = support::free_port();
    let window = WINDOW.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo-server"))
        .args([
            "--address",
            "127.0.0.1",
            "--mode",
            "udp",
            "--retry",
            "never",
        ])
        .args(["--port", &port.to_string()])
        .args(["--receive-window", &window])
        .args(["--stream-receive-window", &window])
        .args(["--send-window", &window])
        .arg("--ca-out")
        .arg(dir.join("ca.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("listening") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let server = Server(child);
    let pid = server.0.id();
    let before = rss_bytes(pid);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let target = format!("127.0.0.1:{port}").parse().unwrap();
    // Held until the measurement: the connections stay open.
    let held = runtime.block_on(async {
        let client = client(&dir.join("ca.pem"));
        let mut held = Vec::new();
        let data = bytes::Bytes::from(vec![7u8; SENT]);
        for _ in 0..CONNECTIONS {
            let conn = client.connect(target, "localhost").unwrap().await.unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            let data = data.clone();
            // Blocks once the echo backs up: the server stops reading too.
            tokio::spawn(async move {
                let _ = send.write_chunk(data).await;
            });
            held.push((conn, recv));
        }
        // Let every connection fill what the windows allow.
        tokio::time::sleep(Duration::from_secs(3)).await;
        (client, held)
    });
    let after = rss_bytes(pid);
    let grown = after.saturating_sub(before);
    // Receive window and send window, plus the fixed overhead.
    let bound = CONNECTIONS as u64 * (2 * WINDOW + OVERHEAD_PER_CONNECTION);
    eprintln!(
        "server RSS grew {} KiB for {CONNECTIONS} connections ({} KiB each; bound {} KiB each)",
        grown / 1024,
        grown / 1024 / CONNECTIONS as u64,
        bound / 1024 / CONNECTIONS as u64
    );
    assert!(grown <= bound, "{grown} bytes > bound {bound}");
    // And the connections are really holding data: each client sent more
    // than the windows let through, so every one of them is blocked.
    let open = held
        .1
        .iter()
        .filter(|(c, _)| c.close_reason().is_none())
        .count();
    assert_eq!(open, CONNECTIONS);
    drop(held);
    drop(runtime);
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}
