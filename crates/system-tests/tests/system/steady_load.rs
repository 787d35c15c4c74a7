//! Steady load for the fault scenarios, and the books they check
//! afterwards.
//!
//! A few workers place one order per tick each through the gateway until
//! told to stop, and every answer is kept, so that a scenario can say what
//! was accepted and how the rest was refused. In front of more than one
//! gateway the load behaves as a load balancer would ([`Load::balanced`]).
//!
//! [`Books`] is the counting afterwards: every order decided, outboxes
//! drained, each product's stock its initial stock minus exactly the
//! approved quantities, one reservation per approved order, no dead
//! letters.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::Value;
use signalbox_messages::channels::Namespace;
use signalbox_system_tests::{api::User, infra, products, Api, DEADLINE};
use signalbox_testkit::probe;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The products the load orders, one of each in turn.
pub const PRODUCTS: [&str; 3] = [products::LAMP, products::TABLET, products::FLAG];
const WORKERS: usize = 3;
/// One order per worker per tick: steady, and few enough orders that a
/// scenario's checks read them all.
const TICK: Duration = Duration::from_millis(150);
/// The password [`Api::new_user`] registers every user with, for the
/// logins of a balanced load.
const PASSWORD: &str = "correct horse battery staple";
/// How often a balanced load asks each gateway whether it is ready, as a
/// load balancer's health check does (HAProxy's `inter`): well inside the
/// gateway's drain (`signalbox_gateway::drain::DRAIN`), so a draining
/// gateway gets no new connections before it stops accepting.
const HEALTH_CHECK: Duration = Duration::from_millis(100);

/// The gateways a load sends to, and what their last health check said.
struct Gateways {
    apis: Vec<Api>,
    /// Per gateway: ready at the last check. Relaxed: a flag read per
    /// request, and a request that reads a stale one only fails over.
    ready: Vec<AtomicBool>,
}

impl Gateways {
    fn new(apis: Vec<Api>) -> Self {
        let ready = apis.iter().map(|_| AtomicBool::new(true)).collect();
        Self { apis, ready }
    }

    /// The gateways in the order a request tries them: from `first` on in
    /// turn, those that passed their last health check before the others.
    fn order(&self, first: usize) -> Vec<&Api> {
        let n = self.apis.len();
        let turn: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        let ready = |i: &usize| self.ready[*i].load(Ordering::Relaxed);
        turn.iter()
            .filter(|i| ready(i))
            .chain(turn.iter().filter(|i| !ready(i)))
            .map(|&i| &self.apis[i])
            .collect()
    }

    /// Checks every gateway's `/health/ready` every [`HEALTH_CHECK`] until
    /// `stop`: 200 is ready; any other answer, or none within the interval,
    /// is not.
    async fn check_health(&self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(HEALTH_CHECK);
        loop {
            // Either arm: stop asked for, or time for the next round.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (api, ready) in self.apis.iter().zip(&self.ready) {
                let check = api.http().get(api.url("/health/ready")).send();
                let ok = matches!(
                    tokio::time::timeout(HEALTH_CHECK, check).await,
                    Ok(Ok(response)) if response.status() == StatusCode::OK
                );
                ready.store(ok, Ordering::Relaxed);
            }
        }
    }
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The order ids answered 202.
    pub accepted: Vec<String>,
    /// Every other answer: status, content type and problem `code`. Behind
    /// a balancer, also the answers it then sent to another gateway (a
    /// 503 from one that drains).
    pub refused: Vec<(StatusCode, String, String)>,
    /// Requests that got no answer at all (the connection broke after it
    /// was opened: whether the request was handled is unknown).
    pub unanswered: usize,
    /// For each unanswered request: which gateway, and how it broke.
    pub broken: Vec<String>,
    /// Requests a balancer sent to another gateway because one refused the
    /// connection (nothing was sent) or answered 503.
    pub failed_over: usize,
    /// Logins answered 200 (a balanced load only).
    pub logins: usize,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.accepted.extend(other.accepted);
        self.refused.extend(other.refused);
        self.unanswered += other.unanswered;
        self.broken.extend(other.broken);
        self.failed_over += other.failed_over;
        self.logins += other.logins;
    }
}

pub struct Load {
    stop: CancellationToken,
    workers: JoinSet<Outcome>,
}

impl Load {
    /// Starts placing orders for `users`, in turn, through `api`.
    pub fn start(api: &Api, users: &Arc<Vec<User>>) -> Self {
        Self::spawn(Arc::new(Gateways::new(vec![api.clone()])), users, false)
    }

    /// Starts placing orders for `users` through `gateways`, as a load
    /// balancer in front of them would: it checks each gateway's readiness
    /// every [`HEALTH_CHECK`], each request goes to the next ready gateway
    /// in turn, and to the following one when a gateway refuses
    /// the connection (stopped: nothing was sent, so resending is safe) or
    /// answers 503 (draining, or its upstream is: refused before anything
    /// was done). A request whose connection breaks once it was sent is not
    /// resent (it may have been handled): it counts as unanswered. One more
    /// worker logs a user in per tick, so that the auth service is under
    /// load too.
    pub fn balanced(gateways: Vec<Api>, users: &Arc<Vec<User>>) -> Self {
        Self::spawn(Arc::new(Gateways::new(gateways)), users, true)
    }

    /// `balanced`: with logins and health checks.
    fn spawn(gateways: Arc<Gateways>, users: &Arc<Vec<User>>, balanced: bool) -> Self {
        let logins = balanced;
        let stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        if balanced {
            let (gateways, stop) = (gateways.clone(), stop.clone());
            workers.spawn(async move {
                gateways.check_health(stop).await;
                Outcome::default()
            });
        }
        let kinds = (0..WORKERS)
            .map(|worker| (worker, false))
            .chain(logins.then_some((WORKERS, true)));
        for (worker, login) in kinds {
            let (gateways, users, stop) = (gateways.clone(), users.clone(), stop.clone());
            workers.spawn(async move {
                let mut outcome = Outcome::default();
                let mut tick = tokio::time::interval(TICK);
                for n in 0usize.. {
                    // Either arm: stop asked for, or time for the next request.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let user = &users[(worker + n) % users.len()];
                    let first = (worker + n) % gateways.apis.len();
                    if login {
                        log_in(&gateways, first, user, &mut outcome).await;
                    } else {
                        let product = PRODUCTS[(worker + n) % PRODUCTS.len()];
                        place(&gateways, first, user, product, &mut outcome).await;
                    }
                }
                outcome
            });
        }
        Self { stop, workers }
    }

    /// Stops the load and returns what it saw.
    pub async fn finish(mut self) -> anyhow::Result<Outcome> {
        self.stop.cancel();
        let mut all = Outcome::default();
        while let Some(outcome) = self.workers.join_next().await {
            all.merge(outcome?);
        }
        Ok(all)
    }
}

/// Where one request ended, on one gateway.
enum Attempt {
    /// Answered; the body read as JSON (`Null` when it was not).
    Answered(StatusCode, String, Value),
    /// The connection was refused: nothing reached that gateway.
    Refused,
    /// The connection broke after the request may have been sent.
    Broken(String),
}

async fn attempt(
    request: impl std::future::Future<Output = anyhow::Result<reqwest::Response>>,
) -> Attempt {
    let response = match request.await {
        Ok(response) => response,
        Err(error) => {
            let refused = error
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect);
            return if refused {
                Attempt::Refused
            } else {
                Attempt::Broken(format!("{error:#}"))
            };
        }
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap_or_default();
    Attempt::Answered(status, content_type, body)
}

/// Sends one request with `send` to the gateways from `first` on, as a
/// balancer does (see [`Load::balanced`]); keeps every answer that is not
/// `success` in `outcome.refused`, and returns the successful body.
async fn balance<F, Fut>(
    gateways: &Gateways,
    first: usize,
    success: StatusCode,
    outcome: &mut Outcome,
    send: F,
) -> Option<Value>
where
    F: Fn(Api) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<reqwest::Response>>,
{
    let order = gateways.order(first);
    for (turn, &api) in order.iter().enumerate() {
        let last = turn + 1 == order.len();
        match attempt(send(api.clone())).await {
            Attempt::Answered(status, _, body) if status == success => return Some(body),
            Attempt::Answered(status, content_type, body) => {
                let code = body["code"].as_str().unwrap_or_default().to_owned();
                outcome.refused.push((status, content_type, code));
                if status != StatusCode::SERVICE_UNAVAILABLE || last {
                    return None;
                }
            }
            Attempt::Refused if !last => {}
            Attempt::Refused => {
                outcome.unanswered += 1;
                outcome.broken.push(format!(
                    "{}: every gateway refused the connection",
                    api.base
                ));
                return None;
            }
            Attempt::Broken(error) => {
                outcome.unanswered += 1;
                outcome.broken.push(format!("{}: {error}", api.base));
                return None;
            }
        }
        outcome.failed_over += 1;
    }
    None
}

async fn place(
    gateways: &Gateways,
    first: usize,
    user: &User,
    product: &str,
    outcome: &mut Outcome,
) {
    let accepted = balance(
        gateways,
        first,
        StatusCode::ACCEPTED,
        outcome,
        |api| async move { api.place_order(user, &[(product, 1)]).await },
    )
    .await;
    if let Some(body) = accepted {
        match body["order_id"].as_str() {
            Some(id) => outcome.accepted.push(id.to_owned()),
            None => {
                let code = format!("202 without an order id: {body}");
                outcome
                    .refused
                    .push((StatusCode::ACCEPTED, String::new(), code));
            }
        }
    }
}

async fn log_in(gateways: &Gateways, first: usize, user: &User, outcome: &mut Outcome) {
    let email = user.email.clone();
    let logged_in = balance(gateways, first, StatusCode::OK, outcome, |api| {
        let email = email.clone();
        async move { api.login(&email, PASSWORD).await }
    })
    .await;
    if logged_in.is_some() {
        outcome.logins += 1;
    }
}

/// Rows in `pool`'s outbox that are not published yet.
pub async fn unpublished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// The orders and catalog databases of a system under load, and the stock
/// before the load, for the counting afterwards.
pub struct Books {
    pub orders: PgPool,
    pub catalog: PgPool,
    initial: HashMap<&'static str, i64>,
}

/// What the books held once they balanced.
#[derive(Debug)]
pub struct Tally {
    /// Every order in the orders database.
    pub orders: usize,
    pub approved: usize,
}

impl Books {
    /// Opens the two databases and reads every product's stock through
    /// `api`: call it before the load starts.
    pub async fn open(api: &Api, orders_url: &str, catalog_url: &str) -> anyhow::Result<Self> {
        let mut initial = HashMap::new();
        for product in PRODUCTS {
            initial.insert(product, api.stock(product).await?);
        }
        Ok(Self {
            orders: PgPool::connect(orders_url).await?,
            catalog: PgPool::connect(catalog_url).await?,
            initial,
        })
    }

    /// Waits until three more orders were decided than when it was called:
    /// the whole saga works again after a restart.
    pub async fn await_progress(&self, what: &str) -> anyhow::Result<()> {
        let decided = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM orders WHERE state <> 'PENDING'")
                .fetch_one(&self.orders)
                .await
        };
        let before = decided().await?;
        probe::until(what, DEADLINE, || async {
            let now = decided().await?;
            Ok(if now >= before + 3 {
                Ok(())
            } else {
                Err(format!("{} decided since", now - before))
            })
        })
        .await
    }

    /// Waits up to `within` until no order is left PENDING and both
    /// outboxes are drained.
    pub async fn settle(&self, within: Duration) -> anyhow::Result<()> {
        probe::until(
            "every order decided, every outbox drained",
            within,
            || async {
                let pending: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM orders WHERE state = 'PENDING'")
                        .fetch_one(&self.orders)
                        .await?;
                let waiting = unpublished(&self.orders).await? + unpublished(&self.catalog).await?;
                Ok(if pending == 0 && waiting == 0 {
                    Ok(())
                } else {
                    Err(format!("{pending} pending, {waiting} unpublished"))
                })
            },
        )
        .await
    }

    /// Once settled: every `accepted` order exists and was decided (nothing
    /// lost), each product's stock is its initial stock minus exactly the
    /// approved quantities (no reservation lost or doubled), catalog holds
    /// a reservation for each approved order and no other, and no
    /// dead-letter queue of `namespace` holds a message. Stock is read
    /// through `api`.
    pub async fn check(
        &self,
        api: &Api,
        accepted: &[String],
        namespace: &Namespace,
    ) -> anyhow::Result<Tally> {
        let states: HashMap<String, String> =
            sqlx::query_as::<_, (uuid::Uuid, String)>("SELECT id, state FROM orders")
                .fetch_all(&self.orders)
                .await?
                .into_iter()
                .map(|(id, state)| (id.to_string(), state))
                .collect();
        for id in accepted {
            let state = states.get(id).map(String::as_str);
            assert!(
                matches!(state, Some("APPROVED" | "REJECTED")),
                "accepted order {id} is {state:?}"
            );
        }

        let approved: Vec<(uuid::Uuid, uuid::Uuid, i64)> = sqlx::query_as(
            "SELECT o.id, i.product_id, i.quantity FROM orders o JOIN order_items i ON i.order_id = o.id
             WHERE o.state = 'APPROVED'",
        )
        .fetch_all(&self.orders)
        .await?;
        for product in PRODUCTS {
            let taken: i64 = approved
                .iter()
                .filter(|(_, p, _)| p.to_string() == product)
                .map(|(_, _, q)| q)
                .sum();
            assert_eq!(
                api.stock(product).await?,
                self.initial[product] - taken,
                "stock of {product}"
            );
        }
        let reserved: HashSet<uuid::Uuid> =
            sqlx::query_scalar("SELECT order_id FROM reservations WHERE state = 'RESERVED'")
                .fetch_all(&self.catalog)
                .await?
                .into_iter()
                .collect();
        let approved_ids: HashSet<uuid::Uuid> = approved.iter().map(|(id, _, _)| *id).collect();
        assert_eq!(reserved, approved_ids, "one reservation per approved order");

        for queue in infra::durable_queues(namespace) {
            if queue.ends_with(".dlq") {
                assert_eq!(
                    infra::queue_depth(&queue).await?,
                    0,
                    "{queue} holds dead letters"
                );
            }
        }
        Ok(Tally {
            orders: states.len(),
            approved: approved_ids.len(),
        })
    }

    pub async fn close(self) {
        self.orders.close().await;
        self.catalog.close().await;
    }
}
