//! Did a call fail? The breaker and the retry layer both need to know.
//!
//! At the `http` level a gRPC call can fail in two ways: the service returns
//! an error (the connection broke, a layer refused), or the server answers
//! with a non-zero `grpc-status`. tonic answers a handler's error with a
//! "trailers-only" response, where `grpc-status` stands in the headers, so a
//! unary call's outcome can be read there without touching the body.

use tonic::Code;

/// The gRPC status code of a response, when its headers carry one.
pub fn code_of<B>(response: &http::Response<B>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// The code of a service error, when it is (or wraps) a `tonic::Status`.
pub fn code_of_error(error: &crate::BoxError) -> Option<Code> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(error) = source {
        if let Some(status) = error.downcast_ref::<tonic::Status>() {
            return Some(status.code());
        }
        source = error.source();
    }
    None
}

/// Codes that say the upstream (or the path to it) is in trouble, as opposed
/// to the request being wrong. `NotFound` or `InvalidArgument` from a healthy
/// upstream must not open its breaker.
pub fn is_upstream_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
    )
}

/// Codes worth trying again: the call most likely never ran.
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailers_only_error_is_read_from_the_headers() {
        let response = http::Response::builder()
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        assert_eq!(code_of(&response), Some(Code::Unavailable));
        assert_eq!(code_of(&http::Response::new(())), None);
    }

    #[test]
    fn a_status_is_found_inside_a_boxed_error() {
        let error: crate::BoxError = Box::new(tonic::Status::unavailable("x"));
        assert_eq!(code_of_error(&error), Some(Code::Unavailable));
        let other: crate::BoxError = "plain".into();
        assert_eq!(code_of_error(&other), None);
    }
}
