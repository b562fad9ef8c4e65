//! Flume's `ipFilterRules` (AvroSource `ipFilter = true`): a comma-separated list of
//! `allow|deny : ip|name : pattern`, tried in order; the first match decides; no match means
//! **accept**. Patterns are globs (`*` any run, `?` one character, everything else literal)
//! matched against the whole textual address.
//!
//! Supported: `ip:` rules, and `name:localhost` (loopback, or the address the connection was
//! accepted on — i.e. a connection from this machine to itself). Other `name:` rules need
//! reverse DNS, which weir does not do: they are rejected when the config is parsed
//! ([`IpFilterError::UnsupportedNameRule`]) rather than silently never matching.
//!
//! Addresses are rendered the way Java's `InetAddress.getHostAddress()` does, so patterns
//! written for Flume keep working: IPv4-mapped IPv6 becomes IPv4, IPv6 is 8 uncompressed hex
//! groups (`0:0:0:0:0:0:0:1`).

use std::net::IpAddr;

/// A configuration error in `ipFilterRules`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpFilterError {
    #[error("ipFilterRules is empty but ipFilter is enabled")]
    Empty,
    #[error("ipFilterRules: bad rule {rule:?}: {reason}")]
    BadRule { rule: String, reason: &'static str },
    #[error("ipFilterRules: rule {rule:?}: only \"name:localhost\" is supported among name rules (reverse DNS is not done); use an ip: rule")]
    UnsupportedNameRule { rule: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Ip(String),
    Localhost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    allow: bool,
    kind: Kind,
}

/// A parsed rule list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpFilter {
    rules: Vec<Rule>,
}

impl IpFilter {
    /// Parse Flume's `ipFilterRules` value.
    pub fn parse(rules: &str) -> Result<IpFilter, IpFilterError> {
        let mut out = Vec::new();
        for raw in rules.split(',') {
            let rule = raw.trim();
            if rule.is_empty() {
                continue;
            }
            let bad = |reason| IpFilterError::BadRule {
                rule: rule.to_owned(),
                reason,
            };
            // Split on the first two colons only, so IPv6 text survives in the pattern.
            let mut parts = rule.splitn(3, ':');
            let (Some(action), Some(kind), Some(pattern)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad("expected allow|deny:ip|name:pattern"));
            };
            let allow = match action {
                "allow" => true,
                "deny" => false,
                _ => return Err(bad("first part must be \"allow\" or \"deny\"")),
            };
            if pattern.is_empty() {
                return Err(bad("empty pattern"));
            }
            let kind = match kind {
                "ip" => Kind::Ip(pattern.to_owned()),
                "name" if pattern == "localhost" => Kind::Localhost,
                "name" => {
                    return Err(IpFilterError::UnsupportedNameRule {
                        rule: rule.to_owned(),
                    })
                }
                _ => return Err(bad("second part must be \"ip\" or \"name\"")),
            };
            out.push(Rule { allow, kind });
        }
        if out.is_empty() {
            return Err(IpFilterError::Empty);
        }
        Ok(IpFilter { rules: out })
    }

    /// Whether a connection from `peer`, accepted on local address `local` (if known), is let
    /// in. Unmatched → accepted, as in Flume.
    pub fn allows(&self, peer: IpAddr, local: Option<IpAddr>) -> bool {
        let peer = canonical(peer);
        let text = java_host_address(peer);
        for rule in &self.rules {
            let hit = match &rule.kind {
                Kind::Ip(p) => glob_match(p.as_bytes(), text.as_bytes()),
                Kind::Localhost => peer.is_loopback() || local.map(canonical) == Some(peer),
            };
            if hit {
                return rule.allow;
            }
        }
        true
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `InetAddress.getHostAddress()`: dotted quad, or 8 uncompressed lowercase hex groups.
fn java_host_address(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
    }
}

/// Whole-string glob match; `*` = any run, `?` = exactly one byte. Iterative with one
/// backtrack point, so it is linear-ish and cannot blow up on hostile patterns.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn first_match_wins_default_accept() {
        let f = IpFilter::parse("allow:ip:127.*,deny:ip:10.0.0.?,allow:ip:10.0.0.1*,deny:ip:*")
            .expect("parse");
        assert!(f.allows(ip("127.0.0.1"), None));
        assert!(!f.allows(ip("10.0.0.5"), None));
        assert!(f.allows(ip("10.0.0.15"), None));
        assert!(!f.allows(ip("192.168.1.1"), None));
        let f = IpFilter::parse("deny:ip:192.168.*").expect("parse");
        assert!(f.allows(ip("10.1.1.1"), None), "no match = accept");
        assert!(!f.allows(ip("::ffff:192.168.0.1"), None), "v4-mapped");
    }

    #[test]
    fn ipv6_patterns_keep_their_colons() {
        let f = IpFilter::parse("deny:ip:0:0:0:0:0:0:0:1, allow:ip:fe80:*").expect("parse");
        assert!(!f.allows(ip("::1"), None));
        assert_eq!(f.rules.len(), 2);
    }

    #[test]
    fn localhost_rule() {
        let f = IpFilter::parse("allow:name:localhost,deny:ip:*").expect("parse");
        assert!(f.allows(ip("127.0.0.1"), None));
        assert!(f.allows(ip("::1"), None));
        assert!(f.allows(ip("10.1.2.3"), Some(ip("10.1.2.3"))));
        assert!(!f.allows(ip("10.1.2.4"), Some(ip("10.1.2.3"))));
    }

    #[test]
    fn config_errors() {
        assert_eq!(IpFilter::parse(""), Err(IpFilterError::Empty));
        assert_eq!(IpFilter::parse(" , "), Err(IpFilterError::Empty));
        assert!(matches!(
            IpFilter::parse("permit:ip:*"),
            Err(IpFilterError::BadRule { .. })
        ));
        assert!(matches!(
            IpFilter::parse("Allow:ip:*"),
            Err(IpFilterError::BadRule { .. })
        ));
        assert!(matches!(
            IpFilter::parse("allow:host:*"),
            Err(IpFilterError::BadRule { .. })
        ));
        assert!(matches!(
            IpFilter::parse("allow:ip"),
            Err(IpFilterError::BadRule { .. })
        ));
        assert!(matches!(
            IpFilter::parse("allow:name:*.example.com"),
            Err(IpFilterError::UnsupportedNameRule { .. })
        ));
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*c", b"abbbc"));
        assert!(!glob_match(b"a*c", b"abbbd"));
        assert!(glob_match(b"1?.*", b"12.3"));
        assert!(!glob_match(b"1.2", b"1x2"), ". is literal");
        assert!(glob_match(b"**a**", b"xxaxx"));
    }
}
