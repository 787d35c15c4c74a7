//! Test harness: a gateway on port 0 whose upstreams are either closed ports
//! (the service is down) or in-process fakes, a local JWKS endpoint, and
//! EdDSA tokens minted with a key generated per test.

use reqwest::{header, Response};
use serde_json::Value;
use signalbox_gateway::{
    config::{Timeouts, Upstreams},
    Application, Settings,
};
use signalbox_platform::config::{ListenSettings, VerifierSettings};
use signalbox_testkit::tokens::{serve_jwks, AUDIENCE, ISSUER};
use tokio::net::TcpSocket;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::fakes;

pub use signalbox_testkit::tokens::{claims, TestKey};

/// Which parts of the world around the gateway are up.
pub struct World {
    pub auth: bool,
    pub orders: bool,
    pub catalog: bool,
    /// Whether the JWKS endpoint the verifier fetches answers.
    pub jwks: bool,
    /// Whether reads of an order in the fake orders service never answer.
    pub orders_stuck: bool,
    pub timeouts: Timeouts,
}

impl World {
    /// Every service down, signing keys reachable.
    pub fn all_down() -> Self {
        Self {
            auth: false,
            orders: false,
            catalog: false,
            jwks: true,
            orders_stuck: false,
            timeouts: Timeouts::default(),
        }
    }

    /// Every service up (as fakes), signing keys reachable.
    pub fn all_up() -> Self {
        Self {
            auth: true,
            orders: true,
            catalog: true,
            ..Self::all_down()
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub keys: TestKey,
    /// Stops the gateway, the fakes and the JWKS server when the test ends.
    _stop: DropGuard,
    /// The ports of the services that are down, kept closed.
    _reserved: Vec<TcpSocket>,
}

/// A gateway whose upstreams are all down.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(World::all_down()).await
}

pub async fn spawn_app_with(world: World) -> TestApp {
    spawn_app_configured(world, |_| {}).await
}

/// Like [`spawn_app_with`], with the gateway's settings adjusted last.
pub async fn spawn_app_configured(world: World, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let stop = CancellationToken::new();
    let keys = TestKey::generate();
    let mut reserved = Vec::new();

    let jwks_url = if world.jwks {
        serve_jwks(keys.jwks(), stop.clone())
            .await
            .expect("serve the JWKS")
    } else {
        format!(
            "http://{}/.well-known/jwks.json",
            closed_address(&mut reserved)
        )
    };
    let tokens = VerifierSettings {
        jwks_url,
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        leeway_secs: 5,
    };
    let auth = if world.auth {
        fakes::serve(fakes::auth(keys.jwks().to_string()), stop.clone()).await
    } else {
        format!("http://{}", closed_address(&mut reserved))
    };
    let orders = if world.orders {
        fakes::serve(
            fakes::orders(world.orders_stuck, tokens.clone()),
            stop.clone(),
        )
        .await
    } else {
        format!("http://{}", closed_address(&mut reserved))
    };
    let catalog = if world.catalog {
        fakes::serve(fakes::catalog(), stop.clone()).await
    } else {
        format!("http://{}", closed_address(&mut reserved))
    };

    let mut settings = Settings {
        http: ListenSettings::ephemeral(),
        upstreams: Upstreams {
            auth,
            orders,
            catalog,
        },
        tokens,
        timeouts: world.timeouts,
        ..Settings::default()
    };
    configure(&mut settings);
    let app = Application::build(settings).await.expect("gateway builds");
    let address = format!("http://127.0.0.1:{}", app.http_port());
    tokio::spawn(app.run_until_stopped(stop.clone()));

    TestApp {
        address,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client"),
        keys,
        _stop: stop.drop_guard(),
        _reserved: reserved,
    }
}

/// An address nothing listens on: a socket bound to it and never put in
/// the listening state, so a connection is refused, and kept (in `reserved`)
/// for the test's lifetime, so that no server of a concurrent test can be
/// given the same port.
fn closed_address(reserved: &mut Vec<TcpSocket>) -> String {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let address = socket.local_addr().expect("address").to_string();
    reserved.push(socket);
    address
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A valid access token for `user_id`.
    pub fn token_for(&self, user_id: &str) -> String {
        self.keys.sign(&claims(user_id))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json_as(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// Asserts `response` is a problem document with `status` and `code`;
/// returns the document.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "content type"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

/// Asserts `response` is an RFC 6749 §5.2 error with `status` and `error`,
/// not cacheable; returns the body.
pub async fn assert_oauth_error(response: Response, status: u16, error: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert_no_store(&response);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let body: Value = response.json().await.expect("a JSON error body");
    let fields: Vec<_> = body
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(fields, ["error", "error_description"], "{body}");
    assert_eq!(body["error"], error, "{body}");
    body
}

/// `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn assert_no_store(response: &Response) {
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(response.headers()[header::PRAGMA], "no-cache");
}

pub fn www_authenticate(response: &Response) -> String {
    response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .expect("a WWW-Authenticate challenge")
        .to_owned()
}
