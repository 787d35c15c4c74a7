//! An HTTP client for the gateway, as a browser or a script would use it.

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub access_token: String,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<Response> {
        Ok(self
            .http
            .post(self.url("/api/auth/register"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?)
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Response> {
        Ok(self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?)
    }

    /// Registers a fresh user and logs in.
    pub async fn new_user(&self) -> anyhow::Result<User> {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let password = "correct horse battery staple";
        let registered = self.register(&email, password).await?;
        anyhow::ensure!(
            registered.status() == StatusCode::CREATED,
            "register answered {}",
            registered.status()
        );
        let id = registered.json::<Value>().await?["user_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let login = self.login(&email, password).await?;
        anyhow::ensure!(
            login.status() == StatusCode::OK,
            "login answered {}",
            login.status()
        );
        let body: Value = login.json().await?;
        Ok(User {
            id,
            email,
            access_token: body["access_token"].as_str().unwrap_or_default().to_owned(),
        })
    }

    pub async fn place_order(
        &self,
        user: &User,
        items: &[(&str, i64)],
    ) -> anyhow::Result<Response> {
        let items: Vec<Value> = items
            .iter()
            .map(|(product_id, quantity)| json!({"product_id": product_id, "quantity": quantity}))
            .collect();
        Ok(self
            .http
            .post(self.url("/api/orders"))
            .bearer_auth(&user.access_token)
            .json(&json!({ "items": items }))
            .send()
            .await?)
    }

    pub async fn get_order(&self, user: &User, order_id: &str) -> anyhow::Result<Response> {
        Ok(self
            .http
            .get(self.url(&format!("/api/orders/{order_id}")))
            .bearer_auth(&user.access_token)
            .send()
            .await?)
    }

    pub async fn product(&self, product_id: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(self.url(&format!("/api/catalog/products/{product_id}")))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "product answered {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// A product's available stock, as the public API reports it.
    pub async fn stock(&self, product_id: &str) -> anyhow::Result<i64> {
        self.product(product_id).await?["stock"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("product without stock"))
    }
}
