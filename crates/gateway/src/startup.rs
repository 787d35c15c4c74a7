//! Wiring: bind the listener, build the upstream clients and the token
//! verifier, and serve the routing table behind the edge's tower stack.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    body::Body,
    extract::DefaultBodyLimit,
    http::{HeaderName, Request},
    middleware,
    response::Response,
    Router,
};
use signalbox_platform::{health::Health, instrument, serve, tokens::TokenVerifier};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, OnResponse, TraceLayer},
};
use tracing::{Level, Span};

use crate::{
    budget,
    drain::{self, Drain},
    error,
    limits::{self, Limits, TrustedProxies},
    page,
    routes::system::Census,
    routes::{self, AppState},
    upstream::Clients,
    Settings,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub struct Application {
    listener: TcpListener,
    router: Router,
    /// The census's lazily opened broker connection, closed at shutdown.
    census: Census,
    /// Whether shutdown has begun (`drain`): readiness and the
    /// `Connection: close` of the responses follow it.
    drain: Drain,
}

impl Application {
    /// Binds the listener and prepares everything else without touching the
    /// network: upstream channels connect on first use and the signing keys
    /// are fetched on the first protected request, so the gateway starts
    /// whatever the state of the services behind it.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = serve::bind(&settings.http).await?;
        let proxies = TrustedProxies::parse(&settings.trusted_proxies)
            .map_err(anyhow::Error::msg)
            .context("trusted_proxies")?;
        let verifier = Arc::new(TokenVerifier::new(settings.tokens.clone()));
        let limits = Limits::new(
            &settings.limits,
            proxies,
            verifier.clone(),
            routes::class_of,
        )
        .context("limits.redis_url")?;
        let state = AppState {
            clients: Clients::new(
                &settings.upstreams,
                &settings.timeouts,
                &settings.resilience,
                &settings.discovery,
            )?,
            verifier,
            limits: Arc::new(limits),
        };
        let census = Census::new(settings.amqp.clone());
        let drain = Drain::default();
        Ok(Self {
            listener,
            router: router(state, census.clone(), &settings, drain.clone()),
            census,
            drain,
        })
    }

    pub fn http_port(&self) -> u16 {
        serve::port(&self.listener)
    }

    /// The routing table behind the whole edge stack, as
    /// `run_until_stopped` serves it: the entry point for driving the
    /// gateway's request handling without a socket (the `gateway_request`
    /// fuzz target and its corpus replay send requests through it with
    /// `tower::ServiceExt::oneshot`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            listener,
            router,
            census,
            drain,
        } = self;
        tracing::info!(port = listener.local_addr()?.port(), "gateway listening");
        // Shutdown drains first (`drain`): the server keeps serving for
        // `DRAIN`, then stops accepting and finishes what is in flight.
        let stop_accepting = drain.on(shutdown.clone(), drain::DRAIN);
        let result = serve::run_all(
            shutdown,
            vec![serve::task(
                "http",
                serve::http(listener, router, stop_accepting),
            )],
        )
        .await;
        census.close().await;
        result
    }
}

/// The routing table and health endpoints behind the edge's tower stack.
pub fn router(state: AppState, census: Census, settings: &Settings, drain: Drain) -> Router {
    // Readiness checks only that the gateway is not draining (shutting
    // down, `drain`): it can serve as soon as it listens. Checking the
    // upstreams here would take every gateway out of the load balancer
    // when one service is down, turning a partial outage (orders down,
    // catalog still browsable, a 503 problem on order routes) into a total
    // one; upstream health is the upstreams' own readiness.
    let health = {
        let drain = drain.clone();
        Health::new().flag("accepting", move || !drain.is_draining())
    }
    .router();

    // Layers run top to bottom on the way in, bottom to top on the way out.
    let stack = ServiceBuilder::new()
        // Outermost: while draining, every answer closes its connection
        // (`drain`), whatever produced it, so that clients stop reusing
        // connections to an instance that is about to stop.
        .layer(middleware::from_fn_with_state(
            drain,
            drain::close_connections,
        ))
        // Give every request an id (or keep the caller's) before anything
        // logs, so the trace span below can carry it.
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // One server span per request (`POST /api/orders`), the root of the
        // order's trace or the child of the caller's `traceparent`, with
        // method, route, status and id, so every log line below carries
        // them; 5xx answers are logged here with latency (every answer
        // with `RUST_LOG=tower_http=info`), including timed-out and
        // rejected requests, because everything below runs inside it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<Body>| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    instrument::http_server_span(request, request_id)
                })
                .on_response(|response: &Response, latency: Duration, span: &Span| {
                    instrument::record_http_response(response, span);
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .on_response(response, latency, span);
                }),
        )
        // Answer with the request's `traceparent`, so a client can look
        // its trace up; inside the span, whose context it writes.
        .layer(middleware::from_fn(instrument::return_traceparent))
        // Echo the id on the response so a client can quote it in a report;
        // inside the trace so the echoed id is the one that was logged.
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // Oversized headers are refused (431) before any routing or token
        // work; inside the trace and the request id, so the refusal is
        // logged and quotable.
        .layer(middleware::from_fn_with_state(
            settings.max_header_bytes,
            limits::header_size,
        ))
        // The whole-request budget: bounds an aggregated request (two
        // upstream calls) even when each call stays within its own timeout,
        // and runs the handler in a deadline scope, so every upstream call
        // inherits what is left and sends it on as `grpc-timeout`. Inside
        // the trace and the request id, so a timed-out request is logged
        // and quotable; above the routes, so that no handler runs without
        // the budget.
        .layer(middleware::from_fn_with_state(
            Duration::from_secs(settings.timeouts.request_secs),
            budget::request_budget,
        ))
        // Innermost: the body limit is enforced by the extractors, so an
        // oversized body becomes the same 413 problem as any other bad body.
        .layer(DefaultBodyLimit::max(settings.max_body_bytes));

    let limits = state.limits.clone();
    let system =
        routes::system::router(census, state.clients.guards.clone(), state.verifier.clone());
    routes::table(state)
        // → the broker: the system census, with its own lazily connected
        // state; and the admin view of the upstream guards.
        .merge(system)
        // The live page's settings and the OpenAPI document: API routes
        // like the others, limited like them.
        .merge(page::api_router(&settings.page))
        // The rate limits of every route above (not of health, merged
        // below: a refused probe would take the gateway out of service). A
        // route layer, so it runs after routing and knows the route's
        // class; inside the stack, so a refusal is still traced and the
        // 431 and the timeout still apply.
        .route_layer(middleware::from_fn_with_state(limits, limits::enforce))
        .merge(health)
        // The page and the API reference: embedded files, cheap to serve
        // and fetched many at a time by one browser, so not rate-limited.
        .merge(page::assets())
        // Once more, now that every route is in: an unknown method on a
        // merged route (the page, health) is a 405 problem too, not the
        // router's bare 405.
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(stack)
}
