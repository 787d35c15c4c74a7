//! Catalog errors and their one mapping to gRPC.

use signalbox_platform::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("`{0}` is not a valid product id")]
    InvalidId(String),
    #[error("product {0} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<CatalogError> for tonic::Status {
    fn from(error: CatalogError) -> Self {
        match &error {
            CatalogError::InvalidId(_) => ErrorCode::InvalidInput.status(error.to_string()),
            CatalogError::NotFound(_) => ErrorCode::NotFound.status(error.to_string()),
            CatalogError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Unavailable.status("the catalog database is unavailable")
            }
        }
    }
}
