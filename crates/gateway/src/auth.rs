//! Edge authentication: the gateway verifies the bearer token at the edge,
//! before any upstream call, and forwards it with every call it makes on the
//! caller's behalf.
//!
//! The token is read from the `Authorization` header by the one parser all
//! services share (`signalbox_platform::authorization`) and verified locally
//! (EdDSA signature against the auth service's JWKS, cached), so a
//! protected request costs no call to the auth service. The services behind
//! the gateway do not take the gateway's word for who the caller is: a call
//! on a user's behalf carries that user's access token in its
//! `authorization` metadata ([`AuthenticatedUser::request`]) and the callee
//! verifies it again with the same verifier. Checking here still pays: a bad
//! token is refused with a proper RFC 6750 answer and costs no upstream call.
//!
//! Failures follow RFC 6750 §3: a request without credentials, or with
//! another scheme, gets a bare `WWW-Authenticate: Bearer realm="signalbox"`
//! challenge (the client did not know it had to authenticate); a malformed,
//! bad or expired token gets `error="invalid_token"` with a description (the
//! client should get a new token). Both answer 401 with a problem body, code
//! `unauthenticated`. When the keys themselves cannot be fetched the fault
//! is ours, not the token's: 503 `unavailable`, and no challenge.
//!
//! Authorization by scope (RFC 6750 §3.1, RFC 9068 §2.2.3): a handler that
//! takes [`Authorized<S>`] needs a token whose `scope` claim holds
//! `S::SCOPE`; a valid token without it gets 403 with
//! `error="insufficient_scope", scope="…"` and a problem with code
//! `forbidden`. Which user's data a request may touch (object-level
//! authorization) is decided by the service that owns the data, from the
//! token it verified itself.

use std::{fmt, marker::PhantomData, ops::Deref, sync::Arc};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header, request::Parts, HeaderValue},
    response::{IntoResponse, Response},
};
use signalbox_platform::{
    authorization::{self, AuthorizationError},
    tokens::{AccessClaims, TokenError, TokenVerifier},
    ErrorCode, Problem,
};
use tonic::metadata::{Ascii, MetadataValue};

/// The protection space named in every challenge.
pub const REALM: &str = "signalbox";

/// The caller of a protected route, proven by a valid access token.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    /// The token's subject, for logs; orders reads it from the token itself.
    pub user_id: String,
    pub claims: AccessClaims,
    credential: Credential,
}

impl AuthenticatedUser {
    /// `message` as a gRPC request on this user's behalf: with the user's
    /// access token as `authorization: Bearer <token>` metadata, which the
    /// service verifies itself (the public contract: no service trusts a
    /// bare user id).
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.credential.0.clone());
        request
    }
}

/// The verified token as the value of the `authorization` metadata of the
/// calls made on the user's behalf. Its `Debug` does not show the token: a
/// bearer token in a log is a credential anyone reading the log can use.
#[derive(Clone)]
struct Credential(MetadataValue<Ascii>);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(Bearer [REDACTED])")
    }
}

impl<S> FromRequestParts<S> for AuthenticatedUser
where
    Arc<TokenVerifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = authorization::bearer_in(&parts.headers)?;
        // The rate limiter verified this very token already when the route
        // counts per user (`crate::limits`); otherwise it is verified here.
        let claims = match parts.extensions.get::<Verified>() {
            Some(verified) if verified.token == token => verified.claims.clone(),
            _ => Arc::<TokenVerifier>::from_ref(state).verify(token).await?,
        };
        // The parser let through visible ASCII without spaces only, which
        // is always a valid metadata value; refused rather than unwrapped.
        let credential = MetadataValue::try_from(format!("Bearer {token}"))
            .map(Credential)
            .map_err(|_| malformed("the bearer token cannot be forwarded"))?;
        Ok(Self {
            user_id: claims.sub.clone(),
            claims,
            credential,
        })
    }
}

/// A bearer token of this request that was verified earlier in the stack
/// (by the rate limiter, which counts per user), kept in the request's
/// extensions so that the extractor does not verify it again. Not `Debug`:
/// it holds the token.
#[derive(Clone)]
pub struct Verified {
    token: String,
    claims: AccessClaims,
}

impl Verified {
    pub fn new(token: &str, claims: AccessClaims) -> Self {
        Self {
            token: token.to_owned(),
            claims,
        }
    }

    pub fn subject(&self) -> &str {
        &self.claims.sub
    }
}

/// A scope a route requires, as a type, so the handler's signature says
/// what it needs and the compiler makes sure it is checked.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: &'static str;
}

/// Reading orders: `GET /api/orders`, `GET /api/orders/{id}`.
pub struct OrdersRead;
impl RequiredScope for OrdersRead {
    const SCOPE: &'static str = "orders:read";
}

/// Changing orders: `POST /api/orders`, `POST /api/orders/{id}/cancel`.
pub struct OrdersWrite;
impl RequiredScope for OrdersWrite {
    const SCOPE: &'static str = "orders:write";
}

/// Changing the catalog: `PATCH /api/catalog/products/{id}`.
pub struct CatalogAdmin;
impl RequiredScope for CatalogAdmin {
    const SCOPE: &'static str = "catalog:admin";
}

/// An [`AuthenticatedUser`] whose token grants the scope `S`.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    pub user: AuthenticatedUser,
    scope: PhantomData<fn() -> S>,
}

impl<S> Deref for Authorized<S> {
    type Target = AuthenticatedUser;

    fn deref(&self) -> &AuthenticatedUser {
        &self.user
    }
}

impl<S, St> FromRequestParts<St> for Authorized<S>
where
    S: RequiredScope,
    Arc<TokenVerifier>: FromRef<St>,
    St: Send + Sync,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        // Authentication first: a bad token is a 401 whatever the scope.
        let user = AuthenticatedUser::from_request_parts(parts, state).await?;
        if !user.claims.has_scope(S::SCOPE) {
            tracing::info!(user_id = %user.user_id, scope = S::SCOPE, "insufficient scope");
            return Err(AuthError::InsufficientScope(S::SCOPE));
        }
        Ok(Self {
            user,
            scope: PhantomData,
        })
    }
}

/// Why a protected request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request has no bearer token")]
    Missing,
    /// Another scheme (`Basic`, …): RFC 6750 §3.1 treats it like no
    /// credentials at all, so the challenge carries no error code.
    #[error("only the Bearer authentication scheme is accepted")]
    UnsupportedScheme,
    #[error("{0}")]
    InvalidToken(String),
    #[error("the token cannot be verified right now")]
    KeysUnavailable,
    /// A valid token without the scope the route needs.
    #[error("the token does not grant the `{0}` scope")]
    InsufficientScope(&'static str),
}

impl From<AuthorizationError> for AuthError {
    fn from(error: AuthorizationError) -> Self {
        match error {
            AuthorizationError::Missing => Self::Missing,
            AuthorizationError::OtherScheme => Self::UnsupportedScheme,
            AuthorizationError::Malformed(reason) => malformed(reason),
        }
    }
}

impl From<TokenError> for AuthError {
    fn from(error: TokenError) -> Self {
        match error {
            TokenError::KeysUnavailable(reason) => {
                tracing::warn!(%reason, "signing keys unavailable");
                Self::KeysUnavailable
            }
            other => Self::InvalidToken(other.to_string()),
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let challenge = match &self {
            Self::Missing | Self::UnsupportedScheme => www_authenticate(None),
            Self::InvalidToken(description) => {
                www_authenticate(Some(("invalid_token", description)))
            }
            Self::KeysUnavailable => {
                return Problem::new(ErrorCode::Unavailable, self.to_string()).into_response()
            }
            Self::InsufficientScope(scope) => {
                let mut response =
                    Problem::new(ErrorCode::Forbidden, self.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, insufficient_scope(scope));
                return response;
            }
        };
        let mut response =
            Problem::new(ErrorCode::Unauthenticated, self.to_string()).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
        response
    }
}

fn malformed(reason: &str) -> AuthError {
    AuthError::InvalidToken(reason.to_owned())
}

/// A `WWW-Authenticate` challenge for the Bearer scheme (RFC 6750 §3), with
/// an `error` and `error_description` when there is one.
pub fn www_authenticate(error: Option<(&str, &str)>) -> HeaderValue {
    let mut challenge = format!("Bearer realm=\"{REALM}\"");
    if let Some((code, description)) = error {
        challenge.push_str(&format!(
            ", error=\"{}\", error_description=\"{}\"",
            quotable(code),
            quotable(description)
        ));
    }
    HeaderValue::from_str(&challenge)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"signalbox\""))
}

/// The challenge of a 403 for a missing scope (RFC 6750 §3.1): the error
/// and the scope the request needs, no description.
pub fn insufficient_scope(scope: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
        quotable(scope)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"signalbox\""))
}

/// Keeps only the characters RFC 6750 allows inside the quoted attribute
/// values (printable ASCII without `"` and `\`), so that no description can
/// break out of its quotes or make the header invalid.
fn quotable(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn a_challenge_without_error_names_only_the_realm() {
        assert_eq!(www_authenticate(None), "Bearer realm=\"signalbox\"");
    }

    #[test]
    fn a_challenge_with_an_error_carries_code_and_description() {
        let value = www_authenticate(Some(("invalid_token", "the token has expired")));
        assert_eq!(
            value,
            "Bearer realm=\"signalbox\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }

    #[test]
    fn a_description_cannot_break_out_of_its_quotes() {
        let value = www_authenticate(Some(("invalid_token", "bad \"quote\" \\ and é")));
        let text = value.to_str().unwrap();
        assert!(
            text.ends_with("error_description=\"bad 'quote' ' and ?\""),
            "{text}"
        );
    }

    /// The gateway's answer to each way the shared parser refuses a header.
    fn answer_to(error: AuthorizationError) -> (StatusCode, String) {
        let response = AuthError::from(error).into_response();
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .to_owned();
        (response.status(), challenge)
    }

    #[test]
    fn no_header_and_another_scheme_are_401_challenges_without_error() {
        for error in [AuthorizationError::Missing, AuthorizationError::OtherScheme] {
            assert_eq!(
                answer_to(error),
                (
                    StatusCode::UNAUTHORIZED,
                    r#"Bearer realm="signalbox""#.into()
                ),
                "{error:?}"
            );
        }
    }

    #[test]
    fn a_malformed_bearer_header_is_a_401_invalid_token_saying_why() {
        let (status, challenge) =
            answer_to(AuthorizationError::Malformed("the bearer token is empty"));
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            challenge,
            r#"Bearer realm="signalbox", error="invalid_token", error_description="the bearer token is empty""#
        );
    }

    #[test]
    fn the_forwarded_credential_is_the_bearer_token_and_never_logged() {
        let user = AuthenticatedUser {
            user_id: "u".into(),
            claims: serde_json::from_value(serde_json::json!({
                "sub": "u", "iss": "i", "aud": "a", "exp": 1, "iat": 0, "jti": "j"
            }))
            .unwrap(),
            credential: Credential("Bearer secret.token.value".parse().unwrap()),
        };

        let request = user.request(());

        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer secret.token.value"
        );
        assert!(!format!("{user:?}").contains("secret"));
    }

    #[test]
    fn a_missing_scope_is_a_403_naming_the_scope() {
        let response = AuthError::InsufficientScope("orders:write").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="signalbox", error="insufficient_scope", scope="orders:write""#
        );
    }

    #[test]
    fn unavailable_keys_are_a_503_without_challenge() {
        let response =
            AuthError::from(TokenError::KeysUnavailable("refused".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
