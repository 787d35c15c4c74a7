//! The `Authorization` request header, read one way everywhere: the
//! gateway's protected routes, the realtime socket's upgrade and orders'
//! gRPC metadata all take their bearer token from [`bearer_token`], so the
//! same header can never be valid at one edge and refused at another.
//!
//! The rules (RFC 9110 §11.6.2, RFC 6750 §2.1):
//! - one `Authorization` field; two are a malformed request, not a choice;
//! - the value is visible ASCII;
//! - the scheme is `Bearer`, compared case-insensitively (RFC 9110 §11.1);
//!   another scheme (`Basic`, …) means "no bearer credentials" —
//!   [`AuthorizationError::OtherScheme`], which RFC 6750 §3.1 answers like
//!   no credentials at all;
//! - then exactly one token, separated from the scheme by spaces; an empty
//!   token, or a second word, is [`AuthorizationError::Malformed`].
//!
//! What each caller answers is its own business: the gateway a 401 with an
//! RFC 6750 challenge, realtime its upgrade refusal, orders
//! `Unauthenticated`. The token itself is checked by
//! [`crate::tokens::TokenVerifier`].

use http::{header::AUTHORIZATION, HeaderMap};

/// Why no bearer token could be read from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    /// No `Authorization` field at all.
    #[error("the request has no bearer token")]
    Missing,
    /// An `Authorization` field with another scheme.
    #[error("only the Bearer authentication scheme is accepted")]
    OtherScheme,
    /// A `Bearer` credential that is not exactly one token, or a field that
    /// cannot be read; the reason is safe to show the client.
    #[error("{0}")]
    Malformed(&'static str),
}

/// The bearer token of a request whose `Authorization` field values are
/// `values` (HTTP header values or gRPC metadata values, as bytes).
pub fn bearer_token<'a, I>(values: I) -> Result<&'a str, AuthorizationError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut values = values.into_iter();
    let value = values.next().ok_or(AuthorizationError::Missing)?;
    if values.next().is_some() {
        return Err(AuthorizationError::Malformed(
            "more than one Authorization header",
        ));
    }
    let value = visible_ascii(value).ok_or(AuthorizationError::Malformed(
        "the Authorization header is not visible ASCII",
    ))?;
    let token = credentials(value, "Bearer")
        .ok_or(AuthorizationError::OtherScheme)?
        .trim_matches(' ');
    if token.is_empty() {
        return Err(AuthorizationError::Malformed("the bearer token is empty"));
    }
    if token.contains(' ') {
        return Err(AuthorizationError::Malformed(
            "the bearer token contains a space",
        ));
    }
    Ok(token)
}

/// [`bearer_token`] of an HTTP request's headers.
pub fn bearer_in(headers: &HeaderMap) -> Result<&str, AuthorizationError> {
    bearer_token(headers.get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()))
}

/// What follows the scheme in an `Authorization` value, when the scheme is
/// `scheme` (auth schemes are case-insensitive, RFC 9110 §11.1); `None` for
/// any other scheme. Also what the gateway's token endpoint reads HTTP Basic
/// client credentials with.
pub fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.split_once(' ').unwrap_or((value, ""));
    name.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// `bytes` as text when they are visible ASCII, spaces or tabs: what
/// `http::HeaderValue::to_str` accepts, for metadata values too.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    let visible = bytes
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b));
    if !visible {
        return None;
    }
    // ASCII is UTF-8: the conversion cannot fail once `visible` holds.
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&'static str]) -> Result<&'static str, AuthorizationError> {
        bearer_token(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn the_token_is_read_whatever_the_case_of_the_scheme() {
        assert_eq!(parse(&["Bearer abc.def"]), Ok("abc.def"));
        assert_eq!(parse(&["bearer abc.def"]), Ok("abc.def"));
        assert_eq!(parse(&["BEARER abc.def"]), Ok("abc.def"));
        // RFC 6750 §2.1: `"Bearer" 1*SP b64token`.
        assert_eq!(parse(&["Bearer   abc.def"]), Ok("abc.def"));
    }

    #[test]
    fn no_field_and_another_scheme_are_told_apart() {
        assert_eq!(parse(&[]), Err(AuthorizationError::Missing));
        assert_eq!(
            parse(&["Basic dXNlcjpwYXNz"]),
            Err(AuthorizationError::OtherScheme)
        );
        // A scheme that merely starts like `Bearer` is another scheme.
        assert_eq!(parse(&["Bearerabc"]), Err(AuthorizationError::OtherScheme));
    }

    #[test]
    fn anything_but_exactly_one_token_is_malformed() {
        for values in [
            &["Bearer"][..],
            &["Bearer "],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
            &["Bearer caf\u{e9}"],
        ] {
            assert!(
                matches!(parse(values), Err(AuthorizationError::Malformed(_))),
                "{values:?}"
            );
        }
        assert_eq!(
            parse(&["Bearer "]),
            Err(AuthorizationError::Malformed("the bearer token is empty"))
        );
    }

    #[test]
    fn http_headers_are_read_with_the_same_rules() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_in(&headers), Err(AuthorizationError::Missing));
        headers.append(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer_in(&headers), Ok("abc"));
        headers.append(AUTHORIZATION, "Bearer def".parse().unwrap());
        assert!(matches!(
            bearer_in(&headers),
            Err(AuthorizationError::Malformed(_))
        ));
    }

    #[test]
    fn credentials_of_another_scheme_are_read_case_insensitively() {
        assert_eq!(credentials("Basic abc", "basic"), Some("abc"));
        assert_eq!(credentials("Bearer abc", "Basic"), None);
    }
}
