//! Link-layer addresses of peers, learned from the frames they send.
//!
//! A server only answers: every peer has sent us a frame first, whose source
//! MAC (the peer's, or its router's) and VLAN tag are where replies go. No
//! ARP or NDP is needed. The cache is bounded so that spoofed sources cannot
//! grow it: two generations, the older dropped when the newer fills up.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use smoltcp::wire::EthernetAddress;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub mac: EthernetAddress,
    pub vlan: Option<u16>,
}

#[derive(Debug)]
pub struct NeighborCache {
    current: HashMap<IpAddr, Neighbor>,
    previous: HashMap<IpAddr, Neighbor>,
    generation_size: usize,
}

impl NeighborCache {
    /// Holds at least `generation_size` and at most twice as many peers.
    pub fn new(generation_size: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            generation_size: generation_size.max(1),
        }
    }

    /// Records where `ip` is; returns true if that is news.
    pub fn learn(&mut self, ip: IpAddr, neighbor: Neighbor) -> bool {
        if self.current.get(&ip) == Some(&neighbor) {
            return false;
        }
        let news = self.previous.get(&ip) != Some(&neighbor);
        self.insert(ip, neighbor);
        news
    }

    pub fn lookup(&mut self, ip: &IpAddr) -> Option<Neighbor> {
        if let Some(n) = self.current.get(ip) {
            return Some(*n);
        }
        // Still in use: keep it through the next rotation.
        let n = self.previous.remove(ip)?;
        self.insert(*ip, n);
        Some(n)
    }

    fn insert(&mut self, ip: IpAddr, neighbor: Neighbor) {
        if self.current.len() >= self.generation_size && !self.current.contains_key(&ip) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(ip, neighbor);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A queue's own cache in front of one shared by all queues of an
/// interface: a reply may leave on another queue than the request came in
/// on. The shared cache is only touched on news and on local misses.
#[derive(Debug)]
pub struct Neighbors {
    local: NeighborCache,
    shared: Arc<Mutex<NeighborCache>>,
}

impl Neighbors {
    pub fn new(shared: Arc<Mutex<NeighborCache>>, generation_size: usize) -> Self {
        Self {
            local: NeighborCache::new(generation_size),
            shared,
        }
    }

    pub fn shared(generation_size: usize) -> Arc<Mutex<NeighborCache>> {
        Arc::new(Mutex::new(NeighborCache::new(generation_size)))
    }

    pub fn learn(&mut self, ip: IpAddr, neighbor: Neighbor) {
        if self.local.learn(ip, neighbor) {
            self.shared.lock().unwrap().learn(ip, neighbor);
        }
    }

    pub fn lookup(&mut self, ip: &IpAddr) -> Option<Neighbor> {
        if let Some(n) = self.local.lookup(ip) {
            return Some(n);
        }
        let n = self.shared.lock().unwrap().lookup(ip)?;
        self.local.learn(*ip, n);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(last: u8) -> Neighbor {
        Neighbor {
            mac: EthernetAddress([2, 0, 0, 0, 0, last]),
            vlan: None,
        }
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(i.into())
    }

    #[test]
    fn bounded_and_keeps_recently_used_peers() {
        let mut c = NeighborCache::new(4);
        for i in 0..100 {
            c.learn(ip(i), n(i as u8));
            assert!(c.len() <= 8);
        }
        // Peer 1 was used at every rotation: still known.
        let mut c = NeighborCache::new(4);
        c.learn(ip(1), n(1));
        for i in 10..100 {
            c.learn(ip(i), n(0));
            assert_eq!(c.lookup(&ip(1)), Some(n(1)), "after {i}");
        }
        assert_eq!(c.lookup(&ip(10)), None);
    }

    #[test]
    fn learning_reports_news_only() {
        let mut c = NeighborCache::new(4);
        assert!(c.learn(ip(1), n(1)));
        assert!(!c.learn(ip(1), n(1)));
        assert!(c.learn(ip(1), n(2)), "a moved peer is news");
    }

    #[test]
    fn queues_share_what_they_learn() {
        let shared = Neighbors::shared(16);
        let mut q0 = Neighbors::new(shared.clone(), 16);
        let mut q1 = Neighbors::new(shared, 16);
        q0.learn(ip(7), n(7));
        assert_eq!(q1.lookup(&ip(7)), Some(n(7)));
        assert_eq!(q1.lookup(&ip(8)), None);
    }
}
