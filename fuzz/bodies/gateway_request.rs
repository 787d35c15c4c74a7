//! Fuzz body `gateway_request`: arbitrary bytes as an HTTP request to the
//! gateway, sent through its real router and edge stack
//! (`signalbox_gateway::Application::router`, with
//! `tower::ServiceExt::oneshot`): header size limit, request budget, rate
//! limits, edge authentication, the JSON and path extractors, every route's
//! handler, the 404 and 405 fallbacks.
//!
//! The input is read as a request's text: `METHOD TARGET` on the first
//! line, `Name: value` lines, an empty line, the body (`\r\n` or `\n` line
//! ends). Input that HTTP/1.1 itself could not carry (a bad method, target,
//! header name or value) is what hyper refuses before the router, and is
//! skipped. Every other request must be answered as the public contract
//! says: never 500, and every 4xx and 5xx an RFC 9457 problem
//! (`application/problem+json`, its `status` the response's, with a
//! `code`) — or, under `/oauth/`, an RFC 6749 §5.2 error (`application/json`
//! with `error`).
//!
//! The gateway runs as the tests run it with every service down: the
//! upstreams are closed ports (an allowed call fails at once, 503), no
//! broker (the census answers 503), the signing keys those of
//! [`test_key`], so the corpus's tokens reach the handlers behind the
//! authentication; the rate limits are raised so that a long run keeps
//! reaching the handlers instead of being answered 429.
//!
//! Shared by `fuzz/fuzz_targets/gateway_request.rs` and the corpus replay
//! `crates/gateway/tests/fuzz_corpus.rs`.

use std::sync::OnceLock;

use axum::{
    body::{to_bytes, Body},
    http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri},
    Router,
};
use serde_json::Value;
use signalbox_gateway::{
    config::{ClassLimits, LimitSettings, Rate, Upstreams},
    Application, Settings,
};
use signalbox_platform::config::{ListenSettings, VerifierSettings};
use tokio::net::TcpSocket;
use tower::ServiceExt;

#[path = "test_key.rs"]
mod test_key;

/// The largest response body read back; every answer of the gateway is
/// far smaller (the OpenAPI document is the largest).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

struct Gateway {
    runtime: tokio::runtime::Runtime,
    router: Router,
    /// The upstreams' ports: bound and never listening, so a connection is
    /// refused; held so that no other server gets them.
    _closed: Vec<TcpSocket>,
}

fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (router, closed) = runtime.block_on(async {
            let mut closed = Vec::new();
            let mut closed_url = || {
                let socket = TcpSocket::new_v4().expect("a socket");
                socket
                    .bind("127.0.0.1:0".parse().expect("an address"))
                    .expect("bind");
                let url = format!("http://{}", socket.local_addr().expect("its address"));
                closed.push(socket);
                url
            };
            let plenty = ClassLimits {
                per_ip: Rate::new(1_000_000, 60_000_000),
                per_user: Some(Rate::new(1_000_000, 60_000_000)),
            };
            let settings = Settings {
                http: ListenSettings::ephemeral(),
                upstreams: Upstreams {
                    auth: closed_url(),
                    orders: closed_url(),
                    catalog: closed_url(),
                },
                tokens: VerifierSettings {
                    jwks_url: test_key::jwks_url().to_owned(),
                    ..VerifierSettings::default()
                },
                limits: LimitSettings {
                    credentials: ClassLimits {
                        per_user: None,
                        ..plenty
                    },
                    reads: plenty,
                    writes: plenty,
                    admin: plenty,
                    ..LimitSettings::default()
                },
                amqp: None,
                ..Settings::default()
            };
            let app = Application::build(settings)
                .await
                .expect("the gateway builds");
            (app.router(), closed)
        });
        Gateway {
            runtime,
            router,
            _closed: closed,
        }
    })
}

/// The request `data` spells, when HTTP/1.1 could carry it.
pub fn request_of(data: &[u8]) -> Option<Request<Body>> {
    let (head, body) = match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&data[..at], &data[at + 4..]),
        None => match data.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &[][..]),
        },
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let mut start = lines.next()?.split(|&b| b == b' ');
    let method = Method::from_bytes(start.next()?).ok()?;
    let uri = Uri::try_from(start.next()?).ok()?;
    let mut request = Request::builder().method(method).uri(uri);
    for line in lines {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = line[colon + 1..].trim_ascii();
        request = request.header(name, HeaderValue::from_bytes(value).ok()?);
    }
    request.body(Body::from(body.to_vec())).ok()
}

/// Sends the request `data` spells and checks the answer; its status, or
/// `None` when HTTP/1.1 could not carry the request.
pub fn run(data: &[u8]) -> Option<StatusCode> {
    let request = request_of(data)?;
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let gateway = gateway();
    let (status, content_type, body) = gateway.runtime.block_on(async {
        let response = gateway
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
            .await
            .expect("the response body is read");
        (status, content_type, body)
    });

    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {path} answered 500: {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_client_error() || status.is_server_error() {
        let oauth = path.starts_with("/oauth/");
        match content_type.as_deref() {
            Some("application/problem+json") => {}
            Some("application/json") if oauth => {}
            other => {
                panic!("{method} {path} answered {status} as {other:?}: not a documented error")
            }
        }
        // A HEAD answer has the headers of the GET and no body.
        if method != Method::HEAD {
            let document: Value = serde_json::from_slice(&body).unwrap_or_else(|error| {
                panic!("{method} {path} answered {status} with a body that is not JSON: {error}")
            });
            if content_type.as_deref() == Some("application/problem+json") {
                assert_eq!(
                    document["status"].as_u64(),
                    Some(u64::from(status.as_u16())),
                    "{method} {path}: {document}"
                );
                assert!(document["code"].is_string(), "{method} {path}: {document}");
            } else {
                assert!(document["error"].is_string(), "{method} {path}: {document}");
            }
        }
    }
    Some(status)
}
