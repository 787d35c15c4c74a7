//! Auth and edge security, end to end: the real auth service signs with a
//! key the test knows (so it can mint tokens that are validly signed but
//! wrong in one way), the gateway and the realtime sockets verify through
//! the one shared verifier, and the OAuth endpoints answer exactly per
//! RFC 6749 / 6750 / 7009.

use std::time::Duration;

use reqwest::{header, Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use signalbox_auth::config::VerifyOnlyKey;
use signalbox_system_tests::{
    products,
    socket::Received,
    tokens::{bad_tokens, TokenFactory},
    Api, Options, Socket, TestSystem, DEADLINE,
};
use tokio_tungstenite::tungstenite::Error as WsError;

const PASSWORD: &str = "correct horse battery staple";

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

/// A registered user's id and the body of its login.
async fn login(api: &Api) -> anyhow::Result<(String, Value)> {
    let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
    let registered: Value = api.register(&email, PASSWORD).await?.json().await?;
    let login = api.login(&email, PASSWORD).await?;
    anyhow::ensure!(
        login.status() == StatusCode::OK,
        "login: {}",
        login.status()
    );
    let id = registered["user_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((id, login.json().await?))
}

async fn list_orders(api: &Api, token: &str) -> anyhow::Result<Response> {
    Ok(api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(token)
        .send()
        .await?)
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

/// `POST /oauth/token` (or revoke) with a form body and optional Basic
/// credentials.
async fn post_form(
    api: &Api,
    path: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> anyhow::Result<Response> {
    let mut request = api.http().post(api.url(path)).form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    Ok(request.send().await?)
}

/// Cache-Control: no-store and Pragma: no-cache on a token response.
fn uncacheable(response: &Response) -> bool {
    response
        .headers()
        .get(header::CACHE_CONTROL)
        .is_some_and(|v| v == "no-store")
        && response
            .headers()
            .get(header::PRAGMA)
            .is_some_and(|v| v == "no-cache")
}

async fn create_client(system: &TestSystem, id: &str, scopes: &str) -> anyhow::Result<String> {
    let url = system
        .database_url("auth")
        .ok_or_else(|| anyhow::anyhow!("no auth database"))?;
    let pool = sqlx::PgPool::connect(&url).await?;
    let created = signalbox_auth::clients::create(&pool, id, scopes).await;
    pool.close().await;
    Ok(created?.secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_endpoint_answers_every_rfc_6749_error_exactly() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let secret = create_client(&system, "reporting", "orders:read").await?;
    let (_, session) = login(api).await?;
    let refresh = session["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    struct Case<'a> {
        name: &'a str,
        form: Vec<(&'a str, &'a str)>,
        basic: Option<(&'a str, &'a str)>,
        status: u16,
        error: &'a str,
    }
    let case = |name, form, basic, status, error| Case {
        name,
        form,
        basic,
        status,
        error,
    };
    let cases = [
        case(
            "no grant_type",
            vec![("scope", "orders:read")],
            None,
            400,
            "invalid_request",
        ),
        case(
            "repeated parameter",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "a"),
                ("refresh_token", "b"),
            ],
            None,
            400,
            "invalid_request",
        ),
        case(
            "refresh grant without refresh_token",
            vec![("grant_type", "refresh_token")],
            None,
            400,
            "invalid_request",
        ),
        case(
            "two client authentication methods",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "reporting"),
                ("client_secret", &secret),
            ],
            Some(("reporting", &secret)),
            400,
            "invalid_request",
        ),
        case(
            "wrong secret over Basic",
            vec![("grant_type", "client_credentials")],
            Some(("reporting", "wrong")),
            401,
            "invalid_client",
        ),
        case(
            "wrong secret in the form",
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", "reporting"),
                ("client_secret", "wrong"),
            ],
            None,
            400,
            "invalid_client",
        ),
        case(
            "client_credentials without client authentication",
            vec![("grant_type", "client_credentials")],
            None,
            400,
            "invalid_client",
        ),
        case(
            "unknown refresh token",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", "never-issued"),
            ],
            None,
            400,
            "invalid_grant",
        ),
        case(
            "service account with the refresh grant",
            vec![("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            Some(("reporting", &secret)),
            400,
            "unauthorized_client",
        ),
        case(
            "password grant",
            vec![
                ("grant_type", "password"),
                ("username", "a@example.com"),
                ("password", PASSWORD),
            ],
            None,
            400,
            "unsupported_grant_type",
        ),
        case(
            "authorization_code grant",
            vec![("grant_type", "authorization_code"), ("code", "x")],
            None,
            400,
            "unsupported_grant_type",
        ),
        case(
            "scope beyond the client's",
            vec![
                ("grant_type", "client_credentials"),
                ("scope", "orders:write"),
            ],
            Some(("reporting", &secret)),
            400,
            "invalid_scope",
        ),
        case(
            "refresh asking for more scope",
            vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("scope", "admin"),
            ],
            None,
            400,
            "invalid_scope",
        ),
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let response = post_form(api, "/oauth/token", &case.form, case.basic).await?;
        let status = response.status().as_u16();
        let no_store = uncacheable(&response);
        let challenge = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body: Value = response.json().await.unwrap_or_default();
        let members: Vec<_> = body
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let expected_challenge =
            (case.status == 401).then(|| r#"Basic realm="signalbox""#.to_owned());
        if status != case.status
            || body["error"] != case.error
            || members != ["error", "error_description"]
            || !no_store
            || challenge != expected_challenge
            || content_type
                .as_ref()
                .is_none_or(|v| v != "application/json")
        {
            failures.push(format!(
                "{}: {status} {body} no-store={no_store} challenge={challenge:?}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // The refresh token survived every refusal above (none was a replay).
    let rotated = post_form(
        api,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
        None,
    )
    .await?;
    assert_eq!(rotated.status(), StatusCode::OK);
    assert!(uncacheable(&rotated));

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_through_the_token_endpoint_rotates_and_a_replay_revokes_the_family(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (user_id, session) = login(api).await?;
    let first = session["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let refresh = |token: String| async move {
        post_form(
            api,
            "/oauth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            None,
        )
        .await
    };

    let rotated = refresh(first.clone()).await?;
    assert_eq!(rotated.status(), StatusCode::OK);
    assert!(uncacheable(&rotated));
    let body: Value = rotated.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "orders:read orders:write");
    let second = body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_ne!(second, first);
    let access = body["access_token"].as_str().unwrap_or_default();
    assert_eq!(list_orders(api, access).await?.status(), StatusCode::OK);
    // The new access token opens a socket too.
    let mut socket = Socket::connect(&system.realtime[0], Some(access)).await?;
    socket.expect("welcome", DEADLINE).await?;
    let subscribed = socket
        .subscribe(&format!("user:{user_id}"), DEADLINE)
        .await?;
    assert_eq!(subscribed["type"], "subscribed");

    // The first token again: a replay. Refused, and the family is over.
    let replay = refresh(first).await?;
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(replay.json::<Value>().await?["error"], "invalid_grant");
    let after = refresh(second).await?;
    assert_eq!(after.status(), StatusCode::BAD_REQUEST);
    assert_eq!(after.json::<Value>().await?["error"], "invalid_grant");

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_refreshes_through_the_token_endpoint_exactly_one_wins(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let (_, session) = login(api).await?;
    let token = session["refresh_token"].as_str().unwrap_or_default();
    let form = [("grant_type", "refresh_token"), ("refresh_token", token)];

    let (a, b) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            post_form(api, "/oauth/token", &form, None),
            post_form(api, "/oauth/token", &form, None)
        )
    })
    .await?;
    let (a, b) = (a?, b?);

    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    let (winner, loser) = if a.status() == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(loser.json::<Value>().await?["error"], "invalid_grant");
    // The loser looked like a replay: the winner's new token is revoked too.
    let successor = winner.json::<Value>().await?["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let after = post_form(
        api,
        "/oauth/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &successor),
        ],
        None,
    )
    .await?;
    assert_eq!(after.json::<Value>().await?["error"], "invalid_grant");

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_gets_a_token_for_its_scopes_and_nothing_more() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let secret = create_client(&system, "reporting", "orders:read").await?;

    let issued = post_form(
        api,
        "/oauth/token",
        &[("grant_type", "client_credentials")],
        Some(("reporting", &secret)),
    )
    .await?;
    assert_eq!(issued.status(), StatusCode::OK);
    assert!(uncacheable(&issued));
    let body: Value = issued.json().await?;
    assert_eq!(body["scope"], "orders:read");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["access_token"].as_str().unwrap_or_default();

    // Reading is in scope...
    let listed = list_orders(api, token).await?;
    assert_eq!(listed.status(), StatusCode::OK);
    // ...placing an order is not: 403 insufficient_scope naming the scope.
    let placed = api
        .http()
        .post(api.url("/api/orders"))
        .bearer_auth(token)
        .json(&json!({"items": [{"product_id": products::LAMP, "quantity": 1}]}))
        .send()
        .await?;
    assert_eq!(placed.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        placed.headers()[header::WWW_AUTHENTICATE],
        r#"Bearer realm="signalbox", error="insufficient_scope", scope="orders:write""#
    );
    assert_eq!(
        placed.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(placed.json::<Value>().await?["code"], "forbidden");

    // The form fields work as well as Basic; a wrong secret does not.
    let by_form = post_form(
        api,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "reporting"),
            ("client_secret", &secret),
        ],
        None,
    )
    .await?;
    assert_eq!(by_form.status(), StatusCode::OK);
    let wrong = post_form(
        api,
        "/oauth/token",
        &[("grant_type", "client_credentials")],
        Some(("reporting", "guess")),
    )
    .await?;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json::<Value>().await?["error"], "invalid_client");

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_revocation_end_the_refresh_token_family() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let refresh_with = |token: String| async move {
        let response = post_form(
            api,
            "/oauth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &token)],
            None,
        )
        .await?;
        anyhow::Ok(response.json::<Value>().await?)
    };

    let (_, session) = login(api).await?;
    let token = session["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let logout = api
        .http()
        .post(api.url("/api/auth/logout"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await?;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(refresh_with(token).await?["error"], "invalid_grant");

    let (_, session) = login(api).await?;
    let token = session["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let revoked = post_form(
        api,
        "/oauth/revoke",
        &[("token", &token), ("token_type_hint", "refresh_token")],
        None,
    )
    .await?;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert!(uncacheable(&revoked));
    assert_eq!(refresh_with(token).await?["error"], "invalid_grant");
    // RFC 7009 §2.2: an unknown token is a 200 as well.
    let unknown = post_form(api, "/oauth/revoke", &[("token", "never-issued")], None).await?;
    assert_eq!(unknown.status(), StatusCode::OK);

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_with_retry_after() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        auth: Some(Box::new(|s| s.throttle.max_failures = 3)),
        ..Options::default()
    })
    .await?;
    let api = &system.api;
    let email = "victim@example.com";
    assert_eq!(
        api.register(email, PASSWORD).await?.status(),
        StatusCode::CREATED
    );

    for _ in 0..3 {
        assert_eq!(
            api.login(email, "guess").await?.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let throttled = api.login(email, PASSWORD).await?;

    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()[header::RETRY_AFTER].to_str()?.parse()?;
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_eq!(
        throttled.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(throttled.json::<Value>().await?["code"], "rate_limited");
    // Other accounts log in as usual.
    api.new_user().await?;

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_requests_are_throttled_per_client_ip() -> anyhow::Result<()> {
    let system = TestSystem::start_with(Options {
        gateway: Some(Box::new(|s| {
            s.rate_limit.burst = 3;
            s.rate_limit.per_minute = 1;
        })),
        ..Options::default()
    })
    .await?;
    let api = &system.api;

    for n in 0..3 {
        let answer = api
            .login(&format!("nobody{n}@example.com"), PASSWORD)
            .await?;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let login = api.login("someone@example.com", PASSWORD).await?;
    let token = post_form(
        api,
        "/oauth/token",
        &[("grant_type", "refresh_token"), ("refresh_token", "x")],
        None,
    )
    .await?;

    assert_eq!(login.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(login.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(login.json::<Value>().await?["code"], "rate_limited");
    assert_eq!(token.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(token.headers().contains_key(header::RETRY_AFTER));
    assert!(uncacheable(&token));
    assert_eq!(token.json::<Value>().await?["error"], "slow_down");

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_refuses_oversized_headers_and_bad_registrations_with_problems(
) -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;

    let large = api
        .http()
        .get(api.url("/api/catalog/products"))
        .header("x-padding", "x".repeat(20 * 1024))
        .send()
        .await?;
    assert_eq!(large.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        large.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );

    let long_password = "x".repeat(129);
    for (email, password, mentions) in [
        ("not-an-email", PASSWORD, "email"),
        ("ann@example.com", "1234567", "at least 8"),
        ("ann@example.com", long_password.as_str(), "at most 128"),
    ] {
        let response = api.register(email, password).await?;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{email} {password}"
        );
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let problem: Value = response.json().await?;
        assert_eq!(problem["code"], "invalid_input");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains(mentions)),
            "{problem}"
        );
    }

    system.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_cancel_another_users_order() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let api = &system.api;
    let owner = api.new_user().await?;
    let stranger = api.new_user().await?;
    let placed = api.place_order(&owner, &[(products::TABLET, 1)]).await?;
    let order_id = placed.json::<Value>().await?["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let cancel = api
        .http()
        .post(api.url(&format!("/api/orders/{order_id}/cancel")))
        .bearer_auth(&stranger.access_token)
        .send()
        .await?;

    assert_eq!(cancel.status(), StatusCode::NOT_FOUND);
    assert_eq!(cancel.json::<Value>().await?["code"], "not_found");
    let order: Value = api.get_order(&owner, &order_id).await?.json().await?;
    assert_ne!(order["state"], "CANCELLED", "{order}");

    system.stop().await
}
