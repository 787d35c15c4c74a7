use jsonwebtoken::decode_header;
use tonic::Code;

use crate::helpers::{spawn_app, PASSWORD};

#[tokio::test]
async fn a_login_gives_an_access_token_the_gateway_verifier_accepts() {
    let app = spawn_app().await;
    let registered = app.register("ann@example.org", PASSWORD).await.unwrap();

    let tokens = app.login("ann@example.org", PASSWORD).await.unwrap();

    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 300);
    assert_eq!(tokens.user_id, registered.user_id);
    assert!(!tokens.refresh_token.is_empty());
    let claims = app.verifier().verify(&tokens.access_token).await.unwrap();
    assert_eq!(claims.sub, registered.user_id);
    assert_eq!(claims.iss, "signalbox-auth");
    assert_eq!(claims.aud, "signalbox");
    assert_eq!(claims.exp - claims.iat, 300);
}

#[tokio::test]
async fn the_access_token_is_typed_at_jwt_and_names_a_published_key() {
    let app = spawn_app().await;
    let tokens = app.logged_in_user().await;

    let header = decode_header(&tokens.access_token).unwrap();

    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwks: serde_json::Value = reqwest::get(app.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(Some(kids[0].clone()), header.kid, "{kids:?}");
}

#[tokio::test]
async fn every_login_gets_a_distinct_token_id() {
    let app = spawn_app().await;
    let first = app.logged_in_user().await;
    let second = app.logged_in_user().await;

    let verifier = app.verifier();
    let first = verifier.verify(&first.access_token).await.unwrap();
    let second = verifier.verify(&second.access_token).await.unwrap();

    assert_ne!(first.jti, second.jti);
}

#[tokio::test]
async fn login_ignores_the_case_and_surrounding_space_of_the_email() {
    let app = spawn_app().await;
    let registered = app.register("ann@example.org", PASSWORD).await.unwrap();

    let tokens = app.login(" ANN@example.org ", PASSWORD).await.unwrap();

    assert_eq!(tokens.user_id, registered.user_id);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
    let app = spawn_app().await;
    app.register("ann@example.org", PASSWORD).await.unwrap();

    let wrong_password = app
        .login("ann@example.org", "not the password")
        .await
        .unwrap_err();
    let unknown_user = app.login("bob@example.org", PASSWORD).await.unwrap_err();
    let not_an_email = app.login("bob", PASSWORD).await.unwrap_err();
    // Bytes PostgreSQL cannot store (a NUL) are counted by the throttle
    // like any other attempt, not an internal error.
    let with_a_nul = app.login("bob\0@example.org", PASSWORD).await.unwrap_err();

    for status in [&wrong_password, &unknown_user, &not_an_email, &with_a_nul] {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "invalid email or password");
    }
}
