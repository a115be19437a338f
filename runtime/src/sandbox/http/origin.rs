//! Outbound grants: which origins a handler may call, and which addresses
//! a granted name may lead to.
//!
//! A grant is `scheme://host[:port]`, as Spin's `allowed_outbound_hosts`:
//! the scheme is `http`, `https` or `*`; the host is a name, `*.` followed
//! by a domain (any subdomain of it, not the domain itself), an IP literal,
//! or `*`; the port is a number or `*`, and without one the scheme's default
//! port. Paths are not part of a grant: an origin is the unit of trust.
//!
//! Names are resolved by the host, and the connection goes to the address
//! that was checked (no second lookup a DNS rebinding could change). An
//! address that is loopback, private, link-local or otherwise not public is
//! reached only when the grant that matched names it: as that IP literal, or
//! as `localhost` for loopback. So `https://*.example.com` cannot be turned
//! into a path to the cloud metadata service or the host's own admin port.

use std::fmt;
use std::net::IpAddr;

use anyhow::{Result, bail, ensure};

/// One `allowed_outbound_hosts` entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    /// As written in the manifest: the metrics label and what logs name.
    pub text: String,
    scheme: Scheme,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: the suffix `.example.com`.
    Subdomains(String),
    Ip(IpAddr),
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// No port written: the scheme's own (80 or 443).
    Default,
    Exact(u16),
    Any,
}

/// The origin of one outgoing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOrigin {
    pub https: bool,
    /// Lowercase; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RequestOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            _ => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl AllowedOrigin {
    pub fn parse(text: &str) -> Result<Self> {
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!(
                "{text:?} has no scheme: write it as scheme://host[:port], e.g. https://api.example.com"
            );
        };
        let scheme = match scheme {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "*" => Scheme::Any,
            other => bail!("{text:?}: scheme {other:?} is not http, https or *"),
        };
        ensure!(
            !rest.contains('/') && !rest.contains('?') && !rest.contains('@'),
            "{text:?}: a grant is an origin (scheme://host[:port]), without path, query or credentials"
        );
        let (host, port) = split_host_port(rest)
            .ok_or_else(|| anyhow::anyhow!("{text:?}: cannot read host and port from {rest:?}"))?;
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => PortPattern::Exact(p),
                _ => bail!("{text:?}: port {p:?} is not a number from 1 to 65535 or *"),
            },
        };
        ensure!(
            !(scheme == Scheme::Any && port == PortPattern::Default),
            "{text:?}: with scheme * the port must be written (a number or *)"
        );
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            ensure!(
                valid_name(domain),
                "{text:?}: {domain:?} is not a host name"
            );
            HostPattern::Subdomains(format!(".{domain}"))
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Ip(ip)
        } else {
            ensure!(valid_name(&host), "{text:?}: {host:?} is not a host name");
            HostPattern::Exact(host)
        };
        Ok(AllowedOrigin {
            text: text.to_string(),
            scheme,
            host,
            port,
        })
    }

    /// Whether a request to `origin` may be sent under this grant (before
    /// looking at where its name resolves).
    pub fn matches(&self, origin: &RequestOrigin) -> bool {
        let scheme = match self.scheme {
            Scheme::Http => !origin.https,
            Scheme::Https => origin.https,
            Scheme::Any => true,
        };
        let port = match self.port {
            PortPattern::Default => origin.port == if origin.https { 443 } else { 80 },
            PortPattern::Exact(p) => origin.port == p,
            PortPattern::Any => true,
        };
        let host = match &self.host {
            HostPattern::Exact(name) => *name == origin.host,
            HostPattern::Subdomains(suffix) => origin.host.ends_with(suffix.as_str()),
            HostPattern::Ip(ip) => origin.host.parse::<IpAddr>().ok() == Some(*ip),
            HostPattern::Any => true,
        };
        scheme && port && host
    }

    /// Whether this grant lets a request reach `address`: any public
    /// address, and a non-public one only when named explicitly.
    pub fn may_reach(&self, address: IpAddr) -> bool {
        if is_public(address) {
            return true;
        }
        match &self.host {
            HostPattern::Ip(ip) => canonical(*ip) == canonical(address),
            HostPattern::Exact(name) => name == "localhost" && canonical(address).is_loopback(),
            HostPattern::Subdomains(_) | HostPattern::Any => false,
        }
    }
}

/// `host` and the optional port of `host[:port]`, `[v6][:port]` included.
fn split_host_port(text: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    // An empty host is left to the name check, which refuses it.
    match text.split_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((text, None)),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Whether `address` is on the public internet: not loopback, private
/// (RFC 1918, unique local), link-local (which holds cloud metadata
/// services), shared (CGNAT), unspecified, broadcast or multicast.
pub fn is_public(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(https: bool, host: &str, port: u16) -> RequestOrigin {
        RequestOrigin {
            https,
            host: host.into(),
            port,
        }
    }

    fn grant(text: &str) -> AllowedOrigin {
        AllowedOrigin::parse(text).unwrap()
    }

    #[test]
    fn an_origin_is_shown_as_a_guest_would_write_it() {
        // Refusals name the origin, so it must read back as a grant would.
        assert_eq!(origin(true, "::1", 8443).to_string(), "https://[::1]:8443");
        assert_eq!(
            origin(false, "10.0.0.1", 80).to_string(),
            "http://10.0.0.1:80"
        );
        assert_eq!(
            origin(true, "api.example.com", 443).to_string(),
            "https://api.example.com:443"
        );
    }

    #[test]
    fn an_exact_grant_is_one_scheme_host_and_port() {
        let g = grant("https://api.example.com");
        assert!(g.matches(&origin(true, "api.example.com", 443)));
        assert!(!g.matches(&origin(false, "api.example.com", 80)), "scheme");
        assert!(!g.matches(&origin(true, "api.example.com", 8443)), "port");
        assert!(!g.matches(&origin(true, "evil.example.com", 443)), "host");
        assert!(!g.matches(&origin(true, "api.example.com.evil.net", 443)));
        let g = grant("http://127.0.0.1:9000");
        assert!(g.matches(&origin(false, "127.0.0.1", 9000)));
        assert!(!g.matches(&origin(false, "127.0.0.1", 9001)));
    }

    #[test]
    fn wildcards_cover_subdomains_ports_and_schemes() {
        let g = grant("https://*.example.com");
        assert!(g.matches(&origin(true, "a.b.example.com", 443)));
        assert!(!g.matches(&origin(true, "example.com", 443)));
        assert!(!g.matches(&origin(true, "badexample.com", 443)));
        let g = grant("*://mail.example.com:*");
        assert!(g.matches(&origin(false, "mail.example.com", 25)));
        assert!(g.matches(&origin(true, "mail.example.com", 443)));
        let g = grant("http://[::1]:8080");
        assert!(g.matches(&origin(false, "::1", 8080)));
    }

    #[test]
    fn bad_grants_are_refused_with_the_reason() {
        for (text, why) in [
            ("api.example.com", "no scheme"),
            ("ftp://x.example.com", "ftp"),
            ("https://x.example.com/path", "without path"),
            ("https://user@x.example.com", "credentials"),
            ("https://x.example.com:0", "port"),
            ("https://x.example.com:http", "port"),
            ("*://x.example.com", "port must be written"),
            ("https://exa mple.com", "not a host name"),
            ("https://", "host"),
            ("https://:443", "not a host name"),
            ("https://[::1", "cannot read host and port"),
        ] {
            let err = AllowedOrigin::parse(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn names_with_hyphens_and_bracketed_v6_without_a_port_are_grants() {
        let g = grant("https://my-api.example.com");
        assert!(g.matches(&origin(true, "my-api.example.com", 443)));
        assert!(grant("https://*.my_corp.example").matches(&origin(
            true,
            "a.my_corp.example",
            443
        )));
        assert!(grant("https://[::1]").matches(&origin(true, "::1", 443)));
    }

    #[test]
    fn every_kind_of_non_public_address_is_recognised() {
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "::",
            "ff02::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(address.parse().unwrap()), "{address}");
        }
        for address in [
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(address.parse().unwrap()), "{address}");
        }
    }

    #[test]
    fn non_public_addresses_need_an_explicit_grant() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let private: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        for address in [
            loopback,
            metadata,
            private,
            mapped,
            "fd00::1".parse().unwrap(),
        ] {
            assert!(!is_public(address), "{address}");
            assert!(!grant("https://*.example.com").may_reach(address));
            assert!(!grant("*://*:*").may_reach(address));
        }
        assert!(is_public(public));
        assert!(grant("https://*.example.com").may_reach(public));
        assert!(grant("http://127.0.0.1:9000").may_reach(loopback));
        assert!(grant("http://127.0.0.1:9000").may_reach(mapped));
        assert!(!grant("http://127.0.0.1:9000").may_reach(private));
        assert!(grant("http://localhost:9000").may_reach(loopback));
        assert!(!grant("http://localhost:9000").may_reach(private));
    }
}
