//! `watch`: opens a realtime socket, subscribes to the token owner's channel
//! (or the ones given) and prints every frame as one JSON line.
//!
//! ```text
//! watch --url ws://127.0.0.1:8081/ws --token "$TOKEN" [--channel catalog]... [--until APPROVED|REJECTED]
//! ```
//! With `--until STATE` it exits 0 once an event with that `state` arrives
//! (exit 1 if the socket closes first), which is what `scripts/demo` uses.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut url = "ws://127.0.0.1:8081/ws".to_owned();
    let mut token = None;
    let mut channels = Vec::new();
    let mut until: Vec<String> = Vec::new();
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
            other => anyhow::bail!("unknown argument {other}; see the source for usage"),
        }
    }
    let token = token.ok_or_else(|| anyhow::anyhow!("--token is required"))?;
    if channels.is_empty() {
        channels.push(format!("user:{}", subject(&token)?));
    }

    let mut request = url.as_str().into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("signalbox.v1"),
    );
    headers.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    for channel in &channels {
        let frame = json!({"type": "subscribe", "channel": channel});
        socket.send(Message::Text(frame.to_string().into())).await?;
    }

    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => {
                println!("{text}");
                let frame: Value = serde_json::from_str(text.as_str())?;
                let state = frame["data"]["state"].as_str().unwrap_or_default();
                if frame["type"] == "event" && until.iter().any(|s| s == state) {
                    return Ok(());
                }
            }
            Message::Close(frame) => {
                eprintln!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    if until.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the socket closed before a {} event", until.join("|"))
    }
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
