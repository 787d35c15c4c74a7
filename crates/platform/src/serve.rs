//! Listening and serving: bind first, serve later.
//!
//! `Application::build` binds every listener before anything runs, so the
//! bound ports are known (tests ask for port 0 and read the real port back)
//! and a port conflict fails at start-up, not on the first request.

use std::time::Duration;

use axum::Router;
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseSettings, ListenSettings};

pub async fn bind(settings: &ListenSettings) -> anyhow::Result<TcpListener> {
    let addr = settings.addr()?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Serves `router` until `shutdown`; in-flight requests finish first.
pub async fn http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// The port a listener is bound to (the real one when port 0 was asked for).
pub fn port(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Serves one gRPC service until `shutdown`, together with what every
/// Signalbox gRPC server offers: the standard health protocol
/// (`grpc.health.v1`, reporting the service SERVING) and reflection over
/// `file_descriptor_set`.
pub async fn grpc<S>(
    listener: TcpListener,
    service: S,
    file_descriptor_set: &'static [u8],
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(S::NAME, tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection(file_descriptor_set)?)
        .add_service(service)
        .serve_with_incoming_shutdown(grpc_incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// A pre-bound listener as the incoming-connection stream tonic serves from.
pub fn grpc_incoming(listener: TcpListener) -> TcpListenerStream {
    TcpListenerStream::new(listener)
}

/// gRPC server reflection over the given descriptor set, so `grpcurl` and
/// similar tools can list and call services without the protos.
pub fn reflection(
    file_descriptor_set: &'static [u8],
) -> anyhow::Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(file_descriptor_set)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

/// A connection pool; waits a bounded time for a connection so an
/// unreachable database fails requests quickly instead of hanging them.
pub async fn database(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&settings.url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))
}

/// A long-running part of a service (a server, a consumer, a relay).
pub type Task = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// Names a task for [`run_all`].
pub fn task<F>(name: &'static str, future: F) -> (&'static str, Task)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    (name, Box::pin(future))
}

/// Names a task that cannot fail (it logs and retries its own errors, like
/// the outbox relay), for [`run_all`].
pub fn background<F>(name: &'static str, future: F) -> (&'static str, Task)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    task(name, async move {
        future.await;
        Ok(())
    })
}

/// Runs every task of a service until all have stopped.
///
/// Each task receives (a clone of) `shutdown` from its caller. When one task
/// fails, `shutdown` is cancelled so the others stop too and the process
/// exits with the error: a service missing a part (its consumer, say) must
/// not pretend to be healthy; its supervisor (compose, Kubernetes) restarts it.
pub async fn run_all(
    shutdown: CancellationToken,
    tasks: Vec<(&'static str, Task)>,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for (name, future) in tasks {
        set.spawn(async move { (name, future.await) });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let (name, result) = match joined {
            Ok(outcome) => outcome,
            Err(join_error) => ("task", Err(anyhow::anyhow!("task panicked: {join_error}"))),
        };
        match result {
            Ok(()) => tracing::debug!(task = name, "stopped"),
            Err(error) => {
                tracing::error!(
                    task = name,
                    error = format!("{error:#}"),
                    "task failed; stopping"
                );
                shutdown.cancel();
                first_error.get_or_insert(error.context(name));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
