//! Catalog errors and their one mapping to gRPC.

use signalbox_platform::{authorization::AuthorizationError, tokens::TokenError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("`{0}` is not a valid product id")]
    InvalidId(String),
    #[error("product {0} does not exist")]
    NotFound(String),
    #[error("{0}")]
    InvalidInput(String),
    /// The call carries no valid access token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The token is valid but does not grant what the method needs.
    #[error("the token does not grant the `{0}` scope")]
    MissingScope(&'static str),
    /// The signing keys cannot be fetched: our fault, not the token's.
    #[error("the access token cannot be verified right now")]
    KeysUnavailable,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<AuthorizationError> for CatalogError {
    fn from(error: AuthorizationError) -> Self {
        Self::Unauthenticated(match error {
            AuthorizationError::Missing | AuthorizationError::OtherScheme => {
                "the call carries no bearer token (`authorization: Bearer <access token>`)"
                    .to_owned()
            }
            AuthorizationError::Malformed(reason) => reason.to_owned(),
        })
    }
}

impl From<TokenError> for CatalogError {
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

impl From<CatalogError> for tonic::Status {
    fn from(error: CatalogError) -> Self {
        match &error {
            CatalogError::InvalidId(_) => ErrorCode::InvalidInput.status(error.to_string()),
            CatalogError::NotFound(_) => ErrorCode::NotFound.status(error.to_string()),
            CatalogError::InvalidInput(_) => ErrorCode::InvalidInput.status(error.to_string()),
            CatalogError::Unauthenticated(_) => {
                ErrorCode::Unauthenticated.status(error.to_string())
            }
            CatalogError::MissingScope(_) => ErrorCode::Forbidden.status(error.to_string()),
            CatalogError::KeysUnavailable => ErrorCode::Unavailable.status(error.to_string()),
            CatalogError::Database(cause) => {
                tracing::error!(error = %cause, "database error");
                ErrorCode::Unavailable.status("the catalog database is unavailable")
            }
        }
    }
}
