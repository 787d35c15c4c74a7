//! Auth persistence (sqlx, PostgreSQL): users and refresh-token families.

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
