//! A WebSocket client for the realtime service, speaking `signalbox.v1`.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

pub const SUBPROTOCOL: &str = "signalbox.v1";

pub struct Socket {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What the server did when we waited for a frame.
#[derive(Debug)]
pub enum Received {
    Frame(Value),
    /// The server closed the socket with this code.
    Closed(Option<u16>),
}

impl Socket {
    /// Opens `/ws` with the subprotocol and, when given, a bearer token on the
    /// upgrade request. A refused upgrade is an `Err` carrying the HTTP status.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))?;
            request.headers_mut().insert("Authorization", value);
        }
        let (stream, _response) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { stream })
    }

    pub async fn send(&mut self, frame: Value) -> anyhow::Result<()> {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await?;
        Ok(())
    }

    /// The next JSON frame or the close, within `deadline`.
    pub async fn receive(&mut self, deadline: Duration) -> anyhow::Result<Received> {
        tokio::time::timeout(deadline, async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return Ok(Received::Frame(serde_json::from_str(text.as_str())?))
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ok(Received::Closed(frame.map(|f| u16::from(f.code))))
                    }
                    // Pings are answered by the library; binary is not used.
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                    None => return Ok(Received::Closed(None)),
                }
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("no frame within {deadline:?}"))?
    }

    /// Waits for the first frame of type `kind`, skipping others.
    pub async fn expect(&mut self, kind: &str, deadline: Duration) -> anyhow::Result<Value> {
        self.wait_for(deadline, |frame| frame["type"] == kind).await
    }

    /// Waits for the first frame that satisfies `wanted`, skipping others.
    pub async fn wait_for(
        &mut self,
        deadline: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.receive(left).await? {
                Received::Frame(frame) if wanted(&frame) => return Ok(frame),
                Received::Frame(_) => continue,
                Received::Closed(code) => anyhow::bail!("socket closed ({code:?}) while waiting"),
            }
        }
    }

    /// Subscribes to `channel` and waits for the server's answer (either
    /// `subscribed` or `error`).
    pub async fn subscribe(&mut self, channel: &str, deadline: Duration) -> anyhow::Result<Value> {
        self.send(json!({"type": "subscribe", "channel": channel}))
            .await?;
        self.wait_for(deadline, |f| {
            f["type"] == "subscribed" || f["type"] == "error"
        })
        .await
    }
}
