//! Auth persistence (sqlx, PostgreSQL): users, refresh-token families,
//! service accounts and the per-account throttle.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::Email;

/// The unique constraint on `users.email` (PostgreSQL's default name).
const EMAIL_UNIQUE: &str = "users_email_key";

#[derive(Debug, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub password_hash: String,
}

/// Inserts a user. `false` when the email is taken: the unique constraint
/// decides, so two concurrent registrations of one email cannot both win
/// (a check-then-insert could).
pub async fn insert_user(
    pool: &PgPool,
    id: Uuid,
    email: &Email,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query("INSERT INTO users (id, email, password_hash) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(email.as_str())
        .bind(password_hash)
        .execute(pool)
        .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e))
            if e.is_unique_violation() && e.constraint() == Some(EMAIL_UNIQUE) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

pub async fn user_by_email(pool: &PgPool, email: &Email) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(pool)
        .await
}

#[derive(Debug, sqlx::FromRow)]
pub struct RefreshToken {
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn insert_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    family_id: Uuid,
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(family_id)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads a refresh token and locks its row for the rest of the transaction.
/// A second transaction presenting the same token waits here and then sees
/// the first one's outcome, so a token is rotated at most once.
pub async fn lock_refresh_token(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> Result<Option<RefreshToken>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, family_id, expires_at, rotated_at, revoked_at
         FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await
}

pub async fn mark_rotated(conn: &mut PgConnection, token_hash: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1")
        .bind(token_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes every token of a family (one login's chain of rotations).
/// Returns how many were still live.
pub async fn revoke_family(conn: &mut PgConnection, family_id: Uuid) -> Result<u64, sqlx::Error> {
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .execute(conn)
    .await?;
    Ok(revoked.rows_affected())
}

/// Revokes the whole family of the refresh token with this hash (logout,
/// RFC 7009 revocation). Returns how many tokens were still live; 0 for an
/// unknown token.
pub async fn revoke_family_of(pool: &PgPool, token_hash: &[u8]) -> Result<u64, sqlx::Error> {
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now()
         WHERE revoked_at IS NULL
           AND family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(token_hash)
    .execute(pool)
    .await?;
    Ok(revoked.rows_affected())
}

#[derive(Debug, sqlx::FromRow)]
pub struct ServiceAccount {
    pub client_id: String,
    pub secret_hash: Vec<u8>,
    pub scope: String,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Inserts a service account; `false` when the client id is taken.
pub async fn insert_service_account(
    pool: &PgPool,
    client_id: &str,
    secret_hash: &[u8],
    scope: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO service_accounts (client_id, secret_hash, scope) VALUES ($1, $2, $3)
         ON CONFLICT (client_id) DO NOTHING",
    )
    .bind(client_id)
    .bind(secret_hash)
    .bind(scope)
    .execute(pool)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn service_account(
    pool: &PgPool,
    client_id: &str,
) -> Result<Option<ServiceAccount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT client_id, secret_hash, scope, disabled_at
         FROM service_accounts WHERE client_id = $1",
    )
    .bind(client_id)
    .fetch_optional(pool)
    .await
}

/// Counts one attempt against `key` in a fixed window of `window_secs`, in
/// one statement, so concurrent attempts (from any number of gateways) are
/// all counted. Returns the attempts in the current window and the seconds
/// until it ends.
pub async fn count_attempt(
    pool: &PgPool,
    key: &str,
    window_secs: f64,
) -> Result<(i32, f64), sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO auth_throttle AS t (key, attempts, window_start) VALUES ($1, 1, now())
         ON CONFLICT (key) DO UPDATE SET
           attempts = CASE WHEN t.window_start <= now() - $2 * interval '1 second'
                           THEN 1 ELSE t.attempts + 1 END,
           window_start = CASE WHEN t.window_start <= now() - $2 * interval '1 second'
                               THEN now() ELSE t.window_start END
         RETURNING attempts,
           EXTRACT(EPOCH FROM (window_start + $2 * interval '1 second' - now()))::float8",
    )
    .bind(key)
    .bind(window_secs)
    .fetch_one(pool)
    .await
}

/// Forgets the attempts of `key` (after a success).
pub async fn clear_attempts(pool: &PgPool, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_throttle WHERE key = $1")
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops the rows of windows that have ended.
pub async fn purge_attempts(pool: &PgPool, window_secs: f64) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query(
        "DELETE FROM auth_throttle WHERE window_start <= now() - $1 * interval '1 second'",
    )
    .bind(window_secs)
    .execute(pool)
    .await?;
    Ok(purged.rows_affected())
}
