//! Every way a socket can be refused or closed, in one place.
//!
//! Before the upgrade a refusal is an HTTP answer: an RFC 9457 problem
//! ([`UpgradeError`] → [`Problem`]), with `WWW-Authenticate` for token
//! failures as RFC 6750 asks. After the upgrade there is no status line any
//! more: the server sends an `error {code, message}` frame and, when the
//! socket cannot go on, a close frame with one of the [`close`] codes.

use axum::{
    extract::ws::rejection::WebSocketUpgradeRejection,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use signalbox_platform::{
    authorization::AuthorizationError, tokens::TokenError, ErrorCode, Problem,
};

/// WebSocket close codes the service uses (RFC 6455 §7.4; 4000–4999 are for
/// applications). Clients switch on the code; the reason text is for people.
pub mod close {
    /// The server is shutting down; reconnect (to another instance).
    pub const GOING_AWAY: u16 = 1001;
    /// A policy was violated: no or invalid authentication, slow consumer
    /// (its buffer filled, or it was the furthest behind while the instance
    /// lagged), heartbeat lost, binary frames before authentication.
    pub const POLICY: u16 = 1008;
    /// A message larger than `ws.max_frame_bytes` arrived.
    pub const TOO_LARGE: u16 = 1009;
    /// The token could not be checked right now (signing keys unreachable),
    /// or the instance is too far behind the event log to take another
    /// socket (see `crate::backpressure`); reconnect after a moment, maybe
    /// to another instance.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired without a successful `refresh`; get a new token and
    /// reconnect.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The client did something its user may not (refresh with another
    /// user's token).
    pub const FORBIDDEN: u16 = 4003;
}

/// The `code` values of `error` frames.
pub mod frame_code {
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const UNAVAILABLE: &str = "unavailable";
    /// Events of a channel were not pushed to this socket (the instance
    /// shed old superseded ones, or missed some): reload, or subscribe again
    /// with `recover` to replay them from the log.
    pub const EVENTS_DROPPED: &str = "events_dropped";
}

/// Why a `GET /ws` was refused before the upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("origin `{0}` is not allowed")]
    OriginNotAllowed(String),
    #[error("not a WebSocket upgrade: {0}")]
    NotWebSocket(#[from] WebSocketUpgradeRejection),
    #[error(
        "the client must offer the `{}` subprotocol",
        crate::frames::SUBPROTOCOL
    )]
    SubprotocolMissing,
    /// An `Authorization` header that is not one bearer token (read by
    /// `signalbox_platform::authorization`). No header is not an error: the
    /// socket then authenticates with its first frame.
    #[error(transparent)]
    Authorization(AuthorizationError),
    #[error(transparent)]
    InvalidToken(TokenError),
    #[error("the token cannot be checked right now")]
    KeysUnavailable,
}

impl From<TokenError> for UpgradeError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::KeysUnavailable(reason) => {
                tracing::warn!(%reason, "signing keys unavailable");
                Self::KeysUnavailable
            }
            other => Self::InvalidToken(other),
        }
    }
}

impl UpgradeError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::OriginNotAllowed(_) => ErrorCode::Forbidden,
            Self::NotWebSocket(_) | Self::SubprotocolMissing => ErrorCode::InvalidInput,
            Self::Authorization(_) | Self::InvalidToken(_) => ErrorCode::Unauthenticated,
            Self::KeysUnavailable => ErrorCode::Unavailable,
        }
    }

    /// The RFC 6750 §3 challenge, for token failures only: another scheme
    /// is answered like no credentials (no error code, §3.1), a malformed
    /// bearer credential like any other invalid token (as the gateway does).
    fn challenge(&self) -> Option<HeaderValue> {
        match self {
            Self::Authorization(AuthorizationError::Missing | AuthorizationError::OtherScheme) => {
                Some(HeaderValue::from_static("Bearer"))
            }
            Self::Authorization(AuthorizationError::Malformed(_)) | Self::InvalidToken(_) => {
                Some(HeaderValue::from_static(r#"Bearer error="invalid_token""#))
            }
            _ => None,
        }
    }
}

impl IntoResponse for UpgradeError {
    fn into_response(self) -> Response {
        tracing::debug!(error = %self, "upgrade refused");
        let challenge = self.challenge();
        let mut response = Problem::new(self.code(), self.to_string()).into_response();
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn an_invalid_token_is_a_401_with_a_bearer_challenge() {
        let response = UpgradeError::from(TokenError::Expired).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn unreachable_signing_keys_are_a_503_not_a_401() {
        let error = UpgradeError::from(TokenError::KeysUnavailable("timeout".into()));
        assert_eq!(
            error.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
