//! Gateway settings. Defaults run the whole system on one machine; compose and
//! Kubernetes override them with `APP__UPSTREAMS__ORDERS=http://orders:50052`
//! and the like (see `signalbox_platform::config::load`).

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use signalbox_discovery::DiscoverySettings;
use signalbox_platform::config::{
    comma_list, AmqpSettings, ListenSettings, TelemetrySettings, VerifierSettings,
};
use signalbox_resilience::CallPolicy;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// The public REST listener.
    pub http: ListenSettings,
    /// Where the services behind the gateway answer gRPC.
    pub upstreams: Upstreams,
    /// How access tokens are verified (the auth service's JWKS).
    pub tokens: VerifierSettings,
    pub timeouts: Timeouts,
    /// How the calls to each upstream are bounded: bulkhead, circuit
    /// breaker, retries of reads (`APP__RESILIENCE__CATALOG__MAX_IN_FLIGHT`,
    /// `…__BREAKER__FAILURE_RATE`, `…__RETRY__MAX_ATTEMPTS`, …).
    #[serde(default)]
    pub resilience: Resilience,
    /// How the instances of each upstream are found
    /// (`APP__DISCOVERY__MODE=dns|registry`, see `signalbox_discovery`):
    /// by resolving the `upstreams` URLs (the default), or in etcd.
    #[serde(default)]
    pub discovery: DiscoverySettings,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Largest total size of the request headers (names, values and their
    /// separators); larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Rate limits of every route, per route class (see [`LimitSettings`]).
    #[serde(default)]
    pub limits: LimitSettings,
    /// Addresses (`10.0.0.7`) or networks (`10.0.0.0/8`) of the reverse
    /// proxies in front of the gateway, whose `X-Forwarded-For` is believed
    /// (`APP__TRUSTED_PROXIES` takes a comma-separated list). Empty: the
    /// client is always the socket's peer and the header is ignored.
    #[serde(default, deserialize_with = "comma_list")]
    pub trusted_proxies: Vec<String>,
    /// The broker, used only by the system census (`GET
    /// /api/system/instances`), connected on the first census and never at
    /// start-up. `None` (`amqp: ~` in the file): the census answers 503.
    #[serde(default = "default_amqp")]
    pub amqp: Option<AmqpSettings>,
    /// What the live page at `/` is told about the system (`GET
    /// /api/config`).
    #[serde(default)]
    pub page: PageSettings,
    pub telemetry: TelemetrySettings,
}

/// The live page's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PageSettings {
    /// The WebSocket URLs of the realtime instances the page may open its
    /// socket on (`APP__PAGE__REALTIME_URLS` takes a comma-separated list);
    /// `{host}` stands for the host name the page was loaded from, so one
    /// setting serves `localhost` and `127.0.0.1` alike. Each realtime
    /// instance must allow the page's origin (its `ws.allowed_origins`).
    #[serde(deserialize_with = "comma_list")]
    pub realtime_urls: Vec<String>,
}

impl Default for PageSettings {
    /// The two realtime instances of `scripts/up`.
    fn default() -> Self {
        Self {
            realtime_urls: vec![
                "ws://{host}:8081/ws".to_owned(),
                "ws://{host}:8091/ws".to_owned(),
            ],
        }
    }
}

fn default_amqp() -> Option<AmqpSettings> {
    Some(AmqpSettings::default())
}

/// The rate limits of the edge (see `crate::limits`): one per route class,
/// each counted per client IP and, on routes that take a token, per user
/// (the verified token's subject) as well.
///
/// By default each gateway instance counts on its own, in memory: behind a
/// balancer with N instances a client gets up to N times each rate. With
/// `redis_url` set (`APP__LIMITS__REDIS_URL=redis://127.0.0.1:6379`) the
/// instances share their counts in Redis and the rates hold for the whole
/// edge; while Redis is unreachable each instance counts alone again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// `/api/auth/*` and `/oauth/*`: public, per client IP only. The limit
    /// that matters against password guessing, per account, is the auth
    /// service's, kept in its database.
    pub credentials: ClassLimits,
    /// `GET` routes: the catalog, the JWKS, reading orders, the census.
    pub reads: ClassLimits,
    /// Routes that change something: placing, revising, cancelling orders.
    pub writes: ClassLimits,
    /// Operator routes (scope `catalog:admin`, system internals).
    pub admin: ClassLimits,
    /// Redis, for counts shared by every gateway instance; `None`: each
    /// instance counts alone.
    #[serde(default, serialize_with = "optional_secret")]
    pub redis_url: Option<SecretString>,
    /// Prefix of the gateway's keys in Redis, so that several systems (or
    /// tests) can share one server.
    pub redis_prefix: String,
}

/// One route class's limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ClassLimits {
    /// Per client IP (one address can hold many users: NAT, offices).
    pub per_ip: Rate,
    /// Per user, on routes that take a token; `None` on public routes.
    #[serde(default)]
    pub per_user: Option<Rate>,
}

/// `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub burst: u32,
    pub per_minute: u32,
}

impl Rate {
    pub const fn new(burst: u32, per_minute: u32) -> Self {
        Self { burst, per_minute }
    }
}

/// A secret that may be absent, serialised like `secret::serialize`.
fn optional_secret<S: serde::Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => signalbox_platform::config::secret::serialize(secret, serializer),
        None => serializer.serialize_none(),
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            credentials: ClassLimits {
                per_ip: Rate::new(20, 60),
                per_user: None,
            },
            reads: ClassLimits {
                per_ip: Rate::new(200, 1200),
                per_user: Some(Rate::new(100, 600)),
            },
            writes: ClassLimits {
                per_ip: Rate::new(60, 300),
                per_user: Some(Rate::new(30, 120)),
            },
            admin: ClassLimits {
                per_ip: Rate::new(20, 60),
                per_user: Some(Rate::new(20, 60)),
            },
            redis_url: None,
            redis_prefix: "signalbox:gateway:limits".to_owned(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

/// The gRPC address of each upstream service (server-side discovery: a DNS
/// name that the platform resolves, such as a Kubernetes Service).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upstreams {
    pub auth: String,
    pub orders: String,
    pub catalog: String,
}

/// One [`CallPolicy`] per upstream, each with its own bulkhead and breaker,
/// so that a broken catalog fills and opens only catalog's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Resilience {
    pub auth: CallPolicy,
    pub orders: CallPolicy,
    pub catalog: CallPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timeouts {
    /// Whole-request budget at the edge, answered with 504 when exceeded.
    /// Every upstream call of the request inherits what is left of it (and
    /// passes it on in `grpc-timeout`).
    pub request_secs: u64,
    /// Deadline of one gRPC call to an upstream, when the request has more
    /// budget left than this.
    pub upstream_secs: u64,
    /// Budget of opening a connection to an upstream.
    pub connect_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http: ListenSettings::on_port(8080),
            upstreams: Upstreams::default(),
            tokens: VerifierSettings::default(),
            timeouts: Timeouts::default(),
            resilience: Resilience::default(),
            discovery: DiscoverySettings::default(),
            max_body_bytes: 64 * 1024,
            max_header_bytes: default_max_header_bytes(),
            limits: LimitSettings::default(),
            trusted_proxies: Vec::new(),
            amqp: default_amqp(),
            page: PageSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            auth: "http://127.0.0.1:50051".to_owned(),
            orders: "http://127.0.0.1:50052".to_owned(),
            catalog: "http://127.0.0.1:50053".to_owned(),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_secs: 10,
            upstream_secs: 5,
            connect_secs: 2,
        }
    }
}
