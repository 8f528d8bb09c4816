//! Any bytes into the frame decoder: no panic, no out-of-bounds; whatever
//! decodes re-encodes (headers from the decoded fields, same payload) into
//! a frame that decodes to the same datagram, with IPv4 and UDP checksums
//! that verify by the project's own RFC 1071 code. (The decoder checks UDP
//! checksums with that code too, but the IPv4 header's with smoltcp's,
//! which always succeeds under cfg(fuzzing): the re-encoded frame is what
//! is checked here.)
#![no_main]

use datapath::wire::{
    ChecksumPolicy, FrameRoute, MAX_HEADER_LEN, VLAN_HEADER_LEN, checksum, emit_udp_headers,
    parse_udp_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    for policy in [ChecksumPolicy::Verify, ChecksumPolicy::Trust] {
        let Ok(d) = parse_udp_frame(frame, policy) else {
            continue;
        };
        let start = d.payload.as_ptr() as usize - frame.as_ptr() as usize;
        assert!(start + d.payload.len() <= frame.len(), "payload outside the frame");
        let route = FrameRoute { src_mac: d.src_mac, dst_mac: d.dst_mac, vlan: d.vlan };
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = emit_udp_headers(&mut header, &route, d.src, d.dst, d.ecn, d.payload);
        let mut again = header[..n].to_vec();
        again.extend_from_slice(d.payload);
        let e = parse_udp_frame(&again, ChecksumPolicy::Verify).expect("a re-encoded frame decodes");
        assert_eq!((e.src, e.dst, e.ecn, e.vlan, e.payload), (d.src, d.dst, d.ecn, d.vlan, d.payload));
        assert_eq!((e.src_mac, e.dst_mac), (d.src_mac, d.dst_mac));
        assert_checksums_verify(&again, n, d.vlan.is_some(), d.src, d.dst);
    }
});

/// The IPv4 header (if any) and the UDP datagram of a frame whose headers
/// are its first `header_len` bytes each sum to 0xffff, as RFC 1071 has a
/// receiver check them.
fn assert_checksums_verify(
    frame: &[u8],
    header_len: usize,
    vlan: bool,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) {
    let l3 = 14 + if vlan { VLAN_HEADER_LEN } else { 0 };
    let l4 = header_len - 8;
    if src.is_ipv4() {
        assert_eq!(checksum::sum(&frame[l3..l4]), 0xffff, "IPv4 header checksum");
    }
    let udp = &frame[l4..];
    let total = checksum::combine(&[
        checksum::pseudo_header_udp(src.ip(), dst.ip(), udp.len() as u32),
        checksum::sum(udp),
    ]);
    assert_eq!(total, 0xffff, "UDP checksum");
}
