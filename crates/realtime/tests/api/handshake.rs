//! What is refused before the upgrade: foreign origins, clients that do not
//! speak `signalbox.v1`, requests that are not WebSocket upgrades.

use crate::helpers::{refusal, spawn_app, Client, ALLOWED_ORIGIN};

#[tokio::test]
async fn a_disallowed_origin_is_refused_with_403() {
    let app = spawn_app().await;
    let mut request = app.request_with_token(0, &app.token("alice"));
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());

    let error = Client::connect(request).await.err().expect("refused");
    let (status, headers, body) = refusal(error);

    assert_eq!(status, 403);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["code"], "forbidden");
    app.cleanup().await;
}

#[tokio::test]
async fn an_allowed_origin_is_upgraded() {
    let app = spawn_app().await;
    let mut request = app.request_with_token(0, &app.token("alice"));
    request
        .headers_mut()
        .insert("origin", ALLOWED_ORIGIN.parse().unwrap());

    let mut client = Client::connect(request).await.expect("upgrade succeeds");

    assert_eq!(client.next_frame().await["type"], "welcome");
    app.cleanup().await;
}

#[tokio::test]
async fn the_answer_selects_the_signalbox_v1_subprotocol() {
    let app = spawn_app().await;

    let client = Client::connect(app.request_with_token(0, &app.token("alice")))
        .await
        .expect("upgrade succeeds");

    assert_eq!(client.protocol.as_deref(), Some("signalbox.v1"));
    app.cleanup().await;
}

#[tokio::test]
async fn a_client_not_offering_the_subprotocol_is_refused_with_400() {
    let app = spawn_app().await;
    let mut request = app.request_with_token(0, &app.token("alice"));
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-ws".parse().unwrap());
    let mut without = app.request_with_token(0, &app.token("alice"));
    without.headers_mut().remove("sec-websocket-protocol");

    for request in [request, without] {
        let error = Client::connect(request).await.err().expect("refused");
        let (status, headers, body) = refusal(error);

        assert_eq!(status, 400);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["code"], "invalid_input");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_plain_get_is_not_upgraded_and_health_reports_the_broker() {
    let app = spawn_app().await;
    let base = format!("http://127.0.0.1:{}", app.instances[0].port);
    let http = reqwest::Client::new();

    let plain = http.get(format!("{base}/ws")).send().await.unwrap();
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();

    assert_eq!(plain.status().as_u16(), 400);
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    assert_eq!(ready.status().as_u16(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["broker"], "ok");
    app.cleanup().await;
}
