//! The check that a server's own connection IDs carry, shared by the XDP
//! program (which drops packets whose destination CID the server cannot
//! have issued) and the server (which issues and routes by it).
//!
//! A checked CID is `[engine ^ p0, p1, r0, ..., r5]`: six random bytes
//! `r`, and `p0, p1`, the first two bytes (little-endian) of SipHash-1-3
//! keyed with a 16-byte secret over `r`. It names one of `engines`
//! engines, and without the key a forged CID passes about `engines` times
//! in 65536 tries.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// The length of a checked CID: two check bytes and six random ones.
pub const CHECKED_CID_LEN: usize = 8;
/// How many of its bytes are the check.
pub const CHECK_LEN: usize = 2;

/// The key and engine count behind a server's checked CIDs.
#[derive(Clone, PartialEq, Eq)]
pub struct CidCheck {
    key: [u8; 16],
    engines: usize,
}

impl std::fmt::Debug for CidCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs: with it, CIDs can be forged.
        f.debug_struct("CidCheck")
            .field("engines", &self.engines)
            .finish_non_exhaustive()
    }
}

impl CidCheck {
    /// The check for CIDs keyed by `key` naming one of `engines` (1 to 256).
    pub fn new(key: [u8; 16], engines: usize) -> Self {
        assert!((1..=256).contains(&engines), "1 to 256 engines");
        Self { key, engines }
    }

    /// The key.
    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// How many engines CIDs may name.
    pub fn engines(&self) -> usize {
        self.engines
    }

    /// The check bytes `(p0, p1)` for a CID's random part.
    pub fn prf(&self, random: &[u8]) -> (u8, u8) {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write(random);
        let [p0, p1, ..] = h.finish().to_le_bytes();
        (p0, p1)
    }

    /// The engine that `routed` (check bytes, then random ones) names, if
    /// its check is right.
    pub fn owner(&self, routed: &[u8]) -> Option<usize> {
        let (check, random) = routed.split_at_checked(CHECK_LEN)?;
        let (p0, p1) = self.prf(random);
        let engine = usize::from(check[0] ^ p0);
        (check[1] == p1 && engine < self.engines).then_some(engine)
    }

    /// Fills the check bytes of `routed` (whose random bytes are set) so
    /// that it names `engine`.
    pub fn seal(&self, engine: usize, routed: &mut [u8]) {
        assert!(engine < self.engines, "engine {engine} of {}", self.engines);
        let (p0, p1) = self.prf(&routed[CHECK_LEN..]);
        routed[0] = engine as u8 ^ p0;
        routed[1] = p1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cids_name_their_engine_and_others_rarely_pass() {
        let check = CidCheck::new([7; 16], 3);
        let mut passed = 0;
        for i in 0..3000u32 {
            let mut cid = [0u8; CHECKED_CID_LEN];
            cid[2..6].copy_from_slice(&i.to_le_bytes());
            check.seal(i as usize % 3, &mut cid);
            assert_eq!(check.owner(&cid), Some(i as usize % 3));
            cid[1] ^= 1;
            passed += usize::from(check.owner(&cid).is_some());
        }
        assert_eq!(passed, 0, "a wrong check byte never passes");
        let other_key = CidCheck::new([8; 16], 3);
        let mut cid = [0u8; CHECKED_CID_LEN];
        check.seal(1, &mut cid);
        let forged = (0..=255u8)
            .filter(|&b| {
                cid[7] = b;
                other_key.owner(&cid).is_some()
            })
            .count();
        assert!(forged < 5, "{forged} of 256 pass under another key");
    }

    #[test]
    fn the_prf_is_siphash_1_3_with_the_key_halves_little_endian() {
        // Known answer, from an independent SipHash implementation (which
        // reproduces the paper's SipHash-2-4 vector): SipHash-1-3 under key
        // 00..0f of message 00..05 is 0xc50d2b50c59f22a7.
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let mut h = SipHasher13::new_with_key(&key);
        h.write(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(h.finish(), 0xc50d_2b50_c59f_22a7);
        assert_eq!(CidCheck::new(key, 1).prf(&[0, 1, 2, 3, 4, 5]), (0xa7, 0x22));
    }
}
