//! Creating service accounts: validated ids and scopes, hashed secrets.

use sha2::{Digest, Sha256};
use signalbox_auth::clients::{self, CreateClientError};

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_new_client_secret_is_random_and_stored_only_as_its_sha256() {
    let app = spawn_app().await;

    let first = app.create_client("reporting", "orders:read").await;
    let second = app.create_client("billing", "orders:read").await;

    assert_ne!(first, second);
    assert_eq!(first.len(), 43, "32 bytes, base64url");
    let (stored, scope): (Vec<u8>, String) = sqlx::query_as(
        "SELECT secret_hash, scope FROM service_accounts WHERE client_id = 'reporting'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, Sha256::digest(first.as_bytes()).to_vec());
    assert_eq!(scope, "orders:read");
}

#[tokio::test]
async fn a_taken_id_an_unknown_scope_or_no_scope_creates_nothing() {
    let app = spawn_app().await;
    app.create_client("reporting", "orders:read").await;

    let taken = clients::create(&app.db, "reporting", "orders:read").await;
    let unknown = clients::create(&app.db, "other", "orders:read admin").await;
    let none = clients::create(&app.db, "other", "").await;
    let uuid = clients::create(
        &app.db,
        "0190a1b2-0000-7000-8000-000000000001",
        "orders:read",
    )
    .await;

    assert!(matches!(taken, Err(CreateClientError::Taken(_))));
    assert!(matches!(unknown, Err(CreateClientError::Invalid(_))));
    assert!(matches!(none, Err(CreateClientError::Invalid(_))));
    assert!(matches!(uuid, Err(CreateClientError::Invalid(_))));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM service_accounts")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}
