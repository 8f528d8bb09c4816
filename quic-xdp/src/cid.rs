//! Connection IDs that name the engine owning the connection, and routing
//! of received datagrams by them.
//!
//! Server-chosen CIDs are `[engine ^ p0, p1, 6 random bytes]`, where
//! `p0, p1` come from a keyed PRF (SipHash-1-3, key from the endpoint
//! secret) over the random bytes: [`datapath::cid_check`], which the XDP
//! program checks too, dropping short header and Handshake packets whose
//! CID we cannot have issued. The engine index is masked and the check
//! unforgeable: an observer of any number of CIDs learns neither, so it
//! cannot aim traffic at one engine (a guessed CID names a chosen engine
//! about once in 65536), and client-chosen CIDs rarely look like ours.
//! A datagram whose destination CID is ours goes to its engine; any other
//! (a client's first-flight Initial or 0-RTT) stays with the engine whose
//! queue received it, which then owns the connection. Routing depends only
//! on the CID and the arrival queue, so retransmissions route alike; with
//! RSS a flow stays on one queue, so forwarding between engines is rare.
//!
//! For a fleet behind a load balancer, the CIDs take the QUIC-LB format
//! instead ([`crate::quic_lb`]): config ID, this server's ID and a nonce,
//! in the clear or encrypted. The nonce then carries the same routing
//! bytes: `[engine ^ p0, p1, random...]`.

use datapath::cid_check::{CHECK_LEN, CHECKED_CID_LEN, CidCheck};
use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::rand::{SecureRandom, SystemRandom};

use crate::quic_lb::QuicLbConfig;

/// The length of our own CIDs (not QUIC-LB): two routing bytes and six
/// random ones.
pub(crate) const CID_LEN: usize = CHECKED_CID_LEN;
/// Routing bytes at the start of a CID (or QUIC-LB nonce).
const ROUTING_LEN: usize = CHECK_LEN;
/// The fewest random bytes after them. A CID drawn twice would give two
/// clients the same stateless reset token (and the draft forbids reusing
/// a nonce under one key): with 6 random bytes that takes ~20 million CIDs.
const MIN_RANDOM_LEN: usize = 6;
/// The shortest QUIC-LB nonce that holds both.
pub(crate) const MIN_NONCE_LEN: usize = ROUTING_LEN + MIN_RANDOM_LEN;
/// The PRF key's length.
pub(crate) const CID_KEY_LEN: usize = 16;

#[derive(Clone, Debug)]
pub(crate) struct CidScheme {
    check: CidCheck,
    quic_lb: Option<QuicLbConfig>,
}

impl CidScheme {
    /// `key` makes our CIDs recognizable; kept across restarts (see
    /// `EndpointBuilder::reset_secret`) it recognizes an earlier run's CIDs.
    pub fn new(engines: usize, key: [u8; CID_KEY_LEN]) -> Self {
        Self {
            check: CidCheck::new(key, engines),
            quic_lb: None,
        }
    }

    /// CIDs in the QUIC-LB format of `config`, whose nonce must have room
    /// for the routing bytes and `MIN_RANDOM_LEN` random ones.
    pub fn with_quic_lb(mut self, config: QuicLbConfig) -> Self {
        assert!(config.nonce_len() >= MIN_NONCE_LEN);
        self.quic_lb = Some(config);
        self
    }

    /// The check the XDP program can make on our CIDs: none for QUIC-LB
    /// CIDs (their nonce is encrypted, or the check is inside it).
    pub fn xdp_check(&self) -> Option<CidCheck> {
        self.quic_lb.is_none().then(|| self.check.clone())
    }

    /// The length of every CID we issue.
    pub fn cid_len(&self) -> usize {
        self.quic_lb.as_ref().map_or(CID_LEN, QuicLbConfig::cid_len)
    }

    #[cfg(test)]
    fn random(engines: usize) -> Self {
        let mut key = [0; CID_KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .expect("system randomness");
        Self::new(engines, key)
    }

    /// The engine that issued `cid`, if we did.
    pub fn owner(&self, cid: &[u8]) -> Option<usize> {
        match &self.quic_lb {
            None if cid.len() == CID_LEN => self.check.owner(cid),
            None => None,
            Some(config) => {
                // Another server's CID (a misrouted datagram) is not ours.
                let decoded = config.decode(cid)?;
                if decoded.server_id() != config.server_id() {
                    return None;
                }
                self.check.owner(decoded.nonce())
            }
        }
    }

    /// Fills `routed` (a CID or a nonce) for `engine`: random bytes and
    /// the routing bytes that name the engine.
    fn fill_routed(&self, engine: u8, random: &SystemRandom, routed: &mut [u8]) {
        random
            .fill(&mut routed[ROUTING_LEN..])
            .expect("system randomness");
        self.check.seal(usize::from(engine), routed);
    }

    /// The engine that must handle `datagram`, which arrived at `arrival`.
    pub fn route(&self, datagram: &[u8], arrival: usize) -> usize {
        if self.check.engines() == 1 {
            return 0;
        }
        let dcid = match datagram.first() {
            // Long header: DCID length at byte 5, the DCID after it.
            Some(b) if b & 0x80 != 0 => datagram
                .get(5)
                .and_then(|&len| datagram.get(6..6 + usize::from(len))),
            // Short header: our fixed-length DCID right after the flags.
            Some(_) => datagram.get(1..1 + self.cid_len()),
            None => None,
        };
        dcid.and_then(|cid| self.owner(cid)).unwrap_or(arrival)
    }

    pub fn generator(&self, engine: usize) -> EngineCids {
        EngineCids {
            scheme: self.clone(),
            engine: engine as u8,
            random: SystemRandom::new(),
        }
    }
}

/// quinn-proto's CID source for one engine.
pub(crate) struct EngineCids {
    scheme: CidScheme,
    engine: u8,
    random: SystemRandom,
}

impl ConnectionIdGenerator for EngineCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let scheme = &self.scheme;
        match &scheme.quic_lb {
            None => {
                let mut cid = [0; CID_LEN];
                scheme.fill_routed(self.engine, &self.random, &mut cid);
                ConnectionId::new(&cid)
            }
            Some(config) => {
                let mut nonce = [0; 18];
                let nonce = &mut nonce[..config.nonce_len()];
                scheme.fill_routed(self.engine, &self.random, nonce);
                ConnectionId::new(&config.encode(nonce))
            }
        }
    }

    /// Whether `cid` could be ours: only then may a stateless reset answer
    /// a datagram for an unknown connection.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.scheme.owner(cid).map(|_| ()).ok_or(InvalidCid)
    }

    fn cid_len(&self) -> usize {
        self.scheme.cid_len()
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_header(cid: &[u8]) -> Vec<u8> {
        let mut d = vec![0x40];
        d.extend_from_slice(cid);
        d.extend_from_slice(&[0; 20]);
        d
    }

    fn long_header(cid: &[u8]) -> Vec<u8> {
        let mut d = vec![0xc0, 0, 0, 0, 1, cid.len() as u8];
        d.extend_from_slice(cid);
        d.extend_from_slice(&[8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
        d
    }

    #[test]
    fn our_cids_route_to_their_engine_from_any_queue() {
        let scheme = CidScheme::random(4);
        for engine in 0..4 {
            let mut generator = scheme.generator(engine);
            for _ in 0..100 {
                let cid = generator.generate_cid();
                assert!(generator.validate(&cid).is_ok());
                for arrival in 0..4 {
                    assert_eq!(scheme.route(&short_header(&cid), arrival), engine);
                    assert_eq!(scheme.route(&long_header(&cid), arrival), engine);
                }
            }
        }
    }

    #[test]
    fn foreign_cids_stay_where_they_arrived() {
        let scheme = CidScheme::random(4);
        let random = SystemRandom::new();
        let mut misrouted = 0;
        for _ in 0..10_000 {
            let mut cid = [0u8; 8];
            random.fill(&mut cid).unwrap();
            if scheme.route(&long_header(&cid), 3) != 3 {
                misrouted += 1;
            }
            // Routing is a function of the CID: retransmissions agree.
            assert_eq!(
                scheme.route(&long_header(&cid), 3),
                scheme.route(&long_header(&cid), 3)
            );
        }
        // A random CID passes the check byte about once in 256 and names
        // a valid engine in 4 of 256 first bytes: about 1 in 16000.
        assert!(misrouted < 10, "{misrouted}");
        // The first byte of our CIDs says nothing about their engine.
        let mut firsts = std::collections::HashSet::new();
        let mut generator = scheme.generator(0);
        for _ in 0..1000 {
            firsts.insert(generator.generate_cid()[0]);
        }
        assert!(
            firsts.len() > 200,
            "engine byte not masked: {}",
            firsts.len()
        );
        // Other lengths (clients may pick up to 20 bytes) are never ours.
        assert_eq!(scheme.route(&long_header(&[0; 20]), 2), 2);
        assert_eq!(scheme.route(&[], 1), 1);
        assert_eq!(scheme.route(&[0x40, 1], 1), 1);
    }

    #[test]
    fn a_scheme_with_the_same_key_recognizes_earlier_cids() {
        let key = [3u8; CID_KEY_LEN];
        let before = CidScheme::new(2, key);
        let after = CidScheme::new(2, key);
        let mut generator = before.generator(1);
        for _ in 0..100 {
            let cid = generator.generate_cid();
            assert_eq!(after.owner(&cid), Some(1));
            assert!(after.generator(0).validate(&cid).is_ok());
        }
        assert_eq!(
            CidScheme::new(2, [4; CID_KEY_LEN]).owner(&generator.generate_cid()),
            None
        );
    }

    #[test]
    fn quic_lb_cids_name_this_server_and_route_to_their_engine() {
        let key = [5u8; 16];
        for lb_key in [None, Some(key)] {
            let config = QuicLbConfig::new(3, &[0xaa, 0xbb], 8, lb_key).unwrap();
            let scheme = CidScheme::random(4).with_quic_lb(config.clone());
            for engine in 0..4 {
                let mut generator = scheme.generator(engine);
                assert_eq!(generator.cid_len(), 11);
                for _ in 0..100 {
                    let cid = generator.generate_cid();
                    // A load balancer following the draft names this server.
                    assert_eq!(config.decode(&cid).unwrap().server_id(), [0xaa, 0xbb]);
                    assert_eq!(cid[0] >> 5, 3);
                    assert!(generator.validate(&cid).is_ok());
                    for arrival in 0..4 {
                        assert_eq!(scheme.route(&short_header(&cid), arrival), engine);
                        assert_eq!(scheme.route(&long_header(&cid), arrival), engine);
                    }
                }
            }
            // Another server of the fleet: same config, other server ID.
            let other = QuicLbConfig::new(3, &[0xaa, 0xbc], 8, lb_key).unwrap();
            let theirs = CidScheme::random(4)
                .with_quic_lb(other)
                .generator(2)
                .generate_cid();
            assert_eq!(scheme.owner(&theirs), None);
            assert_eq!(scheme.route(&short_header(&theirs), 1), 1);
        }
    }

    #[test]
    fn one_engine_routes_everything_to_itself() {
        let scheme = CidScheme::random(1);
        assert_eq!(scheme.route(&short_header(&[9; 8]), 0), 0);
    }
}
