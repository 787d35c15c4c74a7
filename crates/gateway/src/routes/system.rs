//! The gateway's operator routes.
//!
//! `GET /api/system/upstreams` (scope `system:admin`): how the gateway's
//! calls to each upstream are guarded right now — per upstream the calls in
//! flight against its bulkhead's bound, per endpoint its circuit breaker's
//! state and recent transitions (see [`crate::upstream`]). Read from the
//! layers' shared state, so it costs no upstream call and answers while the
//! upstreams are down, which is when it is read.
//!
//! `GET /api/system/instances`: which service instances are running, found
//! by asking them all (publish / async responses).
//!
//! The gateway publishes one `system.census` request on the events exchange,
//! with its own reply queue as `reply_to`; every instance of every service
//! that has a broker connection (orders, catalog, realtime) answers with its
//! service name, instance id, version and start time. The gateway collects
//! what arrives within the deadline (`?deadline_ms=`, 100 to 5000, 500 ms
//! by default) and
//! answers with that list; an instance that did not answer in time is simply
//! not in it. See `signalbox_messaging::census`.
//!
//! The gateway is otherwise stateless and broker-free, so the broker is
//! optional for it: the connection is opened on the first census, never at
//! start-up, and when the broker cannot be reached this route answers a 503
//! problem while every other route carries on.

use std::{
    sync::Arc,
    time::{Duration, UNIX_EPOCH},
};

use axum::{
    extract::{rejection::QueryRejection, FromRef, Query, State},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use signalbox_messaging::{census, RequestError, Requester, RequesterOptions};
use signalbox_platform::{config::AmqpSettings, tokens::TokenVerifier, ErrorCode, Problem};
use signalbox_servicekit::connect_broker_within;
use tokio::sync::OnceCell;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{Authorized, RequiredScope},
    upstream::Guard,
};

/// How long a census waits for answers unless the caller asks otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);

/// The longest deadline a caller may ask for; well inside the edge's
/// request budget.
pub const MAX_DEADLINE: Duration = Duration::from_secs(5);

/// The shortest: the deadline bounds the publication of the request too
/// (the broker's confirm), so one shorter than a confirm takes could only
/// fail (504) and never count anyone.
pub const MIN_DEADLINE: Duration = Duration::from_millis(100);

/// How long the first census may spend connecting to the broker; the
/// connect timeout of the settings (meant for services that cannot work
/// without a broker) is capped to this.
const CONNECT_BUDGET: Duration = Duration::from_secs(2);

/// At most this many censuses at once; more are refused with a 503 rather
/// than queueing up behind a slow broker.
const MAX_CENSUSES: usize = 32;

/// The system routes with their own state, to be merged into the
/// gateway's router.
pub fn router(census: Census, guards: Arc<[Guard]>, verifier: Arc<TokenVerifier>) -> Router {
    let (router, _) = api().split_for_parts();
    router.with_state(SystemState {
        census,
        guards,
        verifier,
    })
}

/// The documented system routes (see `crate::openapi`).
pub fn api() -> OpenApiRouter<SystemState> {
    OpenApiRouter::new()
        .routes(routes!(instances))
        .routes(routes!(upstreams))
}

#[derive(Clone, FromRef)]
pub struct SystemState {
    census: Census,
    guards: Arc<[Guard]>,
    verifier: Arc<TokenVerifier>,
}

/// Reading the gateway's internals: `GET /api/system/upstreams`. Users do
/// not get it (`tokens.user_scopes`); an operator's service account is
/// created with it (`auth create-client --scopes system:admin`).
pub struct SystemAdmin;
impl RequiredScope for SystemAdmin {
    const SCOPE: &'static str = "system:admin";
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamsBody {
    pub upstreams: Vec<UpstreamBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamBody {
    pub name: &'static str,
    /// Calls in flight now, and the bulkhead's bound on them.
    pub in_flight: usize,
    pub max_in_flight: usize,
    pub endpoints: Vec<EndpointBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointBody {
    pub address: String,
    /// `closed`, `open` or `half_open`.
    #[schema(example = "closed")]
    pub breaker: String,
    /// Oldest first, at most the breaker's history.
    pub transitions: Vec<TransitionBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionBody {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[utoipa::path(
    get,
    path = "/api/system/upstreams",
    tag = "system",
    operation_id = "upstreams",
    summary = "The gateway's guards of each upstream: bulkhead, breakers (scope `system:admin`)",
    security(("bearer" = ["system:admin"])),
    responses((status = 200, description = "Per upstream its calls in flight and per endpoint its breaker", body = UpstreamsBody)),
)]
#[tracing::instrument(skip_all)]
async fn upstreams(
    State(guards): State<Arc<[Guard]>>,
    _admin: Authorized<SystemAdmin>,
) -> Json<UpstreamsBody> {
    let upstreams = guards
        .iter()
        .map(|guard| UpstreamBody {
            name: guard.upstream.name(),
            in_flight: guard.bulkhead.in_flight(),
            max_in_flight: guard.max_in_flight,
            endpoints: guard
                .endpoints
                .now()
                .into_iter()
                .map(|endpoint| EndpointBody {
                    breaker: endpoint.breaker.state().to_string(),
                    transitions: endpoint
                        .transitions()
                        .into_iter()
                        .map(|t| TransitionBody {
                            at_unix_ms: t
                                .at
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as u64),
                            from: t.from.to_string(),
                            to: t.to.to_string(),
                            reason: t.reason,
                        })
                        .collect(),
                    address: endpoint.address,
                })
                .collect(),
        })
        .collect();
    Json(UpstreamsBody { upstreams })
}

/// The broker side of the census: the settings, and the requester once
/// connected.
#[derive(Clone)]
pub struct Census {
    amqp: Option<Arc<AmqpSettings>>,
    /// Set by the first census that reaches the broker; a failed attempt
    /// leaves it empty, so the next census tries again.
    requester: Arc<OnceCell<Requester>>,
}

impl Census {
    pub fn new(amqp: Option<AmqpSettings>) -> Self {
        Self {
            amqp: amqp.map(Arc::new),
            requester: Arc::new(OnceCell::new()),
        }
    }

    /// Closes the broker connection if a census opened one (at shutdown, so
    /// the broker sees a clean close rather than a dropped socket).
    pub async fn close(&self) {
        if let Some(requester) = self.requester.get() {
            requester.close().await;
            requester.broker().close().await;
        }
    }

    /// The requester, connecting on first use. Concurrent first censuses
    /// wait for one connection attempt instead of each making their own.
    async fn requester(&self) -> Result<&Requester, Problem> {
        let Some(settings) = self.amqp.as_deref() else {
            return Err(Problem::new(
                ErrorCode::Unavailable,
                "no message broker is configured for the census",
            ));
        };
        self.requester
            .get_or_try_init(|| connect(settings))
            .await
            .map_err(|error| {
                tracing::warn!(error = format!("{error:#}"), "census: broker unreachable");
                broker_unavailable()
            })
    }
}

#[tracing::instrument(skip_all, fields(namespace = %settings.namespace))]
async fn connect(settings: &AmqpSettings) -> anyhow::Result<Requester> {
    let budget = CONNECT_BUDGET.min(Duration::from_secs(settings.connect_timeout_secs));
    let attempt = async {
        let broker = connect_broker_within(settings, "gateway", budget).await?;
        let options = RequesterOptions::new("gateway-census").max_outstanding(MAX_CENSUSES);
        anyhow::Ok(Requester::start(broker, options).await?)
    };
    // `Broker::connect` checks its budget between attempts; this bounds an
    // attempt that hangs (a host that drops packets instead of refusing).
    match tokio::time::timeout(budget * 2, attempt).await {
        Ok(requester) => requester,
        Err(_) => anyhow::bail!("no broker connection within {:?}", budget * 2),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CensusQuery {
    /// How long to wait for answers, in milliseconds (100 to 5000; 500
    /// when absent).
    #[param(minimum = 100, maximum = 5000, example = 500)]
    deadline_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstancesBody {
    /// Sorted by service, then instance id.
    pub instances: Vec<InstanceBody>,
    /// How long the census waited for answers.
    pub deadline_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceBody {
    pub service: String,
    pub instance_id: String,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
}

#[utoipa::path(
    get,
    path = "/api/system/instances",
    tag = "system",
    operation_id = "instances",
    summary = "Census: every running service instance that answers within the deadline",
    params(CensusQuery),
    responses(
        (status = 200, description = "The instances that answered in time", body = InstancesBody),
        (status = 400, description = "`deadline_ms` is not a number from 100 to 5000 (`invalid_input`)",
            body = crate::openapi::Problem, content_type = "application/problem+json"),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn instances(
    State(census): State<Census>,
    query: Result<Query<CensusQuery>, QueryRejection>,
) -> Result<Json<InstancesBody>, Problem> {
    let deadline = deadline(query)?;
    let requester = census.requester().await?;
    let replies = census::gather(requester, deadline, None)
        .await
        .map_err(census_problem)?;
    tracing::debug!(instances = replies.len(), "census taken");
    Ok(Json(InstancesBody {
        instances: replies
            .into_iter()
            .map(|reply| InstanceBody {
                service: reply.service,
                instance_id: reply.instance_id,
                version: reply.version,
                started_at: reply.started_at.to_rfc3339(),
            })
            .collect(),
        deadline_ms: deadline.as_millis() as u64,
    }))
}

/// The requested deadline: `?deadline_ms=` between [`MIN_DEADLINE`] and
/// [`MAX_DEADLINE`], or [`DEFAULT_DEADLINE`].
fn deadline(query: Result<Query<CensusQuery>, QueryRejection>) -> Result<Duration, Problem> {
    let invalid = || {
        Problem::new(
            ErrorCode::InvalidInput,
            format!(
                "deadline_ms must be a number of milliseconds from {} to {}",
                MIN_DEADLINE.as_millis(),
                MAX_DEADLINE.as_millis()
            ),
        )
    };
    let Query(query) = query.map_err(|_| invalid())?;
    match query.deadline_ms {
        None => Ok(DEFAULT_DEADLINE),
        Some(ms)
            if (MIN_DEADLINE.as_millis()..=MAX_DEADLINE.as_millis()).contains(&u128::from(ms)) =>
        {
            Ok(Duration::from_millis(ms))
        }
        Some(_) => Err(invalid()),
    }
}

fn broker_unavailable() -> Problem {
    Problem::new(ErrorCode::Unavailable, "the message broker is unavailable")
}

/// A census that could not be taken. (Errors of this route are mapped here,
/// beside the route, because they come from the broker, which no other
/// route uses.)
fn census_problem(error: RequestError) -> Problem {
    match error {
        RequestError::Busy { limit } => {
            tracing::warn!(limit, "census: too many in progress");
            Problem::new(ErrorCode::Unavailable, "too many censuses are in progress")
        }
        RequestError::Timeout { .. } => {
            tracing::warn!(%error, "census: broker too slow");
            Problem::new(
                ErrorCode::Timeout,
                "the message broker did not take the census request in time",
            )
        }
        error => {
            tracing::warn!(%error, "census failed");
            broker_unavailable()
        }
    }
}
