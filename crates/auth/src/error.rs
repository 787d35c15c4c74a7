//! Auth errors and their one mapping to gRPC.
//!
//! What a client learns is deliberately little: a wrong password and an
//! unknown email give the same answer, every unusable refresh token gives the
//! same answer, and infrastructure failures are logged here with their cause
//! and answered without it.

use signalbox_platform::ErrorCode;

/// Answer to a failed login, whatever the reason.
pub const INVALID_CREDENTIALS: &str = "invalid email or password";
/// Answer to an unusable refresh token, whatever the reason.
pub const INVALID_REFRESH_TOKEN: &str = "invalid refresh token";
/// The gRPC metadata key of a throttled answer: whole seconds to wait.
pub const RETRY_AFTER: &str = "retry-after";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Unknown email or wrong password; which one is never said.
    #[error("{INVALID_CREDENTIALS}")]
    InvalidCredentials,
    /// Unknown, expired, rotated or revoked.
    #[error("{INVALID_REFRESH_TOKEN}")]
    InvalidRefreshToken,
    /// More scopes were asked for than the grant allows.
    #[error("{0}")]
    InvalidScope(String),
    /// Too many failed attempts for one account; try again after this long.
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("cannot sign the access token: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Internal(String),
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match &error {
            AuthError::InvalidInput(_) | AuthError::InvalidScope(_) => {
                ErrorCode::InvalidInput.status(error.to_string())
            }
            AuthError::Throttled { retry_after_secs } => {
                let mut status = ErrorCode::RateLimited.status(error.to_string());
                // The gateway turns this into the `Retry-After` header.
                status
                    .metadata_mut()
                    .insert(RETRY_AFTER, (*retry_after_secs).into());
                status
            }
            AuthError::EmailTaken => ErrorCode::Conflict.status(error.to_string()),
            AuthError::InvalidCredentials | AuthError::InvalidRefreshToken => {
                ErrorCode::Unauthenticated.status(error.to_string())
            }
            AuthError::Database(cause) if is_unavailable(cause) => {
                tracing::error!(error = %cause, "database unavailable");
                ErrorCode::Unavailable.status("the auth database is unavailable")
            }
            AuthError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Internal.status("internal error")
            }
            AuthError::Signing(_) | AuthError::Internal(_) => {
                tracing::error!(error = %error, "internal error");
                ErrorCode::Internal.status("internal error")
            }
        }
    }
}

/// Failures that say "the database cannot be reached right now" (worth a
/// retry elsewhere or later), as opposed to a query that is wrong.
fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_failures_look_the_same_whatever_the_cause() {
        let status = tonic::Status::from(AuthError::InvalidCredentials);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "invalid email or password");
    }

    #[test]
    fn a_taken_email_is_already_exists() {
        let status = tonic::Status::from(AuthError::EmailTaken);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
    }

    #[test]
    fn a_throttled_attempt_is_resource_exhausted_with_retry_after() {
        let status = tonic::Status::from(AuthError::Throttled {
            retry_after_secs: 42,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_AFTER).unwrap(), "42");
    }

    #[test]
    fn database_failures_do_not_leak_their_cause() {
        let unreachable = tonic::Status::from(AuthError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(unreachable.code(), tonic::Code::Unavailable);

        let broken = tonic::Status::from(AuthError::Database(sqlx::Error::ColumnNotFound(
            "password_hash".to_owned(),
        )));
        assert_eq!(broken.code(), tonic::Code::Internal);
        assert!(!broken.message().contains("password_hash"));
    }
}
