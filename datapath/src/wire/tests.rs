use std::net::SocketAddr;

use quinn_udp::EcnCodepoint;
use smoltcp::wire::{EthernetAddress, IpProtocol};

use super::*;

const A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

fn route(vlan: Option<u16>) -> FrameRoute {
    FrameRoute {
        src_mac: A,
        dst_mac: B,
        vlan,
    }
}

fn frame(
    route: &FrameRoute,
    src: &str,
    dst: &str,
    ecn: Option<EcnCodepoint>,
    payload: &[u8],
) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = emit_udp_headers(&mut hdr, route, src, dst, ecn, payload);
    assert_eq!(n, header_len(route, &dst));
    let mut f = hdr[..n].to_vec();
    f.extend_from_slice(payload);
    f
}

fn udp_offset(f: &[u8]) -> usize {
    let vlan = if f[12..14] == [0x81, 0x00] { 4 } else { 0 };
    let l3 = 14 + vlan;
    if f[l3] >> 4 == 4 {
        l3 + usize::from(f[l3] & 0xf) * 4
    } else {
        l3 + 40
    }
}

#[test]
fn round_trip_every_family_tag_and_ecn() {
    let cases = [
        ("10.0.0.1:4433", "10.0.0.2:50000"),
        ("[fd00::1]:4433", "[fd00::2]:50000"),
    ];
    for (src, dst) in cases {
        for vlan in [None, Some(0x2064)] {
            for ecn in [
                None,
                Some(EcnCodepoint::Ect0),
                Some(EcnCodepoint::Ect1),
                Some(EcnCodepoint::Ce),
            ] {
                for len in [0usize, 1, 1200, 1452] {
                    let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                    let r = route(vlan);
                    let f = frame(&r, src, dst, ecn, &payload);
                    let d = parse_udp_frame(&f, ChecksumPolicy::Verify).unwrap();
                    assert_eq!(d.src, src.parse().unwrap());
                    assert_eq!(d.dst, dst.parse().unwrap());
                    assert_eq!((d.src_mac, d.dst_mac, d.vlan), (A, B, vlan));
                    assert_eq!(d.ecn, ecn);
                    assert_eq!(d.payload, &payload[..]);
                    assert_eq!(d.checksum, UdpChecksum::Valid);
                }
            }
        }
    }
}

#[test]
fn ipv4_has_df_and_valid_header_checksum() {
    let f = frame(&route(None), "10.0.0.1:1", "10.0.0.2:2", None, b"x");
    let ip = smoltcp::wire::Ipv4Packet::new_checked(&f[14..]).unwrap();
    assert!(ip.dont_frag());
    assert!(ip.verify_checksum());
    assert_eq!(ip.hop_limit(), 64);
}

#[test]
fn partial_checksum_from_a_local_peer_is_accepted() {
    for (src, dst) in [("10.0.0.1:1", "10.0.0.2:2"), ("[fd00::1]:1", "[fd00::2]:2")] {
        let mut f = frame(&route(None), src, dst, None, b"hello partial");
        let at = udp_offset(&f);
        let (s, d): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let udp_len = (f.len() - at) as u32;
        let pseudo = checksum::pseudo_header_udp(s.ip(), d.ip(), udp_len);
        f[at + 6..at + 8].copy_from_slice(&pseudo.to_be_bytes());
        let got = parse_udp_frame(&f, ChecksumPolicy::Verify).unwrap();
        assert_eq!(got.checksum, UdpChecksum::Partial);
        assert_eq!(got.payload, b"hello partial");
    }
}

#[test]
fn zero_udp_checksum_is_absent_on_ipv4_and_invalid_on_ipv6() {
    let mut f = frame(&route(None), "10.0.0.1:1", "10.0.0.2:2", None, b"z");
    let at = udp_offset(&f);
    f[at + 6..at + 8].fill(0);
    assert_eq!(
        parse_udp_frame(&f, ChecksumPolicy::Verify)
            .unwrap()
            .checksum,
        UdpChecksum::Absent
    );
    let mut f = frame(&route(None), "[fd00::1]:1", "[fd00::2]:2", None, b"z");
    let at = udp_offset(&f);
    f[at + 6..at + 8].fill(0);
    assert_eq!(
        parse_udp_frame(&f, ChecksumPolicy::Verify),
        Err(DecodeError::BadUdpChecksum)
    );
}

#[test]
fn corrupted_payload_fails_the_checksum_unless_trusted() {
    let mut f = frame(&route(None), "10.0.0.1:1", "10.0.0.2:2", None, b"payload");
    *f.last_mut().unwrap() ^= 0x40;
    assert_eq!(
        parse_udp_frame(&f, ChecksumPolicy::Verify),
        Err(DecodeError::BadUdpChecksum)
    );
    assert_eq!(
        parse_udp_frame(&f, ChecksumPolicy::Trust).unwrap().checksum,
        UdpChecksum::Unchecked
    );
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let f = frame(&route(None), "10.0.0.1:1", "10.0.0.2:2", None, b"opts");
    // Rebuild with 4 bytes of options (NOP NOP NOP EOL): IHL 6.
    let mut g = f[..34].to_vec();
    g.extend_from_slice(&[1, 1, 1, 0]);
    g.extend_from_slice(&f[34..]);
    g[14] = 0x46;
    let total = u16::from_be_bytes([g[16], g[17]]) + 4;
    g[16..18].copy_from_slice(&total.to_be_bytes());
    let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut g[14..]);
    ip.fill_checksum();
    let d = parse_udp_frame(&g, ChecksumPolicy::Verify).unwrap();
    assert_eq!(d.payload, b"opts");
}

#[test]
fn ethernet_padding_after_the_datagram_is_ignored() {
    let mut f = frame(&route(None), "10.0.0.1:1", "10.0.0.2:2", None, b"");
    f.resize(60, 0);
    assert_eq!(
        parse_udp_frame(&f, ChecksumPolicy::Verify).unwrap().payload,
        b""
    );
}

#[test]
fn malformed_frames_are_rejected_with_their_reason() {
    let good = frame(
        &route(None),
        "10.0.0.1:1",
        "10.0.0.2:2",
        None,
        b"0123456789",
    );
    let check = |f: &[u8], want: DecodeError| {
        assert_eq!(
            parse_udp_frame(f, ChecksumPolicy::Verify),
            Err(want),
            "{f:02x?}"
        );
    };
    check(&good[..10], DecodeError::Truncated);
    check(&good[..30], DecodeError::Truncated);
    check(&good[..good.len() - 1], DecodeError::Truncated);

    let mut arp = good.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    check(&arp, DecodeError::NotIp);

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    check(&bad_ihl, DecodeError::BadIpHeader);

    let mut bad_csum = good.clone();
    bad_csum[24] ^= 1;
    check(&bad_csum, DecodeError::BadIpChecksum);

    let with_ip = |edit: &dyn Fn(&mut smoltcp::wire::Ipv4Packet<&mut [u8]>)| {
        let mut f = good.clone();
        let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[14..]);
        edit(&mut ip);
        ip.fill_checksum();
        f
    };
    check(
        &with_ip(&|ip| ip.set_more_frags(true)),
        DecodeError::Fragment,
    );
    check(&with_ip(&|ip| ip.set_frag_offset(8)), DecodeError::Fragment);
    check(
        &with_ip(&|ip| ip.set_next_header(IpProtocol::Tcp)),
        DecodeError::NotUdp,
    );

    let at = udp_offset(&good);
    for bad_len in [7u16, 19, 0xffff] {
        let mut f = good.clone();
        f[at + 4..at + 6].copy_from_slice(&bad_len.to_be_bytes());
        check(&f, DecodeError::BadUdpLength);
    }

    let v6 = frame(
        &route(None),
        "[fd00::1]:1",
        "[fd00::2]:2",
        None,
        b"0123456789",
    );
    let mut ext = v6.clone();
    ext[14 + 6] = 0; // hop-by-hop options header
    check(&ext, DecodeError::NotUdp);
    check(&v6[..60], DecodeError::Truncated);
}
