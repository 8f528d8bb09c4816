//! Hostile traffic from the client namespace at the XDP-backed endpoint:
//! malformed frames, fragments, wrong checksums, bad lengths, garbage and
//! replayed QUIC packets. Each kind must be refused where it belongs (the
//! steering program, the datapath's decoder, or quinn-proto) and counted,
//! while the existing connection and new ones keep working.

mod support;

use std::{net::SocketAddr, time::Duration};

use datapath::{
    program::{SteerReason, SteerStats},
    testbed::{RawLink, TestNet},
    wire::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers},
};
use smoltcp::wire::{EthernetAddress, Ipv4Packet};
use support::*;
use tokio::time::timeout;

fn route() -> FrameRoute {
    FrameRoute {
        src_mac: EthernetAddress([2, 0x77, 0, 0, 0, 1]),
        dst_mac: EthernetAddress([2, 0x77, 0, 0, 0, 2]),
        vlan: None,
    }
}

/// A well-formed UDP frame from the client to the QUIC port.
fn frame(src_port: u16, payload: &[u8]) -> Vec<u8> {
    let src: SocketAddr = format!("10.77.0.1:{src_port}").parse().unwrap();
    let dst: SocketAddr = format!("10.77.0.2:{PORT}").parse().unwrap();
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = emit_udp_headers(&mut hdr, &route(), src, dst, None, payload);
    let mut f = hdr[..n].to_vec();
    f.extend_from_slice(payload);
    f
}

fn edit_ip(mut f: Vec<u8>, edit: impl Fn(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    edit(&mut ip);
    ip.fill_checksum();
    f
}

fn garbage(len: usize, seed: u8) -> Vec<u8> {
    // Long-header bit clear and fixed bit set: a plausible short header.
    let mut g = pattern(len, seed);
    g[0] = 0x40 | (g[0] & 0x3f);
    g
}

fn steering(ep: &quic_xdp::Endpoint) -> SteerStats {
    ep.stats().steering.expect("XDP mode")
}

/// Captures one short-header datagram the client sends on `conn`.
async fn capture_short_header(raw: std::sync::Arc<RawLink>, conn: &quinn::Connection) -> Vec<u8> {
    let watcher = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Some(f) = raw.recv(Duration::from_millis(100)).unwrap()
                && f.len() > 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 17
                && f[36..38] == PORT.to_be_bytes()
                && f[42] & 0x80 == 0
            {
                return Some(f);
            }
        }
        None
    });
    // Traffic to capture, until the watcher has what it needs.
    while !watcher.is_finished() {
        assert_eq!(echo_stream(conn, b"capture me").await, b"capture me");
    }
    watcher
        .join()
        .unwrap()
        .expect("no datagram of the connection was seen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_counted_and_harmless() {
    let Some(setup) = echo_over_xdp().await else {
        return;
    };
    let EchoOverXdp {
        net,
        ep,
        conn,
        server,
        ..
    } = &setup;
    let server = *server;
    assert_eq!(echo_stream(conn, b"before").await, b"before");

    let raw = std::sync::Arc::new(
        net.client
            .run(|| RawLink::open(TestNet::CLIENT_IF).unwrap()),
    );
    let replay = capture_short_header(raw.clone(), conn).await;

    let before = steering(ep);
    let bad_checksum_before = ep.stats().datapath.rx_bad_checksum;
    let good = frame(40000, &garbage(1200, 1));
    let mut malformed = Vec::new();
    for cut in [15, 20, 33, 41, 60, 500, good.len() - 1] {
        malformed.push(good[..cut].to_vec()); // truncated: IP total length beyond the frame
    }
    malformed.push(edit_ip(good.clone(), |ip| ip.set_header_len(16))); // IHL 4
    malformed.push(edit_ip(good.clone(), |ip| ip.set_total_len(30))); // total length below headers
    for bad_udp_len in [0u16, 7, 5000] {
        let mut f = good.clone();
        f[38..40].copy_from_slice(&bad_udp_len.to_be_bytes());
        malformed.push(f);
    }
    let fragments: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            edit_ip(frame(40001 + i, &garbage(300, i as u8)), |ip| {
                ip.set_more_frags(true)
            })
        })
        .collect();
    // A real packet of the connection (its CID passes the program's
    // check) with a broken UDP checksum.
    let bad_checksums: Vec<Vec<u8>> = (1..=255u8)
        .map(|i| {
            let mut f = replay.clone();
            f[40] ^= i; // UDP checksum
            f
        })
        // Zero would mean "no checksum" (IPv4).
        .filter(|f| f[40..42] != [0, 0])
        .take(10)
        .collect();
    let with_options = {
        let f = frame(40200, &garbage(200, 9));
        let mut g = f[..34].to_vec();
        g.extend_from_slice(&[1, 1, 1, 0]);
        g.extend_from_slice(&f[34..]);
        edit_ip(g, |ip| {
            ip.set_header_len(24);
            ip.set_total_len(ip.total_len() + 4);
        })
    };
    let garbage_quic: Vec<Vec<u8>> = (0..50)
        .map(|i| frame(40300 + i, &garbage(1200, i as u8)))
        .collect();

    for f in malformed
        .iter()
        .chain(&fragments)
        .chain(&bad_checksums)
        .chain(&garbage_quic)
    {
        raw.send(f).unwrap();
    }
    raw.send(&with_options).unwrap();
    for _ in 0..200 {
        raw.send(&replay).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let d = steering(ep).since(&before);
    assert!(
        d.get(SteerReason::PassMalformed) >= malformed.len() as u64,
        "{d}"
    );
    assert_eq!(
        d.get(SteerReason::PassFragment),
        fragments.len() as u64,
        "{d}"
    );
    // Checksums are the datapath's to verify: steered, then dropped.
    let dropped = ep.stats().datapath.rx_bad_checksum - bad_checksum_before;
    assert_eq!(
        dropped,
        bad_checksums.len() as u64,
        "{:?}",
        ep.stats().datapath
    );
    // IP options are the kernel's to judge (source routes...).
    assert_eq!(d.get(SteerReason::PassIpOptions), 1, "{d}");
    // Garbage short headers name no CID of ours: dropped in the program
    // (a random CID passes its check about once in 65536).
    assert!(
        d.get(SteerReason::DropUnknownCid) >= garbage_quic.len() as u64 - 1,
        "{d}"
    );
    // Replays reach quinn-proto, which discards them: the connection is
    // unharmed.
    assert!(
        d.get(SteerReason::Redirected) >= (200 + bad_checksums.len()) as u64,
        "{d}"
    );
    assert_eq!(
        timeout(Duration::from_secs(5), echo_stream(conn, b"still here"))
            .await
            .unwrap(),
        b"still here"
    );
    assert!(conn.close_reason().is_none());
    let fresh = quinn_client(net, server, ep);
    let conn2 = connect(&fresh, server).await;
    assert_eq!(
        echo_stream(&conn2, b"new connection").await,
        b"new connection"
    );
    assert_eq!(
        ep.stats().admission.accepted,
        2,
        "garbage created no connection"
    );
    ep.shutdown().await;
}

/// A flood of connection attempts from clients that never answer: past
/// the threshold the server answers with stateless Retries, keeps its
/// half-open state bounded, never sends more than three times what it
/// received, and a real client still connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_flood_is_retried_bounded_and_not_amplified() {
    const THRESHOLD: usize = 32;
    const ATTEMPTS: usize = 500;
    let Some((net, ep)) = xdp_endpoint(|b| {
        b.retry(quic_xdp::RetryPolicy::WhenBusy {
            unvalidated: THRESHOLD,
        })
    }) else {
        return;
    };
    spawn_echo(ep.clone());
    let server = net.server_addr(false, PORT);
    // The flood's clients never hear back: their handshakes stay half-open
    // and Retries go unanswered. Counted, to check amplification.
    nft_table(
        &net.client,
        "flood",
        &[
            ("in", "udp sport 4433 counter drop"),
            ("out", "udp dport 4433 counter"),
        ],
    );

    let mut peak_open = 0;
    for batch in 0..ATTEMPTS / 50 {
        let mut vanishing = Vec::new();
        for _ in 0..50 {
            let client = quinn_client(&net, server, &ep);
            let connecting = client.connect(server, "localhost").unwrap();
            vanishing.push((client, connecting));
        }
        // Let the Initials go out, then drop the clients and their sockets.
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(vanishing);
        tokio::time::sleep(Duration::from_millis(20)).await;
        peak_open = peak_open.max(ep.stats().open_connections);
        assert!(
            peak_open <= THRESHOLD + 50,
            "batch {batch}: {peak_open} half-open connections, {:?}",
            ep.stats().admission
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = nft_counter_values(&net.client, "flood");
    let (received_by_clients, sent_by_clients) = (counts[0].1, counts[1].1);
    nft_table(&net.client, "flood", &[]);

    let stats = ep.stats();
    eprintln!(
        "flood: {:?}, peak half-open {peak_open}, server sent {received_by_clients} B for {sent_by_clients} B",
        stats.admission
    );
    assert!(
        stats.admission.retried as usize >= ATTEMPTS - THRESHOLD - 50,
        "Retry did not kick in: {:?}",
        stats.admission
    );
    assert!(stats.open_connections <= THRESHOLD + 50, "{stats:?}");
    assert!(
        received_by_clients <= 3 * sent_by_clients,
        "amplification: sent {received_by_clients} bytes for {sent_by_clients} received"
    );

    // A real client still gets through (via a Retry, as the server is busy).
    let client = quinn_client(&net, server, &ep);
    let conn = timeout(Duration::from_secs(10), connect(&client, server))
        .await
        .unwrap();
    assert_eq!(echo_stream(&conn, b"legit").await, b"legit");
    assert!(ep.stats().admission.retried as usize > stats.admission.retried as usize - 1);
    ep.shutdown().await;
}

/// A flood of full-size garbage Initials (each costs a key derivation and
/// a decryption before it is known to be garbage) gets no more than its
/// share of the engine: the rest is shed unread and counted, and the
/// connection already served goes on through the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_initial_flood_is_shed_and_served_connections_go_on() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let Some(setup) = echo_over_xdp().await else {
        return;
    };
    let EchoOverXdp {
        net,
        ep,
        conn,
        server,
        ..
    } = &setup;
    assert_eq!(echo_stream(conn, b"before").await, b"before");
    let raw = Arc::new(
        net.client
            .run(|| RawLink::open(TestNet::CLIENT_IF).unwrap()),
    );
    // Version 1 Initials to random 8-byte CIDs, no SCID, no token, a
    // length covering the datagram, garbage after.
    let initials: Vec<Vec<u8>> = (0..256u16)
        .map(|i| {
            let mut p = pattern(1200, i as u8);
            p[..6].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8]);
            p[6..8].copy_from_slice(&i.to_be_bytes());
            p[14..16].copy_from_slice(&[0, 0]);
            p[16..18].copy_from_slice(&(0x4000u16 | (1200 - 18)).to_be_bytes());
            frame(41000 + i, &p)
        })
        .collect();
    // Each Initial costs the engine 300 us more, so that 5,000 a second
    // would take it 1.5 s a second on any machine: without a limit the
    // ring would fill and the connection's packets would wait or drop.
    ep.slow_initials_for_test(Duration::from_micros(300));
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded: 5,000 frames a second, for at most 4 s.
    let flooder = {
        let (raw, stop) = (raw.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut sent = 0u64;
            for tick in 1..=400u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for f in initials
                    .iter()
                    .cycle()
                    .skip(tick as usize * 50 % 256)
                    .take(50)
                {
                    if raw.send(f).is_ok() {
                        sent += 1;
                    }
                }
                let next = start + Duration::from_millis(10) * tick;
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shed_before = ep.stats().admission.initials_shed;
    let mut echoes = 0;
    let during = std::time::Instant::now();
    while during.elapsed() < Duration::from_secs(1) && !flooder.is_finished() {
        let echoed = timeout(Duration::from_secs(2), echo_stream(conn, b"during")).await;
        let Ok(echoed) = echoed else {
            let stats = ep.stats();
            panic!(
                "an echo took over 2 s during the flood, after {echoes}: {:?} {:?} {}",
                stats.admission,
                stats.datapath,
                stats.steering.unwrap_or_default()
            );
        };
        assert_eq!(echoed, b"during");
        echoes += 1;
    }
    let flood_lasted = !flooder.is_finished();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let stats = ep.stats();
    eprintln!(
        "{sent} garbage Initials sent; {echoes} echoes during the flood; {:?}",
        stats.admission
    );
    assert!(flood_lasted, "the flood ended before the echoes did");
    assert!(
        stats.admission.initials_shed > shed_before,
        "no Initial was shed: the engine kept up with the flood ({:?})",
        stats.admission
    );
    assert!(echoes >= 10, "{echoes} echoes in a second of flood");
    assert!(conn.close_reason().is_none());
    // Attempts after the flood are served again.
    let fresh = quinn_client(net, *server, ep);
    let conn2 = timeout(Duration::from_secs(10), connect(&fresh, *server))
        .await
        .unwrap();
    assert_eq!(echo_stream(&conn2, b"after").await, b"after");
    ep.shutdown().await;
}
