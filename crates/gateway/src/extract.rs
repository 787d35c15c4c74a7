//! Request extractors that fail with problems instead of axum's plain-text
//! rejections.
//!
//! axum answers a bad body with text and 422, a bad path with text and 400.
//! The public contract promises `application/problem+json` with a stable code
//! on every error, so the gateway wraps axum's `Json` and `Path` and maps each
//! rejection once, here: the client always gets a reason it can act on.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection},
        FromRequest, FromRequestParts, Path, Request,
    },
    http::{request::Parts, StatusCode},
    Json,
};
use serde::de::DeserializeOwned;
use signalbox_platform::{ErrorCode, Problem};
use uuid::Uuid;

/// A JSON request body (`Content-Type: application/json` required).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON, sent with `Content-Type: application/json`",
        ),
        // Both are the client's mistake: unparsable JSON, or JSON of the wrong
        // shape (missing field, wrong type). axum's text names the line,
        // column and field, which is what the caller needs to fix it.
        JsonRejection::JsonSyntaxError(error) => {
            Problem::new(ErrorCode::InvalidInput, error.body_text())
        }
        JsonRejection::JsonDataError(error) => {
            Problem::new(ErrorCode::InvalidInput, error.body_text())
        }
        // Reading the body failed: past the body limit (`DefaultBodyLimit`
        // in the router's stack), or the client went away mid-body.
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            ErrorCode::PayloadTooLarge,
            "the request body exceeds the size limit",
        ),
        other => Problem::new(ErrorCode::InvalidInput, other.body_text()),
    }
}

/// A path parameter; a value that does not parse is a 400 problem.
#[derive(Debug, Clone, Copy)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

fn path_problem(rejection: PathRejection) -> Problem {
    match rejection {
        PathRejection::FailedToDeserializePathParams(error) => {
            Problem::new(ErrorCode::InvalidInput, error.body_text())
        }
        other => {
            tracing::error!(error = %other.body_text(), "path extraction misconfigured");
            Problem::new(ErrorCode::Internal, "an internal error occurred")
        }
    }
}

/// Parses an id from the path. Checked at the edge so that a typo costs no
/// upstream call and reads as what it is: a bad request, not a missing thing.
pub fn parse_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| {
        Problem::new(
            ErrorCode::InvalidInput,
            format!("`{raw}` is not a valid {what} id"),
        )
    })
}
