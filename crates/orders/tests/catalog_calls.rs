//! Orders' call to catalog, guarded: it inherits the caller's deadline
//! through the gRPC server every service runs (`platform::serve::grpc`),
//! and a refusal of its guards reaches orders' caller with its code and its
//! rejection metadata. Real tonic servers over real connections; no
//! database or broker is needed for this one call.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use signalbox_orders::{catalog::CatalogClient, config::Upstreams, error::OrdersError};
use signalbox_proto::catalog::v1::{
    catalog_service_client::CatalogServiceClient,
    catalog_service_server::{CatalogService, CatalogServiceServer},
    BatchGetProductsRequest, BatchGetProductsResponse, GetProductRequest, ListProductsRequest,
    ListProductsResponse, Product,
};
use signalbox_resilience::{deadline, CallPolicy, Rejection};
use tokio::{net::TcpListener, sync::watch, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy)]
enum Mode {
    Healthy,
    Hang,
    Unavailable,
}

/// A catalog that records the `grpc-timeout` of every call.
#[derive(Clone)]
struct Recording {
    mode: Mode,
    timeouts: Arc<Mutex<Vec<Option<Duration>>>>,
    calls: Arc<AtomicUsize>,
    seen: watch::Sender<usize>,
}

#[tonic::async_trait]
impl CatalogService for Recording {
    async fn get_product(
        &self,
        _: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        Err(Status::unimplemented("not called"))
    }

    async fn list_products(
        &self,
        _: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        Err(Status::unimplemented("not called"))
    }

    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(deadline::decode);
        self.timeouts.lock().unwrap().push(timeout);
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.send_replace(n);
        match self.mode {
            Mode::Healthy => Ok(Response::new(BatchGetProductsResponse {
                products: Vec::new(),
                missing: request.into_inner().ids,
            })),
            Mode::Hang => std::future::pending().await,
            Mode::Unavailable => Err(Status::unavailable("scripted outage")),
        }
    }
}

struct Fake {
    url: String,
    recording: Recording,
    _stop: DropGuard,
}

async fn fake_catalog(mode: Mode) -> Fake {
    let stop = CancellationToken::new();
    let recording = Recording {
        mode,
        timeouts: Arc::default(),
        calls: Arc::default(),
        seen: watch::channel(0).0,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = tonic::transport::Server::builder()
        .add_service(CatalogServiceServer::new(recording.clone()));
    tokio::spawn(router.serve_with_incoming_shutdown(
        signalbox_platform::serve::grpc_incoming(listener),
        stop.clone().cancelled_owned(),
    ));
    Fake {
        url,
        recording,
        _stop: stop.drop_guard(),
    }
}

fn client(url: &str, timeout_ms: u64, policy: &CallPolicy) -> CatalogClient {
    let upstreams = Upstreams {
        catalog: url.to_owned(),
        catalog_timeout_ms: timeout_ms,
    };
    CatalogClient::new(&upstreams, policy, &Default::default()).expect("client builds")
}

/// Orders' position in the call tree, without the rest of orders: a gRPC
/// server run by `platform::serve::grpc`, whose handler prices with
/// `CatalogClient` and answers its errors the way orders does.
#[derive(Clone)]
struct Middle(CatalogClient);

#[tonic::async_trait]
impl CatalogService for Middle {
    async fn get_product(
        &self,
        _: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        Err(Status::unimplemented("not called"))
    }

    async fn list_products(
        &self,
        _: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        Err(Status::unimplemented("not called"))
    }

    async fn batch_get_products(
        &self,
        _: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        self.0.quote(&[Uuid::now_v7()]).await?;
        Ok(Response::new(BatchGetProductsResponse::default()))
    }
}

async fn serve_middle(
    catalog: CatalogClient,
) -> (CatalogServiceClient<tonic::transport::Channel>, DropGuard) {
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(signalbox_platform::serve::grpc(
        listener,
        CatalogServiceServer::new(Middle(catalog)),
        signalbox_proto::FILE_DESCRIPTOR_SET,
        signalbox_platform::health::Health::new(),
        stop.clone(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy();
    (CatalogServiceClient::new(channel), stop.drop_guard())
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn the_call_to_catalog_carries_what_is_left_of_the_callers_deadline() {
    let catalog = fake_catalog(Mode::Healthy).await;
    // On its own the call would get 10 s.
    let (mut middle, _stop) =
        serve_middle(client(&catalog.url, 10_000, &CallPolicy::default())).await;

    middle
        .batch_get_products(with_timeout(
            BatchGetProductsRequest::default(),
            Duration::from_millis(1500),
        ))
        .await
        .expect("priced");

    let sent = catalog.recording.timeouts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let budget = sent[0].expect("a grpc-timeout");
    assert!(budget <= Duration::from_millis(1500), "sent {budget:?}");
    assert!(budget > Duration::ZERO);
}

#[tokio::test]
async fn an_open_breaker_reaches_the_caller_as_unavailable_with_its_metadata() {
    let catalog = fake_catalog(Mode::Unavailable).await;
    let mut policy = CallPolicy::default();
    policy.breaker.minimum_calls = 2;
    policy.retry.max_attempts = 1;
    let (mut middle, _stop) = serve_middle(client(&catalog.url, 2_000, &policy)).await;

    for _ in 0..2 {
        let status = middle
            .batch_get_products(BatchGetProductsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(Rejection::of(&status), None, "catalog's own answer");
    }
    let status = middle
        .batch_get_products(BatchGetProductsRequest::default())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        matches!(Rejection::of(&status), Some(Rejection::Open { .. })),
        "{status:?}"
    );
    assert_eq!(catalog.recording.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_full_bulkhead_reaches_the_caller_as_resource_exhausted() {
    let catalog = fake_catalog(Mode::Hang).await;
    let policy = CallPolicy {
        max_in_flight: 1,
        ..CallPolicy::default()
    };
    let (middle, _stop) = serve_middle(client(&catalog.url, 30_000, &policy)).await;

    let mut first = middle.clone();
    let hung = tokio::spawn(async move {
        first
            .batch_get_products(BatchGetProductsRequest::default())
            .await
    });
    let mut seen = catalog.recording.seen.subscribe();
    tokio::time::timeout(WAIT, seen.wait_for(|n| *n >= 1))
        .await
        .expect("the first call reaches catalog")
        .unwrap();

    let status = middle
        .clone()
        .batch_get_products(BatchGetProductsRequest::default())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(Rejection::of(&status), Some(Rejection::Overloaded));
    assert_eq!(catalog.recording.calls.load(Ordering::SeqCst), 1);
    hung.abort();
}

#[tokio::test]
async fn a_spent_deadline_is_deadline_exceeded_and_nothing_is_sent() {
    let catalog = fake_catalog(Mode::Healthy).await;
    let client = client(&catalog.url, 2_000, &CallPolicy::default());

    let error = deadline::scope(Some(Instant::now()), client.quote(&[Uuid::now_v7()]))
        .await
        .err()
        .expect("refused");
    assert!(matches!(error, OrdersError::CatalogUnavailable(_)));
    let status = Status::from(error);

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(Rejection::of(&status), Some(Rejection::DeadlineExceeded));
    assert_eq!(catalog.recording.calls.load(Ordering::SeqCst), 0);
}
