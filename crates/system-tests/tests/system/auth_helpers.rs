//! What the auth and edge-security tests share: a registered, logged-in
//! user, a protected request, and the token endpoint's form posts with the
//! RFC 6749 §5.1 no-store check.

use reqwest::{header, Response, StatusCode};
use serde_json::Value;
use signalbox_system_tests::Api;

pub const PASSWORD: &str = "correct horse battery staple";

/// A registered user's id and the body of its login.
pub async fn login(api: &Api) -> anyhow::Result<(String, Value)> {
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

pub async fn list_orders(api: &Api, token: &str) -> anyhow::Result<Response> {
    Ok(api
        .http()
        .get(api.url("/api/orders"))
        .bearer_auth(token)
        .send()
        .await?)
}

/// `POST /oauth/token` (or revoke) with a form body and optional Basic
/// credentials.
pub async fn post_form(
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
pub fn uncacheable(response: &Response) -> bool {
    response
        .headers()
        .get(header::CACHE_CONTROL)
        .is_some_and(|v| v == "no-store")
        && response
            .headers()
            .get(header::PRAGMA)
            .is_some_and(|v| v == "no-cache")
}
