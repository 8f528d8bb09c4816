//! The datapath over real AF_XDP sockets, between two network namespaces
//! that each test creates (and removes, also on failure): a kernel UDP
//! client in one, the XDP-backed echo in the other.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use datapath::{
    ActiveMode, Datapath, DatapathConfig, Error, Mode, QueueKind,
    counters::CounterSnapshot,
    echo::{self, EchoLimits},
    program::{AttachMode, AttachPreference, SteerStats, SteeringProgram},
    testbed::RawLink,
    testbed::{EchoLoad, EchoReport, TestNet, TestNetConfig, run_echo_load},
    wire::{FrameRoute, MAX_HEADER_LEN, emit_udp_headers},
    xsk::FrameAccounting,
};
use quinn_udp::EcnCodepoint;
use smoltcp::wire::EthernetAddress;

const PORT: u16 = 4433;

/// What the echo server saw, collected after it stopped.
#[derive(Debug)]
struct ServerReport {
    queues: Vec<(QueueKind, CounterSnapshot, Option<FrameAccounting>)>,
    steering: Option<SteerStats>,
}

impl ServerReport {
    fn total(&self, pick: impl Fn(&QueueKind) -> bool) -> CounterSnapshot {
        let mut t = CounterSnapshot::default();
        for (k, c, _) in &self.queues {
            if pick(k) {
                t += *c;
            }
        }
        t
    }
    fn xsk(&self) -> CounterSnapshot {
        self.total(|k| matches!(k, QueueKind::Xsk { .. }))
    }
    fn misses(&self) -> CounterSnapshot {
        self.total(|k| matches!(k, QueueKind::SteeringMiss { .. }))
    }
}

struct EchoServer {
    mode: ActiveMode,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ServerReport>,
}

impl EchoServer {
    /// Starts the echo; a port still held by the previous server of the
    /// test is waited for: a child process that another test is spawning
    /// holds a copy of every descriptor of this process until it execs,
    /// so a socket just closed can stay bound for a moment.
    fn start(net: &TestNet, config: DatapathConfig) -> Result<Self, Error> {
        let mut tries = 0;
        loop {
            match Self::start_once(net, config.clone()) {
                Err(Error::AddrInUse { .. }) if tries < 40 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn start_once(net: &TestNet, config: DatapathConfig) -> Result<Self, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let flag = stop.clone();
        let thread = net.server.spawn(move || {
            let mut dp = match Datapath::open(&config) {
                Ok(dp) => dp,
                Err(e) => {
                    tx.send(Err(e)).unwrap();
                    return ServerReport {
                        queues: vec![],
                        steering: None,
                    };
                }
            };
            tx.send(Ok(dp.mode().clone())).unwrap();
            echo::serve(dp.queues_mut(), &flag, EchoLimits::default()).unwrap();
            ServerReport {
                queues: dp
                    .queues()
                    .iter()
                    .map(|q| {
                        (
                            q.kind().clone(),
                            q.counters().snapshot(),
                            q.frame_accounting(),
                        )
                    })
                    .collect(),
                steering: dp.steering_stats(),
            }
        });
        let mode = rx.recv().unwrap()?;
        Ok(Self { mode, stop, thread })
    }

    fn stop(self) -> ServerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A fresh namespace pair, or None when privileged tests are skipped.
fn testnet(config: TestNetConfig) -> Option<TestNet> {
    datapath::testbed::privileged().then(|| TestNet::create(&config).unwrap())
}

/// XDP on the server's veth, every transmit on AF_XDP (these tests are
/// about that path; `batches_leave_through_the_kernel_in_copy_mode` covers
/// the default).
fn xdp_config(listen: &str) -> DatapathConfig {
    let mut c = DatapathConfig::new(listen.parse().unwrap());
    c.interface = Some(TestNet::SERVER_IF.into());
    c.mode = Mode::Xdp;
    c.batches_through_kernel = false;
    c
}

/// Runs `load` from the client namespace.
fn run_load(net: &TestNet, load: EchoLoad) -> EchoReport {
    net.client.run(|| run_echo_load(&load)).unwrap()
}

/// `count` datagrams of `size` bytes, `window` in flight.
fn load(net: &TestNet, target: SocketAddr, count: u64, size: usize, window: usize) -> EchoReport {
    run_load(
        net,
        EchoLoad {
            count,
            size,
            window,
            ..EchoLoad::new(target)
        },
    )
}

fn assert_all_echoed(r: &EchoReport, count: u64, what: &str) {
    assert_eq!((r.sent, r.received), (count, count), "{what}: {r:?}");
    assert_eq!(
        (r.corrupted, r.unexpected, r.ecn_mismatches),
        (0, 0, 0),
        "{what}: {r:?}"
    );
}

fn assert_frames_balanced(report: &ServerReport) {
    for (kind, _, frames) in &report.queues {
        if let Some(f) = frames {
            assert!(f.is_balanced(), "{kind:?}: {f:?}");
            assert_eq!(
                f.tx_in_flight, 0,
                "{kind:?}: sends still in flight after the final flush: {f:?}"
            );
        }
    }
}

/// Bursts of thousands of small and MTU-sized datagrams, IPv4 and IPv6,
/// with the partial checksums a veth peer sends by default and with full
/// ones: every echo comes back intact through the AF_XDP socket.
#[test]
fn echo_over_xdp_ipv4_and_ipv6_small_and_mtu_sized() {
    for offload in [true, false] {
        let Some(net) = testnet(TestNetConfig {
            client_tx_checksum_offload: offload,
            ..Default::default()
        }) else {
            return;
        };
        let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
        assert!(
            matches!(
                server.mode,
                ActiveMode::Xdp {
                    attach: AttachMode::Native,
                    ..
                }
            ),
            "{}",
            server.mode
        );

        let mut total = 0;
        for v6 in [false, true] {
            let mtu_payload = if v6 { 1500 - 48 } else { 1500 - 28 };
            // 32: small, and long enough to be QUIC (the program drops
            // datagrams under 21 bytes, see steering.rs).
            for size in [32, 100, mtu_payload] {
                let r = load(&net, net.server_addr(v6, PORT), 5000, size, 1024);
                assert_all_echoed(&r, 5000, &format!("v6={v6} size={size} offload={offload}"));
                total += r.received;
            }
        }
        let report = server.stop();
        let xsk = report.xsk();
        assert_eq!(xsk.rx_packets, total, "{xsk}");
        assert_eq!(xsk.tx_packets, total, "{xsk}");
        assert_eq!(
            (xsk.rx_malformed, xsk.rx_bad_checksum, xsk.tx_no_neighbor),
            (0, 0, 0),
            "{xsk}"
        );
        assert_eq!(report.misses().rx_packets, 0, "nothing escapes steering");
        assert_eq!(
            report
                .steering
                .unwrap()
                .get(datapath::program::SteerReason::Redirected),
            total
        );
        assert_frames_balanced(&report);
    }
}

/// The default in copy mode: echoes batched for one peer leave through the
/// kernel socket with GSO; every echo still arrives, and all of them were
/// received over AF_XDP.
#[test]
fn batches_leave_through_the_kernel_in_copy_mode() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let mut config = xdp_config("[::]:4433");
    config.batches_through_kernel = true;
    let server = EchoServer::start(&net, config).unwrap();
    let r = load(&net, net.server_addr(false, PORT), 5000, 1200, 1024);
    assert_all_echoed(&r, 5000, "batched");
    let report = server.stop();
    let (xsk, kernel) = (report.xsk(), report.misses());
    assert_eq!(xsk.rx_packets, 5000, "{xsk}");
    assert_eq!(xsk.tx_packets + kernel.tx_packets, 5000, "{xsk} / {kernel}");
    assert!(
        kernel.tx_packets > 1000,
        "batches through the kernel: {kernel}"
    );
    assert_eq!(kernel.rx_packets, 0, "nothing escapes steering: {kernel}");
    assert_frames_balanced(&report);
}

/// ECN codepoints survive the trip both ways: read from the IP header on
/// receive, written into the reply's.
#[test]
fn ecn_codepoints_are_echoed() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    for v6 in [false, true] {
        for ecn in [EcnCodepoint::Ect0, EcnCodepoint::Ect1, EcnCodepoint::Ce] {
            let target = net.server_addr(v6, PORT);
            let r = run_load(
                &net,
                EchoLoad {
                    count: 200,
                    ecn: Some(ecn),
                    ..EchoLoad::new(target)
                },
            );
            assert_all_echoed(&r, 200, &format!("v6={v6} {ecn:?}"));
        }
    }
    assert_eq!(server.stop().xsk().rx_packets, 6 * 200);
}

/// With a socket bound on the queue, the program's verdict for a QUIC
/// datagram is XDP_REDIRECT (run in the kernel on a crafted frame).
#[test]
fn bound_queue_gets_the_redirect_verdict() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let verdicts = net.server.run(|| {
        let dp = Datapath::open(&xdp_config("[::]:4433")).unwrap();
        let prog = dp.steering().unwrap();
        let frame = |dst: &str| {
            let route = datapath::wire::FrameRoute {
                src_mac: smoltcp::wire::EthernetAddress([2, 0x77, 0, 0, 0, 1]),
                dst_mac: smoltcp::wire::EthernetAddress([2, 0x77, 0, 0, 0, 2]),
                vlan: None,
            };
            let (src, dst): (SocketAddr, SocketAddr) =
                ("10.77.0.1:5000".parse().unwrap(), dst.parse().unwrap());
            let payload = [0x40u8; 32];
            let mut hdr = [0u8; datapath::wire::MAX_HEADER_LEN];
            let n = datapath::wire::emit_udp_headers(&mut hdr, &route, src, dst, None, &payload);
            let mut f = hdr[..n].to_vec();
            f.extend_from_slice(&payload);
            prog.test_run(&f).unwrap()
        };
        (frame("10.77.0.2:4433"), frame("10.77.0.2:53"))
    });
    use datapath::program::XdpAction;
    assert_eq!(verdicts, (XdpAction::Redirect, XdpAction::Pass));
}

/// An address listener serves its address only; the rest of the port's
/// traffic stays with the kernel.
#[test]
fn address_listener_steers_only_its_address() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let server = EchoServer::start(&net, xdp_config("10.77.0.2:4433")).unwrap();
    let r = load(&net, net.server_addr(false, PORT), 1000, 64, 256);
    assert_all_echoed(&r, 1000, "ipv4 listener address");
    // IPv6 to the same port is not ours: no echo, and the kernel answers
    // with port unreachable (nobody bound it).
    let v6 = load(&net, net.server_addr(true, PORT), 10, 64, 10);
    assert_eq!(v6.received, 0);
    assert!(
        v6.refused > 0,
        "the kernel answered port unreachable: {v6:?}"
    );
    let report = server.stop();
    assert_eq!(report.xsk().rx_packets, 1000);
    let steering = report.steering.unwrap();
    assert!(
        steering.get(datapath::program::SteerReason::PassNoMatch) >= 10,
        "{steering}"
    );
}

/// ARP/NDP, ping, TCP and other UDP ports keep working while the program
/// is attached, and the verdict counters show them passed.
#[test]
fn kernel_traffic_keeps_working_while_attached() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    // The server's kernel resolves the client itself (ARP and NDP through
    // the attached program) to answer the pings.
    net.forget_client().unwrap();
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();

    for target in ["10.77.0.2", "fd77::2"] {
        let out = net
            .client
            .command("ping")
            .args(["-c", "2", "-W", "2", target])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ping {target}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // TCP, on the QUIC port number itself, over both families.
    let targets = ["10.77.0.2:4433", "[fd77::2]:4433"];
    let listener = net.server.run(|| TcpListener::bind("[::]:4433").unwrap());
    let accept = std::thread::spawn(move || {
        for _ in targets {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        }
    });
    for target in targets {
        let echoed = net.client.run(|| {
            let mut s =
                TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(3))
                    .unwrap();
            s.write_all(b"tcp!!").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            buf
        });
        assert_eq!(&echoed, b"tcp!!", "{target}");
    }
    accept.join().unwrap();

    // Another UDP port reaches a kernel socket.
    let other = net.server.run(|| UdpSocket::bind("[::]:5353").unwrap());
    other
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    net.client.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(b"not quic", "10.77.0.2:5353").unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, _) = other.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"not quic");

    // QUIC traffic is still steered alongside.
    assert_all_echoed(
        &load(&net, net.server_addr(false, PORT), 100, 64, 32),
        100,
        "echo",
    );
    let report = server.stop();
    let s = report.steering.unwrap();
    use datapath::program::SteerReason::*;
    assert!(s.get(PassNotIp) >= 1, "ARP passed: {s}");
    assert!(s.get(PassNotUdp) >= 4, "ICMP, ICMPv6 and TCP passed: {s}");
    assert!(s.get(PassNoMatch) >= 1, "UDP to another port passed: {s}");
    assert_eq!(s.get(Redirected), 100, "{s}");
}

/// Every active rx queue gets a socket, so nothing falls back to the
/// kernel; flows spread over both queues.
#[test]
fn one_socket_per_rx_queue() {
    let Some(net) = testnet(TestNetConfig {
        queues: 2,
        ..Default::default()
    }) else {
        return;
    };
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    match &server.mode {
        ActiveMode::Xdp { queues, .. } => assert_eq!(queues, &[0, 1]),
        m => panic!("{m}"),
    }
    // Each load uses a fresh source port, i.e. a new flow hash.
    for _ in 0..16 {
        assert_all_echoed(
            &load(&net, net.server_addr(false, PORT), 200, 64, 64),
            200,
            "flow",
        );
    }
    let report = server.stop();
    let per_queue: Vec<u64> = report
        .queues
        .iter()
        .filter(|(k, ..)| matches!(k, QueueKind::Xsk { .. }))
        .map(|(_, c, _)| c.rx_packets)
        .collect();
    assert_eq!(per_queue.iter().sum::<u64>(), 3200, "{per_queue:?}");
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "flows on both queues: {per_queue:?}"
    );
    assert_eq!(report.misses().rx_packets, 0);
    assert_frames_balanced(&report);
}

/// A queue without a socket is not a black hole: its datagrams fall back
/// to the kernel, where the reservation socket serves them as steering
/// misses.
#[test]
fn datagrams_on_an_unbound_queue_are_served_by_the_reservation_socket() {
    let Some(net) = testnet(TestNetConfig {
        queues: 2,
        ..Default::default()
    }) else {
        return;
    };
    let mut config = xdp_config("[::]:4433");
    config.queues = Some(vec![0]);
    let server = EchoServer::start(&net, config).unwrap();
    for _ in 0..16 {
        assert_all_echoed(
            &load(&net, net.server_addr(false, PORT), 100, 64, 32),
            100,
            "flow",
        );
    }
    let report = server.stop();
    let (xsk, misses) = (report.xsk().rx_packets, report.misses().rx_packets);
    assert_eq!(xsk + misses, 1600);
    assert!(misses > 0 && xsk > 0, "xsk={xsk} misses={misses}");
    assert_eq!(report.misses().steering_misses, misses);
    let s = report.steering.unwrap();
    assert_eq!(
        s.get(datapath::program::SteerReason::PassNoSocket),
        misses,
        "{s}"
    );
}

/// Native XDP on veth refuses a peer MTU above ~3500: auto attach falls
/// back to generic mode (and still works); native-only is a clear error.
/// Generic XDP on veth sees the client's GSO batches whole: too big for a
/// UMEM frame, they are left to the kernel and served by the reservation
/// socket instead of being dropped.
#[test]
fn oversized_peer_mtu_falls_back_to_generic_xdp() {
    let Some(net) = testnet(TestNetConfig {
        mtu: 9000,
        ..Default::default()
    }) else {
        return;
    };
    let mut native = xdp_config("[::]:4433");
    native.attach = AttachPreference::NativeOnly;
    let err = EchoServer::start(&net, native)
        .err()
        .expect("native attach must fail");
    assert!(matches!(err, Error::Attach { .. }), "{err}");
    assert!(err.to_string().contains("veth-s"), "{err}");

    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    assert!(
        matches!(
            server.mode,
            ActiveMode::Xdp {
                attach: AttachMode::Generic,
                zero_copy: false,
                ..
            }
        ),
        "{}",
        server.mode
    );
    let base = EchoLoad {
        count: 2000,
        size: 1400,
        ..EchoLoad::new(net.server_addr(false, PORT))
    };
    let r = run_load(
        &net,
        EchoLoad {
            gso: false,
            ..base.clone()
        },
    );
    assert_all_echoed(&r, 2000, "generic mode, one datagram per send");
    let r = run_load(&net, base);
    assert_all_echoed(&r, 2000, "generic mode, GSO batches");
    let report = server.stop();
    assert_eq!(report.xsk().rx_packets + report.misses().rx_packets, 4000);
    assert!(report.xsk().rx_packets >= 2000, "{:?}", report.xsk());
    let s = report.steering.unwrap();
    assert!(s.get(datapath::program::SteerReason::PassTooBig) > 0, "{s}");
    assert_eq!(
        report.xsk().rx_dropped,
        0,
        "the kernel dropped nothing: {:?}",
        report.xsk()
    );
}

/// Without CAP_BPF/CAP_NET_ADMIN (dropped on the server thread only, as
/// capabilities are per thread): XDP mode is a clear error, auto mode
/// falls back to kernel UDP, says why, and serves.
#[test]
fn without_privilege_auto_falls_back_and_xdp_mode_fails_clearly() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let drop_caps = |mode: Mode| {
        let net = &net;
        net.server.run(move || {
            caps::clear(None, caps::CapSet::Effective).unwrap();
            let mut c = xdp_config("[::]:4433");
            c.mode = mode;
            Datapath::open(&c).map(|dp| dp.mode().clone())
        })
    };
    let err = drop_caps(Mode::Xdp).unwrap_err();
    assert!(matches!(err, Error::NoPrivilege { .. }), "{err}");
    assert!(err.to_string().contains("CAP_BPF"), "{err}");
    match drop_caps(Mode::Auto).unwrap() {
        ActiveMode::Udp {
            fallback_reason: Some(r),
        } => assert!(r.contains("CAP_NET_ADMIN"), "{r}"),
        m => panic!("{m}"),
    }
}

/// veth offers no zero-copy: requiring it is a clear error naming the
/// interface and the refusal, with nothing left attached, and a datapath
/// opened right after (copy mode allowed) serves.
#[test]
fn required_zero_copy_on_veth_fails_clearly_and_leaves_nothing_attached() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let err = net
        .server
        .run(|| {
            let mut c = xdp_config("[::]:4433");
            c.zero_copy = datapath::xsk::ZeroCopy::Require;
            Datapath::open(&c).map(|dp| dp.mode().clone())
        })
        .unwrap_err();
    assert!(matches!(err, Error::Socket { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("veth-s") && message.contains("zero-copy was required"),
        "{message}"
    );
    assert!(
        !net.server_xdp_attached(),
        "a failed open left XDP attached"
    );
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    assert!(
        matches!(
            server.mode,
            ActiveMode::Xdp {
                zero_copy: false,
                ..
            }
        ),
        "{}",
        server.mode
    );
    let r = load(&net, net.server_addr(false, PORT), 200, 100, 16);
    assert_all_echoed(&r, 200, "copy mode after the refusal");
    server.stop();
}

/// The kernel-UDP datapath serves the same echo in the same namespaces.
#[test]
fn udp_mode_echo_between_namespaces() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let mut config = xdp_config("[::]:4433");
    config.mode = Mode::Udp;
    let server = EchoServer::start(&net, config).unwrap();
    assert_eq!(
        server.mode,
        ActiveMode::Udp {
            fallback_reason: None
        }
    );
    for v6 in [false, true] {
        let r = load(&net, net.server_addr(v6, PORT), 3000, 1200, 512);
        assert_all_echoed(&r, 3000, &format!("udp mode, v6={v6}"));
    }
    assert_eq!(server.stop().total(|_| true).rx_packets, 6000);
}

/// The XDP program lives only as long as the process: after a SIGKILL the
/// interface has no program and the port belongs to the kernel again.
#[test]
fn program_is_gone_when_the_process_exits() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let mut child = net
        .server
        .command(env!("CARGO_BIN_EXE_xdp-udp-echo"))
        .args([
            "--interface",
            TestNet::SERVER_IF,
            "--mode",
            "xdp",
            "--duration",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed even if an assertion below fails.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let mode = lines.next().unwrap().unwrap();
    assert!(mode.starts_with("mode: xdp on veth-s"), "{mode}");
    assert!(net.server_xdp_attached());
    assert_all_echoed(
        &load(&net, net.server_addr(false, PORT), 100, 64, 16),
        100,
        "child echo",
    );

    child.0.kill().unwrap(); // SIGKILL: no destructor runs
    child.0.wait().unwrap();
    assert!(
        !net.server_xdp_attached(),
        "program still attached after the process died"
    );

    let kernel = net
        .server
        .run(|| UdpSocket::bind("[::]:4433").expect("port free again"));
    kernel
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    net.client.run(|| {
        UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .send_to(b"kernel", "10.77.0.2:4433")
            .unwrap();
    });
    let mut buf = [0u8; 8];
    let (n, _) = kernel.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"kernel");
}

/// A slow application: nothing reads the AF_XDP queue while a burst far
/// beyond its rings arrives. The kernel drops and counts the overflow, no
/// UMEM frame is lost, and the queue serves normally afterwards.
#[test]
fn ring_exhaustion_drops_without_leaking_frames() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = net.server.spawn(move || {
        let mut dp = Datapath::open(&xdp_config("[::]:4433")).unwrap();
        ready_tx.send(()).unwrap();
        // The application stalls before its first read.
        std::thread::sleep(Duration::from_millis(1500));
        echo::serve(dp.queues_mut(), &flag, EchoLimits::default()).unwrap();
        dp.queues()
            .iter()
            .map(|q| {
                (
                    q.kind().clone(),
                    q.counters().snapshot(),
                    q.frame_accounting(),
                )
            })
            .collect::<Vec<_>>()
    });
    ready_rx.recv().unwrap();
    let burst = run_load(
        &net,
        EchoLoad {
            count: 20_000,
            size: 200,
            window: 20_000,
            idle_timeout: Duration::from_secs(3),
            ..EchoLoad::new(net.server_addr(false, PORT))
        },
    );
    assert!(
        burst.received < burst.sent,
        "the burst fit the rings: {burst:?}"
    );
    // Served again, in full, once the application reads.
    let after = load(&net, net.server_addr(false, PORT), 2000, 200, 256);
    assert_all_echoed(&after, 2000, "after the stall");
    stop.store(true, Ordering::Relaxed);
    let queues = server.join().unwrap();
    let (_, xsk, frames) = queues
        .iter()
        .find(|(k, ..)| matches!(k, QueueKind::Xsk { .. }))
        .unwrap();
    // rx_dropped includes the fill-ring-empty drops; a full rx ring is
    // counted on its own.
    let kernel_drops = xsk.rx_ring_full + xsk.rx_dropped;
    assert!(xsk.fill_ring_empty > 0, "{xsk}");
    assert!(kernel_drops > 0, "the overflow was not counted: {xsk}");
    assert_eq!(
        xsk.rx_packets + kernel_drops,
        burst.sent + after.sent,
        "every datagram received or counted: {xsk}"
    );
    let frames = frames.unwrap();
    assert!(frames.is_balanced(), "{frames:?}");
    assert_eq!(frames.tx_in_flight, 0, "{frames:?}");
}

/// One flush hands the kernel a whole burst: in copy mode each sendto(2)
/// transmits at most 32 descriptors, so the queue must keep kicking until
/// the ring is empty rather than leave the rest for a later flush.
#[test]
fn one_flush_transmits_a_burst_larger_than_a_kick() {
    const BURST: usize = 200;
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let client = net.client.run(|| UdpSocket::bind("10.77.0.1:0")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let client_addr = client.local_addr().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = net.server.spawn(move || {
        let mut dp = Datapath::open(&xdp_config("[::]:4433")).unwrap();
        ready_tx.send(()).unwrap();
        let q = dp
            .queues_mut()
            .iter_mut()
            .find(|q| matches!(q.kind(), QueueKind::Xsk { .. }))
            .unwrap();
        // The client's hello teaches the queue where to send.
        let mut local = None;
        while local.is_none() {
            datapath::io::wait_readable(std::slice::from_ref(q), Duration::from_millis(50))
                .unwrap();
            q.recv(&mut |meta, _| local = Some(meta.local.ip()))
                .unwrap();
        }
        for i in 0..BURST {
            let payload = (i as u32).to_be_bytes();
            q.send(&datapath::Transmit {
                destination: client_addr,
                src_ip: local,
                ecn: None,
                contents: &payload,
                segment_size: None,
            })
            .unwrap();
        }
        q.flush().unwrap();
        // No further flush until the client has counted.
        done_rx.recv().unwrap();
        q.counters().snapshot()
    });
    ready_rx.recv().unwrap();
    client.send_to(&[0x40; 32], "10.77.0.2:4433").unwrap();
    let mut buf = [0u8; 16];
    let mut received = 0;
    while received < BURST && client.recv(&mut buf).is_ok() {
        received += 1;
    }
    done_tx.send(()).unwrap();
    let counters = server.join().unwrap();
    assert_eq!(
        received, BURST,
        "one flush sent part of the burst: {counters}"
    );
    assert!(
        counters.tx_kicks >= (BURST / 32) as u64,
        "fewer kicks than copy mode needs: {counters}"
    );
}

/// Replies never take their MAC from received frames. A peer the server's
/// kernel has not resolved yet is answered through the kernel socket (which
/// resolves it by ARP/NDP), and once it is resolved, through AF_XDP. Frames
/// that claim the client's address from another MAC do not move its
/// replies.
#[test]
fn replies_use_the_kernels_neighbour_table_not_frame_sources() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    net.forget_client().unwrap();
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    for v6 in [false, true] {
        let r = load(&net, net.server_addr(v6, PORT), 200, 100, 1);
        assert_all_echoed(&r, 200, &format!("v6={v6}, unresolved at first"));
    }
    // Spoofed frames: the client's source addresses, a stranger's MAC.
    let route = FrameRoute {
        src_mac: EthernetAddress([0x02, 0x66, 0x66, 0x66, 0x66, 0x66]),
        dst_mac: EthernetAddress::from_bytes(&[0x02, 0x77, 0, 0, 0, 2]),
        vlan: None,
    };
    let link = net
        .client
        .run(|| RawLink::open(TestNet::CLIENT_IF))
        .unwrap();
    for v6 in [false, true] {
        let client_ip = if v6 {
            IpAddr::V6(TestNet::CLIENT_V6)
        } else {
            IpAddr::V4(TestNet::CLIENT_V4)
        };
        let src = SocketAddr::new(client_ip, 40000);
        let mut header = [0u8; MAX_HEADER_LEN];
        // Long enough to be steered (and decoded) like a QUIC datagram.
        let payload = &[0x40u8; 64];
        let n = emit_udp_headers(
            &mut header,
            &route,
            src,
            net.server_addr(v6, PORT),
            None,
            payload,
        );
        let frame = [&header[..n], &payload[..]].concat();
        for _ in 0..50 {
            link.send(&frame).unwrap();
        }
    }
    for v6 in [false, true] {
        let r = load(&net, net.server_addr(v6, PORT), 500, 100, 16);
        assert_all_echoed(&r, 500, &format!("v6={v6}, after spoofed frames"));
    }
    let report = server.stop();
    let xsk = report.xsk();
    assert!(
        xsk.tx_no_neighbor > 0,
        "the first replies waited for resolution: {xsk}"
    );
    assert!(
        report.misses().tx_packets > 0,
        "they left through the kernel socket"
    );
    assert!(
        xsk.tx_packets >= 1000,
        "the rest left through AF_XDP: {xsk}"
    );
}

/// A wildcard listener steers the server's own addresses only, and follows
/// them: a datagram sent through the server's MAC to a neighbour's address
/// on the segment is left to the kernel (which does not forward it) and
/// never answered; an address added while serving is steered.
#[test]
fn only_the_servers_addresses_are_steered_and_they_are_followed() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let server = EchoServer::start(&net, xdp_config("[::]:4433")).unwrap();
    // The client reaches 10.77.0.3 (not the server's) through the server's
    // MAC, as a host on a bridge or a router could.
    net.client
        .ip(&[
            "neigh",
            "replace",
            "10.77.0.3",
            "lladdr",
            TestNet::SERVER_MAC,
            "dev",
            TestNet::CLIENT_IF,
            "nud",
            "permanent",
        ])
        .unwrap();
    let neighbour: SocketAddr = "10.77.0.3:4433".parse().unwrap();
    let r = run_load(
        &net,
        EchoLoad {
            count: 50,
            size: 100,
            window: 50,
            idle_timeout: Duration::from_millis(500),
            ..EchoLoad::new(neighbour)
        },
    );
    assert_eq!(
        (r.sent, r.received),
        (50, 0),
        "answered for a neighbour: {r:?}"
    );

    // An address added while serving: steered once the watcher saw it.
    net.server
        .ip(&["addr", "add", "10.77.0.4/24", "dev", TestNet::SERVER_IF])
        .unwrap();
    let added: SocketAddr = "10.77.0.4:4433".parse().unwrap();
    // The watcher reacts to the kernel's address event within
    // milliseconds; before it does, datagrams would reach the kernel socket
    // (a steering miss, asserted absent below).
    std::thread::sleep(Duration::from_millis(500));
    let r = load(&net, added, 20, 100, 1);
    assert_all_echoed(&r, 20, "the added address");
    let report = server.stop();
    let steering = report.steering.unwrap();
    use datapath::program::SteerReason::*;
    assert!(steering.get(PassNoMatch) >= 50, "{steering}");
    assert_eq!(
        report.misses().rx_packets,
        0,
        "the new address was steered, not missed"
    );
    assert!(report.xsk().tx_packets >= 20, "{:?}", report.xsk());
}

/// `recv` counts what it took from the ring, delivered or not: a batch of
/// nothing but bad-checksum frames must not read as an empty queue (the
/// engine clears its readiness on 0 and would leave later frames unread).
#[test]
fn a_batch_of_junk_is_not_an_empty_queue() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let server = net.server.spawn(move || {
        let mut dp = Datapath::open(&xdp_config("[::]:4433")).unwrap();
        ready_tx.send(()).unwrap();
        sent_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let q = dp
            .queues_mut()
            .iter_mut()
            .find(|q| matches!(q.kind(), QueueKind::Xsk { .. }))
            .unwrap();
        let mut delivered = 0;
        let taken = q.recv(&mut |_, _| delivered += 1).unwrap();
        let after = q.recv(&mut |_, _| delivered += 1).unwrap();
        (taken, after, delivered, q.counters().snapshot())
    });
    ready_rx.recv().unwrap();
    let route = FrameRoute {
        src_mac: EthernetAddress([2, 0x77, 0, 0, 0, 1]),
        dst_mac: EthernetAddress([2, 0x77, 0, 0, 0, 2]),
        vlan: None,
    };
    let payload = [0x40u8; 64];
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = emit_udp_headers(
        &mut header,
        &route,
        "10.77.0.1:40000".parse().unwrap(),
        "10.77.0.2:4433".parse().unwrap(),
        None,
        &payload,
    );
    let mut frame = [&header[..n], &payload[..]].concat();
    frame[40] ^= 0xff; // the UDP checksum
    let link = net
        .client
        .run(|| RawLink::open(TestNet::CLIENT_IF))
        .unwrap();
    for _ in 0..10 {
        link.send(&frame).unwrap();
    }
    sent_tx.send(()).unwrap();
    let (taken, after, delivered, counters) = server.join().unwrap();
    assert_eq!(delivered, 0, "{counters}");
    assert_eq!(counters.rx_bad_checksum, 10, "{counters}");
    assert_eq!(taken, 10, "the junk was taken: {counters}");
    assert_eq!(after, 0, "and then the ring is empty");
}

/// A client that offers another QUIC version gets Version Negotiation
/// from the XDP program over the real path (XDP_TX back out of the
/// server's veth) on a plain UDP socket, IPv4 and IPv6; the endpoint's
/// socket never sees the datagram.
#[test]
fn other_versions_get_version_negotiation_over_the_wire() {
    let Some(net) = testnet(TestNetConfig::default()) else {
        return;
    };
    // veth delivers what a program sends back (XDP_TX) only to a peer
    // that runs XDP itself (a NIC puts it on the wire): the client's veth
    // gets a program with no listener, which passes everything.
    let _client_program = net.client.run(|| {
        let mut prog =
            SteeringProgram::load(1, None, EthernetAddress([2, 0x77, 0, 0, 0, 1]), None, false)
                .unwrap();
        prog.attach(TestNet::CLIENT_IF, AttachPreference::NativeOnly)
            .unwrap();
        prog
    });
    // As quic-xdp's endpoint configures it (a v1-only server), in native
    // mode, where XDP_TX hands the peer a frame, not an skb.
    let mut config = xdp_config("[::]:4433");
    config.answer_version_negotiation = true;
    config.attach = AttachPreference::NativeOnly;
    let server = EchoServer::start(&net, config).unwrap();
    let (dcid, scid) = ([1u8, 2, 3, 4, 5, 6, 7, 8], [9u8, 10, 11, 12, 13]);
    let mut offer = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, dcid.len() as u8];
    offer.extend_from_slice(&dcid);
    offer.push(scid.len() as u8);
    offer.extend_from_slice(&scid);
    offer.resize(1200, 0);
    let mut expected = vec![0, 0, 0, 0, scid.len() as u8];
    expected.extend_from_slice(&scid);
    expected.push(dcid.len() as u8);
    expected.extend_from_slice(&dcid);
    expected.extend_from_slice(&1u32.to_be_bytes());
    let mut replies = Vec::new();
    for v6 in [false, true] {
        let target = net.server_addr(v6, PORT);
        let reply = net.client.run(|| {
            let sock = UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" }).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 2048];
            // A few tries: the first may wait on neighbour resolution.
            for _ in 0..6 {
                sock.send_to(&offer, target).unwrap();
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    assert_eq!(from, target, "from the server's address and port");
                    return Some(buf[..n].to_vec());
                }
            }
            None
        });
        replies.push((target, reply));
    }
    let report = server.stop();
    let steering = report.steering.unwrap();
    for (target, reply) in replies {
        let reply =
            reply.unwrap_or_else(|| panic!("no Version Negotiation to {target}: {steering}"));
        assert_eq!(reply[0] & 0xc0, 0xc0, "long header, fixed bit");
        assert_eq!(
            &reply[1..],
            &expected[..],
            "Version Negotiation to {target}"
        );
    }
    assert_eq!(report.xsk().rx_packets, 0, "the endpoint saw none of it");
    let answered = steering.get(datapath::program::SteerReason::TxVersionNegotiation);
    assert!((2..=12).contains(&answered), "{steering}");
    assert_eq!(steering.get(datapath::program::SteerReason::Aborted), 0);
}
