//! Orders errors and their one mapping to gRPC.
//!
//! Who is calling: no valid access token (none, malformed, expired, badly
//! signed) is `Unauthenticated`; a valid token without the scope the method
//! needs is `PermissionDenied`; an order that belongs to another user is
//! `NotFound`, exactly like an order that does not exist, so its existence
//! is not disclosed (the gateway answers both with 404).

use signalbox_platform::{authorization::AuthorizationError, tokens::TokenError, ErrorCode};
use signalbox_resilience::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The call carries no valid access token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but does not grant what the method needs.
    #[error("the token does not grant the `{0}` scope")]
    MissingScope(&'static str),
    /// The signing keys cannot be fetched: our fault, not the token's.
    #[error("the access token cannot be verified right now")]
    KeysUnavailable,
    #[error("{0}")]
    InvalidInput(String),
    #[error("order {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The order changed under the request: a revision racing a
    /// cancellation, or one still in progress (`Aborted`: try again after
    /// reading the order).
    #[error("{0}")]
    Conflict(String),
    /// The call to catalog failed or was refused by its guards (breaker
    /// open, bulkhead full, deadline passed); the status says which.
    #[error("the catalog is unavailable: {}", .0.message())]
    CatalogUnavailable(tonic::Status),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<AuthorizationError> for OrdersError {
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

impl From<TokenError> for OrdersError {
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

/// A refusal of the catalog call's guards keeps its code and its rejection
/// metadata, so the gateway answers an open breaker, a full bulkhead or a
/// spent deadline as such; a deadline catalog's server enforced is
/// `DeadlineExceeded`; any other failure of the call is `Unavailable`.
fn catalog_unavailable(status: &tonic::Status, message: String) -> tonic::Status {
    match (Rejection::of(status), status.code()) {
        (Some(_), code) => tonic::Status::with_metadata(code, message, status.metadata().clone()),
        // Catalog's server ended the call at the deadline we sent it.
        (None, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            ErrorCode::UpstreamTimeout.status(message)
        }
        (None, _) => ErrorCode::Unavailable.status(message),
    }
}

impl From<OrdersError> for tonic::Status {
    fn from(error: OrdersError) -> Self {
        let message = error.to_string();
        match error {
            OrdersError::Unauthenticated(_) => ErrorCode::Unauthenticated.status(message),
            OrdersError::MissingScope(_) => ErrorCode::Forbidden.status(message),
            OrdersError::KeysUnavailable => ErrorCode::Unavailable.status(message),
            OrdersError::InvalidInput(_) => ErrorCode::InvalidInput.status(message),
            OrdersError::NotFound(_) => ErrorCode::NotFound.status(message),
            OrdersError::FailedPrecondition(_) => ErrorCode::FailedPrecondition.status(message),
            // Aborted, not AlreadyExists: nothing was created twice; the
            // gateway answers both 409 `conflict`.
            OrdersError::Conflict(_) => tonic::Status::aborted(message),
            OrdersError::CatalogUnavailable(status) => catalog_unavailable(&status, message),
            OrdersError::Unimplemented(_) => ErrorCode::Unimplemented.status(message),
            OrdersError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Unavailable.status("the orders database is unavailable")
            }
        }
    }
}
