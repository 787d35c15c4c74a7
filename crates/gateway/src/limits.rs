//! Abuse limits at the edge: who the client is (its IP), how fast it may
//! hit the credential endpoints, and how large its request headers may be.
//!
//! - **Client IP.** The socket's peer address. `X-Forwarded-For` is believed
//!   only when the peer is one of `trusted_proxies`; then the client is the
//!   rightmost address in the header that is not itself a trusted proxy
//!   (everything left of it could have been written by the client).
//! - **Per-IP rate limit** on `/api/auth/*` and `/oauth/*`: a token bucket per
//!   client IP, in this process's memory, so each gateway instance counts on
//!   its own. Past it: 429 with `Retry-After`. The per-account limit on
//!   failed logins lives in the auth service (shared through its database).
//! - **Header size**: requests whose headers exceed `max_header_bytes` get a
//!   431 problem before any routing.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use signalbox_platform::{ErrorCode, Problem};

use crate::{config::RateLimitSettings, oauth_error::OAuthError};

/// Buckets kept before full (idle) ones are dropped.
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// A trusted proxy: an address, or a network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{raw}` has an invalid prefix length"))?,
            None => bits,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 peers of a dual-stack listener show up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Network>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| Network::parse(e))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy,
    /// the rightmost untrusted address of `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Several headers are one list, in order (RFC 9110 §5.3).
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // Garbage: nothing further left can be trusted either.
                break;
            };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// A token bucket per client IP.
pub struct RateLimiter {
    burst: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(settings: &RateLimitSettings) -> Self {
        Self {
            burst: f64::from(settings.burst.max(1)),
            per_sec: f64::from(settings.per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; when there is none, how long until there is.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        // A poisoned lock only means another request panicked mid-update;
        // the counts are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_CLIENTS {
            let (burst, per_sec) = (self.burst, self.per_sec);
            buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < burst);
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * self.per_sec;
        bucket.tokens = refilled.min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if self.per_sec > 0.0 {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_sec,
            ))
        } else {
            Err(Duration::from_secs(3600))
        }
    }
}

/// How a throttled request is answered: the route family's error format.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    /// RFC 9457 problem (`/api/auth/*`).
    Problem,
    /// RFC 6749 error JSON with `no-store` (`/oauth/*`).
    OAuth,
}

/// The state of the per-IP limit middleware.
#[derive(Clone)]
pub struct PerIp {
    pub limiter: Arc<RateLimiter>,
    pub proxies: Arc<TrustedProxies>,
    pub answer: Answer,
}

/// Middleware: one token per request from the client's bucket, or 429.
pub async fn per_ip(State(limit): State<PerIp>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client = limit.proxies.client_ip(peer, request.headers());
    match limit.limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            // Whole seconds, rounded up, at least one.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let secs = secs.max(1);
            tracing::warn!(%client, retry_after_secs = secs, "client rate limited");
            let description = "too many requests from this address; retry later";
            let mut response = match limit.answer {
                Answer::Problem => {
                    Problem::new(ErrorCode::RateLimited, description).into_response()
                }
                Answer::OAuth => OAuthError::slow_down(description).into_response(),
            };
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

/// Middleware: 431 when the request headers are larger than the limit.
pub async fn header_size(State(max): State<usize>, request: Request, next: Next) -> Response {
    let size: usize = request
        .headers()
        .iter()
        // `name: value\r\n`, as on the wire.
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > max {
        tracing::warn!(size, max, "request headers too large");
        return headers_too_large(max);
    }
    next.run(request).await
}

/// A 431 problem document.
fn headers_too_large(max: usize) -> Response {
    Problem::new(
        ErrorCode::HeadersTooLarge,
        format!("the request headers exceed {max} bytes"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let client = proxies(&[]).client_ip(ip("203.0.113.9"), &forwarded(&["198.51.100.1"]));
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // The client wrote a fake first entry; the proxies appended the rest.
        let headers = forwarded(&["1.2.3.4, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), &headers),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn garbage_in_the_header_stops_the_walk_at_the_last_trusted_hop() {
        let trusted = proxies(&["10.0.0.1"]);
        let client = trusted.client_ip(ip("10.0.0.1"), &forwarded(&["not-an-ip"]));
        assert_eq!(client, ip("10.0.0.1"));
    }

    #[test]
    fn networks_match_by_prefix_and_ipv4_mapped_peers_count_as_ipv4() {
        let net = Network::parse("192.168.0.0/16").unwrap();
        assert!(net.contains(ip("192.168.44.1")));
        assert!(!net.contains(ip("192.169.0.1")));
        assert!(net.contains(ip("::ffff:192.168.1.1")));
        assert!(Network::parse("::1").unwrap().contains(ip("::1")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nope").is_err());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let limiter = RateLimiter::new(&RateLimitSettings {
            burst: 3,
            per_minute: 6,
        });
        let client = ip("203.0.113.1");
        for _ in 0..3 {
            limiter.check(client).unwrap();
        }
        let wait = limiter.check(client).unwrap_err();
        assert!(
            wait <= Duration::from_secs(10) && wait > Duration::from_secs(9),
            "{wait:?}"
        );
        // Another address has its own bucket.
        limiter.check(ip("203.0.113.2")).unwrap();
    }
}
