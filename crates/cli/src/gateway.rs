//! The gateway's public REST contract, as any client uses it: JSON in and
//! out, problem+json for errors, `Authorization: Bearer` on protected routes.
//!
//! [`Session`] is a stored login: it sends its access token, and when the
//! gateway answers 401 (the token expired; they live minutes) it trades the
//! refresh token for new ones at `/oauth/token` once, stores them, and sends
//! the request again.

use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    credentials::{Store, Stored},
    error::{CliError, Kind},
};

/// How long a connection attempt may take; a gateway that is not there is
/// refused at once on a local machine, so this bounds a host that drops
/// packets.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take: above the gateway's own request
/// budget, so the gateway's timeout answer arrives first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Gateway {
    base: String,
    http: reqwest::Client,
}

/// The tokens of a login or a refresh.
#[derive(Debug, Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
}

impl Gateway {
    pub fn new(base: &str) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("signalbox-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and returns its JSON body (`null` when empty), or the
    /// answer as an error.
    async fn send(&self, request: RequestBuilder, path: &str) -> Result<Value, CliError> {
        let url = self.url(path);
        let response = request
            .send()
            .await
            .map_err(|e| CliError::from_http(&e, &url))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| CliError::from_http(&e, &url))?;
        if !status.is_success() {
            return Err(CliError::from_answer(status.as_u16(), &body, &url));
        }
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| {
            CliError::new(
                Kind::ServerError,
                format!("{url} answered {status} with a body that is not JSON: {e}"),
            )
        })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, path).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Result<Value, CliError> {
        let body = json!({"email": email, "password": password});
        self.call(Method::POST, "/api/auth/register", None, Some(&body))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<Tokens, CliError> {
        let body = json!({"email": email, "password": password});
        let answer = self
            .call(Method::POST, "/api/auth/login", None, Some(&body))
            .await?;
        tokens(answer)
    }

    /// Trades a refresh token for new tokens (RFC 6749 §6; the old refresh
    /// token is used up).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, CliError> {
        let path = "/oauth/token";
        let request = self.request(Method::POST, path, None).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ]);
        tokens(self.send(request, path).await?)
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<Value, CliError> {
        let body = json!({"refresh_token": refresh_token});
        self.call(Method::POST, "/api/auth/logout", None, Some(&body))
            .await
    }
}

fn tokens(answer: Value) -> Result<Tokens, CliError> {
    serde_json::from_value(answer).map_err(|e| {
        CliError::new(
            Kind::ServerError,
            format!("the gateway's token answer is not what the contract says: {e}"),
        )
    })
}

/// A logged-in user's calls.
pub struct Session {
    pub gateway: Gateway,
    access_token: String,
    /// `None` for a token given on the command line: nothing to refresh
    /// with, and nothing stored.
    stored: Option<(Store, Stored)>,
}

impl Session {
    /// The stored login for this gateway.
    pub fn stored(gateway: Gateway, store: Store) -> Result<Self, CliError> {
        let stored = store.load()?.ok_or_else(|| {
            CliError::not_logged_in(format!(
                "not logged in (no session in {})",
                store.path().display()
            ))
        })?;
        if stored.gateway != gateway.base() {
            return Err(CliError::not_logged_in(format!(
                "logged in at {}, not at {}",
                stored.gateway,
                gateway.base()
            )));
        }
        Ok(Self {
            gateway,
            access_token: stored.access_token.clone(),
            stored: Some((store, stored)),
        })
    }

    /// A token given as `--token` / `SIGNALBOX_TOKEN`.
    pub fn with_token(gateway: Gateway, token: String) -> Self {
        Self {
            gateway,
            access_token: token,
            stored: None,
        }
    }

    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// A protected call; on 401 the session refreshes once and tries again.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let first = self
            .gateway
            .call(method.clone(), path, Some(&self.access_token), body)
            .await;
        match first {
            Err(error) if error.kind == Kind::NotLoggedIn && self.stored.is_some() => {
                self.refresh().await?;
                self.gateway
                    .call(method, path, Some(&self.access_token), body)
                    .await
            }
            other => other,
        }
    }

    /// New tokens for the stored session, stored at once (the old refresh
    /// token is spent).
    pub async fn refresh(&mut self) -> Result<&str, CliError> {
        let Some((store, stored)) = &mut self.stored else {
            return Err(CliError::not_logged_in(
                "the token given with --token / SIGNALBOX_TOKEN was refused or expired",
            ));
        };
        let tokens =
            self.gateway
                .refresh(&stored.refresh_token)
                .await
                .map_err(|error| match error.kind {
                    Kind::BadInput | Kind::NotLoggedIn => CliError::not_logged_in(format!(
                        "the login has expired ({})",
                        error.message
                    )),
                    _ => error,
                })?;
        stored.access_token = tokens.access_token;
        stored.refresh_token = tokens.refresh_token;
        store.save(stored)?;
        self.access_token = stored.access_token.clone();
        Ok(&self.access_token)
    }
}
