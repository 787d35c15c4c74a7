use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_refresh_rotates_the_pair_and_the_old_refresh_token_stops_working() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let rotated = app.refresh(&login.refresh_token).await.unwrap();

    assert_ne!(rotated.refresh_token, login.refresh_token);
    assert_eq!(rotated.user_id, login.user_id);
    assert_eq!(rotated.token_type, "Bearer");
    let claims = app.verifier().verify(&rotated.access_token).await.unwrap();
    assert_eq!(claims.sub, login.user_id);

    let again = app.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_successor_can_be_refreshed_in_turn() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let second = app.refresh(&login.refresh_token).await.unwrap();
    let third = app.refresh(&second.refresh_token).await.unwrap();

    assert_eq!(third.user_id, login.user_id);
}

#[tokio::test]
async fn reusing_a_rotated_token_revokes_the_whole_family() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;
    let successor = app.refresh(&login.refresh_token).await.unwrap();

    // Someone replays the rotated token: stolen, or the client is confused.
    let replay = app.refresh(&login.refresh_token).await.unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);

    // The legitimate holder of the successor is logged out as well.
    let status = app.refresh(&successor.refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "invalid refresh token");
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(live, 0);
}

#[tokio::test]
async fn revoking_one_family_leaves_the_users_other_sessions_alone() {
    let app = spawn_app().await;
    let email = format!("{}@example.org", Uuid::new_v4().simple());
    app.register(&email, crate::helpers::PASSWORD)
        .await
        .unwrap();
    let laptop = app.login(&email, crate::helpers::PASSWORD).await.unwrap();
    let phone = app.login(&email, crate::helpers::PASSWORD).await.unwrap();

    app.refresh(&laptop.refresh_token).await.unwrap();
    app.refresh(&laptop.refresh_token).await.unwrap_err();

    app.refresh(&phone.refresh_token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_refreshes_of_one_token_exactly_one_succeeds() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let (first, second) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            app.refresh(&login.refresh_token),
            app.refresh(&login.refresh_token)
        )
    })
    .await
    .expect("both refreshes answer");

    let winners: Vec<_> = [&first, &second]
        .into_iter()
        .filter_map(|r| r.as_ref().ok())
        .collect();
    assert_eq!(winners.len(), 1, "{first:?} / {second:?}");
    let loser = [&first, &second]
        .into_iter()
        .find_map(|r| r.as_ref().err())
        .unwrap();
    assert_eq!(loser.code(), Code::Unauthenticated);
    // The loser looked like a replay, so the family ended revoked: even the
    // winner's new refresh token is refused.
    let status = app.refresh(&winners[0].refresh_token).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn an_unknown_refresh_token_is_unauthenticated() {
    let app = spawn_app().await;

    for token in ["", "not-a-token", &"x".repeat(10_000)] {
        let status = app.refresh(token).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert_eq!(status.message(), "invalid refresh token");
    }
}

#[tokio::test]
async fn an_expired_refresh_token_is_unauthenticated() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();

    let status = app.refresh(&login.refresh_token).await.unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_the_sha256_of_a_refresh_token_is_stored() {
    let app = spawn_app().await;
    let login = app.logged_in_user().await;

    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM refresh_tokens")
        .fetch_all(&app.db)
        .await
        .unwrap();

    let expected = Sha256::digest(login.refresh_token.as_bytes()).to_vec();
    assert_eq!(stored, vec![expected]);
}
