//! Faults injected with nft inside the test namespaces (this kernel has no
//! netem): transfers over XDP must survive loss and corruption intact.

mod support;

use std::time::Duration;

use support::*;
use tokio::time::timeout;

/// 2% loss both ways and 2% of the client's datagrams corrupted: a 10 MB
/// echo completes with the content intact. Corruption is rewritten inside
/// the QUIC payload, so it is caught by the UDP checksum (when nft leaves
/// it stale) or by QUIC's AEAD, and repaired like a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabytes_through_loss_and_corruption() {
    let Some(setup) = echo_over_xdp().await else {
        return;
    };
    let EchoOverXdp { net, ep, conn, .. } = &setup;

    nft_table(
        &net.client,
        "faults",
        &[
            (
                "in",
                "udp sport 4433 numgen random mod 100 < 2 counter drop",
            ),
            (
                "out",
                "udp dport 4433 numgen random mod 100 < 2 counter drop",
            ),
            // Byte 40 of the UDP datagram (inside the QUIC packet).
            (
                "out",
                "udp dport 4433 udp length > 100 numgen random mod 100 < 2 counter @th,320,8 set 0x5a",
            ),
        ],
    );
    let data = pattern(10 << 20, 42);
    let back = timeout(Duration::from_secs(120), echo_stream(conn, &data))
        .await
        .unwrap();
    assert!(
        back == data,
        "10 MB echo differs ({} bytes back)",
        back.len()
    );

    let stats = conn.stats();
    assert!(
        stats.path.lost_packets > 0,
        "no loss was injected: {stats:?}"
    );
    // Every rule fired: drops in, drops out, corruptions out.
    let counts = nft_counters(&net.client, "faults");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "a fault rule never matched: {counts:?}"
    );
    nft_table(&net.client, "faults", &[]);
    let d = ep.stats().datapath;
    eprintln!("server datapath under faults: {d}");
    assert_eq!((d.rx_malformed, d.tx_no_neighbor), (0, 0), "{d}");
    conn.close(0u32.into(), b"");
    ep.shutdown().await;
}
