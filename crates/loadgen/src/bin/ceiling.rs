//! The ceiling of the fan-out benchmark (B1): the least a WebSocket push
//! server can do with tokio-tungstenite, fed the way realtime is fed.
//!
//! It consumes the events exchange (`<namespace>.events`, every routing
//! key) through a server-named queue without acknowledgements, and pushes
//! each event to the sockets subscribed to its channel (`user:<user_id>`
//! when the envelope names a user, `catalog` for `catalog.*` events). The
//! frame is built once per event, splicing the payload's bytes in without
//! parsing them, and shared by every subscriber; each socket has a bounded
//! queue (a full one drops the socket, as realtime evicts a slow consumer)
//! and a task that writes everything queued before it flushes once.
//!
//! What it leaves out, which realtime does: token verification, origin
//! check, the event log (stream offsets, epochs, recovery), heartbeats,
//! expiry, commands, error frames. It speaks just enough `signalbox.v1`
//! for the benchmark client: `welcome` on open, `subscribe` answered by
//! `subscribed`, then `event` frames.
//!
//! Usage: `ceiling --namespace NS [--port P] [--amqp URL]`; prints
//! `listening <port>` once it consumes and accepts.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};
use signalbox_messages::channels::Namespace;
use signalbox_messaging::{amqp::header_str, headers};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    protocol::WebSocketConfig,
    Message, Utf8Bytes,
};

/// Frames queued per socket before it counts as too slow and is dropped.
const QUEUE: usize = 256;

type Subscribers = Mutex<HashMap<String, Vec<mpsc::Sender<Utf8Bytes>>>>;

fn main() -> anyhow::Result<()> {
    // As many workers as realtime has by default: one core left to lapin's
    // I/O thread (`signalbox_platform::runtime`).
    signalbox_platform::runtime::beside_the_broker(None)?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut namespace = None;
    let mut port = 0u16;
    let mut amqp = "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value after the option");
        match arg.as_str() {
            "--namespace" => namespace = Some(value()?),
            "--port" => port = value()?.parse()?,
            "--amqp" => amqp = value()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let ns = Namespace::new(namespace.context("--namespace is required")?);

    let connection = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    signalbox_messaging::topology::declare_exchanges(&channel, &ns).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            ns.events_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "ceiling".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let subscribers: Arc<Subscribers> = Arc::default();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?.port());

    // The acceptor: one task per socket.
    let accepting = Arc::clone(&subscribers);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, Arc::clone(&accepting)));
        }
    });

    // The feed: each delivery becomes one frame, pushed to its channel.
    // This loop runs in the future `main` blocks on, so on the main thread,
    // beside the worker that serves the sockets; realtime's consumer is a
    // task on its worker (docs/benchmarks.md measures it run this way).
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        let user = header_str(delivery.properties.headers(), headers::USER_ID);
        let channel = match user {
            Some(user) => format!("user:{user}"),
            None if delivery.routing_key.as_str().starts_with("catalog.") => "catalog".to_owned(),
            None => continue,
        };
        let Ok(body) = std::str::from_utf8(&delivery.data) else {
            continue;
        };
        let frame = Utf8Bytes::from(format!(
            r#"{{"type":"event","channel":"{channel}","data":{body}}}"#
        ));
        let mut map = subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queues) = map.get_mut(&channel) {
            queues.retain(|queue| queue.try_send(frame.clone()).is_ok());
        }
    }
    Ok(())
}

async fn serve(tcp: TcpStream, subscribers: Arc<Subscribers>) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    // The same buffers as realtime's defaults (`WsSettings`), so that the
    // comparison is of the code, not of the settings.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(4 * 1024);
    // The callback's error type is tungstenite's, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let choose = |_: &Request, mut response: Response| {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            "signalbox.v1".parse().expect("valid"),
        );
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async_with_config(tcp, choose, Some(config)).await?;
    ws.send(Message::text(r#"{"type":"welcome","ttl":3600}"#))
        .await?;
    let channel = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(&text)?;
                if let Some(channel) = frame["channel"].as_str() {
                    break channel.to_owned();
                }
            }
            Some(Ok(_)) => {}
            _ => return Ok(()),
        }
    };
    let (queue, mut queued) = mpsc::channel(QUEUE);
    subscribers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(channel.clone())
        .or_default()
        .push(queue);
    let subscribed = serde_json::json!({"type": "subscribed", "channel": channel});
    ws.send(Message::text(subscribed.to_string())).await?;

    loop {
        tokio::select! {
            // Frames for this socket: everything queued is written, then
            // flushed once.
            frame = queued.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                ws.feed(Message::Text(frame)).await?;
                while let Ok(frame) = queued.try_recv() {
                    ws.feed(Message::Text(frame)).await?;
                }
                ws.flush().await?;
            }
            // The client: pings are answered by tungstenite; a close or an
            // error ends the socket (its queue is dropped from the map at
            // the next push).
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
