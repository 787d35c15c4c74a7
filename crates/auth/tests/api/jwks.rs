use std::collections::HashSet;

use secrecy::ExposeSecret;
use signalbox_auth::keys::SigningKey;
use signalbox_proto::auth::v1::GetJwksRequest;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::{grpc_channel, pem_key, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_jwks_endpoint_publishes_public_members_only_and_may_be_cached() {
    let app = spawn_app().await;

    let response = reqwest::get(app.jwks_url()).await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    let jwks: serde_json::Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().unwrap();
    let members: HashSet<&str> = key.keys().map(String::as_str).collect();
    assert_eq!(
        members,
        HashSet::from(["kty", "crv", "x", "kid", "alg", "use"]),
        "no `d` or anything else"
    );
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
}

#[tokio::test]
async fn get_jwks_over_grpc_answers_the_same_document() {
    let app = spawn_app().await;

    let over_grpc = app
        .client
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .jwks_json;
    let over_http = reqwest::get(app.jwks_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    assert_eq!(over_grpc, over_http);
}

#[tokio::test]
async fn a_configured_key_is_published_under_its_thumbprint() {
    let pem = pem_key();
    let expected = SigningKey::from_pkcs8_pem(pem.expose_secret(), None).unwrap();
    let app = spawn_app_with(|settings| settings.tokens.signing_key_pem = Some(pem)).await;

    let jwks: serde_json::Value = reqwest::get(app.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(jwks["keys"][0]["x"], expected.public().x());
    assert_eq!(jwks["keys"][0]["kid"], expected.kid());
}

#[tokio::test]
async fn a_configured_kid_names_the_key_in_tokens_and_the_jwks() {
    let app = spawn_app_with(|settings| {
        settings.tokens.signing_key_pem = Some(pem_key());
        settings.tokens.signing_kid = Some("auth-2025-01".to_owned());
    })
    .await;
    let tokens = app.logged_in_user().await;

    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    let jwks: serde_json::Value = reqwest::get(app.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(header.kid.as_deref(), Some("auth-2025-01"));
    assert_eq!(jwks["keys"][0]["kid"], "auth-2025-01");
    app.verifier().verify(&tokens.access_token).await.unwrap();
}

#[tokio::test]
async fn the_service_reports_itself_healthy_over_grpc_and_http() {
    let app = spawn_app().await;

    let mut health = HealthClient::new(grpc_channel(app.grpc_port).await);
    let status = health
        .check(HealthCheckRequest {
            service: "signalbox.auth.v1.AuthService".to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    let ready = reqwest::get(format!("http://127.0.0.1:{}/health/ready", app.http_port))
        .await
        .unwrap();

    assert_eq!(status, ServingStatus::Serving);
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn after_a_rotation_the_previous_key_still_verifies_and_only_the_new_one_signs() {
    use signalbox_auth::{
        config::VerifyOnlyKey, keys::KeySet, scope::Scopes, tokens::TokenIssuer, TokenSettings,
    };

    // Key A signed until now; B takes over and A stays published.
    let previous =
        SigningKey::from_pkcs8_pem(pem_key().expose_secret(), Some("2024".into())).unwrap();
    let previous_jwk = VerifyOnlyKey {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: previous.public().x().to_owned(),
        kid: Some("2024".into()),
        d: None,
    };
    let app = spawn_app_with(|settings| {
        settings.tokens.signing_key_pem = Some(pem_key());
        settings.tokens.signing_kid = Some("2025".into());
        settings.tokens.verify_only_keys = vec![previous_jwk];
    })
    .await;
    // A token A signed before the rotation, still within its lifetime.
    let old_token = TokenIssuer::new(KeySet::new(previous), &TokenSettings::default())
        .issue("user-1", &Scopes::parse("orders:read").unwrap(), None)
        .unwrap()
        .token;

    let jwks: serde_json::Value = reqwest::get(app.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_token = app.logged_in_user().await.access_token;

    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["2025", "2024"]);
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some("2025"));
    let verifier = app.verifier();
    assert_eq!(verifier.verify(&old_token).await.unwrap().sub, "user-1");
    verifier.verify(&new_token).await.unwrap();
}

#[tokio::test]
async fn a_private_key_configured_as_verify_only_stops_the_service_from_starting() {
    use signalbox_auth::config::VerifyOnlyKey;

    let key = SigningKey::generate(None).unwrap();
    let mut settings = signalbox_auth::Settings::default();
    settings.tokens.verify_only_keys = vec![VerifyOnlyKey {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: key.public().x().to_owned(),
        kid: None,
        d: Some("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A".into()),
    }];

    let error = signalbox_auth::keys::KeySet::from_settings(&settings.tokens).unwrap_err();

    assert!(error.to_string().contains("private"), "{error}");
}
