//! Sequences of received frames into the engines' receive path (decode,
//! CID routing, quinn-proto endpoint and connections): no panic. Input:
//! repeated [arrival queue][u16 LE length][frame].
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_xdp::fuzzing::RxHarness;

fuzz_target!(|data: &[u8]| {
    let mut harness = RxHarness::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let arrival = usize::from(rest[0]);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let end = (3 + len).min(rest.len());
        harness.feed(&rest[3..end], arrival);
        rest = &rest[end..];
    }
});
