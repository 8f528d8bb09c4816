//! Soak: sustained echo load over XDP with constant connection churn, for
//! QUIC_XDP_SOAK_SECS seconds (default 60; longer runs are recorded in
//! benches/RESULTS.md). Memory, UMEM frames in use and open connections
//! must stay flat, and every echo must come back intact.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_with_connection_churn_stays_flat() {
    let secs: u64 = std::env::var("QUIC_XDP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let Some((net, ep)) = xdp_endpoint(|b| b) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);

    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let warm = start + Duration::from_secs(secs / 5);
    let (mut warm_rss, mut last_rss, mut peak_rss) = (None, 0, 0);
    let (mut connections, mut bytes, mut peak_open, mut peak_frames) = (0u64, 0u64, 0, 0);
    let mut round = 0u32;
    while Instant::now() < end {
        // A wave of 8 short-lived clients, each with a few streams.
        let wave: Vec<_> = (0..8u32)
            .map(|i| {
                let client = quinn_client(&net, server, &ep);
                let seed = (round * 8 + i) as u8;
                tokio::spawn(async move {
                    let conn = connect(&client, server).await;
                    let mut moved = 0;
                    for s in 0..4usize {
                        let data = pattern(1000 + (seed as usize * 997 + s * 4099) % 200_000, seed);
                        assert_eq!(echo_stream(&conn, &data).await, data);
                        moved += data.len() as u64;
                    }
                    conn.close(0u32.into(), b"");
                    client.wait_idle().await;
                    moved
                })
            })
            .collect();
        for t in wave {
            bytes += tokio::time::timeout(TIMEOUT, t).await.unwrap().unwrap();
            connections += 1;
        }
        round += 1;
        let stats = ep.stats();
        peak_open = peak_open.max(stats.open_connections);
        peak_frames = peak_frames.max(stats.datapath.frames_in_use);
        last_rss = rss_kib();
        peak_rss = peak_rss.max(last_rss);
        if warm_rss.is_none() && Instant::now() >= warm {
            warm_rss = Some(last_rss);
        }
    }
    // Let the last connections drain.
    tokio::time::timeout(Duration::from_secs(10), ep.wait_idle())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = ep.stats();
    let warm_rss = warm_rss.unwrap_or(last_rss);
    eprintln!(
        "soak {secs}s: {connections} connections, {} MB echoed, peak open {peak_open}, \
         peak frames in use {peak_frames}, RSS KiB warm {warm_rss} last {last_rss} peak {peak_rss}, {:?}",
        bytes >> 20,
        stats.datapath
    );
    assert_eq!(stats.admission.accepted, connections);
    assert_eq!(stats.open_connections, 0, "connections leaked");
    assert!(peak_open <= 16, "connections piled up: {peak_open}");
    // Between waves and at the end every UMEM frame is back in its pool.
    assert_eq!(peak_frames, 0, "frames stuck after a wave");
    assert_eq!(stats.datapath.frames_in_use, 0, "frames stuck at the end");
    assert!(
        last_rss <= warm_rss + 64 * 1024,
        "memory grew: {warm_rss} KiB -> {last_rss} KiB"
    );
    assert_served_over_xdp(&ep);
    ep.shutdown().await;
}
