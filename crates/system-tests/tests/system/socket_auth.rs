//! The realtime socket refuses anyone without a valid access token.

use reqwest::StatusCode;
use serde_json::json;
use signalbox_system_tests::{socket::Received, Socket, TestSystem, DEADLINE};
use tokio_tungstenite::tungstenite::Error as WsError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_valid_token_is_refused() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let url = &system.realtime[0];

    // A bad bearer token on the upgrade: refused before the upgrade, 401.
    match Socket::connect(url, Some("not-a-token")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
        Err(other) => panic!("expected an HTTP 401, got {other}"),
        Ok(_) => panic!("the upgrade must be refused"),
    }

    // No header: the first frame must authenticate; a bad one closes 1008.
    let mut socket = Socket::connect(url, None).await?;
    socket
        .send(json!({"type": "auth", "token": "still-not-a-token"}))
        .await?;
    let mut saw_error = false;
    let closed = loop {
        match socket.receive(DEADLINE).await? {
            Received::Frame(frame) => {
                assert_eq!(frame["type"], "error", "{frame}");
                saw_error = true;
            }
            Received::Closed(code) => break code,
        }
    };
    assert!(saw_error, "an error frame explains the refusal");
    assert_eq!(closed, Some(1008));

    // And a valid token through the first frame is welcomed.
    let user = system.api.new_user().await?;
    let mut socket = Socket::connect(url, None).await?;
    socket
        .send(json!({"type": "auth", "token": user.access_token}))
        .await?;
    let welcome = socket.expect("welcome", DEADLINE).await?;
    assert!(
        welcome["ttl"].as_u64().is_some_and(|ttl| ttl > 0),
        "{welcome}"
    );

    system.stop().await
}
