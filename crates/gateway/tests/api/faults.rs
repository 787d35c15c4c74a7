//! Real tonic servers whose misbehaviour a test sets: a catalog and an
//! orders service that answer, hang (accept the call and never answer) or
//! fail with `Unavailable`, and count every call they see with the
//! `grpc-timeout` it carried.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use signalbox_proto::{
    catalog::v1::{
        catalog_service_server::{CatalogService, CatalogServiceServer},
        BatchGetProductsRequest, BatchGetProductsResponse, GetProductRequest, ListProductsRequest,
        ListProductsResponse, Product,
    },
    orders::v1::{
        order_service_server::{OrderService, OrderServiceServer},
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest,
        ListOrdersResponse, Order, ReviseOrderRequest,
    },
};
use signalbox_resilience::deadline;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::fakes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// Accepts the call and never answers.
    Hang,
    /// Answers `Unavailable`.
    Unavailable,
    /// Answers `Unavailable` to the next this many calls, then healthy.
    FailNext(usize),
}

/// The test's handle on a faulty upstream.
#[derive(Clone)]
pub struct Faults {
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicUsize>,
    /// Bumped on every call, so a test can await "n calls arrived".
    seen: watch::Sender<usize>,
    timeouts: Arc<Mutex<Vec<Option<Duration>>>>,
    by_method: Arc<Mutex<Vec<&'static str>>>,
}

impl Faults {
    fn new(mode: Mode) -> Self {
        Self {
            mode: Arc::new(Mutex::new(mode)),
            calls: Arc::default(),
            seen: watch::channel(0).0,
            timeouts: Arc::default(),
            by_method: Arc::default(),
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Calls that reached the server.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn calls_of(&self, method: &str) -> usize {
        self.by_method
            .lock()
            .unwrap()
            .iter()
            .filter(|m| **m == method)
            .count()
    }

    /// The `grpc-timeout` of every call so far.
    pub fn timeouts(&self) -> Vec<Option<Duration>> {
        self.timeouts.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls have arrived.
    pub async fn until_calls(&self, n: usize) {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(signalbox_testkit::DEADLINE, seen.wait_for(|c| *c >= n))
            .await
            .expect("calls arrive in time")
            .expect("the fake is alive");
    }

    /// Books a call and acts out the mode.
    async fn call<T>(&self, method: &'static str, request: &Request<T>) -> Result<(), Status> {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(deadline::decode);
        self.timeouts.lock().unwrap().push(timeout);
        self.by_method.lock().unwrap().push(method);
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen.send_replace(n);
        let mode = {
            let mut mode = self.mode.lock().unwrap();
            let now = *mode;
            if let Mode::FailNext(left) = now {
                *mode = if left <= 1 {
                    Mode::Healthy
                } else {
                    Mode::FailNext(left - 1)
                };
            }
            now
        };
        match mode {
            Mode::Healthy => Ok(()),
            Mode::Hang => std::future::pending().await,
            Mode::Unavailable | Mode::FailNext(_) => Err(Status::unavailable("scripted outage")),
        }
    }
}

/// A catalog on a fresh port; returns its URL and the handle.
pub async fn catalog(mode: Mode, shutdown: CancellationToken) -> (String, Faults) {
    let faults = Faults::new(mode);
    let router = tonic::transport::Server::builder()
        .add_service(CatalogServiceServer::new(FaultyCatalog(faults.clone())));
    (fakes::serve(router, shutdown).await, faults)
}

/// An orders service on a fresh port; returns its URL and the handle.
pub async fn orders(mode: Mode, shutdown: CancellationToken) -> (String, Faults) {
    let faults = Faults::new(mode);
    let router = tonic::transport::Server::builder()
        .add_service(OrderServiceServer::new(FaultyOrders(faults.clone())));
    (fakes::serve(router, shutdown).await, faults)
}

struct FaultyCatalog(Faults);

#[tonic::async_trait]
impl CatalogService for FaultyCatalog {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        self.0.call("GetProduct", &request).await?;
        let id = request.into_inner().id;
        fakes::products()
            .into_iter()
            .find(|p| p.id == id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("product {id} does not exist")))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        self.0.call("ListProducts", &request).await?;
        Ok(Response::new(ListProductsResponse {
            products: fakes::products(),
        }))
    }

    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        self.0.call("BatchGetProducts", &request).await?;
        let ids = request.into_inner().ids;
        Ok(Response::new(BatchGetProductsResponse {
            products: fakes::products()
                .into_iter()
                .filter(|p| ids.contains(&p.id))
                .collect(),
            missing: Vec::new(),
        }))
    }
}

struct FaultyOrders(Faults);

#[tonic::async_trait]
impl OrderService for FaultyOrders {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.0.call("CreateOrder", &request).await?;
        Ok(Response::new(Order {
            id: uuid::Uuid::now_v7().to_string(),
            ..Order::default()
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.0.call("CancelOrder", &request).await?;
        Err(Status::not_found("no orders here"))
    }

    async fn revise_order(
        &self,
        request: Request<ReviseOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.0.call("ReviseOrder", &request).await?;
        Err(Status::not_found("no orders here"))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        self.0.call("GetOrder", &request).await?;
        Err(Status::not_found("no orders here"))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        self.0.call("ListOrders", &request).await?;
        Ok(Response::new(ListOrdersResponse { orders: Vec::new() }))
    }
}
