//! Abuse limits at the edge: who the client is (its IP, and on routes that
//! take a token, its user), how fast it may call each class of routes, and
//! how large its request headers may be.
//!
//! - **Client IP.** The socket's peer address. `X-Forwarded-For` is believed
//!   only when the peer is one of `trusted_proxies`; then the client is the
//!   rightmost address in the header that is not itself a trusted proxy
//!   (everything left of it could have been written by the client).
//! - **Rate limits on every route** ([`enforce`]), per route class
//!   ([`Class`]: credentials, reads, writes, admin; the table's
//!   `routes::class_of` says which route is which). Each request takes one
//!   unit from its client IP's limit of the class and, when it carries a
//!   token that verifies, from the token subject's limit too, both or
//!   neither. The algorithm is GCRA ([`gcra`]); the counts live in this
//!   process's memory, or in Redis when `limits.redis_url` is set, so that
//!   every gateway instance shares them ([`shared`]), falling back to memory
//!   while Redis is unreachable. Past a limit: 429, problem `rate_limited`
//!   (the OAuth endpoints: `slow_down` in their own format) with
//!   `Retry-After`. Every limited response, refused or not, says where the
//!   client stands in the `RateLimit-Policy` and `RateLimit` fields of the
//!   IETF draft ([`fields`]). The per-account limit on failed logins lives
//!   in the auth service (shared through its database).
//! - **Header size**: requests whose headers exceed `max_header_bytes` get a
//!   431 problem before any routing.

pub mod gcra;
pub mod shared;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use secrecy::ExposeSecret;
use signalbox_platform::{authorization, tokens::TokenVerifier, ErrorCode, Problem};

use crate::{
    auth::Verified,
    config::{ClassLimits, LimitSettings, Rate},
    oauth_error::OAuthError,
};

use self::{
    gcra::{Cell, LocalCells},
    shared::SharedCells,
};

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

/// A class of routes with limits of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Credentials,
    Reads,
    Writes,
    Admin,
}

impl Class {
    /// The name of its per-IP policy in the `RateLimit*` fields; the
    /// per-user policy adds `-user`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::Reads => "reads",
            Self::Writes => "writes",
            Self::Admin => "admin",
        }
    }
}

/// How a refused request is answered: the route family's error format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// RFC 9457 problem (`/api/*`).
    Problem,
    /// RFC 6749 error JSON with `no-store` (`/oauth/*`).
    OAuth,
}

/// Whose count a request takes from: `reads:ip:203.0.113.9`,
/// `reads:user:<sub>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    pub fn ip(class: Class, ip: IpAddr) -> Self {
        Self(format!("{}:ip:{ip}", class.name()))
    }

    pub fn user(class: Class, subject: &str) -> Self {
        Self(format!("{}:user:{subject}", class.name()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u64,
    /// Until the whole burst is available again.
    pub reset: Duration,
    /// For a refusal: until one request is admitted again.
    pub retry_after: Duration,
}

/// One limit that applies to a request: its policy name and its rate.
#[derive(Debug, Clone)]
struct Applied {
    policy: String,
    rate: Rate,
    key: Key,
}

/// The limits of every class, the stores that count them, and what is
/// needed to tell who a request is from.
pub struct Limits {
    settings: LimitSettings,
    local: LocalCells,
    shared: Option<SharedCells>,
    proxies: TrustedProxies,
    verifier: Arc<TokenVerifier>,
    classify: fn(&Method, &str) -> Option<(Class, Answer)>,
}

impl Limits {
    /// `classify` names the class of a route from its method and matched
    /// path (the routing table's `routes::class_of`); `None`: not limited.
    pub fn new(
        settings: &LimitSettings,
        proxies: TrustedProxies,
        verifier: Arc<TokenVerifier>,
        classify: fn(&Method, &str) -> Option<(Class, Answer)>,
    ) -> Result<Self, redis::RedisError> {
        let shared = settings
            .redis_url
            .as_ref()
            .map(|url| SharedCells::new(url.expose_secret(), settings.redis_prefix.clone()))
            .transpose()?;
        Ok(Self {
            settings: settings.clone(),
            local: LocalCells::default(),
            shared,
            proxies,
            verifier,
            classify,
        })
    }

    fn class_limits(&self, class: Class) -> ClassLimits {
        match class {
            Class::Credentials => self.settings.credentials,
            Class::Reads => self.settings.reads,
            Class::Writes => self.settings.writes,
            Class::Admin => self.settings.admin,
        }
    }

    /// The limits that apply to a request of `class` from `ip`, by `user`.
    fn applied(&self, class: Class, ip: IpAddr, user: Option<&str>) -> Vec<Applied> {
        let limits = self.class_limits(class);
        let mut applied = vec![Applied {
            policy: class.name().to_owned(),
            rate: limits.per_ip,
            key: Key::ip(class, ip),
        }];
        if let (Some(rate), Some(user)) = (limits.per_user, user) {
            applied.push(Applied {
                policy: format!("{}-user", class.name()),
                rate,
                key: Key::user(class, user),
            });
        }
        applied
    }

    /// One decision per limit: from Redis when it is configured and
    /// answers, from this instance's memory otherwise.
    async fn decide(&self, applied: &[Applied]) -> Vec<Decision> {
        let cells: Vec<(Key, Cell)> = applied
            .iter()
            .map(|a| (a.key.clone(), Cell::of(a.rate)))
            .collect();
        if let Some(shared) = &self.shared {
            if let Some(decisions) = shared.check(&cells).await {
                return decisions;
            }
        }
        self.local.check(&cells)
    }

    /// The verified subject of the request's bearer token, if it has one.
    /// A missing or bad token is not refused here: the route's extractor
    /// answers it, and the request still counts against its IP.
    async fn user(&self, headers: &HeaderMap) -> Option<Verified> {
        let token = authorization::bearer_in(headers).ok()?;
        let claims = self.verifier.verify(token).await.ok()?;
        Some(Verified::new(token, claims))
    }
}

/// Middleware on every route of the table: the request's limits, then the
/// route, then the `RateLimit*` fields on whatever it answers.
pub async fn enforce(
    State(limits): State<Arc<Limits>>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some((class, answer)) = route.and_then(|r| (limits.classify)(request.method(), &r)) else {
        return next.run(request).await;
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let client = limits.proxies.client_ip(peer, request.headers());
    let user = match limits.class_limits(class).per_user {
        Some(_) => limits.user(request.headers()).await,
        None => None,
    };
    // The route's extractor takes the verified token from here instead of
    // verifying it a second time.
    let user = user.map(|verified| {
        let subject = verified.subject().to_owned();
        request.extensions_mut().insert(verified);
        subject
    });
    let applied = limits.applied(class, client, user.as_deref());
    let decisions = limits.decide(&applied).await;

    let refusal = decisions
        .iter()
        .filter(|d| !d.allowed)
        .map(|d| d.retry_after)
        .max();
    let mut response = match refusal {
        None => next.run(request).await,
        Some(wait) => {
            let secs = whole_secs(wait).max(1);
            tracing::warn!(%client, user = user.as_deref().unwrap_or("-"), class = class.name(), retry_after_secs = secs, "client rate limited");
            let description = "too many requests; retry later";
            let mut refused = match answer {
                Answer::Problem => {
                    Problem::new(ErrorCode::RateLimited, description).into_response()
                }
                Answer::OAuth => OAuthError::slow_down(description).into_response(),
            };
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            refused
        }
    };
    fields::insert(response.headers_mut(), &applied, &decisions);
    response
}

/// Whole seconds, rounded up.
fn whole_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The `RateLimit-Policy` and `RateLimit` response fields, as defined by
/// draft-ietf-httpapi-ratelimit-headers-10 (the latest revision; the field
/// syntax is the one introduced in -08): each is a Structured Fields list
/// with one item per policy, a String naming it with parameters
/// `q` (quota) and `w` (window, seconds) in the policy field, `r`
/// (remaining) and `t` (seconds until the quota is whole again) in the
/// other:
///
/// ```text
/// RateLimit-Policy: "reads";q=200;w=10, "reads-user";q=100;w=10
/// RateLimit: "reads";r=199;t=1, "reads-user";r=99;t=1
/// ```
///
/// For a GCRA limit the quota is the burst and the window is the time the
/// burst takes to refill.
pub mod fields {
    use super::*;

    pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

    pub(super) fn insert(headers: &mut HeaderMap, applied: &[Applied], decisions: &[Decision]) {
        let policy = applied
            .iter()
            .map(|a| {
                let window = whole_secs(Cell::of(a.rate).tolerance);
                format!("\"{}\";q={};w={window}", a.policy, a.rate.burst)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let state = applied
            .iter()
            .zip(decisions)
            .map(|(a, d)| {
                format!(
                    "\"{}\";r={};t={}",
                    a.policy,
                    d.remaining,
                    whole_secs(d.reset)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        // Policy names are ours and plain ASCII, so both always parse.
        if let (Ok(policy), Ok(state)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, state);
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
}
