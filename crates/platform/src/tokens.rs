//! Access-token verification, shared by every service that accepts tokens
//! (the gateway on each request, the realtime service on each socket).
//!
//! Tokens are EdDSA-signed JWTs issued by the auth service. Verifiers hold no
//! secret: they fetch the public keys from the auth service's JWKS endpoint
//! and pick one by the token's `kid`. Choices, each closing a known hole:
//! - the algorithm is pinned to EdDSA (no `alg: none`, no HS256-with-the-
//!   public-key confusion);
//! - `jku`, `jwk` and `x5u` headers are refused, never followed: the token
//!   must not choose the key that verifies it;
//! - `iss`, `aud`, `exp` and `sub` are required, with a small leeway for skew;
//! - an unknown `kid` refreshes the key set at most once per
//!   [`MIN_REFRESH_INTERVAL`], so garbage tokens cannot hammer the auth service.

use std::time::{Duration, Instant};

use jsonwebtoken::{
    decode, decode_header,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::config::VerifierSettings;

/// Longer tokens are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The key set is refetched for an unknown `kid` at most this often.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The claims of a Signalbox access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub jti: String,
}

impl AccessClaims {
    /// Seconds until the token expires (0 when already expired).
    pub fn expires_in(&self) -> u64 {
        self.exp.saturating_sub(now_secs())
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
pub struct TokenVerifier {
    settings: VerifierSettings,
    http: reqwest::Client,
    keys: Mutex<KeyCache>,
}

struct KeyCache {
    set: JwkSet,
    fetched_at: Option<Instant>,
}

impl TokenVerifier {
    pub fn new(settings: VerifierSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client always builds");
        Self {
            settings,
            http,
            keys: Mutex::new(KeyCache {
                set: JwkSet { keys: Vec::new() },
                fetched_at: None,
            }),
        }
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid("algorithm not allowed"));
        }
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() {
            return Err(TokenError::Invalid(
                "embedded key references are not accepted",
            ));
        }
        let kid = header.kid.ok_or(TokenError::Invalid("missing kid"))?;
        let jwk = self.key(&kid).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::UnknownKey)?;

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway_secs;
        validation.validate_nbf = true;

        decode::<AccessClaims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAudience => TokenError::Invalid("wrong audience"),
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::ImmatureSignature => TokenError::Invalid("not valid yet"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Malformed,
            })
    }

    /// The key for `kid`, refreshing the cached set once if it is unknown.
    async fn key(&self, kid: &str) -> Result<Jwk, TokenError> {
        // Holding the lock across the fetch makes concurrent requests with the
        // same new kid wait for one fetch instead of each starting their own.
        let mut cache = self.keys.lock().await;
        if let Some(jwk) = cache.set.find(kid) {
            return Ok(jwk.clone());
        }
        let may_refresh = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= MIN_REFRESH_INTERVAL);
        if !may_refresh {
            return Err(TokenError::UnknownKey);
        }
        cache.fetched_at = Some(Instant::now());
        cache.set = self.fetch().await?;
        cache.set.find(kid).cloned().ok_or(TokenError::UnknownKey)
    }

    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        let unavailable = |e: reqwest::Error| TokenError::KeysUnavailable(e.to_string());
        let set = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unavailable)?
            .json::<JwkSet>()
            .await
            .map_err(unavailable)?;
        tracing::info!(keys = set.keys.len(), "fetched signing keys");
        Ok(set)
    }
}
