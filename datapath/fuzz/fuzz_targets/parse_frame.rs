//! Any bytes into the frame decoder: no panic, no out-of-bounds; whatever
//! decodes re-encodes (headers from the decoded fields, same payload) into
//! a frame that decodes to the same datagram with a valid checksum.
#![no_main]

use datapath::wire::{
    ChecksumPolicy, FrameRoute, MAX_HEADER_LEN, UdpChecksum, emit_udp_headers, parse_udp_frame,
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
        assert_eq!(e.checksum, UdpChecksum::Valid);
    }
});
