//! Password hashing with argon2id.
//!
//! Parameters are the OWASP minimum for argon2id (19 MiB of memory, two
//! passes, one lane), written out rather than taken from the crate defaults
//! so a library upgrade cannot silently change them. The stored value is a
//! PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`), which carries
//! its own parameters: raising them later still verifies old hashes.
//!
//! Hashing is deliberately slow and memory-hard, so it runs on tokio's
//! blocking pool, never on a runtime worker, and a semaphore bounds how many
//! run at once: a burst of logins queues instead of allocating 19 MiB per
//! request without limit.

use std::sync::Arc;

use argon2::{
    password_hash::{self, phc::PasswordHash, PasswordHasher as _, PasswordVerifier as _},
    Algorithm, Argon2, Params, Version,
};
use rand::{distr::Alphanumeric, RngExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::{domain::Password, error::AuthError};

/// Memory cost in KiB.
pub const M_COST: u32 = 19_456;
/// Number of passes.
pub const T_COST: u32 = 2;
/// Degree of parallelism.
pub const P_COST: u32 = 1;

#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    /// Verified against when the email is unknown, so a login for a missing
    /// account costs as much as one with a wrong password and response times
    /// do not reveal which emails are registered.
    dummy_hash: Arc<str>,
    /// Bounds concurrent hashes (each holds `M_COST` KiB for its duration).
    permits: Arc<Semaphore>,
}

impl Passwords {
    /// Prepares the hasher, computing the dummy hash once.
    pub async fn new() -> Result<Self, AuthError> {
        let params = Params::new(M_COST, T_COST, P_COST, None).map_err(hashing)?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut passwords = Self {
            argon2,
            dummy_hash: Arc::from(""),
            permits: Arc::new(Semaphore::new(parallelism)),
        };
        let unguessable: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        passwords.dummy_hash = passwords.hash_secret(unguessable.into()).await?.into();
        Ok(passwords)
    }

    /// The PHC string of a new password, with a fresh random salt.
    pub async fn hash(&self, password: Password) -> Result<String, AuthError> {
        self.hash_secret(password.into()).await
    }

    async fn hash_secret(&self, password: SecretString) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.blocking(move || {
            // A fresh random salt from the operating system for every hash.
            argon2
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(hashing)
        })
        .await
    }

    /// Whether `candidate` matches `stored`. With no stored hash (unknown
    /// user) it does the same work against the dummy hash and answers `false`.
    pub async fn verify(
        &self,
        candidate: SecretString,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        let argon2 = self.argon2.clone();
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .blocking(move || {
                let hash = PasswordHash::new(&phc).map_err(hashing)?;
                match argon2.verify_password(candidate.expose_secret().as_bytes(), &hash) {
                    Ok(()) => Ok(true),
                    Err(password_hash::Error::PasswordInvalid) => Ok(false),
                    Err(other) => Err(hashing(other)),
                }
            })
            .await?;
        Ok(known && matches)
    }

    /// Runs `work` on the blocking pool once a permit is free. The permit
    /// moves into the closure: if the caller goes away (the client hung up),
    /// the hash still runs to the end and only then frees its slot.
    async fn blocking<T, F>(&self, work: F) -> Result<T, AuthError>
    where
        F: FnOnce() -> Result<T, AuthError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Internal("the hashing pool is closed".to_owned()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| AuthError::Internal(format!("password hashing task failed: {e}")))?
    }
}

fn hashing(error: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(format!("password hashing failed: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let passwords = Passwords::new().await.unwrap();
        let hash = passwords
            .hash(Password::parse("correct horse battery".to_owned()).unwrap())
            .await
            .unwrap();

        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let right = SecretString::from("correct horse battery");
        let wrong = SecretString::from("correct horse battery!");
        assert!(passwords.verify(right, Some(hash.clone())).await.unwrap());
        assert!(!passwords.verify(wrong, Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        let passwords = Passwords::new().await.unwrap();
        let anything = SecretString::from("whatever");
        assert!(!passwords.verify(anything, None).await.unwrap());
    }
}
