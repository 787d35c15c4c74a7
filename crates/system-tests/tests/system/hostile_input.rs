//! Hostile input on every public surface: oversized and malformed requests
//! at the REST edge, frames on the socket, messages on an internal gRPC
//! port. Each is answered with the documented refusal and nothing else,
//! and the system goes on working, having stored and published nothing for
//! it (see docs/patterns/failure-testing.md, "Hostile input").

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use reqwest::{header, StatusCode};
use serde_json::{json, Value};
use signalbox_proto::catalog::v1::{
    catalog_service_client::CatalogServiceClient, BatchGetProductsRequest, GetProductRequest,
    Product,
};
use signalbox_system_tests::{products, Options, TestSystem, DEADLINE};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode, Message,
};

/// Asserts `response` is a problem document with `status` and `code`.
async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let what = format!("{} {}", response.url().path(), response.status());
    assert_eq!(response.status(), status, "{what}");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json",
        "{what}"
    );
    let problem: Value = response.json().await.expect("a problem is JSON");
    assert_eq!(problem["status"], status.as_u16(), "{what}: {problem}");
    assert_eq!(problem["code"], code, "{what}: {problem}");
    problem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_their_problem_and_store_nothing() -> anyhow::Result<()>
{
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let orders = api.url("/api/orders");
    let post = || api.http().post(&orders).bearer_auth(&user.access_token);

    // A body above `max_body_bytes` (64 KiB): 413, before any JSON is read.
    let oversized = format!(r#"{{"items": [], "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let response = post()
        .header(header::CONTENT_TYPE, "application/json")
        .body(oversized)
        .send()
        .await?;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;

    // Not JSON, JSON of the wrong shape, a wrong type inside: 400.
    for body in [
        r#"{"items": [{"product_id": "#,
        "\u{0}\u{1}binary",
        r#"{"items": "all of them"}"#,
        r#"{"items": [{"product_id": "x", "quantity": "two"}]}"#,
        r#"[1, 2, 3]"#,
    ] {
        let response = post()
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    }

    // The right JSON sent as something else: 415.
    let valid = json!({"items": [{"product_id": products::LAMP, "quantity": 1}]}).to_string();
    for content_type in [None, Some("text/plain"), Some("application/xml")] {
        let mut request = post().body(valid.clone());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await?;
        assert_problem(
            response,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }

    // Bad `Authorization` values: 401 with the RFC 6750 challenge.
    for value in [
        "Bearer",
        "Bearer not-a-token",
        "Bearer a.b.c",
        "Bearer two words",
        "Basic dXNlcjpwYXNz",
        "bearer\tx",
    ] {
        let response = api
            .http()
            .post(&orders)
            .header(header::AUTHORIZATION, value)
            .header(header::CONTENT_TYPE, "application/json")
            .body(valid.clone())
            .send()
            .await?;
        assert!(
            response.headers().contains_key(header::WWW_AUTHENTICATE),
            "{value}: no challenge"
        );
        assert_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
    }

    // Invalid path parameters: 400, no upstream call.
    for path in [
        "/api/orders/not-a-uuid",
        "/api/orders/%00",
        "/api/orders/0193a4c0-0000-7000-8000-00000000000",
    ] {
        let response = api
            .http()
            .get(api.url(path))
            .bearer_auth(&user.access_token)
            .send()
            .await?;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_input").await;
    }
    let response = api
        .http()
        .get(api.url("/api/catalog/products/%E2%98%83"))
        .send()
        .await?;
    assert_problem(response, StatusCode::BAD_REQUEST, "invalid_input").await;

    // Headers above `max_header_bytes` (16 KiB) in one field or in many:
    // 431 problem, before routing.
    let response = api
        .http()
        .get(api.url("/api/catalog/products"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await?;
    assert_problem(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_header_fields_too_large",
    )
    .await;
    let mut many = api.http().get(api.url("/api/catalog/products"));
    for n in 0..90 {
        many = many.header(format!("x-filler-{n}"), "y".repeat(200));
    }
    let response = many.send().await?;
    assert_problem(
        response,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_header_fields_too_large",
    )
    .await;

    // Nothing was stored, and the same user still places an order.
    let listed: Value = api
        .http()
        .get(&orders)
        .bearer_auth(&user.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["orders"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    let placed = api.place_order(&user, &[(products::LAMP, 1)]).await?;
    assert_eq!(placed.status(), StatusCode::ACCEPTED);

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_are_refused_by_the_http_layer() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;

    // More fields than HTTP/1.1 parsing takes (hyper's bound, 100), each
    // small: refused 431 by the server's HTTP layer before the gateway's
    // stack, which is why this answer has no problem document.
    let mut request = api.http().get(api.url("/api/catalog/products"));
    for n in 0..120 {
        request = request.header(format!("x-field-{n}"), "1");
    }
    let response = request.send().await?;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    // The gateway still answers.
    let response = api
        .http()
        .get(api.url("/api/catalog/products"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);

    system.stop().await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket authenticated with `token` on the upgrade, past its `welcome`.
async fn open_socket(url: &str, token: &str) -> anyhow::Result<Ws> {
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(signalbox_system_tests::socket::SUBPROTOCOL),
    );
    headers.insert("Authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let welcome = next_frame(&mut socket).await?;
    anyhow::ensure!(welcome["type"] == "welcome", "{welcome}");
    Ok(socket)
}

/// The next text frame as JSON; an error if the socket closes first.
async fn next_frame(socket: &mut Ws) -> anyhow::Result<Value> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
                Some(Ok(Message::Close(frame))) => anyhow::bail!("closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error.into()),
                None => anyhow::bail!("the socket ended"),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no frame within {DEADLINE:?}"))?
}

/// The close code the server sends next, skipping any text frames.
async fn close_code(socket: &mut Ws) -> anyhow::Result<Option<CloseCode>> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return Ok(frame.map(|f| f.code)),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(anyhow::Error::from(error)),
                None => return Ok(None),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no close within {DEADLINE:?}"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_socket_frames_get_an_error_frame_and_an_oversized_one_closes_1009(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let user = api.new_user().await?;
    let url = &system.realtime[0];
    let mut socket = open_socket(url, &user.access_token).await?;

    // Binary, not JSON, an unknown type, a known type with a wrong field:
    // each answered `error {code: "bad_request"}`, the socket stays open.
    let bad = [
        Message::Binary(vec![0x00, 0xff, 0x10].into()),
        Message::Text("not json".into()),
        Message::Text(r#"{"type":"shout","channel":"catalog"}"#.into()),
        Message::Text(r#"{"type":"subscribe","channel":7}"#.into()),
        Message::Text(r#"{"type":"command","id":"c1"}"#.into()),
    ];
    for message in bad {
        let sent = format!("{message:?}");
        socket.send(message).await?;
        let answer = next_frame(&mut socket).await?;
        assert_eq!(answer["type"], "error", "{sent}: {answer}");
        assert_eq!(answer["code"], "bad_request", "{sent}: {answer}");
    }
    // Still serving: a ping is answered.
    socket
        .send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await?;
    assert_eq!(next_frame(&mut socket).await?["type"], "pong");

    // A message above `ws.max_frame_bytes` (64 KiB): closed 1009.
    let big = json!({"type": "ping", "pad": "x".repeat(70 * 1024)}).to_string();
    socket.send(Message::Text(big.into())).await?;
    assert_eq!(close_code(&mut socket).await?, Some(CloseCode::Size));

    // Before authentication, a binary frame is refused and closes 1008.
    let mut request = url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(signalbox_system_tests::socket::SUBPROTOCOL),
    );
    let (mut anonymous, _) = tokio_tungstenite::connect_async(request).await?;
    anonymous
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await?;
    let refusal = next_frame(&mut anonymous).await?;
    assert_eq!(refusal["code"], "bad_request", "{refusal}");
    assert_eq!(close_code(&mut anonymous).await?, Some(CloseCode::Policy));

    // None of it placed anything, and a new socket of the user works.
    let mut socket = open_socket(url, &user.access_token).await?;
    socket
        .send(Message::Text(
            json!({"type": "subscribe", "channel": format!("user:{}", user.id)})
                .to_string()
                .into(),
        ))
        .await?;
    assert_eq!(next_frame(&mut socket).await?["type"], "subscribed");
    let listed: Value = api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(&user.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        listed["orders"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_grpc_messages_are_refused_and_catalog_still_answers(
) -> anyhow::Result<()> {
    // The catalog's gRPC address, as the harness gives it to the gateway.
    let catalog = Arc::new(Mutex::new(String::new()));
    let seen = catalog.clone();
    let system = TestSystem::start_with(Options {
        gateway: Some(Box::new(move |settings| {
            *seen.lock().unwrap() = settings.upstreams.catalog.clone();
        })),
        ..Options::default()
    })
    .await?;
    let url = catalog.lock().unwrap().clone();
    let mut client = CatalogServiceClient::connect(url.clone())
        .await?
        .max_encoding_message_size(usize::MAX);

    // A request above the server's 4 MiB decoding limit (tonic's default):
    // refused before the handler, with tonic's OUT_OF_RANGE.
    let ids = vec!["x".repeat(1024); 5 * 1024];
    let refused = client
        .batch_get_products(BatchGetProductsRequest { ids })
        .await
        .expect_err("an oversized request is refused");
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("too large"), "{refused:?}");

    // Bytes that are not a `GetProductRequest` (field 1 a varint where a
    // string belongs): INTERNAL, as gRPC names a request that does not parse.
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await?;
    let undecodable = raw
        .unary(
            tonic::Request::new(7_i64),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/signalbox.catalog.v1.CatalogService/GetProduct",
            ),
            tonic_prost::ProstCodec::<i64, Product>::default(),
        )
        .await
        .expect_err("an undecodable request is refused");
    assert_eq!(undecodable.code(), tonic::Code::Internal, "{undecodable:?}");

    // The same connection still serves a well-formed call.
    let product = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_product(GetProductRequest {
            id: products::LAMP.to_owned(),
        }),
    )
    .await??
    .into_inner();
    assert_eq!(product.id, products::LAMP);

    system.stop().await
}
