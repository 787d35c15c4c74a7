//! The OAuth 2.0 endpoints of the edge against the real auth service:
//! `POST /oauth/token` answers every RFC 6749 error exactly, rotates refresh
//! tokens and revokes a family on replay (also when two refreshes race),
//! issues service-account tokens for their scopes only, and logout and
//! `POST /oauth/revoke` (RFC 7009) end a refresh-token family.

use std::time::Duration;

use reqwest::{header, StatusCode};
use serde_json::{json, Value};
use signalbox_system_tests::{products, Socket, TestSystem, DEADLINE};

use crate::auth_helpers::{list_orders, login, post_form, uncacheable, PASSWORD};

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
