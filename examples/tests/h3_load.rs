//! The h3-load tool against the h3-server example on loopback (kernel
//! UDP: no privileges needed): counts, JSON summary, errors by kind.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};
use support::value;

struct Server(Child, Vec<String>);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(dir: &std::path::Path) -> (Server, u16) {
    start_server_with(dir, &[])
}

/// Starts h3-server on a free port, and says which. A port found free
/// can be taken by another test's client before the server binds it:
/// then the server ends without listening, and another port is tried.
fn start_server_with(dir: &std::path::Path, extra: &[&str]) -> (Server, u16) {
    for _ in 0..5 {
        let port = support::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_h3-server"))
            .args([
                "--address",
                "127.0.0.1",
                "--mode",
                "udp",
                "--port",
                &port.to_string(),
            ])
            .arg("--root")
            .arg(dir)
            .arg("--ca-out")
            .arg(dir.join("ca.pem"))
            .env("SSLKEYLOGFILE", dir.join("keylog.txt"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut head = Vec::new();
        let listening = lines.by_ref().map_while(Result::ok).any(|l| {
            let found = l.starts_with("listening");
            head.push(l);
            found
        });
        if !listening {
            eprintln!(
                "h3-server did not listen on port {port}: {:?}",
                child.wait()
            );
            continue;
        }
        head.pop();
        // Read on: a server stopped gracefully prints its counters.
        std::thread::spawn(move || lines.for_each(drop));
        return (Server(child, head), port);
    }
    panic!("h3-server did not start on any of 5 free ports");
}

fn load(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_h3-load"))
        .args(args)
        .args(["--json", "-", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(start) = stdout.find("\n{") else {
        panic!(
            "no JSON summary from h3-load ({}); stdout: {stdout}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let json = &stdout[start + 1..];
    (out.status.success(), serde_json::from_str(json).unwrap())
}

#[test]
fn counts_requests_and_errors_by_kind() {
    let dir = std::env::temp_dir().join(format!("qx-h3load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>hi</h1>").unwrap();
    let (_server, port) = start_server(&dir);
    let base = format!("https://localhost:{port}");
    let connect = format!("127.0.0.1:{port}");
    let ca = dir.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let (ok, s) = load(&[
        &format!("{base}/bytes/5000"),
        &format!("{base}/index.html"),
        "--connect",
        &connect,
        "--ca",
        ca,
        "-c",
        "3",
        "-m",
        "5",
        "-n",
        "300",
        "-d",
        "30",
    ]);
    assert!(ok, "{s}");
    assert_eq!(s["requests_ok"], 300, "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["bytes_per_s"].as_f64().unwrap() > 0.0, "{s}");
    // Half the responses are 5000 bytes: four datagrams each at least.
    assert!(s["datagrams"]["received"].as_u64().unwrap() >= 600, "{s}");
    assert!(s["datagrams"]["sent"].as_u64().unwrap() > 0, "{s}");

    // Open loop at a fixed rate, trusting any certificate.
    let (ok, s) = load(&[
        &format!("https://127.0.0.1:{port}/bytes/10"),
        "--insecure",
        "--rate",
        "200",
        "-d",
        "1",
    ]);
    assert!(ok, "{s}");
    let done = s["requests_ok"].as_u64().unwrap();
    assert!(
        (150..=260).contains(&done),
        "about 200 requests in 1 s at 200/s: {s}"
    );

    // Failures are counted by kind and fail the run.
    let (ok, s) = load(&[
        &format!("{base}/missing"),
        "--connect",
        &connect,
        "--ca",
        ca,
        "-n",
        "7",
    ]);
    assert!(!ok);
    assert_eq!(s["errors"]["status 404"], 7, "{s}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A quinn client trusting the server's dev CA, offering h3.
fn quinn_client(ca: &std::path::Path) -> quinn::Endpoint {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    client
}

async fn get(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    url: &str,
    extra_header: Option<(&str, String)>,
) -> http::StatusCode {
    let mut request = http::Request::get(url);
    if let Some((name, value)) = extra_header {
        request = request.header(name, value);
    }
    let mut stream = sender
        .send_request(request.body(()).unwrap())
        .await
        .unwrap();
    // A server may stop the request side once it answered (RFC 9114 4.1.2).
    let _ = stream.finish().await;
    let status = stream.recv_response().await.unwrap().status();
    while stream.recv_data().await.unwrap().is_some() {}
    status
}

/// The limits h3-server takes on the command line, each exceeded: the
/// offender gets the error RFC 9114/9000 name, the others are served.
#[test]
fn limits_answer_with_the_right_error_and_others_are_served() {
    let dir = std::env::temp_dir().join(format!("qx-h3limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>hi</h1>").unwrap();
    let (_server, port) = start_server_with(
        &dir,
        &[
            "--max-header-size",
            "1024",
            "--request-timeout",
            "1",
            "--max-connections",
            "2",
            "--idle-timeout",
            "2",
        ],
    );
    let server: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let url = format!("https://localhost:{port}/index.html");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = quinn_client(&dir.join("ca.pem"));
        let a = client.connect(server, "localhost").unwrap().await.unwrap();
        let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(a.clone()))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

        // A header section over --max-header-size: its HEADERS frame is
        // longer than the limit, so the server refuses the stream with
        // H3_EXCESSIVE_LOAD before buffering it; or, once the server's
        // SETTINGS arrived, the client refuses itself, knowing the limit
        // (1024). The connection lives either way.
        let request = http::Request::get(&url)
            .header("x-padding", "p".repeat(4096))
            .body(())
            .unwrap();
        match sender.send_request(request).await {
            Ok(mut stream) => {
                let _ = stream.finish().await;
                let refused = stream.recv_response().await.map(|r| r.status());
                assert!(
                    matches!(&refused, Err(e) if format!("{e:?}").contains("EXCESSIVE_LOAD")),
                    "{refused:?}"
                );
            }
            Err(e) => assert!(
                e.to_string().contains("max size: 1024"),
                "not the advertised limit: {e}"
            ),
        }
        assert_eq!(get(&mut sender, &url, None).await, 200);

        // Frames h3 would buffer whole, declared far over the limit and
        // sent in part: a HEADERS frame of 1 GiB, an unknown (reserved)
        // frame type of 100 KiB. Refused at the frame header; the rest of
        // the connection keeps working.
        for (frame_type, length) in [(0x01u8, 1u64 << 30), (0x21, 100 * 1024)] {
            let (mut send, mut recv) = a.open_bi().await.unwrap();
            let mut header = vec![frame_type];
            header.extend_from_slice(&(length | 0xc000_0000_0000_0000).to_be_bytes());
            send.write_all(&header).await.unwrap();
            // Some of the payload; the server may stop us part way.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                send.write_all(&vec![b'x'; 256 * 1024]),
            )
            .await;
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), recv.read_to_end(100))
                .await
                .expect("the oversized frame is refused");
            assert!(
                matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == 0x107),
                "frame type {frame_type:#x}: {read:?}"
            );
            assert_eq!(get(&mut sender, &url, None).await, 200);
        }

        // A request stream whose headers never come: reset after
        // --request-timeout with H3_REQUEST_CANCELLED, not ended as if
        // answered.
        let b = client.connect(server, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = b.open_bi().await.unwrap();
        // The start of a HEADERS frame (type 1), and no more.
        send.write_all(&[0x01]).await.unwrap();
        let opened = std::time::Instant::now();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), recv.read_to_end(100))
            .await
            .expect("the silent request is given up on");
        assert!(
            matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == 0x10c),
            "{read:?}"
        );
        assert!(opened.elapsed() >= std::time::Duration::from_millis(900));

        // Two connections open: a third is refused.
        let refused = client.connect(server, "localhost").unwrap().await;
        assert!(
            matches!(&refused, Err(quinn::ConnectionError::ConnectionClosed(c)) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
            "{refused:?}"
        );
        assert_eq!(get(&mut sender, &url, None).await, 200);

        // --idle-timeout 2: the silent connection ends (h3's control
        // streams send nothing once set up).
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), b.closed())
            .await
            .expect("idle connection closed");
        assert_eq!(ended, quinn::ConnectionError::TimedOut);
    });
    std::fs::remove_dir_all(dir).unwrap();
}

/// GET /metrics over plain HTTP/1.0; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(tcp, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// `--metrics`: the endpoint's counters and histograms in the Prometheus
/// (OpenMetrics) text format over HTTP, and they move under load; and
/// SSLKEYLOGFILE gets each connection's TLS secrets (for Wireshark),
/// `--qlog` a trace per connection and `--pcap` the datagrams.
#[test]
fn metrics_key_log_and_qlog_follow_the_connections() {
    let dir = std::env::temp_dir().join(format!("qx-h3metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), b"<h1>hi</h1>").unwrap();
    let qlog = dir.join("qlog");
    let (server, port) = start_server_with(
        &dir,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--qlog",
            qlog.to_str().unwrap(),
            "--pcap",
            dir.join("capture.pcap").to_str().unwrap(),
        ],
    );
    let addr = server
        .1
        .iter()
        .find_map(|l| {
            l.strip_prefix("metrics on http://")?
                .strip_suffix("/metrics")
        })
        .unwrap_or_else(|| panic!("no metrics address in {:?}", server.1))
        .to_string();
    let queue = format!("{{kind=\"udp\",queue=\"127.0.0.1:{port}\"}}");
    let before = scrape(&addr);
    assert_eq!(value(&before, "quic_xdp_connections_accepted_total"), 0.0);
    assert_eq!(
        value(&before, "quic_xdp_handshake_duration_seconds_count"),
        0.0
    );
    // h3-server serves (Endpoint::serve): nothing waits for accept.
    assert_eq!(value(&before, "quic_xdp_connection_attempts_waiting"), 0.0);
    for name in [
        "quic_xdp_connections_open",
        "quic_xdp_connections_refused_total",
        "quic_xdp_connections_retried_total",
        "quic_xdp_forward_dropped_datagrams_total",
        "quic_xdp_connection_rtt_seconds_count",
    ] {
        value(&before, name);
    }
    let (ok, s) = load(&[
        &format!("https://localhost:{port}/index.html"),
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--ca",
        dir.join("ca.pem").to_str().unwrap(),
        "-c",
        "2",
        "-n",
        "50",
    ]);
    assert!(ok, "{s}");
    let after = scrape(&addr);
    assert_eq!(value(&after, "quic_xdp_connections_accepted_total"), 2.0);
    assert_eq!(
        value(&after, "quic_xdp_handshake_duration_seconds_count"),
        2.0
    );
    let rx = format!("quic_xdp_datapath_rx_packets_total{queue}");
    assert!(value(&after, &rx) >= 50.0, "{after}");
    let tx = format!("quic_xdp_datapath_tx_bytes_total{queue}");
    assert!(value(&after, &tx) > value(&before, &tx), "{after}");
    // NSS key log format: one line per secret, per connection.
    let keylog = std::fs::read_to_string(dir.join("keylog.txt")).unwrap();
    let count = |label: &str| keylog.lines().filter(|l| l.starts_with(label)).count();
    assert_eq!(count("CLIENT_HANDSHAKE_TRAFFIC_SECRET "), 2, "{keylog}");
    assert_eq!(count("SERVER_TRAFFIC_SECRET_0 "), 2, "{keylog}");
    // Stopped gracefully: the traces are complete on disk.
    let mut server = server;
    let pid = nix::unistd::Pid::from_raw(server.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(server.0.wait().unwrap().success());
    let traces: Vec<String> = std::fs::read_dir(&qlog)
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert_eq!(traces.len(), 2, "one trace per connection");
    // --pcap on the kernel-socket path: the datagrams with made-up
    // Ethernet/IP/UDP headers, both ways.
    let capture = std::fs::File::open(dir.join("capture.pcap")).unwrap();
    let mut capture = pcap_file::pcap::PcapReader::new(capture).unwrap();
    let (mut to_server, mut from_server) = (0, 0);
    while let Some(packet) = capture.next_packet() {
        let packet = packet.unwrap();
        let d =
            datapath::wire::parse_udp_frame(&packet.data, datapath::wire::ChecksumPolicy::Verify)
                .expect("a well-formed UDP frame");
        if d.dst.port() == port {
            to_server += 1;
        } else if d.src.port() == port {
            from_server += 1;
        }
    }
    assert!(
        to_server >= 50 && from_server >= 20,
        "{to_server} in, {from_server} out"
    );
    for trace in traces {
        let header = trace.lines().next().unwrap();
        assert!(header.contains(r#""qlog_format":"JSON-SEQ""#), "{header}");
        assert!(trace.contains(r#""name":"transport:packet_received""#));
        assert!(trace.contains(r#""name":"transport:packet_sent""#));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A response as the tests compare them: status, the headers that matter
/// here, and the body.
#[derive(Debug, PartialEq)]
struct Fetched {
    status: u16,
    headers: std::collections::BTreeMap<String, String>,
    body: Vec<u8>,
}

const COMPARED: [&str; 7] = [
    "content-type",
    "content-length",
    "content-range",
    "etag",
    "last-modified",
    "accept-ranges",
    "alt-svc",
];

async fn fetch_h3(
    sender: &mut h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    url: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    use bytes::Buf;
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut stream = sender
        .send_request(request.body(()).unwrap())
        .await
        .unwrap();
    // A server may stop the request side once it answered (RFC 9114 4.1.2).
    let _ = stream.finish().await;
    let response = stream.recv_response().await.unwrap();
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Fetched {
        status: response.status().as_u16(),
        headers: COMPARED
            .iter()
            .filter_map(|h| {
                Some((
                    h.to_string(),
                    response.headers().get(*h)?.to_str().ok()?.to_string(),
                ))
            })
            .collect(),
        body,
    }
}

/// The same request through the curl binary over TCP (HTTP/1.1 or 2).
fn fetch_tcp(version: &str, url: &str, ca: &std::path::Path, headers: &[(&str, &str)]) -> Fetched {
    let dir =
        std::env::temp_dir().join(format!("qx-curl-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = Command::new("curl");
    command
        .args(["-s", version, "--cacert"])
        .arg(ca)
        .arg("-D")
        .arg(dir.join("head"))
        .arg("-o")
        .arg(dir.join("body"));
    for (name, value) in headers {
        command.args(["-H", &format!("{name}: {value}")]);
    }
    let status = command.arg(url).status().expect("curl must be installed");
    assert!(status.success(), "curl {url}");
    let head = std::fs::read_to_string(dir.join("head")).unwrap();
    let body = std::fs::read(dir.join("body")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| COMPARED.contains(&k.as_str()))
        .collect();
    Fetched {
        status,
        headers,
        body,
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// `--tcp`: the site over HTTP/1.1 and HTTP/2 (curl) answers exactly as
/// over HTTP/3 (h3 + quinn): status, validators, ranges, bodies, and
/// Alt-Svc naming the HTTP/3 port on both.
#[test]
fn tcp_and_http3_serve_identically_with_validators_and_ranges() {
    let dir = std::env::temp_dir().join(format!("qx-h3tcp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let page: Vec<u8> = (0..5000u32).map(|i| (i % 97) as u8 + b' ').collect();
    std::fs::write(dir.join("page.txt"), &page).unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    let (server, port) = start_server_with(&dir, &["--tcp"]);
    let ca = dir.join("ca.pem");
    let base = format!("https://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut sender, _client) = runtime.block_on(async {
        let client = quinn_client(&ca);
        let conn = client
            .connect(format!("127.0.0.1:{port}").parse().unwrap(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        (sender, client)
    });
    let full = fetch_tcp("--http2", &format!("{base}/page.txt"), &ca, &[]);
    let etag = full.headers["etag"].clone();
    // (URL, request headers, status)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (format!("{base}/page.txt"), vec![], 200),
        (
            format!("{base}/page.txt"),
            vec![("if-none-match", &etag)],
            304,
        ),
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=100-199")],
            206,
        ),
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=-10")],
            206,
        ),
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=6000-")],
            416,
        ),
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=0-9"), ("if-range", "\"stale\"")],
            200,
        ),
        (
            format!("{base}/bytes/70000"),
            vec![("range", "bytes=65530-65545")],
            206,
        ),
        // A suffix longer than the body is all of it (RFC 9110 14.1.3).
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=-100000")],
            206,
        ),
        // Several ranges: the whole body.
        (
            format!("{base}/page.txt"),
            vec![("range", "bytes=0-1,5-6")],
            200,
        ),
        (
            format!("{base}/empty.txt"),
            vec![("range", "bytes=0-")],
            416,
        ),
        (format!("{base}/empty.txt"), vec![], 200),
        (format!("{base}/missing"), vec![], 404),
    ];
    for (url, headers, status) in &cases {
        let h3 = runtime.block_on(fetch_h3(&mut sender, url, headers));
        assert_eq!(h3.status, *status, "{url} {headers:?} over HTTP/3: {h3:?}");
        assert_eq!(
            h3.headers["alt-svc"],
            format!("h3=\":{port}\"; ma=86400"),
            "{url}"
        );
        for version in ["--http1.1", "--http2"] {
            let tcp = fetch_tcp(version, url, &ca, headers);
            assert_eq!(tcp, h3, "{url} {headers:?}: {version} differs from HTTP/3");
        }
    }
    let ranged = runtime.block_on(fetch_h3(
        &mut sender,
        &format!("{base}/page.txt"),
        &[("range", "bytes=100-199")],
    ));
    assert_eq!(ranged.body, page[100..200]);
    let suffix = runtime.block_on(fetch_h3(
        &mut sender,
        &format!("{base}/page.txt"),
        &[("range", "bytes=-100000")],
    ));
    assert_eq!(suffix.headers["content-range"], "bytes 0-4999/5000");
    assert_eq!(suffix.body, page);
    assert_eq!(ranged.headers["content-range"], "bytes 100-199/5000");
    let generated = runtime.block_on(fetch_h3(
        &mut sender,
        &format!("{base}/bytes/70000"),
        &[("range", "bytes=65530-65545")],
    ));
    let want: Vec<u8> = (65530..=65545u64)
        .map(|p| ((p % 65536) % 251) as u8)
        .collect();
    assert_eq!(generated.body, want);
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

/// --deny applies to the TCP listener too: a refused source gets its
/// connection closed before TLS.
#[test]
fn the_source_policy_applies_to_the_tcp_listener() {
    let dir = std::env::temp_dir().join(format!("qx-h3tcpdeny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), b"hi").unwrap();
    let (_server, port) = start_server_with(&dir, &["--tcp", "--deny", "127.0.0.0/8"]);
    let status = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(dir.join("ca.pem"))
        .arg(format!("https://127.0.0.1:{port}/index.html"))
        .stdout(Stdio::null())
        .status()
        .expect("curl must be installed");
    assert!(!status.success(), "a denied source was served over TCP");
    std::fs::remove_dir_all(dir).unwrap();
}
