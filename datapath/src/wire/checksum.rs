//! RFC 1071 internet checksum. smoltcp computes these internally but does
//! not export the helpers, and TX needs the payload's sum without copying
//! the payload next to its headers first.

use std::net::IpAddr;

/// One's-complement sum of `data` as big-endian 16-bit words, folded to 16
/// bits and not inverted. The sum does not depend on byte order (RFC 1071
/// 2B): words are added in native order, four bytes at a time with no
/// byte swaps (twice as fast on x86-64 as big-endian loads), and the
/// folded result is read as big-endian at the end.
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    u16::from_be_bytes(fold(acc).to_ne_bytes())
}

/// One's-complement sum of partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the UDP pseudo-header for `src`, `dst` and `udp_len`.
pub fn pseudo_header_udp(src: IpAddr, dst: IpAddr, udp_len: u32) -> u16 {
    const UDP: u64 = 17;
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => u64::from(sum(&v4.octets())),
        IpAddr::V6(v6) => u64::from(sum(&v6.octets())),
    };
    fold(addr(src) + addr(dst) + UDP + u64::from(udp_len))
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward 16-bit-word sum, as RFC 1071 states it.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn matches_the_rfc_definition_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..2100u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in 0..70 {
            assert_eq!(sum(&data[..len]), reference(&data[..len]), "len {len}");
        }
        assert_eq!(sum(&data), reference(&data));
        assert_eq!(sum(&[0xff; 1500]), reference(&[0xff; 1500]));
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }
}
