//! Orders errors and their one mapping to gRPC.
//!
//! Who is calling: no valid access token (none, malformed, expired, badly
//! signed) is `Unauthenticated`; a valid token without the scope the method
//! needs is `PermissionDenied`; an order that belongs to another user is
//! `NotFound`, exactly like an order that does not exist, so its existence
//! is not disclosed (the gateway answers both with 404).

use signalbox_platform::{caller::CallerError, ErrorCode};
use signalbox_resilience::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The caller is not established: no valid token, or not the scope.
    #[error(transparent)]
    Caller(#[from] CallerError),
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
            OrdersError::Caller(caller) => caller.into(),
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
