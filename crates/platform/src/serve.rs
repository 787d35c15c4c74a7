//! Listening and serving: bind first, serve later.
//!
//! `Application::build` binds every listener before anything runs, so the
//! bound ports are known (tests ask for port 0 and read the real port back)
//! and a port conflict fails at start-up, not on the first request.

use std::{collections::HashMap, future::Future, time::Duration};

use anyhow::Context;
use axum::{
    serve::{ListenerExt, TapIo},
    Router,
};
use secrecy::ExposeSecret;
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::{
    config::{DatabaseSettings, ListenSettings},
    health::Health,
};

pub async fn bind(settings: &ListenSettings) -> anyhow::Result<TcpListener> {
    let addr = settings
        .addr()
        .with_context(|| format!("`{}:{}` is not an address", settings.host, settings.port))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves `router` until `shutdown`; in-flight requests finish first.
pub async fn http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // After routing (a router's layer), so that every request is measured
    // by its route template: `http_server_request_duration_seconds`.
    let router = router.layer(axum::middleware::from_fn(crate::instrument::http_metrics));
    axum::serve(
        http_listener(listener),
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// A pre-bound listener as axum serves from: each accepted connection with
/// `TCP_NODELAY` (see [`no_delay`]).
fn http_listener(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(no_delay)
}

/// Sends every write at once (`TCP_NODELAY`) on an accepted connection.
///
/// Without it, Nagle's algorithm holds a small write back while an earlier
/// one is unacknowledged, and the peer delays its acknowledgement (up to
/// 40 ms on Linux) because it has nothing to send: a push that follows
/// another within a few milliseconds, or the second half of a response,
/// waits those 40 ms. Our writes are already whole messages (a socket
/// task writes what is queued and flushes once), so there is nothing for
/// Nagle to gather.
fn no_delay(tcp: &mut TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
    }
}

/// The port a listener is bound to (the real one when port 0 was asked for).
pub fn port(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Serves one gRPC service until `shutdown`, together with what every
/// Signalbox gRPC server offers: the standard health protocol
/// (`grpc.health.v1`) and reflection over `file_descriptor_set`.
///
/// The health protocol follows `readiness`, the same checks as the
/// service's `/health/ready`: NOT_SERVING until they first pass, while any
/// fails, and from the moment shutdown begins (so a gRPC-aware balancer
/// drains the instance while its in-flight calls finish); SERVING
/// otherwise. Both the service's own name and the whole server (`""`) are
/// reported.
///
/// Every call gets a server span that continues the caller's trace and is
/// measured (`rpc_server_duration_seconds`, see
/// [`crate::instrument::GrpcServerLayer`]).
///
/// Every request runs in the deadline its caller sent (`grpc-timeout`):
/// the guarded clients a handler calls through
/// (`signalbox_resilience::DeadlineLayer`) find it and give their own calls
/// no more than what is left, so one deadline spans the whole call tree.
pub async fn grpc<S>(
    listener: TcpListener,
    service: S,
    file_descriptor_set: &'static [u8],
    readiness: Health,
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
    // NOT_SERVING until the first round of checks has passed.
    reporter
        .set_service_status(S::NAME, tonic_health::ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // A task that keeps the health protocol in step with readiness; it
    // ends with the server (shutdown), having said NOT_SERVING.
    tokio::spawn(follow_readiness(
        reporter,
        S::NAME,
        readiness,
        shutdown.clone(),
    ));
    tonic::transport::Server::builder()
        // Outermost: the server span and the duration of every call, so
        // that the time spent in the layers below is part of both.
        .layer(crate::instrument::GrpcServerLayer)
        // Around every service: a layer of the server, so each request's
        // handler runs inside the caller's deadline scope and no service
        // can forget it.
        .layer(signalbox_resilience::InheritDeadlineLayer)
        .add_service(health)
        .add_service(reflection(file_descriptor_set)?)
        .add_service(service)
        .serve_with_incoming_shutdown(grpc_incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// How often the gRPC health status is brought in step with readiness.
const READINESS_EVERY: Duration = Duration::from_secs(2);

/// Runs `readiness` every [`READINESS_EVERY`] and reports the result for
/// `service` and the whole server, until `shutdown`: then NOT_SERVING.
async fn follow_readiness(
    mut reporter: tonic_health::server::HealthReporter,
    service: &'static str,
    readiness: Health,
    shutdown: CancellationToken,
) {
    use tonic_health::ServingStatus;
    let mut serving = None;
    loop {
        let (ready, _) = readiness.report().await;
        if serving != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(service, ?status, "grpc health");
            set_status(&mut reporter, service, status).await;
            serving = Some(ready);
        }
        tokio::select! {
            // Shutdown: stop taking new calls from balancers that watch.
            _ = shutdown.cancelled() => break,
            // The next round of checks.
            _ = tokio::time::sleep(READINESS_EVERY) => {}
        }
    }
    set_status(&mut reporter, service, ServingStatus::NotServing).await;
}

async fn set_status(
    reporter: &mut tonic_health::server::HealthReporter,
    service: &'static str,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status(service, status).await;
    reporter.set_service_status("", status).await;
}

/// A pre-bound listener as the incoming-connection stream tonic serves
/// from, each connection with `TCP_NODELAY` (see [`no_delay`]): tonic sets
/// it on the listeners it binds itself, not on a stream it is given, and
/// a gRPC answer is several HTTP/2 frames (headers, data, trailers) that
/// Nagle's algorithm would otherwise hold back behind an unacknowledged
/// write.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
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

/// A connection pool; waits a bounded time for a connection
/// (`acquire_timeout_ms`) so an unreachable database fails requests
/// quickly, with a status that says so, instead of hanging them.
/// The one place a service reads its database URL.
pub async fn database(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        .connect(settings.url.expose_secret())
        .await
        .context("cannot connect to the database")
}

/// A long-running part of a service (a server, a consumer, a relay).
pub type Task = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Names a task for [`run_all`]. Any fallible future will do, as it is: a
/// server's `io::Error`, a consumer's own error type or an `anyhow::Error`
/// becomes the task's error with its cause chain intact.
pub fn task<F, E>(name: &'static str, future: F) -> (&'static str, Task)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<anyhow::Error> + 'static,
{
    (
        name,
        Box::pin(async move { future.await.map_err(Into::into) }),
    )
}

/// Names a task that cannot fail (it logs and retries its own errors, like
/// the outbox relay), for [`run_all`].
pub fn background<F>(name: &'static str, future: F) -> (&'static str, Task)
where
    F: Future<Output = ()> + Send + 'static,
{
    task(name, async move {
        future.await;
        anyhow::Ok(())
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
    // By task id, so a task that panicked is still reported by its name.
    let mut names = HashMap::new();
    for (name, future) in tasks {
        names.insert(set.spawn(future).id(), name);
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next_with_id().await {
        let (name, result) = match joined {
            Ok((id, outcome)) => (name_of(&names, id), outcome),
            Err(join_error) => (
                name_of(&names, join_error.id()),
                Err(anyhow::Error::new(join_error).context("panicked")),
            ),
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
    // Every task has stopped: export the spans they ended, so a graceful
    // shutdown loses none (blocking, bounded by the exporter's timeout).
    let _ = tokio::task::spawn_blocking(crate::telemetry::flush).await;
    first_error.map_or(Ok(()), Err)
}

fn name_of(names: &HashMap<tokio::task::Id, &'static str>, id: tokio::task::Id) -> &'static str {
    names.get(&id).copied().unwrap_or("task")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client connecting to `accept`'s listener finds on the
    /// server's side of the connection.
    async fn accepted<F, Fut>(accept: F) -> TcpStream
    where
        F: FnOnce(TcpListener) -> Fut,
        Fut: Future<Output = TcpStream>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (server, _client) = tokio::join!(accept(listener), async {
            TcpStream::connect(addr).await.unwrap()
        });
        server
    }

    #[tokio::test]
    async fn grpc_connections_send_without_delay() {
        use futures::StreamExt;
        let server =
            accepted(|listener| async { grpc_incoming(listener).next().await.unwrap().unwrap() })
                .await;
        assert!(server.nodelay().unwrap());
    }

    #[tokio::test]
    async fn http_connections_send_without_delay() {
        use axum::serve::Listener;
        let server = accepted(|listener| async { http_listener(listener).accept().await.0 }).await;
        assert!(server.nodelay().unwrap());
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the queue is gone")]
    struct Gone(#[source] std::io::Error);

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_keeps_its_cause_chain() {
        let shutdown = CancellationToken::new();
        let stopped = shutdown.clone();
        let failing = async {
            let cause = std::io::Error::other("connection reset");
            Err::<(), _>(Gone(cause))
        };

        let result = run_all(
            shutdown.clone(),
            vec![
                task("consumer", failing),
                background("relay", async move { stopped.cancelled().await }),
            ],
        )
        .await;

        let error = format!("{:#}", result.unwrap_err());
        assert_eq!(error, "consumer: the queue is gone: connection reset");
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_panics_is_reported_by_its_name() {
        let result = run_all(
            CancellationToken::new(),
            vec![task("census", async {
                if true {
                    panic!("boom");
                }
                std::io::Result::Ok(())
            })],
        )
        .await;

        let error = format!("{:#}", result.unwrap_err());
        assert!(error.starts_with("census: panicked"), "{error}");
    }
}
