//! Benchmark sockets: many WebSocket clients in one process, each
//! authenticated and subscribed to one channel, counting the events they
//! receive and recording each one's publish → receive latency.
//!
//! Two protocols, so that one client measures every peer the same way:
//!
//! - [`Protocol::Signalbox`]: `signalbox.v1` (the realtime service, and the
//!   raw tokio-tungstenite ceiling, which speaks the same frames): the token
//!   in `Authorization: Bearer` on the upgrade, `welcome`, then `subscribe`
//!   answered by `subscribed`; events are `{"type":"event",…}` text frames.
//! - [`Protocol::SocketIo`]: Engine.IO v4 over a plain WebSocket
//!   (`/socket.io/?EIO=4&transport=websocket`, no long-polling): the server
//!   opens with `0{…}`, the client connects to the main namespace with its
//!   token, `40{"token":…}`, and is answered `40{…}`; `420["subscribe",
//!   channel]` is acknowledged with `430[…]`; events arrive as
//!   `42["event",{…}]`, and the server's `2` (ping) must be answered `3`.
//!
//! The client keeps its buffers small (4 KiB read buffer instead of
//! tungstenite's 128 KiB), so that 10,000 sockets fit in the client's
//! memory, and it never parses an event's JSON: it counts it and finds its
//! `"ts"`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{
    client_async_with_config,
    tungstenite::{client::IntoClientRequest, protocol::WebSocketConfig, Message},
    WebSocketStream,
};

use crate::latency::{find_ts, Recorder};

/// How long the handshake of one socket (upgrade, authentication,
/// subscription) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Signalbox,
    SocketIo,
}

/// What every socket of a run shares: the counts and the latencies.
#[derive(Default)]
pub struct Tally {
    /// Events received, by all sockets.
    pub delivered: AtomicU64,
    /// Sockets that ended (closed by the server, or broken) after they were
    /// subscribed. A sustained rate has none.
    pub closed: AtomicU64,
    pub latency: Recorder,
}

impl Tally {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
}

/// One subscribed socket; its task reads until the socket ends or this
/// handle is dropped.
pub struct Subscribed {
    task: JoinHandle<()>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Stream = WebSocketStream<TcpStream>;

/// Opens socket number `id` to `127.0.0.1:port`, authenticates it with
/// `token` and subscribes it to `channel`; then counts its events into
/// `tally` until dropped.
pub async fn subscribe(
    protocol: Protocol,
    port: u16,
    id: usize,
    token: &str,
    channel: &str,
    tally: Arc<Tally>,
) -> anyhow::Result<Subscribed> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        match protocol {
            Protocol::Signalbox => open_signalbox(port, token, channel).await,
            Protocol::SocketIo => open_socketio(port, token, channel).await,
        }
    })
    .await
    .context("handshake timed out")??;
    let task = tokio::spawn(read_events(protocol, stream, id, tally));
    Ok(Subscribed { task })
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

async fn connect(
    url: &str,
    headers: &[(&'static str, String)],
    port: u16,
) -> anyhow::Result<Stream> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse()?);
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let (stream, _) = client_async_with_config(request, tcp, Some(config())).await?;
    Ok(stream)
}

/// The next text frame, answering nothing (tungstenite answers pings).
async fn next_text(stream: &mut Stream) -> anyhow::Result<String> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

async fn open_signalbox(port: u16, token: &str, channel: &str) -> anyhow::Result<Stream> {
    let url = format!("ws://127.0.0.1:{port}/ws");
    let headers = [
        ("sec-websocket-protocol", "signalbox.v1".to_owned()),
        ("authorization", format!("Bearer {token}")),
    ];
    let mut stream = connect(&url, &headers, port).await?;
    let welcome = next_text(&mut stream).await?;
    if !welcome.contains(r#""type":"welcome""#) {
        bail!("expected welcome, got {welcome}");
    }
    let subscribe = serde_json::json!({"type": "subscribe", "channel": channel});
    stream.send(Message::text(subscribe.to_string())).await?;
    let subscribed = next_text(&mut stream).await?;
    if !subscribed.contains(r#""type":"subscribed""#) {
        bail!("expected subscribed, got {subscribed}");
    }
    Ok(stream)
}

async fn open_socketio(port: u16, token: &str, channel: &str) -> anyhow::Result<Stream> {
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let mut stream = connect(&url, &[], port).await?;
    let open = next_text(&mut stream).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open}");
    }
    let connect = format!("40{}", serde_json::json!({"token": token}));
    stream.send(Message::text(connect)).await?;
    let connected = next_text(&mut stream).await?;
    if !connected.starts_with("40") {
        bail!("expected CONNECT, got {connected}");
    }
    let subscribe = format!("420{}", serde_json::json!(["subscribe", channel]));
    stream.send(Message::text(subscribe)).await?;
    loop {
        let answer = next_text(&mut stream).await?;
        match answer.as_str() {
            "2" => stream.send(Message::text("3")).await?,
            ack if ack.starts_with("430") && ack.contains(r#""ok":true"#) => return Ok(stream),
            other => bail!("expected the subscribe ack, got {other}"),
        }
    }
}

/// Counts the socket's events until it ends.
async fn read_events(protocol: Protocol, mut stream: Stream, id: usize, tally: Arc<Tally>) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        let event = match protocol {
            Protocol::Signalbox => text.starts_with(r#"{"type":"event""#),
            Protocol::SocketIo => {
                if text == "2" {
                    if stream.send(Message::text("3")).await.is_err() {
                        break;
                    }
                    continue;
                }
                text.starts_with(r#"42["event""#)
            }
        };
        if event {
            tally.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(ts) = find_ts(text) {
                tally.latency.record(id, ts);
            }
        }
    }
    tally.closed.fetch_add(1, Ordering::Relaxed);
}
