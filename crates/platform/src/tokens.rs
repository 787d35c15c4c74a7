//! Access-token verification, shared by every service that accepts tokens
//! (the gateway on each request, the realtime service on each socket,
//! orders on each gRPC call made on a user's behalf): one implementation, so
//! the edge, the socket and the service can never disagree about what a
//! valid token is. How the token is read from a request is
//! [`crate::authorization`]'s job.
//!
//! Tokens are EdDSA-signed JWTs issued by the auth service (the RFC 9068
//! profile, `typ: at+jwt`). Verifiers hold no secret: they fetch the public
//! keys from the auth service's JWKS endpoint and pick one by the token's
//! `kid`. Choices, each closing a known hole (RFC 8725, the JWT BCP):
//! - the algorithm is pinned to EdDSA (no `alg: none`, no HS256 keyed with
//!   the public key);
//! - `jku`, `jwk`, `x5u` and `x5c` headers are refused, never followed: the
//!   token must not choose the key that verifies it; `crit` is refused too,
//!   since no extension is understood here (RFC 7515 §4.1.11);
//! - `typ` must be `at+jwt` (RFC 9068 §4), so an ID token or any other JWT
//!   signed by the same key cannot pass for an access token;
//! - `iss`, `aud`, `exp` and `sub` are required, `nbf` is honoured, with a
//!   small leeway for clock skew;
//! - an unknown `kid` refreshes the key set at most once per
//!   [`MIN_REFRESH_INTERVAL`], so garbage tokens cannot hammer the auth
//!   service; the set is also refetched once its `Cache-Control: max-age`
//!   has passed, so a key the auth service retired stops verifying here.
//!
//! A verification whose key is cached and fresh never waits: not for a
//! refresh another token started, however long the auth service takes to
//! answer it. Refreshes are single-flight: callers that need one while it
//! is in progress wait for it and use its result (see [`TokenVerifier`]).

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{decode, errors::ErrorKind, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::config::VerifierSettings;

/// Longer tokens are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The key set is refetched for an unknown `kid` at most this often.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// How long a fetched key set is used when the response names no max-age.
pub const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// The longest a key set is kept without asking again, whatever it says.
pub const MAX_KEYS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// The JWT `typ` header of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Header members that would let the token pick (or describe) its own key,
/// or demand processing this verifier does not do.
const REFUSED_HEADERS: [&str; 4] = ["jku", "jwk", "x5u", "x5c"];

/// The claims of a Signalbox access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id, or the client id of a service account.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
    /// Space-separated scopes (RFC 9068 §2.2.3, RFC 8693 §4.2). Absent in
    /// tokens issued before scopes existed: they parse, with no scope.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The OAuth client the token was issued to; set for service accounts
    /// (`client_credentials`), where it equals `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl AccessClaims {
    /// The individual scopes of the `scope` claim.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// Whether the token grants `wanted` (an exact, case-sensitive match,
    /// RFC 6749 §3.3).
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scopes().any(|s| s == wanted)
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token is invalid: {0}")]
    Invalid(&'static str),
    #[error("the signing keys cannot be fetched: {0}")]
    KeysUnavailable(String),
}

/// Verifies access tokens against the auth service's published keys.
///
/// Two locks, each of the kind its job needs:
/// - `keys` is a `std::sync::RwLock` around an `Arc` of the current key set.
///   It is held only to clone that `Arc` or to swap in a new one, never
///   across an `.await`, so a verification whose key is cached never waits
///   for anything slow. A blocking lock is the cheap, right tool for a
///   critical section that short and that never spans an `.await`; readers
///   share it, and the only writer is a refresh that just finished.
/// - `refresh` is a `tokio::sync::Mutex`, taken only by callers that need
///   the key set refetched (an unknown `kid`, or a set past its max-age). It
///   is held across the fetch on purpose: that is what makes the refresh
///   single-flight — concurrent callers wait for the one fetch in progress
///   and then use its result, instead of each asking the auth service. It
///   must be an async mutex, because it is held across `.await`.
pub struct TokenVerifier {
    settings: VerifierSettings,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<RefreshState>,
}

/// A fetched key set, never changed once published: a refresh replaces the
/// whole `Arc`.
struct KeySet {
    /// The keys of the set by `kid`, parsed once per fetch rather than on
    /// every verification.
    keys: HashMap<String, DecodingKey>,
    /// Until when `keys` are fresh; `None` until a fetch has succeeded.
    fresh_until: Option<Instant>,
}

impl KeySet {
    /// The key for `kid`, if the set has it and is still fresh.
    fn fresh_key(&self, kid: &str) -> Option<&DecodingKey> {
        let fresh = self.fresh_until.is_some_and(|until| Instant::now() < until);
        self.keys.get(kid).filter(|_| fresh)
    }
}

/// What only refreshers look at, under the `refresh` mutex.
struct RefreshState {
    /// The last fetch attempt, successful or not (rate limit).
    last_attempt: Option<Instant>,
}

/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

impl TokenVerifier {
    pub fn new(settings: VerifierSettings) -> Self {
        Self::with_fetch_timeout(settings, FETCH_TIMEOUT)
    }

    fn with_fetch_timeout(settings: VerifierSettings, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            settings,
            http,
            keys: RwLock::new(Arc::new(KeySet {
                keys: HashMap::new(),
                fresh_until: None,
            })),
            refresh: tokio::sync::Mutex::new(RefreshState { last_attempt: None }),
        }
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let kid = check_header(token)?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;

        let claims = decode::<AccessClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Malformed,
            })?;
        if claims.sub.is_empty() {
            return Err(TokenError::Invalid("missing claim"));
        }
        Ok(claims)
    }

    /// The key set as it is now. The read lock is held for one `Arc` clone.
    fn current(&self) -> Arc<KeySet> {
        // A panic cannot happen while the lock is held (an `Arc` clone or
        // assignment), so a poisoned lock still holds a whole set.
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, set: Arc<KeySet>) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = set;
    }

    /// The key for `kid`: from the cache while it is fresh, without waiting
    /// for anything; otherwise the set is refetched, at most once per
    /// [`MIN_REFRESH_INTERVAL`], by one caller at a time.
    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let seen = self.current();
        if let Some(key) = seen.fresh_key(kid) {
            return Ok(key.clone());
        }

        // Slow path: only callers that need a refresh queue here.
        let mut refresh = self.refresh.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, &seen) {
            // A refresh finished while this caller waited for the mutex: it
            // is the answer for this token too, no second fetch.
            return current.keys.get(kid).cloned().ok_or(TokenError::UnknownKey);
        }
        let cached = current.keys.get(kid).cloned();
        let may_refresh = refresh
            .last_attempt
            .is_none_or(|at| at.elapsed() >= MIN_REFRESH_INTERVAL);
        if !may_refresh {
            return match (cached, current.fresh_until) {
                // Stale but usable: the next allowed refresh will renew it.
                (Some(key), _) => Ok(key),
                (None, Some(_)) => Err(TokenError::UnknownKey),
                // Never fetched successfully: the fault is ours, not the token's.
                (None, None) => Err(TokenError::KeysUnavailable(
                    "the key set has not been fetched yet".to_owned(),
                )),
            };
        }
        refresh.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => {
                let set = Arc::new(KeySet {
                    keys,
                    fresh_until: Some(Instant::now() + max_age),
                });
                self.publish(set.clone());
                set.keys.get(kid).cloned().ok_or(TokenError::UnknownKey)
            }
            // Stale-if-error: a key we had keeps verifying while the auth
            // service is briefly unreachable; new keys must wait for it.
            Err(error) => match cached {
                Some(key) => {
                    tracing::warn!(%error, "key set refresh failed; using the cached keys");
                    Ok(key)
                }
                None => Err(error),
            },
        }
    }

    /// The published keys by `kid`, and how long they may be used. A key
    /// without `kid` or that is not a usable public key is left out: no
    /// token could select it.
    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Duration), TokenError> {
        let unavailable = |e: reqwest::Error| TokenError::KeysUnavailable(e.to_string());
        let response = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?;
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(DEFAULT_KEYS_MAX_AGE, keys_max_age);
        let set = response.json::<JwkSet>().await.map_err(unavailable)?;
        let mut keys = HashMap::with_capacity(set.keys.len());
        for jwk in &set.keys {
            let (Some(kid), Ok(key)) = (&jwk.common.key_id, DecodingKey::from_jwk(jwk)) else {
                tracing::warn!(kid = ?jwk.common.key_id, "unusable key in the key set");
                continue;
            };
            // The first key under a `kid` wins, as in `JwkSet::find`.
            keys.entry(kid.clone()).or_insert(key);
        }
        tracing::info!(
            keys = keys.len(),
            max_age_secs = max_age.as_secs(),
            "fetched signing keys"
        );
        Ok((keys, max_age))
    }
}

/// Checks the JOSE header before any key is looked up; returns the `kid`.
///
/// The header is read as raw JSON rather than through `jsonwebtoken::Header`,
/// which silently drops members it does not know (such as `crit`).
fn check_header(token: &str) -> Result<String, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|_| TokenError::Malformed)?;

    if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
        return Err(TokenError::Invalid("algorithm not allowed"));
    }
    if REFUSED_HEADERS
        .iter()
        .any(|name| header.contains_key(*name))
    {
        return Err(TokenError::Invalid(
            "embedded key references are not accepted",
        ));
    }
    if header.contains_key("crit") {
        return Err(TokenError::Invalid(
            "critical header extensions are not supported",
        ));
    }
    let typ = header.get("typ").and_then(|t| t.as_str()).unwrap_or("");
    // Media type names are case-insensitive; `application/` may be omitted
    // (RFC 7515 §4.1.9).
    let typ = typ.to_ascii_lowercase();
    if typ != ACCESS_TOKEN_TYPE && typ != "application/at+jwt" {
        return Err(TokenError::Invalid("not an access token (typ)"));
    }
    match header.get("kid").and_then(|k| k.as_str()) {
        Some(kid) if !kid.is_empty() => Ok(kid.to_owned()),
        _ => Err(TokenError::Invalid("missing kid")),
    }
}

/// The `max-age` of a `Cache-Control` value, clamped to
/// [`MIN_REFRESH_INTERVAL`]..=[`MAX_KEYS_MAX_AGE`]; `no-cache` / `no-store`
/// mean the shortest interval.
fn keys_max_age(cache_control: &str) -> Duration {
    let mut max_age = DEFAULT_KEYS_MAX_AGE;
    for directive in cache_control.split(',').map(str::trim) {
        let directive = directive.to_ascii_lowercase();
        if directive == "no-cache" || directive == "no-store" {
            return MIN_REFRESH_INTERVAL;
        }
        if let Some(secs) = directive.strip_prefix("max-age=") {
            if let Ok(secs) = secs.trim_matches('"').parse::<u64>() {
                max_age = Duration::from_secs(secs);
            }
        }
    }
    max_age.clamp(MIN_REFRESH_INTERVAL, MAX_KEYS_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
    };

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{json, Value};

    use super::*;

    // The Ed25519 test key of RFC 8037, appendix A: the seed wrapped in its
    // fixed PKCS#8 prefix, and the public key as the JWK `x`.
    const RFC8037_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const PKCS8_ED25519_PREFIX: &str = "302e020100300506032b657004220420";

    fn encoding_key(seed_hex: &str) -> EncodingKey {
        let der = format!("{PKCS8_ED25519_PREFIX}{seed_hex}");
        let bytes: Vec<u8> = (0..der.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&der[i..i + 2], 16).unwrap())
            .collect();
        EncodingKey::from_ed_der(&bytes)
    }

    fn jwks(kids: &[&str]) -> Value {
        let keys: Vec<Value> = kids
            .iter()
            .map(|kid| json!({"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "kid": kid, "alg": "EdDSA", "use": "sig"}))
            .collect();
        json!({ "keys": keys })
    }

    fn claims() -> AccessClaims {
        AccessClaims {
            sub: "user-1".into(),
            iss: "signalbox-auth".into(),
            aud: "signalbox".into(),
            exp: now_secs() + 300,
            iat: now_secs(),
            jti: "j".into(),
            scope: "orders:read orders:write".into(),
            client_id: None,
        }
    }

    fn sign(kid: &str, typ: Option<&str>, claims: &AccessClaims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &encoding_key(RFC8037_SEED)).unwrap()
    }

    /// A JWKS endpoint whose document the test can change, counting fetches.
    struct KeyServer {
        addr: SocketAddr,
        document: Arc<std::sync::Mutex<Value>>,
        fetches: Arc<AtomicUsize>,
    }

    async fn key_server(document: Value, cache_control: &'static str) -> KeyServer {
        let document = Arc::new(std::sync::Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (document.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                async move {
                    (
                        [(http::header::CACHE_CONTROL, cache_control)],
                        axum::Json(body),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The JWKS server: answers until the test's runtime ends.
        tokio::spawn(async move { axum::serve(listener, router).await });
        KeyServer {
            addr,
            document,
            fetches,
        }
    }

    fn verifier(server: &KeyServer) -> TokenVerifier {
        TokenVerifier::new(VerifierSettings {
            jwks_url: format!("http://{}/jwks", server.addr),
            leeway_secs: 0,
            ..VerifierSettings::default()
        })
    }

    /// Ages the cached key set past its max-age, as time would.
    fn go_stale(verifier: &TokenVerifier) {
        let keys = verifier.current().keys.clone();
        verifier.publish(Arc::new(KeySet {
            keys,
            fresh_until: Some(Instant::now()),
        }));
    }

    /// Moves the last fetch attempt back past the rate limit, as time would.
    async fn allow_refresh(verifier: &TokenVerifier) {
        verifier.refresh.lock().await.last_attempt =
            Instant::now().checked_sub(MIN_REFRESH_INTERVAL);
    }

    /// A JWKS endpoint that answers its first fetch at once and holds every
    /// later one (a refresh) until the test releases it, announcing each
    /// held fetch as it arrives: an auth service that stopped answering.
    struct StallingKeyServer {
        addr: SocketAddr,
        fetches: Arc<AtomicUsize>,
        /// One message per held fetch, sent when it reaches the handler.
        held: tokio::sync::mpsc::UnboundedReceiver<()>,
        /// `true` lets the held fetches answer.
        release: tokio::sync::watch::Sender<bool>,
    }

    async fn stalling_key_server(first: Value, later: Value) -> StallingKeyServer {
        let fetches = Arc::new(AtomicUsize::new(0));
        let (held_tx, held) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        let counted = fetches.clone();
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let (held, mut released) = (held_tx.clone(), released.clone());
                let (first, later) = (first.clone(), later.clone());
                async move {
                    if n == 0 {
                        return axum::Json(first);
                    }
                    let _ = held.send(());
                    // Holds the fetch until the test says so; the sender
                    // lives as long as the test, so this cannot fail early.
                    let _ = released.wait_for(|released| *released).await;
                    axum::Json(later)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The JWKS server: answers (or holds) until the test's runtime ends.
        tokio::spawn(async move { axum::serve(listener, router).await });
        StallingKeyServer {
            addr,
            fetches,
            held,
            release,
        }
    }

    /// A verifier of `server`'s keys whose fetches outlast the test's
    /// deadline, so only the test decides when a held fetch ends.
    fn patient_verifier(server: &StallingKeyServer) -> Arc<TokenVerifier> {
        Arc::new(TokenVerifier::with_fetch_timeout(
            VerifierSettings {
                jwks_url: format!("http://{}/jwks", server.addr),
                leeway_secs: 0,
                ..VerifierSettings::default()
            },
            DEADLINE * 4,
        ))
    }

    /// The bound on every wait in these tests: a failure bound, not a
    /// measure of anything.
    const DEADLINE: Duration = Duration::from_secs(15);

    #[tokio::test]
    async fn a_typed_access_token_verifies_and_keeps_its_scopes() {
        let server = key_server(jwks(&["k1"]), "public, max-age=300").await;

        let verified = verifier(&server)
            .verify(&sign("k1", Some("at+jwt"), &claims()))
            .await
            .unwrap();

        assert!(verified.has_scope("orders:read"));
        assert!(verified.has_scope("orders:write"));
        assert!(!verified.has_scope("orders"));
    }

    #[tokio::test]
    async fn a_jwt_not_typed_at_jwt_is_refused() {
        let server = key_server(jwks(&["k1"]), "public, max-age=300").await;
        let verifier = verifier(&server);

        for typ in [None, Some("JWT"), Some("id+jwt")] {
            let error = verifier
                .verify(&sign("k1", typ, &claims()))
                .await
                .unwrap_err();
            assert_eq!(
                error,
                TokenError::Invalid("not an access token (typ)"),
                "{typ:?}"
            );
        }
        verifier
            .verify(&sign("k1", Some("application/AT+JWT"), &claims()))
            .await
            .unwrap();
    }

    #[test]
    fn claims_without_scope_parse_and_grant_nothing() {
        let old: AccessClaims = serde_json::from_value(json!({
            "sub": "u", "iss": "i", "aud": "a", "exp": 1, "iat": 0, "jti": "j"
        }))
        .unwrap();
        assert_eq!(old.scopes().count(), 0);
        assert_eq!(old.client_id, None);
        let shown = serde_json::to_value(&old).unwrap();
        assert!(shown.get("scope").is_none() && shown.get("client_id").is_none());
    }

    #[test]
    fn crit_and_key_reference_headers_are_refused() {
        let body = URL_SAFE_NO_PAD.encode(b"{}");
        for header in [
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "crit": ["exp"], "exp": 1}),
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "x5c": ["MII"]}),
            json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1", "jku": "https://evil.example/jwks"}),
        ] {
            let token = format!("{}.{body}.c2ln", URL_SAFE_NO_PAD.encode(header.to_string()));
            assert!(
                matches!(check_header(&token), Err(TokenError::Invalid(_))),
                "{header}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_kids_refresh_the_key_set_at_most_once_per_interval() {
        let server = key_server(jwks(&["k1"]), "public, max-age=300").await;
        let verifier = verifier(&server);
        verifier
            .verify(&sign("k1", Some("at+jwt"), &claims()))
            .await
            .unwrap();
        assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

        for n in 0..20 {
            let error = verifier
                .verify(&sign(&format!("unknown-{n}"), Some("at+jwt"), &claims()))
                .await
                .unwrap_err();
            assert_eq!(error, TokenError::UnknownKey);
        }

        // The first unknown kid came right after the first fetch: inside the
        // interval, so no fetch at all.
        assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_key_set_is_refetched_and_a_retired_key_stops_verifying() {
        let server = key_server(jwks(&["old", "new"]), "public, max-age=300").await;
        let verifier = verifier(&server);
        let old = sign("old", Some("at+jwt"), &claims());
        verifier.verify(&old).await.unwrap();

        // The auth service retires `old`; the cached set goes stale.
        *server.document.lock().unwrap() = jwks(&["new"]);
        go_stale(&verifier);
        allow_refresh(&verifier).await;

        assert_eq!(verifier.verify(&old).await, Err(TokenError::UnknownKey));
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
        verifier
            .verify(&sign("new", Some("at+jwt"), &claims()))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_cached_key_verifies_while_a_refresh_for_an_unknown_kid_is_held() {
        let mut server = stalling_key_server(jwks(&["k1"]), jwks(&["k1"])).await;
        let verifier = patient_verifier(&server);
        let known = sign("k1", Some("at+jwt"), &claims());
        verifier.verify(&known).await.unwrap();
        allow_refresh(&verifier).await;

        // A token under a kid nobody published starts a refresh, which the
        // key server holds.
        let refreshing = tokio::spawn({
            let (verifier, unknown) = (verifier.clone(), sign("k2", Some("at+jwt"), &claims()));
            async move { verifier.verify(&unknown).await }
        });
        tokio::time::timeout(DEADLINE, server.held.recv())
            .await
            .expect("the refresh reaches the key server")
            .expect("the key server runs");

        let verified = tokio::time::timeout(DEADLINE, verifier.verify(&known))
            .await
            .expect("a token with a cached key does not wait for the held refresh");

        assert_eq!(verified.map(|c| c.sub), Ok("user-1".to_owned()));
        assert!(
            !refreshing.is_finished(),
            "the refresh was still in flight when the cached key verified"
        );
        server.release.send(true).unwrap();
        let refreshed = tokio::time::timeout(DEADLINE, refreshing)
            .await
            .expect("the released refresh completes")
            .unwrap();
        assert_eq!(refreshed, Err(TokenError::UnknownKey));
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_that_need_a_refresh_in_progress_share_its_result() {
        // The refresh publishes `k2`: only a caller that waits for that
        // refresh, rather than being turned away by the rate limit, gets it.
        let mut server = stalling_key_server(jwks(&["k1"]), jwks(&["k1", "k2"])).await;
        let verifier = patient_verifier(&server);
        verifier
            .verify(&sign("k1", Some("at+jwt"), &claims()))
            .await
            .unwrap();
        allow_refresh(&verifier).await;
        let new_key = sign("k2", Some("at+jwt"), &claims());
        let spawn_verify = || {
            let (verifier, token) = (verifier.clone(), new_key.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        };
        let first = spawn_verify();
        tokio::time::timeout(DEADLINE, server.held.recv())
            .await
            .expect("the refresh reaches the key server")
            .expect("the key server runs");

        // Two more callers arrive while the one fetch is held. On this
        // single-threaded test runtime, `yield_now` runs them up to their
        // first wait (the refresh mutex) before the test goes on.
        let waiting = [spawn_verify(), spawn_verify()];
        tokio::task::yield_now().await;
        assert!(waiting.iter().all(|task| !task.is_finished()));
        server.release.send(true).unwrap();

        for task in std::iter::once(first).chain(waiting) {
            let verified = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("every caller gets the refresh's answer")
                .unwrap();
            assert_eq!(verified.map(|c| c.sub), Ok("user-1".to_owned()));
        }
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2, "one refresh");
    }

    #[test]
    fn the_key_set_lifetime_follows_cache_control_within_bounds() {
        assert_eq!(
            keys_max_age("public, max-age=120"),
            Duration::from_secs(120)
        );
        assert_eq!(keys_max_age("max-age=1"), MIN_REFRESH_INTERVAL);
        assert_eq!(keys_max_age("max-age=99999999"), MAX_KEYS_MAX_AGE);
        assert_eq!(keys_max_age("no-store"), MIN_REFRESH_INTERVAL);
        assert_eq!(keys_max_age("public"), DEFAULT_KEYS_MAX_AGE);
    }
}
