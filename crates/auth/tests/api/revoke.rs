//! Revocation (RFC 7009) and logout: the presented token's family ends.

use tonic::Code;

use crate::helpers::spawn_app;

#[tokio::test]
async fn revoking_a_refresh_token_ends_its_family_and_nothing_else() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;
    let successor = app.refresh(&login.refresh_token).await.unwrap();
    let other_session = app.logged_in_user().await;

    // The rotated-away token still names the family.
    assert!(app.revoke(&login.refresh_token).await);

    let status = app.refresh(&successor.refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    app.refresh(&other_session.refresh_token).await.unwrap();
}

#[tokio::test]
async fn revoking_an_unknown_or_already_revoked_token_is_not_an_error() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    assert!(!app.revoke("never-issued").await);
    assert!(!app.revoke("").await);
    assert!(!app.revoke(&"x".repeat(5000)).await);
    assert!(app.revoke(&login.refresh_token).await);
    assert!(!app.revoke(&login.refresh_token).await);
}
