//! Register, log in, the stored session, and the errors of a user who is
//! not logged in or whose gateway is not there.

use signalbox_system_tests::TestSystem;

use crate::helpers::{stored_token, Terminal, PASSWORD};

#[tokio::test]
async fn login_keeps_the_session_in_the_config_directory_for_its_owner_only() -> anyhow::Result<()>
{
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    let email = format!("ada-{}@example.com", uuid::Uuid::new_v4().simple());

    let registered = terminal
        .run(&[
            "register",
            "--email",
            &email,
            "--password",
            PASSWORD,
            "--json",
        ])
        .await;
    registered.assert_ok();
    assert_eq!(registered.json()["email"], email.as_str());
    assert!(
        !terminal.session_file().exists(),
        "register does not log in"
    );

    let logged_in = terminal
        .run(&["login", "--email", &email, "--password", PASSWORD])
        .await;
    logged_in.assert_ok();
    assert!(
        logged_in.stdout.contains(&format!("logged in as {email}")),
        "{logged_in:?}"
    );
    let file = terminal.session_file();
    assert!(
        logged_in.stdout.contains(&file.display().to_string()),
        "{logged_in:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the user may read the refresh token");
    }
    // The stored token is one the gateway takes.
    let orders = system
        .api
        .http()
        .get(system.api.url("/api/orders"))
        .bearer_auth(stored_token(&terminal))
        .send()
        .await?;
    assert_eq!(orders.status(), 200);

    // Logging out forgets it: the next command asks for a login.
    terminal.run(&["logout"]).await.assert_ok();
    assert!(!file.exists());
    assert_eq!(terminal.run(&["order", "list"]).await.code, Some(3));
    system.stop().await
}

#[tokio::test]
async fn a_command_without_a_login_says_to_run_login_and_exits_3() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);

    let listed = terminal.run(&["order", "list"]).await;
    assert_eq!(listed.code, Some(3), "{listed:?}");
    assert!(listed.stderr.contains("not logged in"), "{listed:?}");
    assert!(listed.stderr.contains("run `signalbox login"), "{listed:?}");
    assert!(listed.stdout.is_empty(), "{listed:?}");

    // Scripts get the same as JSON on stderr, and nothing on stdout.
    let listed = terminal.run(&["order", "list", "--json"]).await;
    assert_eq!(listed.code, Some(3));
    let error: serde_json::Value = serde_json::from_str(listed.stderr.trim())?;
    assert_eq!(error["error"]["exit_code"], 3);
    assert!(error["error"]["hint"]
        .as_str()
        .unwrap_or_default()
        .contains("signalbox login"));
    assert!(listed.stdout.is_empty(), "{listed:?}");

    // A wrong password is the same kind of failure, with its own advice.
    let email = format!("bob-{}@example.com", uuid::Uuid::new_v4().simple());
    terminal
        .run(&["register", "--email", &email, "--password", PASSWORD])
        .await
        .assert_ok();
    let refused = terminal
        .run(&[
            "login",
            "--email",
            &email,
            "--password",
            "not the password at all",
        ])
        .await;
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused.stderr.contains("wrong email or password"),
        "{refused:?}"
    );
    assert!(!terminal.session_file().exists());
    system.stop().await
}

#[tokio::test]
async fn an_expired_access_token_is_replaced_with_the_stored_refresh_token() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);
    terminal.logged_in().await;

    // An access token the gateway refuses, as an expired one is refused.
    let file = terminal.session_file();
    let mut session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let old_refresh = session["refresh_token"].clone();
    session["access_token"] = "e30.e30.not-a-signature".into();
    std::fs::write(&file, session.to_string())?;

    let listed = terminal.run(&["order", "list", "--json"]).await;
    listed.assert_ok();
    assert_eq!(listed.json()["orders"], serde_json::json!([]));
    let session: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    assert_ne!(session["access_token"], "e30.e30.not-a-signature");
    assert_ne!(
        session["refresh_token"], old_refresh,
        "the refresh token rotated"
    );
    system.stop().await
}

#[tokio::test]
async fn an_unreachable_gateway_names_the_url_tried_and_how_to_start_the_system() {
    // Port 1 on loopback: nothing listens there.
    let terminal = Terminal::new("http://127.0.0.1:1", "ws://127.0.0.1:1/ws");
    let ran = terminal.run(&["products"]).await;
    assert_eq!(ran.code, Some(4), "{ran:?}");
    assert!(ran.stderr.contains("http://127.0.0.1:1"), "{ran:?}");
    assert!(ran.stderr.contains("scripts/up"), "{ran:?}");

    // Bad input never reaches the network: clap refuses it with exit 2.
    let ran = terminal.run(&["order", "place", "SIG-LAMP:many"]).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.stderr.contains("not a quantity"), "{ran:?}");
    // And --help documents the exit codes.
    let help = terminal.run(&["--help"]).await;
    help.assert_ok();
    assert!(help.stdout.contains("Exit codes:"), "{help:?}");
    assert!(help.stdout.contains("3  not logged in"), "{help:?}");
}
