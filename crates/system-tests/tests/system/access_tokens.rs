//! Access tokens end to end: the real auth service signs with a key the test
//! knows (so it can mint tokens that are validly signed but wrong in one
//! way), and the gateway and the realtime sockets refuse every bad one
//! through the one shared verifier, as RFC 6750 / RFC 8725 ask; a key
//! rotation keeps the previous key verifying.

use reqwest::{header, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use signalbox_auth::config::VerifyOnlyKey;
use signalbox_system_tests::{
    socket::Received,
    tokens::{bad_tokens, TokenFactory},
    Options, Socket, TestSystem, DEADLINE,
};
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::auth_helpers::{list_orders, login};

/// A system whose auth service signs with `key`.
async fn start_signing_with(key: &TokenFactory) -> anyhow::Result<TestSystem> {
    let (pem, kid) = (key.pem(), key.kid().to_owned());
    TestSystem::start_with(Options {
        auth: Some(Box::new(move |s| {
            s.tokens.signing_key_pem = Some(SecretString::from(pem));
            s.tokens.signing_kid = Some(kid);
        })),
        ..Options::default()
    })
    .await
}

/// What is wrong with a gateway answer to a bad token, if anything:
/// RFC 6750 wants 401, `error="invalid_token"` and (ours) a problem body.
async fn gateway_refusal_problems(response: Response) -> Option<String> {
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = response.json().await.unwrap_or_default();
    let prefix = r#"Bearer realm="signalbox", error="invalid_token", error_description=""#;
    let description_ok = challenge
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .is_some_and(|d| !d.is_empty() && !d.contains('"'));
    (status != StatusCode::UNAUTHORIZED
        || !description_ok
        || content_type != "application/problem+json"
        || body["code"] != "unauthenticated"
        || body["status"] != 401)
        .then(|| format!("{status} / {challenge} / {content_type} / {body}"))
}

/// What is wrong with the socket's answer to a bad token in the upgrade's
/// `Authorization` header: it must be a 401 with `error="invalid_token"`.
async fn upgrade_refusal_problems(url: &str, token: &str) -> Option<String> {
    match Socket::connect(url, Some(token)).await {
        Err(WsError::Http(response)) => {
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            (response.status() != StatusCode::UNAUTHORIZED
                || challenge != r#"Bearer error="invalid_token""#)
                .then(|| format!("upgrade answered {} / {challenge}", response.status()))
        }
        Err(other) => Some(format!("upgrade failed otherwise: {other}")),
        Ok(_) => Some("the upgrade was accepted".to_owned()),
    }
}

/// What is wrong with the socket's answer to a bad token in the first
/// frame: an `error` frame with `invalid_token`, then close 1008.
async fn first_frame_refusal_problems(url: &str, token: &str) -> anyhow::Result<Option<String>> {
    let mut socket = Socket::connect(url, None).await?;
    socket.send(json!({"type": "auth", "token": token})).await?;
    let first = socket.receive(DEADLINE).await?;
    match &first {
        Received::Frame(frame) if frame["type"] == "error" && frame["code"] == "invalid_token" => {}
        _ => return Ok(Some(format!("socket answered {first:?}"))),
    }
    Ok(match socket.receive(DEADLINE).await? {
        Received::Closed(Some(1008)) => None,
        other => Some(format!("after the error frame: {other:?}")),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_at_the_gateway_and_at_the_socket() -> anyhow::Result<()> {
    let key = TokenFactory::generate("auth-test-key");
    let system = start_signing_with(&key).await?;
    let api = &system.api;
    let (user_id, session) = login(api).await?;
    let refresh_token = session["refresh_token"].as_str().unwrap_or_default();
    let socket_url = &system.realtime[0];

    // Control: the factory's token without defect passes both doors.
    let good = key.token(&user_id);
    assert_eq!(list_orders(api, &good).await?.status(), StatusCode::OK);
    let mut socket = Socket::connect(socket_url, Some(&good)).await?;
    socket.expect("welcome", DEADLINE).await?;

    let leeway = signalbox_platform::config::VerifierSettings::default().leeway_secs;
    let matrix = bad_tokens(&key, &user_id, refresh_token, leeway);
    assert!(matrix.len() >= 15);
    let mut failures = Vec::new();
    for bad in &matrix {
        if let Some(problem) = gateway_refusal_problems(list_orders(api, &bad.token).await?).await {
            failures.push(format!("gateway, {}: {problem}", bad.defect));
        }
        if let Some(problem) = upgrade_refusal_problems(socket_url, &bad.token).await {
            failures.push(format!("socket header, {}: {problem}", bad.defect));
        }
        if let Some(problem) = first_frame_refusal_problems(socket_url, &bad.token).await? {
            failures.push(format!("socket frame, {}: {problem}", bad.defect));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_the_previous_key_verifies_and_an_unknown_one_does_not(
) -> anyhow::Result<()> {
    let previous = TokenFactory::generate("2024");
    let current = TokenFactory::generate("2025");
    let stranger = TokenFactory::generate("2023");
    let (pem, previous_jwk) = (
        current.pem(),
        serde_json::from_value::<VerifyOnlyKey>(previous.jwk())?,
    );
    let system = TestSystem::start_with(Options {
        auth: Some(Box::new(move |s| {
            s.tokens.signing_key_pem = Some(SecretString::from(pem));
            s.tokens.signing_kid = Some("2025".to_owned());
            s.tokens.verify_only_keys = vec![previous_jwk];
        })),
        ..Options::default()
    })
    .await?;
    let api = &system.api;
    let (user_id, session) = login(api).await?;

    // New tokens are signed by the new key...
    let fresh = session["access_token"].as_str().unwrap_or_default();
    let header = fresh.split('.').next().unwrap_or_default();
    let header: Value = serde_json::from_slice(&base64_url(header)?)?;
    assert_eq!(header["kid"], "2025");
    assert_eq!(list_orders(api, fresh).await?.status(), StatusCode::OK);
    // ...one signed by the previous key before the rotation still works...
    let before_rotation = previous.token(&user_id);
    assert_eq!(
        list_orders(api, &before_rotation).await?.status(),
        StatusCode::OK
    );
    let mut socket = Socket::connect(&system.realtime[1], Some(&before_rotation)).await?;
    socket.expect("welcome", DEADLINE).await?;
    // ...and one from a key nobody published does not.
    let unknown = list_orders(api, &stranger.token(&user_id)).await?;
    assert!(gateway_refusal_problems(unknown).await.is_none());
    let jwks: Value = api
        .http()
        .get(api.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .map(|keys| keys.iter().map(|k| k["kid"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(kids, [json!("2025"), json!("2024")]);

    system.stop().await
}

fn base64_url(segment: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment)?)
}
