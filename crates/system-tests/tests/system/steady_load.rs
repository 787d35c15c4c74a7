//! Steady load for the fault scenarios: a few workers place one order per
//! tick each through the gateway until told to stop, and every answer is
//! kept, so that a scenario can say what was accepted and how the rest was
//! refused.

use std::{sync::Arc, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;
use signalbox_system_tests::{api::User, products, Api};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The products the load orders, one of each in turn.
pub const PRODUCTS: [&str; 3] = [products::LAMP, products::TABLET, products::FLAG];
const WORKERS: usize = 3;
/// One order per worker per tick: steady, and few enough orders that a
/// scenario's checks read them all.
const TICK: Duration = Duration::from_millis(150);

/// What the load saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The order ids answered 202.
    pub accepted: Vec<String>,
    /// Every other answer: status, content type and problem `code`.
    pub refused: Vec<(StatusCode, String, String)>,
    /// Requests that got no answer at all (the connection broke).
    pub unanswered: usize,
}

pub struct Load {
    stop: CancellationToken,
    workers: JoinSet<Outcome>,
}

impl Load {
    /// Starts placing orders for `users`, in turn.
    pub fn start(api: &Api, users: &Arc<Vec<User>>) -> Self {
        let stop = CancellationToken::new();
        let mut workers = JoinSet::new();
        for worker in 0..WORKERS {
            let (api, users, stop) = (api.clone(), users.clone(), stop.clone());
            workers.spawn(async move {
                let mut outcome = Outcome::default();
                let mut tick = tokio::time::interval(TICK);
                for n in 0usize.. {
                    // Either arm: stop asked for, or time for the next order.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let user = &users[(worker + n) % users.len()];
                    let product = PRODUCTS[(worker + n) % PRODUCTS.len()];
                    place(&api, user, product, &mut outcome).await;
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
            let outcome = outcome?;
            all.accepted.extend(outcome.accepted);
            all.refused.extend(outcome.refused);
            all.unanswered += outcome.unanswered;
        }
        Ok(all)
    }
}

async fn place(api: &Api, user: &User, product: &str, outcome: &mut Outcome) {
    let Ok(response) = api.place_order(user, &[(product, 1)]).await else {
        outcome.unanswered += 1;
        return;
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap_or_default();
    match body["order_id"].as_str() {
        Some(id) if status == StatusCode::ACCEPTED => outcome.accepted.push(id.to_owned()),
        _ => {
            let code = body["code"].as_str().unwrap_or_default().to_owned();
            outcome.refused.push((status, content_type, code));
        }
    }
}
