//! The auth use cases — register, log in, refresh — independent of the
//! transport that calls them (gRPC here; the gateway maps REST onto it).
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
    config::TokenSettings,
    domain::{Email, Password},
    error::AuthError,
    passwords::Passwords,
    repo,
    tokens::{refresh_token_hash, AccessToken, NewRefreshToken, TokenIssuer},
};

/// Longer strings cannot be refresh tokens; refused without a query.
const MAX_REFRESH_TOKEN_LEN: usize = 128;

pub struct Auth {
    pool: PgPool,
    passwords: Passwords,
    issuer: TokenIssuer,
    refresh_ttl: chrono::Duration,
}

/// A registered account.
#[derive(Debug)]
pub struct Registered {
    pub user_id: Uuid,
    pub email: Email,
}

/// What a login or a refresh hands out.
#[derive(Debug)]
pub struct Session {
    pub user_id: Uuid,
    pub access: AccessToken,
    pub refresh_token: String,
}

impl Auth {
    pub fn new(
        pool: PgPool,
        passwords: Passwords,
        issuer: TokenIssuer,
        settings: &TokenSettings,
    ) -> Self {
        let refresh_ttl = i64::try_from(settings.refresh_ttl_secs)
            .map(chrono::Duration::seconds)
            .unwrap_or(chrono::Duration::MAX);
        Self {
            pool,
            passwords,
            issuer,
            refresh_ttl,
        }
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
                return Err(AuthError::InvalidCredentials);
            }
        };
        tracing::Span::current().record("user_id", tracing::field::display(user_id));

        let access = self.issuer.issue(user_id)?;
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
        Ok(Session {
            user_id,
            access,
            refresh_token: refresh.token,
        })
    }

    #[tracing::instrument(skip_all, fields(user_id, family_id))]
    pub async fn refresh(&self, token: &str) -> Result<Session, AuthError> {
        if token.is_empty() || token.len() > MAX_REFRESH_TOKEN_LEN {
            return Err(AuthError::InvalidRefreshToken);
        }
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
            return Err(AuthError::InvalidRefreshToken);
        }
        if row.expires_at <= Utc::now() {
            tracing::info!(expired_at = %row.expires_at, "expired refresh token");
            return Err(AuthError::InvalidRefreshToken);
        }

        // Sign before committing: if signing failed after the commit, the
        // client would have lost its session for nothing.
        let access = self.issuer.issue(row.user_id)?;
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
        Ok(Session {
            user_id: row.user_id,
            access,
            refresh_token: successor.token,
        })
    }

    /// A refresh token lives `refresh_ttl` from its issue; each rotation
    /// issues a new one, so an idle session ends and a used one carries on.
    fn refresh_expiry(&self) -> DateTime<Utc> {
        Utc::now()
            .checked_add_signed(self.refresh_ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}
