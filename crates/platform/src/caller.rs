//! Who is calling a gRPC method, for a service that acts on behalf of users.
//!
//! No service trusts a user id it is merely told: the caller's access token
//! travels in the call's metadata (`authorization: Bearer <token>`, put there
//! by the gateway), and the callee verifies it with the same
//! [`TokenVerifier`] as the edges, then checks the scope the method needs.
//! Orders and catalog both do this through [`verify`], and map
//! [`CallerError`] to a status in their one error mapping.

use crate::{
    authorization::{self, AuthorizationError},
    tokens::{AccessClaims, TokenError, TokenVerifier},
    ErrorCode,
};

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// The call carries no valid access token (none, malformed, expired,
    /// badly signed).
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but does not grant what the method needs.
    #[error("the token does not grant the `{0}` scope")]
    MissingScope(&'static str),
    /// The signing keys cannot be fetched: our fault, not the token's.
    #[error("the access token cannot be verified right now")]
    KeysUnavailable,
}

impl CallerError {
    /// `Unauthenticated`, `PermissionDenied` or `Unavailable`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::MissingScope(_) => ErrorCode::Forbidden,
            Self::KeysUnavailable => ErrorCode::Unavailable,
        }
    }
}

impl From<CallerError> for tonic::Status {
    fn from(error: CallerError) -> Self {
        error.code().status(error.to_string())
    }
}

impl From<AuthorizationError> for CallerError {
    fn from(error: AuthorizationError) -> Self {
        Self::Unauthenticated(match error {
            // gRPC metadata has no challenge to leave the code out of: any
            // call without a bearer token is simply unauthenticated.
            AuthorizationError::Missing | AuthorizationError::OtherScheme => {
                "the call carries no bearer token (`authorization: Bearer <access token>`)"
                    .to_owned()
            }
            AuthorizationError::Malformed(reason) => reason.to_owned(),
        })
    }
}

impl From<TokenError> for CallerError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::KeysUnavailable(reason) => {
                tracing::warn!(%reason, "signing keys unavailable");
                Self::KeysUnavailable
            }
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

/// The verified claims of the caller of `request`, if its token grants
/// `scope`. Records the caller as `user_id` on the current span.
pub async fn verify<T>(
    verifier: &TokenVerifier,
    request: &tonic::Request<T>,
    scope: &'static str,
) -> Result<AccessClaims, CallerError> {
    let values = request.metadata().get_all("authorization");
    let token = authorization::bearer_token(values.iter().map(|v| v.as_bytes()))?;
    let claims = verifier.verify(token).await?;
    if !claims.has_scope(scope) {
        tracing::info!(user_id = %claims.sub, scope, "insufficient scope");
        return Err(CallerError::MissingScope(scope));
    }
    tracing::Span::current().record("user_id", claims.sub.as_str());
    Ok(claims)
}
