//! Service accounts: OAuth clients that get access tokens for themselves
//! with the `client_credentials` grant (RFC 6749 §4.4), for machine-to-machine
//! calls through the gateway.
//!
//! An operator creates one with `auth create-client --id reporting
//! --scopes "orders:read"`; the service generates the secret, prints it once
//! and stores only its SHA-256. The token it issues has the client id as
//! `sub` and `client_id` (RFC 9068 §2.2), the account's scopes, and no
//! refresh token (RFC 6749 §4.4.3: the client can always authenticate
//! again).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{error::AuthError, repo, scope::Scopes};

/// Random bytes in a client secret.
pub const SECRET_BYTES: usize = 32;
/// Longer presented secrets are refused without a query.
const MAX_SECRET_LEN: usize = 128;

/// A client id: 3 to 64 characters of `a-z 0-9 . _ -`, starting with a
/// letter or digit, and never shaped like a UUID. Access tokens of service
/// accounts carry it as `sub`, where user tokens carry a user's UUID: the
/// two can never collide, so no service account can act as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(3..=64).contains(&len) {
            return Err("a client id has 3 to 64 characters".to_owned());
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
        if !raw.chars().all(allowed) || !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(
                "a client id is lower-case letters, digits, `.`, `_` and `-`, starting with a letter or digit"
                    .to_owned(),
            );
        }
        if uuid::Uuid::parse_str(raw).is_ok() {
            return Err("a client id must not look like a UUID (user ids are UUIDs)".to_owned());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A freshly created service account; the only time its secret is known.
pub struct NewClient {
    pub client_id: ClientId,
    pub secret: String,
    pub scopes: Scopes,
}

/// A service account whose secret was just verified.
#[derive(Debug, Clone)]
pub struct AuthenticatedClient {
    pub client_id: ClientId,
    pub scopes: Scopes,
}

/// Why `create` failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateClientError {
    #[error("{0}")]
    Invalid(String),
    #[error("a service account `{0}` already exists")]
    Taken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a service account with a new random secret.
pub async fn create(
    pool: &PgPool,
    client_id: &str,
    scopes: &str,
) -> Result<NewClient, CreateClientError> {
    let client_id = ClientId::parse(client_id).map_err(CreateClientError::Invalid)?;
    let scopes = Scopes::parse_known(scopes).map_err(CreateClientError::Invalid)?;
    if scopes.is_empty() {
        return Err(CreateClientError::Invalid(
            "a service account needs at least one scope".to_owned(),
        ));
    }
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let stored = secret_hash(&secret);
    if !repo::insert_service_account(pool, client_id.as_str(), &stored, &scopes.to_string()).await?
    {
        return Err(CreateClientError::Taken(client_id.as_str().to_owned()));
    }
    tracing::info!(client_id = client_id.as_str(), scope = %scopes, "service account created");
    Ok(NewClient {
        client_id,
        secret,
        scopes,
    })
}

/// The service account `client_id` if `secret` is its secret and it is not
/// disabled; `None` otherwise, whatever the reason.
pub async fn authenticate(
    pool: &PgPool,
    client_id: &str,
    secret: &str,
) -> Result<Option<AuthenticatedClient>, AuthError> {
    let Ok(client_id) = ClientId::parse(client_id) else {
        return Ok(None);
    };
    if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
        return Ok(None);
    }
    let presented = secret_hash(secret);
    let Some(account) = repo::service_account(pool, client_id.as_str()).await? else {
        return Ok(None);
    };
    if !constant_time_eq(&presented, &account.secret_hash) || account.disabled_at.is_some() {
        return Ok(None);
    }
    // Stored scopes were validated at creation; a hand-edited row that no
    // longer parses grants nothing rather than failing every request.
    let scopes = Scopes::parse(&account.scope).unwrap_or_default();
    Ok(Some(AuthenticatedClient { client_id, scopes }))
}

/// The stored form of a client secret.
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of the value matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_short_lower_case_names_never_uuids() {
        for ok in ["reporting", "svc-1", "billing.export_v2"] {
            assert!(ClientId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Reporting",
            "-svc",
            "has space",
            "0190a1b2-0000-7000-8000-000000000001",
            "0190a1b200007000800000000000000a",
            &"a".repeat(65),
        ] {
            assert!(ClientId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_bytes_compare_equal_and_nothing_else_does() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
