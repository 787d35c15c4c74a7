//! What one idle socket costs a realtime instance, in resident memory.
//!
//! A WebSocket service holds its sockets for hours, so the memory of an idle
//! socket, times the sockets an instance holds, is what sizes the instance.
//! This tool measures it from the outside, on a real process: it starts a
//! realtime binary as a child (against the local RabbitMQ, with a stand-in
//! JWKS), reads the child's resident set size (`VmRSS`), opens `N` sockets
//! authenticated by header, each subscribed to its own user's channel, reads
//! the resident set size again and prints the difference divided by `N`.
//!
//! ```text
//! cargo build --release -p signalbox-realtime
//! cargo run -p signalbox-realtime --example socket_cost -- target/release/realtime 2000
//! ```
//!
//! The child inherits the environment, so settings can be compared without
//! rebuilding, for example `APP__WS__READ_BUFFER_BYTES=131072` for
//! tungstenite's default read buffer. The sockets are kept idle but alive:
//! each is read by a task of this process, which answers the server's
//! heartbeat pings, and nothing else is sent. Linux only (`/proc`).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::{stream, SinkExt, StreamExt};
use serde_json::{json, Value};
use signalbox_messages::channels::Namespace;
use signalbox_platform::tokens::{now_secs, AccessClaims};
use signalbox_testkit::{
    broker::{self, amqp_url, random_namespace},
    probe,
    tokens::{self, serve_jwks, TestKey},
};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
};
use tokio_util::sync::CancellationToken;

/// Sockets opened at once: enough to be quick, few enough that the accept
/// queue of the child never overflows.
const CONCURRENCY: usize = 64;
/// How long start-up, an upgrade or an answer may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The realtime child process; killed when dropped, whatever way the tool
/// ends.
struct Realtime(Child);

impl Drop for Realtime {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Realtime {
    /// The child's resident set size, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{}/status", self.0.id()))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let binary = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: socket_cost <realtime binary> [sockets]"))?;
    let sockets: usize = args.next().map_or(Ok(2_000), |n| n.parse())?;

    let key = TestKey::generate();
    let stop_jwks = CancellationToken::new();
    let jwks_url = serve_jwks(key.jwks(), stop_jwks.clone()).await?;
    let namespace = random_namespace();
    // A free port for the child: bound here, released, handed over.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let realtime = Realtime(
        Command::new(&binary)
            .env("APP_CONFIG_DIR", "/nonexistent")
            .env("APP__HTTP__HOST", "127.0.0.1")
            .env("APP__HTTP__PORT", port.to_string())
            .env("APP__AMQP__URL", amqp_url())
            .env("APP__AMQP__NAMESPACE", &namespace)
            .env("APP__TOKENS__JWKS_URL", &jwks_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let result = measure(&realtime, &key, port, sockets).await;

    drop(realtime);
    stop_jwks.cancel();
    broker::delete_namespace(&Namespace::new(namespace), &[]).await?;
    let (baseline, loaded) = result?;
    let per_socket = (loaded.saturating_sub(baseline)) as f64 / sockets as f64;
    println!(
        "baseline {baseline} KiB, with {sockets} idle sockets {loaded} KiB: {per_socket:.1} KiB per socket"
    );
    Ok(())
}

/// The child's resident set size once it is ready, and with `sockets` idle
/// subscribed sockets open.
async fn measure(
    realtime: &Realtime,
    key: &TestKey,
    port: u16,
    sockets: usize,
) -> anyhow::Result<(u64, u64)> {
    let ready = format!("http://127.0.0.1:{port}/health/ready");
    let http = reqwest::Client::new();
    probe::until("the child is ready", DEADLINE, || {
        let request = http.get(&ready).send();
        async move {
            Ok(match request.await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(response.status().to_string()),
                Err(error) => Err(error.to_string()),
            })
        }
    })
    .await?;

    // One socket first, closed again: the verifier fetches the JWKS on the
    // first token, and that once-only cost is not a socket's.
    let warm_up = open(key, port, "warm-up").await?;
    warm_up.cancel();
    let baseline = realtime.rss_kib()?;

    let open_sockets: Vec<CancellationToken> = stream::iter(0..sockets)
        .map(|n| open(key, port, format!("user-{n}")))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let loaded = realtime.rss_kib()?;
    for socket in open_sockets {
        socket.cancel();
    }
    Ok((baseline, loaded))
}

/// Opens a socket as `user`, waits for `welcome`, subscribes to the user's
/// channel and waits for `subscribed`; then leaves it to a task that reads
/// it (answering pings) until the returned token is cancelled.
async fn open(
    key: &TestKey,
    port: u16,
    user: impl Into<String>,
) -> anyhow::Result<CancellationToken> {
    let user = user.into();
    let claims = AccessClaims {
        exp: now_secs() + 3600,
        scope: String::new(),
        ..tokens::claims(&user)
    };
    let token = key.sign_typed(&claims, Some("at+jwt"));
    let mut request = format!("ws://127.0.0.1:{port}/ws").into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("signalbox.v1"),
    );
    headers.insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio::time::timeout(DEADLINE, connect_async(request)).await??;
    anyhow::ensure!(next_frame(&mut socket).await?["type"] == "welcome");
    let subscribe = json!({"type": "subscribe", "channel": format!("user:{user}")});
    socket.send(Message::text(subscribe.to_string())).await?;
    let answer = next_frame(&mut socket).await?;
    anyhow::ensure!(answer["type"] == "subscribed", "{answer}");

    let stop = CancellationToken::new();
    let stopped = stop.clone();
    // The socket's reader: keeps it alive (pongs go out as pings are read)
    // until the measurement is over, then closes it.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                // The measurement is over.
                _ = stopped.cancelled() => break,
                // Anything from the server; reading it answers pings.
                message = socket.next() => if !matches!(message, Some(Ok(_))) { return },
            }
        }
        let _ = socket.close(None).await;
    });
    Ok(stop)
}

/// The next text frame of `socket`, as JSON, within [`DEADLINE`].
async fn next_frame<S>(socket: &mut S) -> anyhow::Result<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("socket closed"))??;
        if let Message::Text(text) = message {
            return Ok(serde_json::from_str(&text)?);
        }
    }
}
