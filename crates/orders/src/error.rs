//! Orders errors and their one mapping to gRPC.

use signalbox_platform::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("order {0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the catalog is unavailable: {0}")]
    CatalogUnavailable(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<OrdersError> for tonic::Status {
    fn from(error: OrdersError) -> Self {
        let message = error.to_string();
        match error {
            OrdersError::InvalidInput(_) => ErrorCode::InvalidInput.status(message),
            OrdersError::NotFound(_) => ErrorCode::NotFound.status(message),
            OrdersError::FailedPrecondition(_) => ErrorCode::FailedPrecondition.status(message),
            OrdersError::CatalogUnavailable(_) => ErrorCode::Unavailable.status(message),
            OrdersError::Unimplemented(_) => ErrorCode::Unimplemented.status(message),
            OrdersError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Unavailable.status("the orders database is unavailable")
            }
        }
    }
}
