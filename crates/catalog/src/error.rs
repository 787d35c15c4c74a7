//! Catalog errors and their one mapping to gRPC.

use signalbox_platform::{caller::CallerError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("`{0}` is not a valid product id")]
    InvalidId(String),
    #[error("product {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    /// The caller is not established: no valid token, or not the scope.
    #[error(transparent)]
    Caller(#[from] CallerError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CatalogError> for tonic::Status {
    fn from(error: CatalogError) -> Self {
        match &error {
            CatalogError::InvalidId(_) => ErrorCode::InvalidInput.status(error.to_string()),
            CatalogError::NotFound(_) => ErrorCode::NotFound.status(error.to_string()),
            CatalogError::InvalidInput(_) => ErrorCode::InvalidInput.status(error.to_string()),
            CatalogError::Caller(caller) => caller.code().status(caller.to_string()),
            CatalogError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Unavailable.status("the catalog database is unavailable")
            }
        }
    }
}
