//! The type a guarded gRPC client calls through.
//!
//! A client's stack (deadline, bulkhead, retry, breaker, and under them
//! one channel or a balanced set of endpoints) is boxed into one
//! [`UpstreamService`], so that what sits under the stack can change
//! without the client's type changing with it. A generated tonic client
//! then holds it as a [`ClientService`].

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::{body::Body, Status};
use tower::{util::BoxCloneSyncService, Service};

use crate::BoxError;

/// A guarded call path to one upstream, type-erased and cloneable.
pub type UpstreamService = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// What a generated client holds: an [`UpstreamService`] whose errors are
/// turned into the `tonic::Status` the client would make of them anyway (a
/// [`crate::Rejection`] stays itself, metadata and all; a transport error
/// becomes a status with the error as its source). Done here, behind a
/// future type of its own, so that no boxed `dyn Error` appears in the
/// futures of the code that awaits the client: with one there, the compiler
/// cannot prove those futures `Send` (its higher-ranked lifetime check
/// fails on `Into<BoxError>`).
#[derive(Clone)]
pub struct ClientService(UpstreamService);

impl ClientService {
    pub fn new(service: UpstreamService) -> Self {
        Self(service)
    }
}

impl Service<http::Request<Body>> for ClientService {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.0.poll_ready(cx).map_err(Status::from_error)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = self.0.call(request);
        Box::pin(async move { call.await.map_err(Status::from_error) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rejection;

    #[tokio::test]
    async fn a_rejection_reaches_the_client_as_itself() {
        let refusing = tower::service_fn(|_: http::Request<Body>| async {
            Err::<http::Response<Body>, BoxError>(Rejection::Overloaded.boxed())
        });
        let mut client = ClientService::new(UpstreamService::new(refusing));
        let status = client
            .call(http::Request::new(Body::empty()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(Rejection::of(&status), Some(Rejection::Overloaded));
    }
}
