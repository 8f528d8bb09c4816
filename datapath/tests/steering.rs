//! The XDP program's verdict on crafted frames, run in the kernel with
//! BPF_PROG_TEST_RUN. Each case asserts the return code and that exactly
//! the expected reason counter moved.

use std::net::{IpAddr, SocketAddr};

use datapath::{
    program::{InitialRate, SteerReason, SteeringProgram, XdpAction},
    wire::{
        ChecksumPolicy, FrameRoute, MAX_HEADER_LEN, UdpChecksum, emit_udp_headers, parse_udp_frame,
    },
};
use smoltcp::wire::{EthernetAddress, Ipv4Packet};

const PORT: u16 = 4433;
/// A payload that can be QUIC (a short header of at least 21 bytes).
const QUIC: &[u8] = &[0x40; 40];

/// The interface's MAC and addresses in these tests.
const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const OUR_ADDRESSES: [&str; 2] = ["10.1.0.2", "fd01::2"];

fn local() -> Vec<IpAddr> {
    OUR_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect()
}

fn load(max_queues: u32, max_frame_len: Option<u32>) -> SteeringProgram {
    // As quic-xdp's endpoint loads it: a server speaking only QUIC v1.
    let mut prog = SteeringProgram::load(max_queues, max_frame_len, OUR_MAC, None, true).unwrap();
    prog.set_local_addresses(&local()).unwrap();
    prog
}

fn udp_frame(src: &str, dst: &str, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let route = FrameRoute {
        src_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        dst_mac: OUR_MAC,
        vlan,
    };
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = emit_udp_headers(&mut hdr, &route, src, dst, None, payload);
    let mut f = hdr[..n].to_vec();
    f.extend_from_slice(payload);
    f
}

fn v4(dst_port: u16) -> Vec<u8> {
    udp_frame(
        "10.1.0.1:50000",
        &format!("10.1.0.2:{dst_port}"),
        None,
        QUIC,
    )
}

fn edit_ipv4(mut f: Vec<u8>, edit: impl Fn(&mut Ipv4Packet<&mut [u8]>)) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    edit(&mut ip);
    ip.fill_checksum();
    f
}

fn assert_verdict(
    prog: &SteeringProgram,
    name: &str,
    frame: &[u8],
    action: XdpAction,
    reason: SteerReason,
) {
    let before = prog.stats().unwrap();
    let got = prog.test_run(frame).unwrap();
    let delta = prog.stats().unwrap().since(&before);
    assert_eq!(got, action, "{name}: verdict");
    for r in SteerReason::ALL {
        let want = u64::from(r == reason);
        assert_eq!(
            delta.get(r),
            want,
            "{name}: counter {} (all: {delta})",
            r.name()
        );
    }
}

fn any_address_program() -> SteeringProgram {
    let mut prog = load(4, None);
    prog.add_listener(format!("[::]:{PORT}").parse().unwrap())
        .unwrap();
    prog
}

#[test]
fn quic_datagrams_match_and_fall_back_to_pass_without_a_socket() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = any_address_program();
    use SteerReason::*;
    use XdpAction::Pass;
    // With no socket in the map the redirect falls back to XDP_PASS.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ipv4", v4(PORT)),
        (
            "ipv6",
            udp_frame("[fd01::1]:50000", &format!("[fd01::2]:{PORT}"), None, QUIC),
        ),
    ];
    for (name, frame) in cases {
        assert_verdict(&prog, name, &frame, Pass, PassNoSocket);
    }
}

/// Only what is ours is steered: our MAC, our addresses, plausible
/// sources, no VLAN tag, no IP options. The rest is the kernel's.
#[test]
fn frames_not_ours_go_to_the_kernel_with_their_reason() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = any_address_program();
    use SteerReason::*;
    use XdpAction::Pass;
    let with_macs = |dst: [u8; 6], src: [u8; 6]| {
        let mut f = v4(PORT);
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    };
    let host = [2, 0, 0, 0, 0, 1];
    let cases: Vec<(&str, Vec<u8>, SteerReason)> = vec![
        (
            "another host's MAC",
            with_macs([2, 0, 0, 0, 0, 3], host),
            PassNotOurs,
        ),
        ("broadcast MAC", with_macs([0xff; 6], host), PassNotOurs),
        (
            "multicast MAC",
            with_macs([1, 0, 0x5e, 0, 0, 1], host),
            PassNotOurs,
        ),
        (
            "group source MAC",
            with_macs(OUR_MAC.0, [3, 0, 0, 0, 0, 1]),
            PassMartian,
        ),
        (
            "a neighbour's address",
            udp_frame("10.1.0.1:1", &format!("10.1.0.3:{PORT}"), None, QUIC),
            PassNoMatch,
        ),
        (
            "a neighbour's v6 address",
            udp_frame("[fd01::1]:1", &format!("[fd01::3]:{PORT}"), None, QUIC),
            PassNoMatch,
        ),
        (
            "vlan ipv4",
            udp_frame("10.1.0.1:1", &format!("10.1.0.2:{PORT}"), Some(7), QUIC),
            PassVlan,
        ),
        (
            "vlan ipv6",
            udp_frame("[fd01::1]:1", &format!("[fd01::2]:{PORT}"), Some(7), QUIC),
            PassVlan,
        ),
        (
            "ipv4 options (loose source route)",
            {
                let f = v4(PORT);
                let mut g = f[..34].to_vec();
                g.extend_from_slice(&[0x83, 3, 4, 0]);
                g.extend_from_slice(&f[34..]);
                edit_ipv4(g, |ip| {
                    ip.set_header_len(24);
                    ip.set_total_len(ip.total_len() + 4);
                })
            },
            PassIpOptions,
        ),
    ];
    for (name, frame, reason) in cases {
        assert_verdict(&prog, name, &frame, Pass, reason);
    }
    for src in [
        "0.0.0.1",
        "127.0.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "10.1.0.2",
    ] {
        let f = udp_frame(&format!("{src}:1"), &format!("10.1.0.2:{PORT}"), None, QUIC);
        assert_verdict(&prog, &format!("source {src}"), &f, Pass, PassMartian);
    }
    for src in ["::", "::1", "ff02::1", "::ffff:10.1.0.1"] {
        let f = udp_frame(
            &format!("[{src}]:1"),
            &format!("[fd01::2]:{PORT}"),
            None,
            QUIC,
        );
        assert_verdict(&prog, &format!("source {src}"), &f, Pass, PassMartian);
    }
    // Link-local and ordinary sources are fine.
    let ll = udp_frame("[fe80::1]:1", &format!("[fd01::2]:{PORT}"), None, QUIC);
    assert_verdict(&prog, "link-local source", &ll, Pass, PassNoSocket);
}

/// A wildcard listener follows the interface's addresses.
#[test]
fn wildcard_listeners_follow_address_changes() {
    if !datapath::testbed::privileged() {
        return;
    }
    let mut prog = any_address_program();
    use SteerReason::*;
    use XdpAction::Pass;
    let to = |dst: &str| udp_frame("10.1.0.1:1", &format!("{dst}:{PORT}"), None, QUIC);
    assert_verdict(
        &prog,
        "10.1.0.2 before",
        &to("10.1.0.2"),
        Pass,
        PassNoSocket,
    );
    assert_verdict(&prog, "10.1.0.9 before", &to("10.1.0.9"), Pass, PassNoMatch);
    prog.set_local_addresses(&["10.1.0.9".parse().unwrap()])
        .unwrap();
    assert_verdict(&prog, "10.1.0.2 after", &to("10.1.0.2"), Pass, PassNoMatch);
    assert_verdict(&prog, "10.1.0.9 after", &to("10.1.0.9"), Pass, PassNoSocket);
    prog.set_local_addresses(&[]).unwrap();
    assert_verdict(&prog, "no address", &to("10.1.0.9"), Pass, PassNoMatch);
}

#[test]
fn everything_else_passes_to_the_kernel_with_its_reason() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = any_address_program();
    use SteerReason::*;
    use XdpAction::Pass;

    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_verdict(&prog, "arp", &arp, Pass, PassNotIp);

    let mut lldp = arp.clone();
    lldp[12..14].copy_from_slice(&0x88ccu16.to_be_bytes());
    assert_verdict(&prog, "lldp", &lldp, Pass, PassNotIp);

    use smoltcp::wire::IpProtocol;
    let tcp = edit_ipv4(v4(PORT), |ip| ip.set_next_header(IpProtocol::Tcp));
    assert_verdict(&prog, "tcp to the quic port", &tcp, Pass, PassNotUdp);
    let icmp = edit_ipv4(v4(PORT), |ip| ip.set_next_header(IpProtocol::Icmp));
    assert_verdict(&prog, "icmp", &icmp, Pass, PassNotUdp);

    let mut hop_by_hop = udp_frame("[fd01::1]:1", &format!("[fd01::2]:{PORT}"), None, QUIC);
    hop_by_hop[14 + 6] = 0;
    assert_verdict(
        &prog,
        "ipv6 extension header",
        &hop_by_hop,
        Pass,
        PassNotUdp,
    );
    let mut v6_fragment = hop_by_hop.clone();
    v6_fragment[14 + 6] = 44;
    assert_verdict(
        &prog,
        "ipv6 fragment header",
        &v6_fragment,
        Pass,
        PassNotUdp,
    );

    assert_verdict(&prog, "other udp port", &v4(53), Pass, PassNoMatch);
    let v6_other = udp_frame("[fd01::1]:1", "[fd01::2]:443", None, QUIC);
    assert_verdict(&prog, "other udp port v6", &v6_other, Pass, PassNoMatch);

    let first_fragment = edit_ipv4(v4(PORT), |ip| ip.set_more_frags(true));
    assert_verdict(&prog, "first fragment", &first_fragment, Pass, PassFragment);
    let later_fragment = edit_ipv4(v4(PORT), |ip| ip.set_frag_offset(64));
    assert_verdict(&prog, "later fragment", &later_fragment, Pass, PassFragment);
}

#[test]
fn truncated_and_malformed_frames_pass_untouched() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = any_address_program();
    use SteerReason::PassMalformed;
    use XdpAction::Pass;
    let good = v4(PORT);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("vlan tag cut short", {
            let mut f = good[..14].to_vec();
            f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
            f
        }),
        ("ipv4 header cut short", good[..14 + 19].to_vec()),
        ("udp header cut short", good[..14 + 20 + 7].to_vec()),
        (
            "ip total length beyond frame",
            good[..good.len() - 1].to_vec(),
        ),
        (
            "ihl below 5",
            edit_ipv4(good.clone(), |ip| ip.set_header_len(16)),
        ),
        (
            "ihl beyond total length",
            edit_ipv4(good.clone(), |ip| ip.set_total_len(18)),
        ),
        (
            "ip version 5",
            edit_ipv4(good.clone(), |ip| ip.set_version(5)),
        ),
        ("udp length below 8", {
            let mut f = good.clone();
            f[38..40].copy_from_slice(&7u16.to_be_bytes());
            f
        }),
        ("udp length beyond ip payload", {
            let mut f = good.clone();
            f[38..40].copy_from_slice(&100u16.to_be_bytes());
            f
        }),
        ("ipv6 payload length beyond frame", {
            let mut f = udp_frame("[fd01::1]:1", &format!("[fd01::2]:{PORT}"), None, QUIC);
            f[18..20].copy_from_slice(&200u16.to_be_bytes());
            f
        }),
        (
            "ipv6 header cut short",
            udp_frame("[fd01::1]:1", "[fd01::2]:1", None, b"")[..14 + 39].to_vec(),
        ),
    ];
    for (name, frame) in cases {
        assert_verdict(&prog, name, &frame, Pass, PassMalformed);
    }
}

#[test]
fn an_address_listener_only_matches_its_address_and_family() {
    if !datapath::testbed::privileged() {
        return;
    }
    let mut prog = load(1, None);
    prog.add_listener(format!("10.1.0.2:{PORT}").parse().unwrap())
        .unwrap();
    use SteerReason::*;
    use XdpAction::Pass;
    assert_verdict(&prog, "listener address", &v4(PORT), Pass, PassNoSocket);
    let other = udp_frame("10.1.0.1:1", &format!("10.1.0.3:{PORT}"), None, QUIC);
    assert_verdict(&prog, "other address", &other, Pass, PassNoMatch);
    let v6 = udp_frame("[fd01::1]:1", &format!("[fd01::2]:{PORT}"), None, QUIC);
    assert_verdict(&prog, "ipv6 to an ipv4 listener", &v6, Pass, PassNoMatch);

    // An IPv4-only wildcard leaves IPv6 to the kernel.
    let mut prog = load(1, None);
    prog.add_listener(format!("0.0.0.0:{PORT}").parse().unwrap())
        .unwrap();
    assert_verdict(&prog, "v4 wildcard", &v4(PORT), Pass, PassNoSocket);
    assert_verdict(&prog, "v6 under a v4 wildcard", &v6, Pass, PassNoMatch);
}

#[test]
fn a_program_with_no_listener_matches_nothing() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = load(1, None);
    assert_verdict(
        &prog,
        "no listener",
        &v4(PORT),
        XdpAction::Pass,
        SteerReason::PassNoMatch,
    );
}

#[test]
fn matching_frames_larger_than_a_umem_frame_go_to_the_kernel() {
    if !datapath::testbed::privileged() {
        return;
    }
    let mut prog = load(1, Some(1000));
    prog.add_listener(format!("[::]:{PORT}").parse().unwrap())
        .unwrap();
    let fits = udp_frame("10.1.0.1:1", &format!("10.1.0.2:{PORT}"), None, &[0; 958]);
    assert_eq!(fits.len(), 1000);
    assert_verdict(
        &prog,
        "fits",
        &fits,
        XdpAction::Pass,
        SteerReason::PassNoSocket,
    );
    let gso_sized = udp_frame("10.1.0.1:1", &format!("10.1.0.2:{PORT}"), None, &[0; 959]);
    assert_verdict(
        &prog,
        "one byte over",
        &gso_sized,
        XdpAction::Pass,
        SteerReason::PassTooBig,
    );
    let other_port = udp_frame("10.1.0.1:1", "10.1.0.2:53", None, &[0; 2000]);
    assert_verdict(
        &prog,
        "big, not ours",
        &other_port,
        XdpAction::Pass,
        SteerReason::PassNoMatch,
    );
}

/// The front line: datagrams that cannot be served are dropped in the
/// program (XDP_DROP), each counted: shorter than any QUIC packet to us,
/// client Initials under 1200 bytes, and Initials over a source's rate.
#[test]
fn datagrams_that_cannot_be_served_are_dropped_in_the_program() {
    if !datapath::testbed::privileged() {
        return;
    }
    use SteerReason::*;
    use XdpAction::{Drop, Pass};
    let prog = any_address_program();
    let to_us =
        |payload: &[u8]| udp_frame("10.1.0.1:1", &format!("10.1.0.2:{PORT}"), None, payload);
    assert_verdict(&prog, "empty", &to_us(b""), Drop, DropNotQuic);
    assert_verdict(&prog, "20 bytes", &to_us(&[0x40; 20]), Drop, DropNotQuic);
    assert_verdict(&prog, "21 bytes", &to_us(&[0x40; 21]), Pass, PassNoSocket);
    let mut padded = to_us(b"");
    padded.resize(60, 0); // Ethernet padding is not payload
    assert_verdict(&prog, "ethernet padding", &padded, Drop, DropNotQuic);

    // Long header, version 1, type Initial.
    let initial = |len: usize| {
        let mut p = vec![0u8; len];
        p[..5].copy_from_slice(&[0xc3, 0, 0, 0, 1]);
        p
    };
    assert_verdict(
        &prog,
        "1199-byte Initial",
        &to_us(&initial(1199)),
        Drop,
        DropShortInitial,
    );
    assert_verdict(
        &prog,
        "1200-byte Initial",
        &to_us(&initial(1200)),
        Pass,
        PassNoSocket,
    );
    // Other long-header types may be short (Handshake, 0-RTT). Another
    // version's first packet may not (RFC 9000 14.1; Version Negotiation
    // answers only datagrams that could start a connection).
    let mut handshake = initial(100);
    handshake[0] = 0xe3;
    assert_verdict(
        &prog,
        "short Handshake",
        &to_us(&handshake),
        Pass,
        PassNoSocket,
    );
    let mut v2 = initial(100);
    v2[4] = 2;
    assert_verdict(
        &prog,
        "short other version",
        &to_us(&v2),
        Drop,
        DropShortInitial,
    );

    // Rate limit: 10 Initials/s per source, bursts of 4 beyond that (the
    // smallest burst allowed).
    let mut limited = SteeringProgram::load(
        1,
        None,
        OUR_MAC,
        Some(InitialRate {
            per_second: 10,
            burst: 1, // raised to MIN_INITIAL_BURST
        }),
        true,
    )
    .unwrap();
    limited.set_local_addresses(&local()).unwrap();
    limited
        .add_listener(format!("[::]:{PORT}").parse().unwrap())
        .unwrap();
    let from = |src: &str| {
        udp_frame(
            &format!("{src}:1"),
            &format!("10.1.0.2:{PORT}"),
            None,
            &initial(1200),
        )
    };
    // The first, then a burst of MIN_INITIAL_BURST more.
    for i in 0..=datapath::program::MIN_INITIAL_BURST {
        assert_verdict(
            &limited,
            &format!("initial {i}"),
            &from("10.1.0.1"),
            Pass,
            PassNoSocket,
        );
    }
    assert_verdict(
        &limited,
        "over the rate",
        &from("10.1.0.1"),
        Drop,
        DropInitialRate,
    );
    assert_verdict(
        &limited,
        "another source",
        &from("10.1.0.7"),
        Pass,
        PassNoSocket,
    );
    // Not Initials: never limited.
    assert_verdict(&limited, "short header", &to_us(QUIC), Pass, PassNoSocket);
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_verdict(
        &limited,
        "after a refill",
        &from("10.1.0.1"),
        Pass,
        PassNoSocket,
    );
}

/// The admin's source policy in the program: the longest prefix decides,
/// an allow list refuses the rest, frames not to the port are untouched,
/// and a new policy replaces the old one.
#[test]
fn the_source_policy_drops_refused_sources() {
    if !datapath::testbed::privileged() {
        return;
    }
    use SteerReason::*;
    use XdpAction::{Drop, Pass};
    let mut prog = any_address_program();
    let prefixes = |l: &[&str]| l.iter().map(|p| p.parse().unwrap()).collect();
    let policy = datapath::SourcePolicy::new(
        prefixes(&["10.1.0.0/16", "fd01::/16"]),
        prefixes(&["10.1.9.0/24", "fd01:0:9::/48"]),
    )
    .unwrap();
    prog.set_source_policy(&policy).unwrap();
    let from = |src: &str, port: u16| {
        let to = if src.contains(':') {
            format!("[fd01::2]:{port}")
        } else {
            format!("10.1.0.2:{port}")
        };
        let src = if src.contains(':') {
            format!("[{src}]:1")
        } else {
            format!("{src}:1")
        };
        udp_frame(&src, &to, None, QUIC)
    };
    let cases = [
        ("allowed v4", from("10.1.0.1", PORT), Pass, PassNoSocket),
        ("denied v4", from("10.1.9.1", PORT), Drop, DropDenied),
        ("unlisted v4", from("192.0.2.1", PORT), Drop, DropNotAllowed),
        ("allowed v6", from("fd01::1", PORT), Pass, PassNoSocket),
        ("denied v6", from("fd01:0:9::1", PORT), Drop, DropDenied),
        ("unlisted v6", from("fd02::1", PORT), Drop, DropNotAllowed),
        ("other port", from("192.0.2.1", PORT + 1), Pass, PassNoMatch),
    ];
    for (name, frame, action, reason) in &cases {
        assert_verdict(&prog, name, frame, *action, *reason);
    }
    // Deny only: everything else admitted.
    let deny_only = datapath::SourcePolicy::new(Vec::new(), prefixes(&["192.0.2.0/24"])).unwrap();
    prog.set_source_policy(&deny_only).unwrap();
    assert_verdict(
        &prog,
        "now denied",
        &from("192.0.2.1", PORT),
        Drop,
        DropDenied,
    );
    assert_verdict(
        &prog,
        "no longer listed",
        &from("10.1.9.1", PORT),
        Pass,
        PassNoSocket,
    );
    assert_verdict(
        &prog,
        "v6 admitted",
        &from("fd02::1", PORT),
        Pass,
        PassNoSocket,
    );
    // No policy: nothing dropped for its source.
    prog.set_source_policy(&datapath::SourcePolicy::default())
        .unwrap();
    assert_verdict(
        &prog,
        "no policy",
        &from("192.0.2.1", PORT),
        Pass,
        PassNoSocket,
    );
}

/// A QUIC payload of `len` bytes: a long header of `version` with these
/// connection IDs (type bits of an Initial), padded with zeros.
fn long_header(version: u32, dcid: &[u8], scid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0xc0];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.resize(len, 0);
    p
}

/// A client that offers another QUIC version is answered by the program
/// itself (XDP_TX): Version Negotiation from our address, port and MAC to
/// the client's, its connection IDs echoed (destination and source
/// swapped), version 1 offered, checksums valid. Only that counter moves.
#[test]
fn other_versions_get_version_negotiation_from_the_program() {
    if !datapath::testbed::privileged() {
        return;
    }
    let prog = any_address_program();
    let client_mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let cids: [(&[u8], &[u8]); 4] = [
        (&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 10, 11, 12, 13]),
        (&[], &[]),
        (&[0xaa; 20], &[0xbb; 20]),
        (&[7; 20], &[]),
    ];
    let peers = [
        ("10.1.0.1:50000", format!("10.1.0.2:{PORT}")),
        ("[fd01::1]:50000", format!("[fd01::2]:{PORT}")),
    ];
    for (client, server) in &peers {
        for (dcid, scid) in cids {
            let name = format!("{client}, CIDs of {} and {}", dcid.len(), scid.len());
            let payload = long_header(0x1a2a_3a4a, dcid, scid, 1200);
            let frame = udp_frame(client, server, None, &payload);
            let before = prog.stats().unwrap();
            let (action, out) = prog.test_run_output(&frame).unwrap();
            let delta = prog.stats().unwrap().since(&before);
            assert_eq!(action, XdpAction::Tx, "{name}");
            for r in SteerReason::ALL {
                let want = u64::from(r == SteerReason::TxVersionNegotiation);
                assert_eq!(delta.get(r), want, "{name}: {}", r.name());
            }
            let d = parse_udp_frame(&out, ChecksumPolicy::Verify).expect("a valid frame");
            assert_eq!(d.checksum, UdpChecksum::Valid, "{name}");
            assert_eq!((d.src_mac, d.dst_mac), (OUR_MAC, client_mac), "{name}");
            assert_eq!(d.src, server.parse().unwrap(), "{name}");
            assert_eq!(d.dst, client.parse().unwrap(), "{name}");
            let mut vn = vec![0x80];
            vn.extend_from_slice(&[0; 4]);
            vn.push(scid.len() as u8);
            vn.extend_from_slice(scid);
            vn.push(dcid.len() as u8);
            vn.extend_from_slice(dcid);
            vn.extend_from_slice(&1u32.to_be_bytes());
            assert_eq!(d.payload[0] & 0xc0, 0xc0, "{name}: long header, fixed bit");
            assert_eq!(&d.payload[1..], &vn[1..], "{name}: Version Negotiation");
            // The frame ends with the packet: the rest was cut.
            assert_eq!(out.len(), frame.len() - payload.len() + vn.len(), "{name}");
        }
    }

    // Not answered: a datagram too short to start a connection, a
    // Version Negotiation packet (version 0) and v1 (the endpoint's), and
    // connection IDs longer than v1 allows (the endpoint decides).
    use SteerReason::*;
    use XdpAction::{Drop, Pass};
    let v4 = |payload: Vec<u8>| {
        udp_frame(
            "10.1.0.1:50000",
            &format!("10.1.0.2:{PORT}"),
            None,
            &payload,
        )
    };
    let cases = [
        (
            "short",
            v4(long_header(0x1a2a_3a4a, &[1; 8], &[2; 8], 1199)),
            Drop,
            DropShortInitial,
        ),
        (
            "version 0",
            v4(long_header(0, &[1; 8], &[2; 8], 1200)),
            Pass,
            PassNoSocket,
        ),
        (
            "v1",
            v4(long_header(1, &[1; 8], &[2; 8], 1200)),
            Pass,
            PassNoSocket,
        ),
        (
            "long DCID",
            v4(long_header(0x1a2a_3a4a, &[1; 21], &[2; 8], 1200)),
            Pass,
            PassNoSocket,
        ),
        (
            "long SCID",
            v4(long_header(0x1a2a_3a4a, &[1; 8], &[2; 21], 1200)),
            Pass,
            PassNoSocket,
        ),
    ];
    for (name, frame, action, reason) in cases {
        assert_verdict(&prog, name, &frame, action, reason);
    }

    // A source port of 0 is never answered.
    let port_zero = udp_frame(
        "10.1.0.1:0",
        &format!("10.1.0.2:{PORT}"),
        None,
        &long_header(0x1a2a_3a4a, &[1; 8], &[2; 8], 1200),
    );
    assert_verdict(&prog, "port 0", &port_zero, Pass, PassNoSocket);

    // Loaded for an endpoint that may speak other versions (quinn on the
    // AF_XDP socket, a client), the program leaves every version to it.
    let mut any_version = SteeringProgram::load(4, None, OUR_MAC, None, false).unwrap();
    any_version.set_local_addresses(&local()).unwrap();
    any_version
        .add_listener(format!("[::]:{PORT}").parse().unwrap())
        .unwrap();
    for (name, len) in [("other version", 1200), ("short other version", 100)] {
        let frame = v4(long_header(0x1a2a_3a4a, &[1; 8], &[2; 8], len));
        assert_verdict(&any_version, name, &frame, Pass, PassNoSocket);
    }
}

#[test]
fn short_header_and_handshake_packets_must_name_one_of_our_cids() {
    use SteerReason::*;
    use XdpAction::*;
    use datapath::cid_check::{CHECKED_CID_LEN, CidCheck};
    if !datapath::testbed::privileged() {
        return;
    }

    let mut prog = load(1, None);
    prog.add_listener(format!("[::]:{PORT}").parse().unwrap())
        .unwrap();
    let to_us = |payload: &[u8], v6: bool| match v6 {
        false => udp_frame("10.1.0.1:50000", "10.1.0.2:4433", None, payload),
        true => udp_frame("[fd01::1]:50000", "[fd01::2]:4433", None, payload),
    };
    let short = |cid: &[u8]| {
        let mut p = vec![0x41];
        p.extend_from_slice(cid);
        p.resize(60, 0xaa);
        p
    };
    // A v1 long header of the given type bits (0xe0: Handshake).
    let typed = |first: u8, cid: &[u8]| {
        let mut p = long_header(1, cid, &[1, 2, 3, 4], 200);
        p[0] = first;
        p
    };
    let handshake_of = |cid: &[u8]| typed(0xe1, cid);

    // Without a check (quinn on the socket, QUIC-LB) nothing is judged.
    let junk = [0x5a; CHECKED_CID_LEN];
    assert_verdict(
        &prog,
        "no check",
        &to_us(&short(&junk), false),
        Pass,
        PassNoSocket,
    );

    let check = CidCheck::new(*b"0123456789abcdef", 3);
    prog.set_cid_check(Some(&check)).unwrap();
    // Every CID the server issues passes, for every engine and family;
    // computed in Rust, checked by the program, so the two must agree.
    for i in 0..300u32 {
        let mut cid = [0u8; CHECKED_CID_LEN];
        cid[2..6].copy_from_slice(&i.wrapping_mul(0x9e37_79b9).to_le_bytes());
        cid[6] = i as u8;
        check.seal(i as usize % 3, &mut cid);
        let v6 = i % 2 == 1;
        for (kind, payload) in [("short", short(&cid)), ("handshake", handshake_of(&cid))] {
            let name = format!("{kind} header, our CID {cid:02x?}");
            assert_verdict(&prog, &name, &to_us(&payload, v6), Pass, PassNoSocket);
        }
        // One flipped bit anywhere in the CID, and it is not ours.
        let mut forged = cid;
        forged[i as usize % CHECKED_CID_LEN] ^= 1 << (i % 8);
        if check.owner(&forged).is_none() {
            for (kind, payload) in [
                ("short", short(&forged)),
                ("handshake", handshake_of(&forged)),
            ] {
                let name = format!("{kind} header, forged CID {forged:02x?}");
                assert_verdict(&prog, &name, &to_us(&payload, v6), Drop, DropUnknownCid);
            }
        }
    }
    // Random CIDs: about one in 256 * 256 / 3 passes.
    let mut passed = 0;
    for i in 0..2000u64 {
        let cid = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x1234_5678).to_le_bytes();
        let before = prog.stats().unwrap();
        let verdict = prog.test_run(&to_us(&short(&cid), false)).unwrap();
        let delta = prog.stats().unwrap().since(&before);
        assert_eq!(verdict == Pass, check.owner(&cid).is_some(), "{cid:02x?}");
        assert_eq!(delta.get(DropUnknownCid), u64::from(verdict == Drop));
        passed += usize::from(verdict == Pass);
    }
    assert!(passed < 5, "{passed} of 2000 random CIDs passed");
    // A Handshake must carry a CID of our length.
    let mut cid = [0u8; CHECKED_CID_LEN];
    check.seal(0, &mut cid);
    let mut long_cid = cid.to_vec();
    long_cid.push(0);
    assert_verdict(
        &prog,
        "handshake, 9-byte CID",
        &to_us(&handshake_of(&long_cid), false),
        Drop,
        DropUnknownCid,
    );
    // Initials and 0-RTT carry the client's CID: not judged.
    let zero_rtt = typed(0xd1, &junk);
    assert_verdict(&prog, "0-RTT", &to_us(&zero_rtt, false), Pass, PassNoSocket);
    let mut initial = long_header(1, &junk, &[], 1200);
    initial[0] = 0xc1;
    assert_verdict(
        &prog,
        "Initial",
        &to_us(&initial, false),
        Pass,
        PassNoSocket,
    );

    // Turned off again, junk passes.
    prog.set_cid_check(None).unwrap();
    assert_verdict(
        &prog,
        "check off",
        &to_us(&short(&junk), false),
        Pass,
        PassNoSocket,
    );
}
