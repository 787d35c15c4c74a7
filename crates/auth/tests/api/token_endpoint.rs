//! The token endpoint's grants and every RFC 6749 §5.2 error it answers.

use signalbox_proto::auth::v1::{TokenErrorCode, TokenRequest};

use crate::helpers::spawn_app;

fn refresh_grant(token: &str) -> TokenRequest {
    TokenRequest {
        grant_type: "refresh_token".into(),
        refresh_token: token.into(),
        ..Default::default()
    }
}

fn client_grant(id: &str, secret: &str) -> TokenRequest {
    TokenRequest {
        grant_type: "client_credentials".into(),
        client_id: id.into(),
        client_secret: secret.into(),
        ..Default::default()
    }
}

fn code_of(error: &signalbox_proto::auth::v1::TokenError) -> TokenErrorCode {
    TokenErrorCode::try_from(error.code).expect("a known error code")
}

#[tokio::test]
async fn the_refresh_token_grant_rotates_and_carries_the_user_scopes() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let rotated = app
        .token(refresh_grant(&login.refresh_token))
        .await
        .unwrap()
        .unwrap();

    assert_ne!(rotated.refresh_token, login.refresh_token);
    assert_eq!(rotated.scope, "orders:read orders:write");
    let claims = app.verifier().verify(&rotated.access_token).await.unwrap();
    assert_eq!(claims.sub, login.user_id);
    assert_eq!(claims.scope, "orders:read orders:write");
}

#[tokio::test]
async fn a_replayed_refresh_token_is_invalid_grant_and_ends_the_family() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;
    let successor = app
        .token(refresh_grant(&login.refresh_token))
        .await
        .unwrap()
        .unwrap();

    let replay = app
        .token(refresh_grant(&login.refresh_token))
        .await
        .unwrap()
        .unwrap_err();
    let after = app
        .token(refresh_grant(&successor.refresh_token))
        .await
        .unwrap()
        .unwrap_err();

    assert_eq!(code_of(&replay), TokenErrorCode::InvalidGrant);
    assert_eq!(replay.description, "invalid refresh token");
    assert_eq!(code_of(&after), TokenErrorCode::InvalidGrant);
}

#[tokio::test]
async fn a_refresh_may_narrow_the_scope_but_never_widen_it() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let narrowed = app
        .token(TokenRequest {
            scope: "orders:read".into(),
            ..refresh_grant(&login.refresh_token)
        })
        .await
        .unwrap()
        .unwrap();
    let widened = app
        .token(TokenRequest {
            scope: "orders:read admin".into(),
            ..refresh_grant(&narrowed.refresh_token)
        })
        .await
        .unwrap()
        .unwrap_err();

    assert_eq!(narrowed.scope, "orders:read");
    let claims = app.verifier().verify(&narrowed.access_token).await.unwrap();
    assert!(claims.has_scope("orders:read") && !claims.has_scope("orders:write"));
    assert_eq!(code_of(&widened), TokenErrorCode::InvalidScope);
}

#[tokio::test]
async fn the_client_credentials_grant_issues_a_scoped_token_without_refresh_token() {
    let app = spawn_app().await;
    let secret = app.create_client("reporting", "orders:read").await;

    let issued = app
        .token(client_grant("reporting", &secret))
        .await
        .unwrap()
        .unwrap();

    assert!(issued.refresh_token.is_empty());
    assert_eq!(issued.scope, "orders:read");
    assert_eq!(issued.user_id, "reporting");
    let claims = app.verifier().verify(&issued.access_token).await.unwrap();
    assert_eq!(claims.sub, "reporting");
    assert_eq!(claims.client_id.as_deref(), Some("reporting"));
    assert_eq!(claims.scope, "orders:read");
}

#[tokio::test]
async fn a_client_may_ask_for_part_of_its_scopes_but_not_more() {
    let app = spawn_app().await;
    let secret = app
        .create_client("fulfilment", "orders:read orders:write")
        .await;

    let part = app
        .token(TokenRequest {
            scope: "orders:write".into(),
            ..client_grant("fulfilment", &secret)
        })
        .await
        .unwrap()
        .unwrap();
    let readonly = app.create_client("readonly", "orders:read").await;
    let more = app
        .token(TokenRequest {
            scope: "orders:write".into(),
            ..client_grant("readonly", &readonly)
        })
        .await
        .unwrap()
        .unwrap_err();

    assert_eq!(part.scope, "orders:write");
    assert_eq!(code_of(&more), TokenErrorCode::InvalidScope);
}

#[tokio::test]
async fn wrong_unknown_missing_or_disabled_client_credentials_are_invalid_client() {
    let app = spawn_app().await;
    let secret = app.create_client("reporting", "orders:read").await;
    app.create_client("retired", "orders:read").await;
    sqlx::query("UPDATE service_accounts SET disabled_at = now() WHERE client_id = 'retired'")
        .execute(&app.db)
        .await
        .unwrap();

    let retired_secret = "x".repeat(43);
    for request in [
        client_grant("reporting", "not-the-secret"),
        client_grant("nobody", &secret),
        client_grant("retired", &retired_secret),
        TokenRequest {
            grant_type: "client_credentials".into(),
            ..Default::default()
        },
    ] {
        let error = app.token(request).await.unwrap().unwrap_err();
        assert_eq!(code_of(&error), TokenErrorCode::InvalidClient, "{error:?}");
    }
}

#[tokio::test]
async fn a_service_account_presenting_a_refresh_token_is_unauthorized_client() {
    let app = spawn_app().await;
    let secret = app.create_client("reporting", "orders:read").await;
    let login = app.logged_in_user().await;

    let error = app
        .token(TokenRequest {
            client_id: "reporting".into(),
            client_secret: secret,
            ..refresh_grant(&login.refresh_token)
        })
        .await
        .unwrap()
        .unwrap_err();

    assert_eq!(code_of(&error), TokenErrorCode::UnauthorizedClient);
    // The user's refresh token was not touched.
    app.token(refresh_grant(&login.refresh_token))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_password_grant_and_unknown_grants_are_unsupported_grant_type() {
    let app = spawn_app().await;

    for grant_type in [
        "password",
        "authorization_code",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
    ] {
        let error = app
            .token(TokenRequest {
                grant_type: grant_type.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            code_of(&error),
            TokenErrorCode::UnsupportedGrantType,
            "{grant_type}"
        );
    }
}

#[tokio::test]
async fn a_missing_grant_type_or_refresh_token_is_invalid_request() {
    let app = spawn_app().await;

    let no_grant = app
        .token(TokenRequest::default())
        .await
        .unwrap()
        .unwrap_err();
    let no_token = app.token(refresh_grant("")).await.unwrap().unwrap_err();

    assert_eq!(code_of(&no_grant), TokenErrorCode::InvalidRequest);
    assert!(no_grant.description.contains("grant_type"));
    assert_eq!(code_of(&no_token), TokenErrorCode::InvalidRequest);
    assert!(no_token.description.contains("refresh_token"));
}
