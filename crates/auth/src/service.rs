//! The auth use cases — register, log in, refresh, the token endpoint's
//! grants, revocation — independent of the transport that calls them (gRPC
//! here; the gateway maps REST and the OAuth endpoints onto it).
//!
//! Sessions are refresh-token families. A login starts a family; each
//! refresh rotates it: the presented token is marked rotated and a successor
//! joins the family. A token presented after it was rotated means two
//! parties hold it — the client and a thief — and the service cannot tell
//! which is which, so it revokes the whole family and both must log in again
//! (OAuth 2.0 Security BCP, refresh token rotation).

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    clients::{self, AuthenticatedClient},
    config::{Settings, TokenSettings},
    domain::{Email, Password},
    error::AuthError,
    passwords::Passwords,
    repo,
    scope::Scopes,
    throttle::Throttle,
    tokens::{refresh_token_hash, AccessToken, NewRefreshToken, TokenIssuer},
};

/// Longer strings cannot be refresh tokens; refused without a query.
const MAX_REFRESH_TOKEN_LEN: usize = 128;

pub struct Auth {
    pool: PgPool,
    passwords: Passwords,
    issuer: TokenIssuer,
    refresh_ttl: chrono::Duration,
    /// What users' access tokens grant.
    user_scopes: Scopes,
    throttle: Throttle,
}

/// A request to the token endpoint (RFC 6749 §3.2), as the client sent it.
#[derive(Default)]
pub struct TokenRequest {
    pub grant_type: String,
    pub refresh_token: String,
    pub scope: String,
    /// Client id and secret, when the client authenticated.
    pub client: Option<(String, String)>,
}

/// The error codes of RFC 6749 §5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
}

/// A refusal the token endpoint's protocol defines: an answer to the client,
/// not a failure of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantError {
    pub code: GrantErrorCode,
    pub description: String,
}

impl GrantError {
    fn new(code: GrantErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

/// How a token request ends when it does not issue a token.
#[derive(Debug)]
pub enum TokenFailure {
    /// Answer the client with this RFC 6749 error.
    Refused(GrantError),
    /// Throttled, or the service failed.
    Failed(AuthError),
}

impl From<AuthError> for TokenFailure {
    fn from(error: AuthError) -> Self {
        Self::Failed(error)
    }
}

impl From<GrantError> for TokenFailure {
    fn from(error: GrantError) -> Self {
        Self::Refused(error)
    }
}

/// A registered account.
#[derive(Debug)]
pub struct Registered {
    pub user_id: Uuid,
    pub email: Email,
}

/// What a login, a refresh or a client-credentials grant hands out.
#[derive(Debug)]
pub struct Session {
    /// The subject: a user id, or a service account's client id.
    pub subject: String,
    pub access: AccessToken,
    /// Empty for a service account (it authenticates again instead).
    pub refresh_token: String,
}

impl Auth {
    pub fn new(
        pool: PgPool,
        passwords: Passwords,
        issuer: TokenIssuer,
        settings: &Settings,
    ) -> Result<Self, AuthError> {
        let tokens: &TokenSettings = &settings.tokens;
        let refresh_ttl = i64::try_from(tokens.refresh_ttl_secs)
            .map(chrono::Duration::seconds)
            .unwrap_or(chrono::Duration::MAX);
        let user_scopes = Scopes::parse(&tokens.user_scopes)
            .map_err(|e| AuthError::Internal(format!("tokens.user_scopes: {e}")))?;
        Ok(Self {
            throttle: Throttle::new(pool.clone(), &settings.throttle),
            pool,
            passwords,
            issuer,
            refresh_ttl,
            user_scopes,
        })
    }

    #[tracing::instrument(skip_all, fields(user_id))]
    pub async fn register(&self, email: &str, password: String) -> Result<Registered, AuthError> {
        let email = Email::parse(email).map_err(AuthError::InvalidInput)?;
        let password = Password::parse(password).map_err(AuthError::InvalidInput)?;

        let password_hash = self.passwords.hash(password).await?;
        let user_id = Uuid::now_v7();
        if !repo::insert_user(&self.pool, user_id, &email, &password_hash).await? {
            return Err(AuthError::EmailTaken);
        }
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        tracing::info!("user registered");
        Ok(Registered { user_id, email })
    }

    #[tracing::instrument(skip_all, fields(user_id))]
    pub async fn login(&self, email: &str, password: String) -> Result<Session, AuthError> {
        // Counted before the password is checked, known email or not.
        let throttle_key = Throttle::login_key(email);
        self.throttle
            .attempt(&throttle_key)
            .await
            .inspect_err(|_| login_outcome("throttled"))?;

        // An email that does not parse cannot belong to an account; it takes
        // the unknown-user path, dummy hash included.
        let user = match Email::parse(email) {
            Ok(email) => repo::user_by_email(&self.pool, &email).await?,
            Err(_) => None,
        };
        let (user_id, stored) = match user {
            Some(user) => (Some(user.id), Some(user.password_hash)),
            None => (None, None),
        };
        let verified = self
            .passwords
            .verify(SecretString::from(password), stored)
            .await?;
        let user_id = match user_id {
            Some(id) if verified => id,
            _ => {
                tracing::info!(known_user = user_id.is_some(), "login refused");
                login_outcome("refused");
                return Err(AuthError::InvalidCredentials);
            }
        };
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        self.throttle.succeeded(&throttle_key).await?;

        let access = self
            .issuer
            .issue(&user_id.to_string(), &self.user_scopes, None)?;
        let refresh = NewRefreshToken::generate();
        let family_id = Uuid::now_v7();
        let mut conn = self.pool.acquire().await?;
        repo::insert_refresh_token(
            &mut conn,
            &refresh.hash,
            user_id,
            family_id,
            self.refresh_expiry(),
        )
        .await?;
        tracing::info!(%family_id, "logged in");
        login_outcome("success");
        token_issued("password");
        Ok(Session {
            subject: user_id.to_string(),
            access,
            refresh_token: refresh.token,
        })
    }

    /// Rotates a refresh token. `scope` may narrow the new access token to
    /// part of what the family grants (RFC 6749 §6); the refresh token keeps
    /// the whole grant.
    #[tracing::instrument(skip_all, fields(user_id, family_id))]
    pub async fn refresh(&self, token: &str, scope: &str) -> Result<Session, AuthError> {
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(AuthError::InvalidRefreshToken);
        }
        let requested = Scopes::parse(scope).map_err(AuthError::InvalidScope)?;
        let granted = self.user_scopes.grant(&requested).ok_or_else(|| {
            AuthError::InvalidScope(format!("the refresh token does not grant `{requested}`"))
        })?;
        let presented = refresh_token_hash(token);

        // One transaction: the row lock taken by `lock_refresh_token` is held
        // until commit, so concurrent refreshes of one token run one by one
        // and the second sees the first's rotation (and is treated as reuse).
        let mut tx = self.pool.begin().await?;
        let Some(row) = repo::lock_refresh_token(&mut tx, &presented).await? else {
            tracing::info!("unknown refresh token");
            return Err(AuthError::InvalidRefreshToken);
        };
        let span = tracing::Span::current();
        span.record("user_id", tracing::field::display(row.user_id));
        span.record("family_id", tracing::field::display(row.family_id));

        if row.rotated_at.is_some() || row.revoked_at.is_some() {
            let revoked = repo::revoke_family(&mut tx, row.family_id).await?;
            tx.commit().await?;
            tracing::warn!(
                revoked,
                already_revoked = row.revoked_at.is_some(),
                "refresh token reuse detected; family revoked"
            );
            metrics::counter!("auth_refresh_reuse_detected_total").increment(1);
            return Err(AuthError::InvalidRefreshToken);
        }
        if row.expires_at <= Utc::now() {
            tracing::info!(expired_at = %row.expires_at, "expired refresh token");
            return Err(AuthError::InvalidRefreshToken);
        }

        // Sign before committing: if signing failed after the commit, the
        // client would have lost its session for nothing.
        let access = self
            .issuer
            .issue(&row.user_id.to_string(), &granted, None)?;
        let successor = NewRefreshToken::generate();
        repo::mark_rotated(&mut tx, &presented).await?;
        repo::insert_refresh_token(
            &mut tx,
            &successor.hash,
            row.user_id,
            row.family_id,
            self.refresh_expiry(),
        )
        .await?;
        tx.commit().await?;
        tracing::info!("refresh token rotated");
        token_issued("refresh_token");
        Ok(Session {
            subject: row.user_id.to_string(),
            access,
            refresh_token: successor.token,
        })
    }

    /// The token endpoint (RFC 6749 §3.2): dispatches on `grant_type`.
    /// Only `refresh_token` and `client_credentials` are offered; the
    /// password grant is refused on purpose (RFC 9700 §2.4: it hands the
    /// user's password to the client), and so is anything else.
    #[tracing::instrument(skip_all, fields(grant_type = %request.grant_type))]
    pub async fn token(&self, request: TokenRequest) -> Result<Session, TokenFailure> {
        use GrantErrorCode::*;
        match request.grant_type.as_str() {
            "refresh_token" => {
                if let Some((id, secret)) = &request.client {
                    // The refresh tokens of this service belong to users of
                    // the first-party app (a public client); a service
                    // account never gets one.
                    self.authenticate_client(id, secret).await?;
                    return Err(GrantError::new(
                        UnauthorizedClient,
                        "service accounts may only use the client_credentials grant",
                    )
                    .into());
                }
                if request.refresh_token.is_empty() {
                    return Err(GrantError::new(
                        InvalidRequest,
                        "the refresh_token parameter is required",
                    )
                    .into());
                }
                match self.refresh(&request.refresh_token, &request.scope).await {
                    Ok(session) => Ok(session),
                    Err(AuthError::InvalidRefreshToken) => Err(GrantError::new(
                        InvalidGrant,
                        crate::error::INVALID_REFRESH_TOKEN,
                    )
                    .into()),
                    Err(AuthError::InvalidScope(why)) => {
                        Err(GrantError::new(InvalidScope, why).into())
                    }
                    Err(other) => Err(other.into()),
                }
            }
            "client_credentials" => {
                let Some((id, secret)) = &request.client else {
                    return Err(GrantError::new(
                        InvalidClient,
                        "client authentication is required",
                    )
                    .into());
                };
                let client = self.authenticate_client(id, secret).await?;
                let requested = Scopes::parse(&request.scope)
                    .map_err(|why| GrantError::new(InvalidScope, why))?;
                let granted = client.scopes.grant(&requested).ok_or_else(|| {
                    GrantError::new(
                        InvalidScope,
                        format!("the client may not request `{requested}`"),
                    )
                })?;
                let subject = client.client_id.as_str();
                let access = self
                    .issuer
                    .issue(subject, &granted, Some(subject))
                    .map_err(AuthError::from)?;
                tracing::info!(client_id = subject, scope = %granted, "client token issued");
                token_issued("client_credentials");
                Ok(Session {
                    subject: subject.to_owned(),
                    access,
                    refresh_token: String::new(),
                })
            }
            "" => {
                Err(GrantError::new(InvalidRequest, "the grant_type parameter is required").into())
            }
            "password" => Err(GrantError::new(
                UnsupportedGrantType,
                "the password grant is not supported (RFC 9700); log in at /api/auth/login",
            )
            .into()),
            other => Err(GrantError::new(
                UnsupportedGrantType,
                format!(
                    "the grant type `{}` is not supported",
                    other.chars().take(64).collect::<String>()
                ),
            )
            .into()),
        }
    }

    /// Checks a service account's credentials, throttled per client id.
    async fn authenticate_client(
        &self,
        client_id: &str,
        secret: &str,
    ) -> Result<AuthenticatedClient, TokenFailure> {
        let key = Throttle::client_key(client_id);
        self.throttle.attempt(&key).await?;
        match clients::authenticate(&self.pool, client_id, secret).await? {
            Some(client) => {
                self.throttle.succeeded(&key).await?;
                Ok(client)
            }
            None => {
                tracing::info!("client authentication failed");
                Err(GrantError::new(
                    GrantErrorCode::InvalidClient,
                    "client authentication failed",
                )
                .into())
            }
        }
    }

    /// Revokes the family of a refresh token: logout, and RFC 7009
    /// revocation. An unknown token (or anything else) revokes nothing and
    /// is not an error: the client's goal, that the token not work, is met.
    #[tracing::instrument(skip_all)]
    pub async fn revoke(&self, token: &str) -> Result<bool, AuthError> {
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN_LEN {
            return Ok(false);
        }
        let revoked = repo::revoke_family_of(&self.pool, &refresh_token_hash(token)).await?;
        tracing::info!(revoked, "revocation requested");
        Ok(revoked > 0)
    }

    /// A refresh token lives `refresh_ttl` from its issue; each rotation
    /// issues a new one, so an idle session ends and a used one carries on.
    fn refresh_expiry(&self) -> DateTime<Utc> {
        Utc::now()
            .checked_add_signed(self.refresh_ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// `auth_logins_total` by outcome: `success`, `refused` (wrong email or
/// password, one outcome so the figure cannot tell which), `throttled`.
fn login_outcome(outcome: &'static str) {
    metrics::counter!("auth_logins_total", "outcome" => outcome).increment(1);
}

/// `auth_tokens_issued_total` by grant (`password`, `refresh_token`,
/// `client_credentials`).
fn token_issued(grant: &'static str) {
    metrics::counter!("auth_tokens_issued_total", "grant" => grant).increment(1);
}
