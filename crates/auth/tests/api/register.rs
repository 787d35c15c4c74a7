use tonic::Code;
use uuid::Uuid;

use crate::helpers::{spawn_app, PASSWORD};

#[tokio::test]
async fn registering_returns_a_uuidv7_and_the_normalised_email() {
    let app = spawn_app().await;

    let registered = app
        .register("  Ann.Lee@Example.ORG ", PASSWORD)
        .await
        .unwrap();

    assert_eq!(registered.email, "ann.lee@example.org");
    let user_id = Uuid::parse_str(&registered.user_id).unwrap();
    assert_eq!(user_id.get_version_num(), 7);
    let stored: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, "ann.lee@example.org");
}

#[tokio::test]
async fn an_email_taken_in_another_case_is_already_exists() {
    let app = spawn_app().await;
    app.register("ann@example.org", PASSWORD).await.unwrap();

    let status = app
        .register("ANN@Example.org", "another password")
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn concurrent_registrations_of_one_email_create_one_account() {
    let app = spawn_app().await;

    let (first, second) = tokio::join!(
        app.register("race@example.org", PASSWORD),
        app.register("race@example.org", PASSWORD),
    );

    let codes = [&first, &second].map(|r| r.as_ref().err().map(tonic::Status::code));
    assert!(
        codes.contains(&None) && codes.contains(&Some(Code::AlreadyExists)),
        "{first:?} / {second:?}"
    );
}

#[tokio::test]
async fn a_malformed_email_is_invalid_argument() {
    let app = spawn_app().await;

    for email in [
        "",
        "ann",
        "ann@localhost",
        "@example.org",
        "a@b@example.org",
        "ann lee@example.org",
    ] {
        let status = app.register(email, PASSWORD).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{email:?}: {status:?}"
        );
        assert!(status.message().contains("email"), "{email:?}: {status:?}");
    }
}

#[tokio::test]
async fn a_seven_character_password_is_invalid_argument() {
    let app = spawn_app().await;

    let status = app
        .register("ann@example.org", "1234567")
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("at least 8 characters"),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_password_is_stored_as_an_argon2id_hash_with_owasp_parameters() {
    let app = spawn_app().await;
    let registered = app.register("ann@example.org", PASSWORD).await.unwrap();

    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(Uuid::parse_str(&registered.user_id).unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();

    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(PASSWORD));
}
