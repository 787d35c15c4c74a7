//! `watch`: opens a realtime socket, subscribes to the token owner's channel
//! (or the ones given) and prints every frame as one JSON line; when the
//! socket drops, it reconnects and recovers what it missed.
//!
//! ```text
//! watch --url ws://127.0.0.1:8081/ws --token "$TOKEN" [--channel catalog]... [--until APPROVED|REJECTED] [--once]
//! ```
//! With `--until STATE` it exits 0 once an event with that `state` arrives.
//! `--once` does not reconnect (exit 1 if the socket closes first), which is
//! what `scripts/demo` uses.
//!
//! Reconnecting is what a browser client should do too: wait with
//! exponential backoff and jitter (`signalbox_messaging::backoff`, the same
//! schedule the services use for the broker), so that clients of a failed
//! instance do not all come back at the same instant; open a socket (behind
//! a load balancer, probably on another instance), and subscribe with
//! `recover: {epoch, offset}`, the position of the last event seen on each
//! channel. The answer's `recovered` says whether the missed events follow
//! (printed as a `# recovered` line on stderr) or could not be replayed, in
//! which case a real client reloads what it shows.

use std::{collections::HashMap, time::Duration};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use signalbox_messaging::backoff::Backoff;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

/// The first wait before a reconnect, and the longest.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

struct Options {
    url: String,
    token: String,
    channels: Vec<String>,
    until: Vec<String>,
    once: bool,
}

/// How one socket's life ended.
enum Ended {
    /// An event with one of the `--until` states arrived.
    Done,
    /// The socket closed or failed.
    Dropped(String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    // The position of the last event seen on each channel, kept across
    // sockets: what the next `subscribe` asks to recover from.
    let mut positions: HashMap<String, (String, u64)> = HashMap::new();
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    loop {
        match watch(&options, &mut positions, &mut backoff).await {
            Ok(Ended::Done) => return Ok(()),
            Ok(Ended::Dropped(why)) | Err(why) if !options.once => {
                let wait = backoff.next_delay();
                eprintln!("# disconnected ({why}); reconnecting in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            Ok(Ended::Dropped(why)) | Err(why) => {
                anyhow::ensure!(
                    options.until.is_empty(),
                    "the socket closed before a {} event: {why}",
                    options.until.join("|")
                );
                return Ok(());
            }
        }
    }
}

/// One socket: connect, subscribe (recovering where there is a position),
/// print frames until it ends.
async fn watch(
    options: &Options,
    positions: &mut HashMap<String, (String, u64)>,
    backoff: &mut Backoff,
) -> Result<Ended, String> {
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("signalbox.v1"),
    );
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", options.token)).map_err(|e| e.to_string())?;
    headers.insert("Authorization", bearer);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| e.to_string())?;
    for channel in &options.channels {
        let mut frame = json!({"type": "subscribe", "channel": channel});
        if let Some((epoch, offset)) = positions.get(channel) {
            frame["recover"] = json!({"epoch": epoch, "offset": offset});
        }
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
    }

    while let Some(message) = socket.next().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(text) => {
                println!("{text}");
                let frame: Value =
                    serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                match frame["type"].as_str() {
                    Some("subscribed") => {
                        // A socket that got this far counts as a success.
                        backoff.reset();
                        let channel = frame["channel"].as_str().unwrap_or_default();
                        if positions.contains_key(channel) {
                            eprintln!("# {channel}: recovered {}", frame["recovered"]);
                        }
                        remember(positions, &frame);
                    }
                    Some("event") => {
                        remember(positions, &frame);
                        let state = frame["data"]["state"].as_str().unwrap_or_default();
                        if options.until.iter().any(|s| s == state) {
                            return Ok(Ended::Done);
                        }
                    }
                    _ => {}
                }
            }
            Message::Close(frame) => return Ok(Ended::Dropped(format!("closed: {frame:?}"))),
            _ => {}
        }
    }
    Ok(Ended::Dropped("the connection ended".to_owned()))
}

/// Keeps the furthest position a frame shows for its channel.
fn remember(positions: &mut HashMap<String, (String, u64)>, frame: &Value) {
    let (Some(channel), Some(epoch), Some(offset)) = (
        frame["channel"].as_str(),
        frame["epoch"].as_str(),
        frame["offset"].as_u64(),
    ) else {
        return;
    };
    let position = positions
        .entry(channel.to_owned())
        .or_insert_with(|| (epoch.to_owned(), offset));
    if position.0 != epoch || position.1 < offset {
        *position = (epoch.to_owned(), offset);
    }
}

fn options() -> anyhow::Result<Options> {
    let mut url = "ws://127.0.0.1:8081/ws".to_owned();
    let mut token = None;
    let mut channels = Vec::new();
    let mut until: Vec<String> = Vec::new();
    let mut once = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--url" => url = value()?,
            "--token" => token = Some(value()?),
            "--channel" => channels.push(value()?),
            "--until" => until.extend(value()?.split('|').map(str::to_owned)),
            "--once" => once = true,
            other => anyhow::bail!("unknown argument {other}; see the source for usage"),
        }
    }
    let token = token.ok_or_else(|| anyhow::anyhow!("--token is required"))?;
    if channels.is_empty() {
        channels.push(format!("user:{}", subject(&token)?));
    }
    Ok(Options {
        url,
        token,
        channels,
        until,
        once,
    })
}

/// The `sub` claim of a JWT, read without verification (the server verifies;
/// this only picks the default channel name).
fn subject(token: &str) -> anyhow::Result<String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("the token is not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    let claims: Value = serde_json::from_slice(&bytes)?;
    claims["sub"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("the token has no sub"))
}
