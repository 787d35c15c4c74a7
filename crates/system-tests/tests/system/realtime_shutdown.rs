//! A clean shutdown is clean: realtime, started and stopped again and again
//! as a process of its own (`SIGTERM`, what Docker and Kubernetes send)
//! with sockets open, closes every socket with 1001 and logs no ERROR.
//! Before the broker connection's I/O loop was joined on the way out
//! (`signalbox_messaging::Broker::close`), about every other stop logged
//! lapin's "Connection error … being shutdown".

use signalbox_system_tests::{
    child::ChildService, infra, socket::Received, system::await_status, Socket, TestSystem,
    DEADLINE,
};

/// Enough stops that a race lost half the time is all but sure to show.
const ROUNDS: usize = 6;
/// Sockets open at each stop.
const SOCKETS: usize = 3;

#[tokio::test]
async fn sigterm_with_open_sockets_closes_them_and_logs_no_error() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let user = system.api.new_user().await?;
    let env: Vec<(String, String)> = vec![
        ("APP__HTTP__HOST".into(), "127.0.0.1".into()),
        ("APP__HTTP__PORT".into(), "0".into()),
        ("APP__AMQP__URL".into(), infra::amqp_url()),
        (
            "APP__AMQP__NAMESPACE".into(),
            system.namespace.prefix().to_owned(),
        ),
        ("APP__AMQP__CONNECT_TIMEOUT_SECS".into(), "10".into()),
        (
            "APP__TOKENS__JWKS_URL".into(),
            system.api.url("/.well-known/jwks.json"),
        ),
    ];

    for round in 1..=ROUNDS {
        let child =
            ChildService::realtime(env!("CARGO_BIN_EXE_realtime-child").as_ref(), env.clone())
                .await?;
        let port = child.http_port;
        await_status(
            &format!("http://127.0.0.1:{port}/health/ready"),
            reqwest::StatusCode::OK,
        )
        .await?;
        let url = format!("ws://127.0.0.1:{port}/ws");
        let mut sockets = Vec::new();
        for _ in 0..SOCKETS {
            let mut socket = Socket::connect(&url, Some(&user.access_token)).await?;
            socket.expect("welcome", DEADLINE).await?;
            let subscribed = socket
                .subscribe(&format!("user:{}", user.id), DEADLINE)
                .await?;
            assert_eq!(subscribed["type"], "subscribed", "round {round}");
            sockets.push(socket);
        }

        let output = child.output_handle();
        child.stop().await?;

        for socket in &mut sockets {
            let code = loop {
                match socket.receive(DEADLINE).await? {
                    Received::Frame(_) => continue,
                    Received::Closed(code) => break code,
                }
            };
            assert_eq!(code, Some(1001), "round {round}: going away");
        }
        let lines = output.lock().map(|lines| lines.clone()).unwrap_or_default();
        // The capture works: the stop itself was logged.
        assert!(
            lines.iter().any(|line| line.contains("shutdown requested")),
            "round {round}: the child's log was not captured: {lines:#?}"
        );
        let errors: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(r#""level":"ERROR""#))
            .collect();
        assert!(
            errors.is_empty(),
            "round {round} logged errors: {errors:#?}"
        );
    }
    system.stop().await
}
