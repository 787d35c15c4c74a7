//! In-process stand-ins for the gRPC services behind the gateway, so the
//! gateway's translation and aggregation are tested alone. They keep the
//! rules the gateway relies on and nothing more: orders takes its user from
//! the access token the gateway forwards (verified with the shared verifier,
//! against the test's JWKS) and answers NOT_FOUND for another user's order.
//! The real services are exercised by the system tests.

use std::{collections::HashMap, sync::Arc};

use signalbox_platform::{authorization, config::VerifierSettings, tokens::TokenVerifier};

use signalbox_proto::{
    auth::v1::{
        auth_service_server::{AuthService, AuthServiceServer},
        token_grant_response, GetJwksRequest, GetJwksResponse, LoginRequest, RefreshRequest,
        RegisterRequest, RegisterResponse, RevokeRequest, RevokeResponse, TokenError,
        TokenErrorCode, TokenGrantResponse, TokenRequest, TokenResponse,
    },
    catalog::v1::{
        catalog_service_server::{CatalogService, CatalogServiceServer},
        BatchGetProductsRequest, BatchGetProductsResponse, GetProductRequest, ListProductsRequest,
        ListProductsResponse, Product,
    },
    orders::v1::{
        order_service_server::{OrderService, OrderServiceServer},
        CancelOrderRequest, CreateOrderRequest, GetOrderRequest, ListOrdersRequest,
        ListOrdersResponse, Order, OrderItem, OrderState, ReviseOrderRequest,
    },
};
use tokio::{net::TcpListener, sync::Mutex};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub const WIDGET_ID: &str = "0190a1b2-0000-7000-8000-000000000001";
pub const GADGET_ID: &str = "0190a1b2-0000-7000-8000-000000000002";
pub const UNIT_PRICE_CENTS: i64 = 250;

pub fn products() -> Vec<Product> {
    vec![
        Product {
            id: WIDGET_ID.into(),
            sku: "WID-1".into(),
            name: "Widget".into(),
            price_cents: UNIT_PRICE_CENTS,
            currency: "EUR".into(),
            stock: 10,
        },
        Product {
            id: GADGET_ID.into(),
            sku: "GAD-1".into(),
            name: "Gadget".into(),
            price_cents: UNIT_PRICE_CENTS,
            currency: "EUR".into(),
            stock: 3,
        },
    ]
}

/// Serves `router` on a fresh loopback port until `shutdown`; returns the URL.
pub async fn serve(
    router: tonic::transport::server::Router,
    shutdown: CancellationToken,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
    let url = format!("http://{}", listener.local_addr().expect("fake address"));
    let incoming = signalbox_platform::serve::grpc_incoming(listener);
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()));
    url
}

pub fn auth(jwks_json: String) -> tonic::transport::server::Router {
    tonic::transport::Server::builder().add_service(AuthServiceServer::new(FakeAuth { jwks_json }))
}

pub fn catalog() -> tonic::transport::server::Router {
    tonic::transport::Server::builder().add_service(CatalogServiceServer::new(FakeCatalog))
}

/// A fake orders service that verifies the forwarded tokens with `tokens`.
pub fn orders(stuck: bool, tokens: VerifierSettings) -> tonic::transport::server::Router {
    tonic::transport::Server::builder().add_service(OrderServiceServer::new(FakeOrders {
        stuck,
        verifier: TokenVerifier::new(tokens),
        orders: Arc::default(),
    }))
}

struct FakeAuth {
    jwks_json: String,
}

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.email == "taken@example.com" {
            return Err(Status::already_exists("the email is already registered"));
        }
        Ok(Response::new(RegisterResponse {
            user_id: Uuid::now_v7().to_string(),
            email: request.email,
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<TokenResponse>, Status> {
        let request = request.into_inner();
        if request.password == "throttled" {
            return Err(throttled(9));
        }
        if request.password != "correct horse" {
            return Err(Status::unauthenticated("invalid email or password"));
        }
        Ok(Response::new(TokenResponse {
            access_token: "access.token.value".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: "refresh-token-value".into(),
            user_id: Uuid::now_v7().to_string(),
            scope: "orders:read orders:write".into(),
        }))
    }

    /// The token endpoint, scripted: refresh token `good` rotates, `slow`
    /// is throttled; client `svc` / `secret` gets a read-only token; any
    /// other client is invalid; any other grant unsupported.
    async fn token(
        &self,
        request: Request<TokenRequest>,
    ) -> Result<Response<TokenGrantResponse>, Status> {
        let request = request.into_inner();
        let refuse = |code: TokenErrorCode, description: &str| {
            token_grant_response::Result::Error(TokenError {
                code: code.into(),
                description: description.into(),
            })
        };
        let result = match request.grant_type.as_str() {
            "refresh_token" if request.refresh_token == "slow" => return Err(throttled(7)),
            "refresh_token" if request.refresh_token == "good" => {
                token_grant_response::Result::Tokens(TokenResponse {
                    access_token: "rotated.access.token".into(),
                    token_type: "Bearer".into(),
                    expires_in: 300,
                    refresh_token: "next-refresh-token".into(),
                    user_id: Uuid::now_v7().to_string(),
                    scope: "orders:read orders:write".into(),
                })
            }
            "refresh_token" => refuse(TokenErrorCode::InvalidGrant, "invalid refresh token"),
            "client_credentials"
                if request.client_id == "svc" && request.client_secret == "secret" =>
            {
                token_grant_response::Result::Tokens(TokenResponse {
                    access_token: "client.access.token".into(),
                    token_type: "Bearer".into(),
                    expires_in: 300,
                    refresh_token: String::new(),
                    user_id: "svc".into(),
                    scope: "orders:read".into(),
                })
            }
            "client_credentials" => refuse(
                TokenErrorCode::InvalidClient,
                "client authentication failed",
            ),
            _ => refuse(
                TokenErrorCode::UnsupportedGrantType,
                "unsupported grant type",
            ),
        };
        Ok(Response::new(TokenGrantResponse {
            result: Some(result),
        }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        Ok(Response::new(RevokeResponse {
            revoked: request.into_inner().token == "known",
        }))
    }

    async fn refresh(&self, _: Request<RefreshRequest>) -> Result<Response<TokenResponse>, Status> {
        Err(Status::unimplemented("not used by the gateway tests"))
    }

    async fn get_jwks(
        &self,
        _: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(GetJwksResponse {
            jwks_json: self.jwks_json.clone(),
        }))
    }
}

/// RESOURCE_EXHAUSTED with the auth service's `retry-after` entry.
fn throttled(secs: u64) -> Status {
    let mut status = Status::resource_exhausted("too many failed attempts");
    status.metadata_mut().insert("retry-after", secs.into());
    status
}

struct FakeCatalog;

#[tonic::async_trait]
impl CatalogService for FakeCatalog {
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let id = request.into_inner().id;
        products()
            .into_iter()
            .find(|p| p.id == id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("product {id} does not exist")))
    }

    async fn list_products(
        &self,
        _: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        Ok(Response::new(ListProductsResponse {
            products: products(),
        }))
    }

    async fn batch_get_products(
        &self,
        request: Request<BatchGetProductsRequest>,
    ) -> Result<Response<BatchGetProductsResponse>, Status> {
        let ids = request.into_inner().ids;
        let (found, missing): (Vec<_>, Vec<_>) = ids
            .into_iter()
            .partition(|id| products().iter().any(|p| &p.id == id));
        Ok(Response::new(BatchGetProductsResponse {
            products: products()
                .into_iter()
                .filter(|p| found.contains(&p.id))
                .collect(),
            missing,
        }))
    }
}

struct FakeOrders {
    /// Reads of an order never answer, to exercise the gateway's timeouts.
    stuck: bool,
    verifier: TokenVerifier,
    orders: Arc<Mutex<HashMap<String, Order>>>,
}

impl FakeOrders {
    /// The user a call is for: the subject of the token the gateway
    /// forwarded, as orders reads it. A call without one is refused.
    async fn caller<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let values = request.metadata().get_all("authorization");
        let token = authorization::bearer_token(values.iter().map(|v| v.as_bytes()))
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let claims = self
            .verifier
            .verify(token)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(claims.sub)
    }

    /// The order `id` if `user_id` owns it; NOT_FOUND otherwise, like orders.
    async fn owned(&self, user_id: &str, id: &str) -> Result<Order, Status> {
        if self.stuck {
            // Accepts the call and never answers: only a timeout ends it.
            std::future::pending::<()>().await;
        }
        self.orders
            .lock()
            .await
            .get(id)
            .filter(|o| o.user_id == user_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("order {id} does not exist")))
    }
}

#[tonic::async_trait]
impl OrderService for FakeOrders {
    async fn create_order(
        &self,
        request: Request<CreateOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user_id = self.caller(&request).await?;
        let request = request.into_inner();
        if request.items.is_empty() {
            return Err(Status::invalid_argument("an order needs at least one item"));
        }
        let items: Vec<OrderItem> = request
            .items
            .into_iter()
            .map(|i| OrderItem {
                product_id: i.product_id,
                quantity: i.quantity,
                unit_price_cents: UNIT_PRICE_CENTS,
            })
            .collect();
        let now = "2025-06-01T12:00:00Z".to_owned();
        let order = Order {
            id: Uuid::now_v7().to_string(),
            user_id,
            state: OrderState::Pending as i32,
            total_cents: items.iter().map(|i| i.quantity * i.unit_price_cents).sum(),
            items,
            currency: "EUR".into(),
            rejection_reason: String::new(),
            created_at: now.clone(),
            updated_at: now,
        };
        self.orders
            .lock()
            .await
            .insert(order.id.clone(), order.clone());
        Ok(Response::new(order))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user_id = self.caller(&request).await?;
        let request = request.into_inner();
        let mut order = self.owned(&user_id, &request.order_id).await?;
        order.state = OrderState::Cancelled as i32;
        self.orders
            .lock()
            .await
            .insert(order.id.clone(), order.clone());
        Ok(Response::new(order))
    }

    async fn revise_order(
        &self,
        request: Request<ReviseOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user_id = self.caller(&request).await?;
        let order = self.owned(&user_id, &request.get_ref().order_id).await?;
        // What orders answers the loser of a race with a cancellation.
        if order.state == OrderState::Cancelled as i32 {
            return Err(Status::aborted("the order was cancelled"));
        }
        Ok(Response::new(order))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user_id = self.caller(&request).await?;
        let request = request.into_inner();
        Ok(Response::new(
            self.owned(&user_id, &request.order_id).await?,
        ))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let user_id = self.caller(&request).await?;
        let mut orders: Vec<Order> = self
            .orders
            .lock()
            .await
            .values()
            .filter(|o| o.user_id == user_id)
            .cloned()
            .collect();
        orders.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListOrdersResponse { orders }))
    }
}
