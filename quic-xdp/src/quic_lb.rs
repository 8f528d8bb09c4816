//! Connection IDs in the QUIC-LB format (draft-ietf-quic-load-balancers-21),
//! so that a load balancer in front of a fleet can tell which server owns a
//! datagram from its destination CID alone.
//!
//! A CID is `first octet || block || ...`: the first octet carries the
//! configuration's 3-bit ID and the CID length minus one; the block is the
//! server ID followed by a nonce, either in the clear or encrypted with the
//! fleet's 16-byte key (AES-128: one block when server ID and nonce sum to
//! 16 octets, otherwise the draft's four-pass Feistel). This module is only
//! the codec; [`crate::cid`] decides what goes into the nonce.

use aes::{
    Aes128,
    cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray},
};

use crate::Error;

/// The longest block (server ID and nonce) a QUIC v1 CID can carry.
const MAX_BLOCK: usize = 19;

/// One QUIC-LB configuration: what every server of a fleet shares, except
/// the server ID, which names this server.
#[derive(Clone)]
pub struct QuicLbConfig {
    config_id: u8,
    server_id: [u8; MAX_BLOCK],
    server_id_len: usize,
    nonce_len: usize,
    key: Option<Aes128>,
}

impl std::fmt::Debug for QuicLbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLbConfig")
            .field("config_id", &self.config_id)
            .field("server_id", &self.server_id())
            .field("nonce_len", &self.nonce_len)
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

impl QuicLbConfig {
    /// A configuration with ID `config_id` (0 to 6; 7 is reserved for
    /// unroutable CIDs), this server's `server_id` (1 to 15 octets) and
    /// `nonce_len` octets of nonce (at least 4; server ID and nonce at most
    /// 19 together). With `key`, the block is encrypted so that observers
    /// cannot link CIDs or learn server IDs; without it the server ID is in
    /// the clear.
    pub fn new(
        config_id: u8,
        server_id: &[u8],
        nonce_len: usize,
        key: Option<[u8; 16]>,
    ) -> Result<Self, Error> {
        let invalid = |what: String| Err(Error::Config(format!("QUIC-LB: {what}")));
        if config_id > 6 {
            return invalid(format!("config ID {config_id} is not 0-6"));
        }
        if !(1..=15).contains(&server_id.len()) {
            return invalid(format!("a server ID of {} octets (1-15)", server_id.len()));
        }
        if nonce_len < 4 || server_id.len() + nonce_len > MAX_BLOCK {
            return invalid(format!(
                "a nonce of {nonce_len} octets (at least 4; with the server ID at most {MAX_BLOCK})"
            ));
        }
        let mut id = [0; MAX_BLOCK];
        id[..server_id.len()].copy_from_slice(server_id);
        Ok(Self {
            config_id,
            server_id: id,
            server_id_len: server_id.len(),
            nonce_len,
            key: key.map(|k| Aes128::new(&GenericArray::from(k))),
        })
    }

    /// The configuration's ID, the CID's top three bits.
    pub fn config_id(&self) -> u8 {
        self.config_id
    }

    /// This server's ID.
    pub fn server_id(&self) -> &[u8] {
        &self.server_id[..self.server_id_len]
    }

    /// The nonce's length in octets.
    pub fn nonce_len(&self) -> usize {
        self.nonce_len
    }

    /// The length of every CID of this configuration.
    pub fn cid_len(&self) -> usize {
        1 + self.block_len()
    }

    fn block_len(&self) -> usize {
        self.server_id_len + self.nonce_len
    }

    /// The CID for `nonce` (exactly [`nonce_len`](Self::nonce_len) octets).
    pub fn encode(&self, nonce: &[u8]) -> Vec<u8> {
        assert_eq!(nonce.len(), self.nonce_len, "QUIC-LB nonce length");
        let len = self.block_len();
        let mut cid = vec![0; 1 + len];
        // The length self-description: octets after the first.
        cid[0] = self.config_id << 5 | len as u8;
        cid[1..1 + self.server_id_len].copy_from_slice(self.server_id());
        cid[1 + self.server_id_len..].copy_from_slice(nonce);
        if let Some(key) = &self.key {
            encrypt(key, &mut cid[1..]);
        }
        cid
    }

    /// The server ID and nonce of `cid`, if it is of this configuration
    /// (its config ID and length; any server of the fleet).
    pub fn decode(&self, cid: &[u8]) -> Option<Decoded> {
        if cid.len() != self.cid_len() || cid[0] >> 5 != self.config_id {
            return None;
        }
        let len = self.block_len();
        let mut block = [0; MAX_BLOCK];
        block[..len].copy_from_slice(&cid[1..]);
        if let Some(key) = &self.key {
            decrypt(key, &mut block[..len]);
        }
        Some(Decoded {
            block,
            server_id_len: self.server_id_len,
            len,
        })
    }
}

/// A decoded CID: the server ID and the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    block: [u8; MAX_BLOCK],
    server_id_len: usize,
    len: usize,
}

impl Decoded {
    /// The ID of the server that issued the CID.
    pub fn server_id(&self) -> &[u8] {
        &self.block[..self.server_id_len]
    }

    /// The nonce it chose.
    pub fn nonce(&self) -> &[u8] {
        &self.block[self.server_id_len..self.len]
    }
}

/// Encrypts a block of 5 to 19 octets in place.
fn encrypt(key: &Aes128, block: &mut [u8]) {
    if block.len() == 16 {
        let b = GenericArray::from_mut_slice(block);
        key.encrypt_block(b);
        return;
    }
    let mut halves = Halves::split(block);
    for pass in 1..=4 {
        halves.pass(key, pass);
    }
    halves.join(block);
}

/// Inverts [`encrypt`].
fn decrypt(key: &Aes128, block: &mut [u8]) {
    if block.len() == 16 {
        let b = GenericArray::from_mut_slice(block);
        key.decrypt_block(b);
        return;
    }
    let mut halves = Halves::split(block);
    // Each pass XORs the same pad in both directions: run them backwards.
    for pass in (1..=4).rev() {
        halves.pass(key, pass);
    }
    halves.join(block);
}

/// The two halves of the four-pass Feistel network. For an odd length they
/// overlap in the middle octet: the left half keeps its high nibble, the
/// right half its low one.
struct Halves {
    left: [u8; 10],
    right: [u8; 10],
    len: usize,
}

impl Halves {
    fn half_len(&self) -> usize {
        self.len.div_ceil(2)
    }

    fn split(block: &[u8]) -> Self {
        let len = block.len();
        let half = len.div_ceil(2);
        let mut h = Self {
            left: [0; 10],
            right: [0; 10],
            len,
        };
        h.left[..half].copy_from_slice(&block[..half]);
        h.right[..half].copy_from_slice(&block[len - half..]);
        h.mask();
        h
    }

    fn mask(&mut self) {
        if self.len % 2 == 1 {
            let half = self.half_len();
            self.left[half - 1] &= 0xf0;
            self.right[0] &= 0x0f;
        }
    }

    /// Pass 1 and 3 change the right half from the left, 2 and 4 the left
    /// from the right.
    fn pass(&mut self, key: &Aes128, pass: u8) {
        let half = self.half_len();
        let (from, to) = if pass % 2 == 1 {
            (&self.left, &mut self.right)
        } else {
            (&self.right, &mut self.left)
        };
        // expand(): the half, zeros, the block length, the pass number.
        let mut pad = GenericArray::from([0u8; 16]);
        pad[..half].copy_from_slice(&from[..half]);
        pad[14] = self.len as u8;
        pad[15] = pass;
        key.encrypt_block(&mut pad);
        for (t, p) in to[..half].iter_mut().zip(&pad[..half]) {
            *t ^= p;
        }
        self.mask();
    }

    fn join(&self, block: &mut [u8]) {
        let half = self.half_len();
        block[..half].copy_from_slice(&self.left[..half]);
        let right_start = self.len - half;
        if self.len % 2 == 1 {
            // The shared middle octet: the left's high nibble, the right's low.
            block[right_start] = self.left[half - 1] | self.right[0];
            block[right_start + 1..].copy_from_slice(&self.right[1..half]);
        } else {
            block[right_start..].copy_from_slice(&self.right[..half]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(s: &str) -> Option<[u8; 16]> {
        Some(hex(s).try_into().unwrap())
    }

    /// Encodes, checks against the expected CID, and decodes back.
    fn vector(config_id: u8, key: Option<[u8; 16]>, sid: &str, nonce: &str, cid: &str) {
        let (sid, nonce) = (hex(sid), hex(nonce));
        let config = QuicLbConfig::new(config_id, &sid, nonce.len(), key).unwrap();
        let encoded = config.encode(&nonce);
        assert_eq!(encoded, hex(cid), "encoding sid {sid:02x?}");
        let decoded = config.decode(&encoded).unwrap();
        assert_eq!(decoded.server_id(), sid);
        assert_eq!(decoded.nonce(), nonce);
    }

    /// Appendix B: the unencrypted row that is well formed (the draft's
    /// second row has a 4.5-octet nonce), and google/quiche's two.
    #[test]
    fn plaintext_vectors() {
        vector(0, None, "c4605e", "4504cc4f", "07c4605e4504cc4f");
        vector(0, None, "ed793a", "8049718a", "07ed793a8049718a");
        vector(
            1,
            None,
            "ed793a51d49b8f5f",
            "8e9853fe93",
            "2ded793a51d49b8f5f8e9853fe93",
        );
    }

    /// Appendix B's encrypted CIDs: four-pass with odd and even lengths,
    /// a server ID longer than the nonce, and the 16-octet single pass.
    #[test]
    fn encrypted_vectors() {
        let k = key("8f95f09245765f80256934e50c66207f");
        vector(0, k, "ed793a", "ee080dbf", "0720b1d07b359d3c");
        vector(
            1,
            k,
            "ed793a51d49b8f5fab65",
            "ee080dbf48",
            "2fcc381bc74cb4fbad2823a3d1f8fed2",
        );
        vector(
            2,
            k,
            "ed793a51d49b8f5f",
            "ee080dbf48c0d1e5",
            "504dd2d05a7b0de9b2b9907afb5ecf8cc3",
        );
        // Labelled config 3 in the draft, but its first octet (0x12) says
        // config 0; the rest does not depend on it.
        vector(
            0,
            k,
            "ed793a51d49b8f5fab",
            "ee080dbf48c0d1e55d",
            "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
        );
        // The worked example of section 5.5.
        vector(
            0,
            key("fdf726a9893ec05c0632d3956680baf0"),
            "31441a",
            "9c69c275",
            "0767947d29be054a",
        );
    }

    #[test]
    fn every_block_length_round_trips() {
        let k = key("000102030405060708090a0b0c0d0e0f");
        for sid_len in 1..=15 {
            for nonce_len in 4..=(MAX_BLOCK - sid_len) {
                let sid: Vec<u8> = (0..sid_len as u8)
                    .map(|i| i.wrapping_mul(37) ^ 0x5a)
                    .collect();
                let nonce: Vec<u8> = (0..nonce_len as u8)
                    .map(|i| i.wrapping_mul(91) ^ 0xc3)
                    .collect();
                for key in [None, k] {
                    let config = QuicLbConfig::new(6, &sid, nonce_len, key).unwrap();
                    let cid = config.encode(&nonce);
                    assert_eq!(cid.len(), 1 + sid_len + nonce_len);
                    assert_eq!(cid[0], 6 << 5 | (sid_len + nonce_len) as u8);
                    let decoded = config.decode(&cid).unwrap();
                    assert_eq!(
                        (decoded.server_id(), decoded.nonce()),
                        (&sid[..], &nonce[..])
                    );
                    if key.is_some() {
                        assert_ne!(&cid[1..1 + sid_len], &sid[..], "server ID in the clear");
                    }
                }
            }
        }
    }

    #[test]
    fn other_configurations_and_bad_settings_are_refused() {
        let config = QuicLbConfig::new(2, &[1, 2, 3], 8, None).unwrap();
        let cid = config.encode(&[9; 8]);
        let other = QuicLbConfig::new(3, &[1, 2, 3], 8, None).unwrap();
        assert_eq!(other.decode(&cid), None);
        assert_eq!(config.decode(&cid[..11]), None);
        assert_eq!(config.decode(&[]), None);
        for (config_id, sid_len, nonce_len) in
            [(7, 3, 8), (0, 0, 8), (0, 16, 4), (0, 3, 3), (0, 10, 10)]
        {
            assert!(
                QuicLbConfig::new(config_id, &vec![1; sid_len], nonce_len, None).is_err(),
                "{config_id} {sid_len} {nonce_len}"
            );
        }
    }
}
