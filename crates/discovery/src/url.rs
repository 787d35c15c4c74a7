//! Endpoint URLs: `scheme://host:port`, nothing else.
//!
//! An upstream is configured as a URL (`http://catalog:50053`) and an
//! instance registers one (`http://10.1.2.3:50053`); the balancer keys its
//! endpoints by theirs. A path or query would be meaningless for a gRPC
//! channel, so such a URL is refused instead of silently cut.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("`{url}` is not a URL"))?;
        let scheme = uri
            .scheme_str()
            .with_context(|| format!("`{url}` has no scheme (http://…)"))?
            .to_owned();
        let authority = uri
            .authority()
            .with_context(|| format!("`{url}` has no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            bail!("`{url}` names a path; an endpoint is scheme://host:port");
        }
        let port = match (authority.port_u16(), scheme.as_str()) {
            (Some(port), _) => port,
            (None, "http") => 80,
            (None, "https") => 443,
            (None, _) => bail!("`{url}` has no port"),
        };
        // `[::1]` comes back with its brackets; the resolver wants the bare
        // address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self { scheme, host, port })
    }

    /// The host as an address, when it is one (no name to resolve).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The URL of this target's scheme at `addr` (IPv6 in brackets).
    pub fn at(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme)
    }
}

/// `host:port` of an endpoint URL, for names and logs (`catalog@10.1.2.3:50053`).
pub fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_scheme_host_and_port() {
        let target = Target::parse("http://catalog:50053").unwrap();
        assert_eq!(target.host, "catalog");
        assert_eq!(target.port, 50053);
        assert_eq!(target.ip(), None);
        let v6 = Target::parse("http://[::1]:7").unwrap();
        assert_eq!(v6.ip(), Some("::1".parse().unwrap()));
        assert_eq!(v6.at("[::1]:7".parse().unwrap()), "http://[::1]:7");
        assert_eq!(Target::parse("http://a").unwrap().port, 80);
        for bad in ["catalog:50053", "http://a:1/path", "", "grpc://a"] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(authority("http://10.1.2.3:50053"), "10.1.2.3:50053");
    }
}
