//! Which sources may reach the QUIC port: an admin's allow and deny
//! prefixes. Steered datagrams never meet nftables, so the XDP program
//! enforces the policy (LPM tries, see `program.rs`), and the kernel
//! sockets' receive path applies the same rules in user space.
//!
//! The longest matching prefix decides. With any allow prefix, a source
//! that matches none is refused; without, it is admitted.

use std::net::IpAddr;

/// Prefixes, as the policy takes them.
pub use ipnet::IpNet;

use crate::{Error, Result};

/// Allowed and denied source prefixes; the default admits every source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// What the policy says about one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    /// Admitted.
    Allowed,
    /// In a denied prefix.
    Denied,
    /// An allow list exists and the source is not on it.
    NotAllowed,
}

impl SourceVerdict {
    /// The value the XDP program's maps hold (SOURCE_* in the C program).
    pub(crate) fn map_value(self) -> u8 {
        match self {
            Self::Allowed => 1,
            Self::Denied => 2,
            Self::NotAllowed => 3,
        }
    }
}

impl SourcePolicy {
    /// Prefixes are taken by their network part (10.1.2.3/8 is 10.0.0.0/8).
    /// A prefix both allowed and denied is an error: nothing says which
    /// was meant.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Result<Self> {
        let allow: Vec<IpNet> = allow.iter().map(canonical).collect::<Result<_>>()?;
        let deny: Vec<IpNet> = deny.iter().map(canonical).collect::<Result<_>>()?;
        if let Some(both) = allow.iter().find(|p| deny.contains(p)) {
            return Err(Error::Config(format!(
                "source prefix {both} is both allowed and denied"
            )));
        }
        Ok(Self { allow, deny })
    }

    /// Whether the policy has no prefix at all, so admits every source.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The verdict for a datagram from `source` (IPv4-mapped IPv6
    /// addresses count as IPv4).
    pub fn verdict(&self, source: IpAddr) -> SourceVerdict {
        let source = source.to_canonical();
        let longest = |prefixes: &[IpNet]| {
            prefixes
                .iter()
                .filter(|p| p.contains(&source))
                .map(IpNet::prefix_len)
                .max()
        };
        match (longest(&self.allow), longest(&self.deny)) {
            (Some(a), Some(d)) if a > d => SourceVerdict::Allowed,
            (_, Some(_)) => SourceVerdict::Denied,
            (Some(_), None) => SourceVerdict::Allowed,
            (None, None) if self.allow.is_empty() => SourceVerdict::Allowed,
            (None, None) => SourceVerdict::NotAllowed,
        }
    }

    /// The entries of the program's LPM tries: every prefix with its
    /// verdict, and with an allow list, /0 entries that refuse the rest
    /// (unless a /0 was given).
    pub(crate) fn entries(&self) -> Vec<(IpNet, SourceVerdict)> {
        let mut entries: Vec<(IpNet, SourceVerdict)> = self
            .allow
            .iter()
            .map(|p| (*p, SourceVerdict::Allowed))
            .chain(self.deny.iter().map(|p| (*p, SourceVerdict::Denied)))
            .collect();
        if !self.allow.is_empty() {
            for any in ["0.0.0.0/0", "::/0"] {
                let any: IpNet = any.parse().expect("a prefix");
                if !entries.iter().any(|(p, _)| *p == any) {
                    entries.push((any, SourceVerdict::NotAllowed));
                }
            }
        }
        entries
    }
}

/// A prefix by its network part; IPv4-mapped IPv6 prefixes as the IPv4
/// prefixes they stand for (sources are matched as IPv4).
fn canonical(prefix: &IpNet) -> Result<IpNet> {
    let prefix = prefix.trunc();
    let IpNet::V6(v6) = prefix else {
        return Ok(prefix);
    };
    match v6.network().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("at most 32");
            Ok(IpNet::V4(v4))
        }
        Some(_) if v6.prefix_len() > 80 => Err(Error::Config(format!(
            "source prefix {prefix} covers IPv4-mapped addresses only in part"
        ))),
        _ => Ok(prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> SourcePolicy {
        let parse = |l: &[&str]| l.iter().map(|p| p.parse().unwrap()).collect();
        SourcePolicy::new(parse(allow), parse(deny)).unwrap()
    }

    fn verdict(p: &SourcePolicy, ip: &str) -> SourceVerdict {
        p.verdict(ip.parse().unwrap())
    }

    #[test]
    fn the_longest_prefix_decides() {
        let p = policy(
            &["10.1.0.0/16", "2001:db8:1::/48"],
            &["10.0.0.0/8", "10.1.2.0/24"],
        );
        assert_eq!(verdict(&p, "10.1.1.1"), SourceVerdict::Allowed);
        assert_eq!(verdict(&p, "10.1.2.1"), SourceVerdict::Denied);
        assert_eq!(verdict(&p, "10.9.9.9"), SourceVerdict::Denied);
        assert_eq!(verdict(&p, "192.0.2.1"), SourceVerdict::NotAllowed);
        assert_eq!(verdict(&p, "2001:db8:1::5"), SourceVerdict::Allowed);
        assert_eq!(verdict(&p, "2001:db8:2::5"), SourceVerdict::NotAllowed);
        // IPv4-mapped counts as IPv4.
        assert_eq!(verdict(&p, "::ffff:10.1.2.1"), SourceVerdict::Denied);
    }

    #[test]
    fn without_an_allow_list_only_denied_prefixes_are_refused() {
        let p = policy(&[], &["192.0.2.0/24"]);
        assert_eq!(verdict(&p, "192.0.2.7"), SourceVerdict::Denied);
        assert_eq!(verdict(&p, "198.51.100.7"), SourceVerdict::Allowed);
        assert_eq!(verdict(&p, "2001:db8::1"), SourceVerdict::Allowed);
        assert!(policy(&[], &[]).is_empty());
        assert_eq!(p.entries().len(), 1, "no default entries without allows");
    }

    #[test]
    fn an_allow_list_adds_default_refusals_and_conflicts_are_errors() {
        let p = policy(&["10.1.2.3/8"], &[]);
        let entries = p.entries();
        assert!(entries.contains(&("10.0.0.0/8".parse().unwrap(), SourceVerdict::Allowed)));
        assert!(entries.contains(&("0.0.0.0/0".parse().unwrap(), SourceVerdict::NotAllowed)));
        assert!(entries.contains(&("::/0".parse().unwrap(), SourceVerdict::NotAllowed)));
        let any = policy(&["0.0.0.0/0"], &["10.0.0.0/8"]);
        assert_eq!(any.entries().len(), 3, "a given /0 is not doubled");
        // IPv4-mapped prefixes mean their IPv4 prefix.
        let mapped = policy(&[], &["::ffff:192.0.2.0/120"]);
        assert_eq!(verdict(&mapped, "192.0.2.9"), SourceVerdict::Denied);
        assert_eq!(
            mapped.entries(),
            vec![("192.0.2.0/24".parse().unwrap(), SourceVerdict::Denied)]
        );
        let both = SourcePolicy::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec!["10.0.0.0/8".parse().unwrap()],
        );
        assert!(both.is_err());
    }
}
