//! The HTTP load generator: one request (method, URL, bearer token, JSON
//! body) sent again and again over a pool of keep-alive HTTP/1.1
//! connections, in an open loop at a constant arrival rate or in a closed
//! loop at a given concurrency (the schedules are [`crate::load`]'s).
//!
//! The pool is reqwest's (hyper's): a request takes an idle connection or
//! opens one, so the connections open at once follow the requests out at
//! once, up to the open loop's `max_in_flight` or the closed loop's
//! concurrency. Every answer's body is read to its end, as a browser
//! would, before the connection goes back to the pool.

use std::{sync::Arc, time::Duration};

use reqwest::{header, Client, Method};

use crate::load::{self, Answer, Outcome};

/// One request, sent many times.
#[derive(Debug, Clone)]
pub struct Target {
    pub method: Method,
    pub url: String,
    /// `Authorization: Bearer <token>` when set.
    pub bearer: Option<String>,
    /// A JSON body (`Content-Type: application/json`) when set.
    pub json: Option<String>,
}

impl Target {
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            bearer: None,
            json: None,
        }
    }

    pub fn post_json(url: impl Into<String>, json: impl Into<String>) -> Self {
        Self {
            method: Method::POST,
            url: url.into(),
            bearer: None,
            json: Some(json.into()),
        }
    }

    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }
}

/// A client whose pool keeps up to `connections` idle connections per host
/// (so that a run's connections stay open between its requests), with
/// Nagle off as every server here has it, and a per-request timeout.
pub fn client(connections: usize) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Sends `target` once and reads the whole answer.
pub async fn send(client: &Client, target: &Target) -> Answer {
    let mut request = client.request(target.method.clone(), &target.url);
    if let Some(token) = &target.bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(json) = &target.json {
        request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(json.clone());
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            match response.bytes().await {
                Ok(_) => Answer::Code {
                    code: status.as_u16().to_string(),
                    ok: status.is_success(),
                },
                Err(error) => Answer::Failed(kind(&error)),
            }
        }
        Err(error) => Answer::Failed(kind(&error)),
    }
}

/// What went wrong, coarsely, for counting.
fn kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "request"
    }
    .to_owned()
}

/// `target` at `rate` per second for `duration`, at most `max_in_flight`
/// out at once (and as many connections).
pub async fn open_loop(
    client: &Client,
    target: &Target,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> Outcome {
    let shared = Arc::new((client.clone(), target.clone()));
    load::open_loop(
        move || {
            let shared = Arc::clone(&shared);
            async move { send(&shared.0, &shared.1).await }
        },
        rate,
        duration,
        max_in_flight,
    )
    .await
}

/// `target` from `concurrency` callers in a closed loop for `duration`.
pub async fn closed_loop(
    client: &Client,
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let shared = Arc::new((client.clone(), target.clone()));
    load::closed_loop(
        move || {
            let shared = Arc::clone(&shared);
            async move { send(&shared.0, &shared.1).await }
        },
        concurrency,
        duration,
    )
    .await
}
