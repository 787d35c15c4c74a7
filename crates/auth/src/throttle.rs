//! Per-account throttling of failed credentials: the brake on password
//! guessing against one account (OWASP Authentication Cheat Sheet).
//!
//! Every login for an email (and every client authentication for a client
//! id) counts one attempt in a fixed window *before* the password is
//! checked, in one upsert; a success clears the count. Past
//! `throttle.max_failures` attempts the account answers "retry after N
//! seconds" until its window ends, without hashing anything. Counting first
//! means concurrent guesses cannot slip past the limit, and keeping the
//! count in the auth database means every gateway and every auth replica
//! shares it: adding gateways does not multiply the guesses an attacker gets.
//! (Per client IP, the gateway limits how fast anyone may try at all.)
//!
//! Unknown emails are counted like known ones, so the throttle does not tell
//! which accounts exist. The price of any per-account limit: someone who
//! knows an email can keep its owner out for a window; the window is short
//! and the limit is per account, not per IP, on purpose.

use sqlx::PgPool;

use crate::{config::ThrottleSettings, error::AuthError, repo};

/// At most `max` characters of what the caller typed, with control
/// characters spelled out (`\u{0}`): the key is stored in a PostgreSQL
/// `TEXT` column, which cannot hold a NUL, and an attempt must be counted
/// whatever bytes it came with.
fn storable(typed: &str, max: usize) -> String {
    typed
        .chars()
        .take(max)
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One in this many attempts also purges ended windows.
const PURGE_EVERY: u32 = 64;

#[derive(Debug, Clone)]
pub struct Throttle {
    pool: PgPool,
    max_failures: u32,
    window_secs: f64,
}

impl Throttle {
    pub fn new(pool: PgPool, settings: &ThrottleSettings) -> Self {
        Self {
            pool,
            max_failures: settings.max_failures,
            // Lossless for any window shorter than 2^53 seconds.
            window_secs: settings.window_secs as f64,
        }
    }

    /// The key of a login attempt for `email` as typed (normalised the way
    /// accounts are, so `Ann@x.org` and `ann@x.org` share one count).
    pub fn login_key(email: &str) -> String {
        format!("login:{}", storable(&email.trim().to_lowercase(), 254))
    }

    pub fn client_key(client_id: &str) -> String {
        format!("client:{}", storable(client_id, 64))
    }

    /// Counts an attempt for `key`; `Throttled` when the window's allowance
    /// is used up.
    #[tracing::instrument(skip_all)]
    pub async fn attempt(&self, key: &str) -> Result<(), AuthError> {
        if rand::RngExt::random_ratio(&mut rand::rng(), 1, PURGE_EVERY) {
            let purged = repo::purge_attempts(&self.pool, self.window_secs).await?;
            tracing::debug!(purged, "ended throttle windows purged");
        }
        let (attempts, left_secs) = repo::count_attempt(&self.pool, key, self.window_secs).await?;
        if u32::try_from(attempts).unwrap_or(u32::MAX) > self.max_failures {
            // Whole seconds, rounded up, and at least one (RFC 9110 §10.2.3).
            let retry_after_secs = left_secs.ceil().max(1.0) as u64;
            tracing::warn!(attempts, retry_after_secs, "throttled");
            return Err(AuthError::Throttled { retry_after_secs });
        }
        Ok(())
    }

    /// Forgets the attempts of `key` after a success.
    pub async fn succeeded(&self, key: &str) -> Result<(), AuthError> {
        repo::clear_attempts(&self.pool, key).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spell_out_control_characters_and_keep_the_rest() {
        assert_eq!(Throttle::login_key(" Ann@X.org "), "login:ann@x.org");
        assert_eq!(Throttle::login_key("a\0b@x.org"), "login:a\\u{0}b@x.org");
        assert_eq!(Throttle::client_key("web\u{1b}"), "client:web\\u{1b}");
        assert!(!Throttle::login_key(&"\0".repeat(300)).contains('\0'));
    }
}
