//! `signalbox watch`: a socket on the realtime service, subscribed to the
//! user's channel (or the ones named), printing each pushed event; when the
//! socket drops it reconnects and recovers what it missed.
//!
//! ```text
//!   connect (Authorization: Bearer on the upgrade, subprotocol signalbox.v1)
//!     └─ subscribe {channel, recover: {epoch, offset}?}  per channel
//!          └─ frames ──▶ print; `event` moves the channel's position
//!   dropped ──▶ wait (Backoff) ──▶ connect again, recovering from the positions
//! ```
//!
//! Reconnecting is what a browser client should do too: wait with
//! exponential backoff and jitter (`signalbox_messaging::backoff`, the same
//! schedule the services use for the broker), so that clients of a failed
//! instance do not all come back at the same instant; open a socket (behind
//! a load balancer, probably on another instance), and subscribe with
//! `recover: {epoch, offset}`, the position of the last event seen on each
//! channel. The answer's `recovered` says whether the missed events follow
//! or could not be replayed, in which case a real client reloads what it
//! shows.
//!
//! The access token lives minutes: when the server says `token_expiring`
//! the watcher refreshes the login through the gateway and sends the new
//! token in band (`refresh`), so a long watch outlives its first token.

use std::{collections::HashMap, time::Duration};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use signalbox_messaging::backoff::Backoff;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode, Message,
    },
    MaybeTlsStream, WebSocketStream,
};

use crate::{
    error::{chain, CliError, Kind},
    gateway::Session,
    output::{Output, Spinner},
};

/// The first wait before a reconnect, and the longest.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// The subprotocol of the socket's contract.
const SUBPROTOCOL: &str = "signalbox.v1";

/// The close codes of the contract that end a watch instead of a reconnect.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;
const CLOSE_FORBIDDEN: u16 = 4003;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What to watch, and when to stop.
#[derive(Debug, Clone)]
pub struct Options {
    /// `ws://host:port/ws`.
    pub url: String,
    /// Empty: the token owner's `user:<id>`.
    pub channels: Vec<String>,
    /// Stop at the first event whose `state` is one of these.
    pub until: Vec<String>,
    /// Only events about this order.
    pub order: Option<String>,
    /// Do not reconnect: a dropped socket ends the watch.
    pub once: bool,
    /// Give up (with `--until`: fail) after this long.
    pub timeout: Option<Duration>,
    /// With `--json`, print every frame as it came (`watch`); otherwise
    /// the caller prints its own result (`order place --wait`).
    pub raw_frames: bool,
}

/// How one socket's life ended.
enum Ended {
    /// An awaited event arrived; its `data`.
    Done(Value),
    /// The socket closed or failed; worth a reconnect.
    Dropped(String),
}

/// A watch across sockets: the positions it has seen and its backoff.
pub struct Watcher<'a> {
    options: Options,
    session: &'a mut Session,
    out: &'a Output,
    /// The position of the last event seen on each channel, kept across
    /// sockets: what the next `subscribe` asks to recover from.
    positions: HashMap<String, (String, u64)>,
    backoff: Backoff,
    /// A socket opened by [`Watcher::subscribe`] and not yet read.
    socket: Option<Socket>,
    spinner: Spinner,
}

impl<'a> Watcher<'a> {
    pub fn new(
        mut options: Options,
        session: &'a mut Session,
        out: &'a Output,
    ) -> Result<Self, CliError> {
        if options.channels.is_empty() {
            options
                .channels
                .push(format!("user:{}", subject(session.access_token())?));
        }
        let waiting = match &options.order {
            Some(order) => format!("waiting for order {order}"),
            None => format!("waiting for events on {}", options.channels.join(", ")),
        };
        Ok(Self {
            spinner: out.spinner(&waiting),
            options,
            session,
            out,
            positions: HashMap::new(),
            backoff: Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX),
            socket: None,
        })
    }

    /// The session the watcher refreshes, for calls made while it listens.
    pub fn session(&mut self) -> &mut Session {
        self.session
    }

    /// From now on only `order`'s events count, and its fate ends the watch.
    pub fn follow_order(&mut self, order: &str) {
        self.options.order = Some(order.to_owned());
        self.spinner
            .set_message(&format!("waiting for order {order}"));
    }

    /// Opens a socket and returns once every channel's subscription is
    /// confirmed: whatever happens after this is pushed to it (what
    /// `order place --wait` needs before it places the order).
    pub async fn subscribe(&mut self) -> Result<(), CliError> {
        let mut socket = self.connect().await?;
        let mut pending = self.options.channels.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pending > 0 {
            let frame = tokio::time::timeout_at(deadline, socket.next())
                .await
                .map_err(|_| {
                    CliError::new(
                        Kind::ServerError,
                        format!("{} did not confirm the subscription", self.options.url),
                    )
                })?;
            let Some(Ok(Message::Text(text))) = frame else {
                return Err(CliError::new(
                    Kind::Unreachable,
                    format!("{} closed the socket before subscribing", self.options.url),
                ));
            };
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            match self.on_frame(&mut socket, &frame).await? {
                Some(Ended::Done(_)) | None => {}
                Some(Ended::Dropped(why)) => {
                    return Err(CliError::new(Kind::Unreachable, why));
                }
            }
            if frame["type"] == "subscribed" {
                pending -= 1;
            }
        }
        self.socket = Some(socket);
        Ok(())
    }

    /// Watches until an awaited event (its `data`), the timeout, or a
    /// failure that a reconnect cannot mend.
    pub async fn run(&mut self) -> Result<Option<Value>, CliError> {
        let Some(timeout) = self.options.timeout else {
            return self.run_forever().await.map(Some);
        };
        match tokio::time::timeout(timeout, self.run_forever()).await {
            Ok(outcome) => outcome.map(Some),
            Err(_) if self.options.until.is_empty() && self.options.order.is_none() => Ok(None),
            Err(_) => Err(CliError::no_outcome(format!(
                "no {} event within {timeout:?}",
                self.awaited()
            ))
            .with_hint("the saga may be slow or a service down: `signalbox census` shows which instances answer")),
        }
    }

    fn awaited(&self) -> String {
        if self.options.until.is_empty() {
            "final".to_owned()
        } else {
            self.options.until.join("|")
        }
    }

    async fn run_forever(&mut self) -> Result<Value, CliError> {
        let mut connected_once = self.socket.is_some();
        loop {
            let socket = match self.socket.take() {
                Some(socket) => Ok(socket),
                None => self.connect().await,
            };
            let ended = match socket {
                // The first connection must work: a wrong URL or a system
                // that is not running is reported, not retried forever.
                Err(error) if !connected_once => return Err(error),
                Err(error) if error.kind != Kind::Unreachable => return Err(error),
                Err(error) => Ended::Dropped(error.message),
                Ok(mut socket) => {
                    connected_once = true;
                    self.read(&mut socket).await?
                }
            };
            match ended {
                Ended::Done(data) => return Ok(data),
                Ended::Dropped(why) if self.options.once => {
                    return Err(CliError::no_outcome(format!(
                        "the socket closed before a {} event: {why}",
                        self.awaited()
                    )))
                }
                Ended::Dropped(why) => {
                    let wait = self.backoff.next_delay();
                    self.out.status(
                        &self.spinner,
                        &format!("disconnected ({why}); reconnecting in {wait:?}"),
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Opens a socket with the session's token and subscribes to every
    /// channel, recovering where there is a position. A 401 on the upgrade
    /// refreshes the login once.
    async fn connect(&mut self) -> Result<Socket, CliError> {
        let mut socket = match self.open().await {
            Err(error) if error.kind == Kind::NotLoggedIn => {
                self.session.refresh().await?;
                self.open().await?
            }
            other => other?,
        };
        for channel in &self.options.channels {
            let mut frame = json!({"type": "subscribe", "channel": channel});
            if let Some((epoch, offset)) = self.positions.get(channel) {
                frame["recover"] = json!({"epoch": epoch, "offset": offset});
            }
            socket
                .send(Message::Text(frame.to_string().into()))
                .await
                .map_err(|e| self.unreachable(&e))?;
        }
        Ok(socket)
    }

    async fn open(&self) -> Result<Socket, CliError> {
        let url = &self.options.url;
        let mut request = url.as_str().into_client_request().map_err(|e| {
            CliError::bad_input(format!("`{url}` is not a WebSocket URL: {e}"))
                .with_hint("--realtime takes a URL such as ws://127.0.0.1:8081/ws")
        })?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.session.access_token()))
            .map_err(|_| CliError::not_logged_in("the stored token is not a valid header value"))?;
        headers.insert("Authorization", bearer);
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response))
                if response.status() == 401 =>
            {
                Err(CliError::not_logged_in(format!(
                    "{url} refused the token (401)"
                )))
            }
            Err(error) => Err(self.unreachable(&error)),
        }
    }

    fn unreachable(&self, error: &tokio_tungstenite::tungstenite::Error) -> CliError {
        CliError::new(
            Kind::Unreachable,
            format!("the socket service at {} cannot be reached: {}", self.options.url, chain(error)),
        )
        .with_hint("is Signalbox running? Start it with `scripts/up` (or `docker compose up --wait`), or point --realtime / SIGNALBOX_REALTIME at it")
    }

    /// Reads one socket's frames until it ends.
    async fn read(&mut self, socket: &mut Socket) -> Result<Ended, CliError> {
        while let Some(message) = socket.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => return Ok(Ended::Dropped(chain(&error))),
            };
            match message {
                Message::Text(text) => {
                    let frame: Value = match serde_json::from_str(text.as_str()) {
                        Ok(frame) => frame,
                        Err(error) => {
                            return Ok(Ended::Dropped(format!("a frame that is not JSON: {error}")))
                        }
                    };
                    if let Some(ended) = self.on_frame(socket, &frame).await? {
                        return Ok(ended);
                    }
                }
                Message::Close(close) => {
                    let (code, reason) = close
                        .map(|c| (u16::from(c.code), c.reason.to_string()))
                        .unwrap_or((u16::from(CloseCode::Status), String::new()));
                    return match code {
                        CLOSE_TOKEN_EXPIRED => {
                            // Reconnect with a fresh token.
                            self.session.refresh().await?;
                            Ok(Ended::Dropped("the token expired".to_owned()))
                        }
                        CLOSE_FORBIDDEN => Err(CliError::new(
                            Kind::Refused,
                            format!("the socket service refused: {reason} (close {code})"),
                        )
                        .with_hint("a user may watch only `user:<own id>` and `catalog`")),
                        1008 => Err(CliError::new(
                            Kind::Refused,
                            format!("the socket service closed on a policy violation: {reason}"),
                        )),
                        _ => Ok(Ended::Dropped(format!("closed with {code} {reason}"))),
                    };
                }
                _ => {}
            }
        }
        Ok(Ended::Dropped("the connection ended".to_owned()))
    }

    /// Prints one frame and acts on it; `Some` when the watch (or this
    /// socket) is over.
    async fn on_frame(
        &mut self,
        socket: &mut Socket,
        frame: &Value,
    ) -> Result<Option<Ended>, CliError> {
        let kind = frame["type"].as_str().unwrap_or_default();
        // `watch --json`: every frame, one JSON line each, as it came.
        if self.options.raw_frames {
            self.out.frame(&self.spinner, frame);
        }
        match kind {
            "welcome" => self.out.status(
                &self.spinner,
                &format!(
                    "connected to {} (token valid for {} s)",
                    self.options.url, frame["ttl"]
                ),
            ),
            "subscribed" => {
                // A socket that got this far counts as a success.
                self.backoff.reset();
                let channel = frame["channel"].as_str().unwrap_or_default();
                let note = if self.positions.contains_key(channel) {
                    if frame["recovered"] == true {
                        ", missed events recovered"
                    } else {
                        ", missed events could NOT be recovered"
                    }
                } else {
                    ""
                };
                self.out
                    .status(&self.spinner, &format!("subscribed to {channel}{note}"));
                remember(&mut self.positions, frame);
            }
            "event" => {
                remember(&mut self.positions, frame);
                let data = &frame["data"];
                let about_order = match &self.options.order {
                    Some(order) => data["order_id"].as_str() == Some(order.as_str()),
                    None => true,
                };
                if about_order {
                    self.out.event(&self.spinner, frame);
                    let state = data["state"].as_str().unwrap_or_default();
                    let done = if self.options.until.is_empty() {
                        // `--order` without `--until`: until the order's fate.
                        self.options.order.is_some() && is_final(state)
                    } else {
                        self.options
                            .until
                            .iter()
                            .any(|s| s.eq_ignore_ascii_case(state))
                    };
                    if done {
                        self.spinner.finish();
                        return Ok(Some(Ended::Done(data.clone())));
                    }
                }
            }
            "token_expiring" => match self.session.refresh().await {
                Ok(token) => {
                    let refresh = json!({"type": "refresh", "token": token});
                    if let Err(error) = socket.send(Message::Text(refresh.to_string().into())).await
                    {
                        return Ok(Some(Ended::Dropped(chain(&error))));
                    }
                }
                Err(error) => self
                    .out
                    .status(&self.spinner, &format!("cannot refresh the token: {error}")),
            },
            "error" => {
                let code = frame["code"].as_str().unwrap_or_default();
                let message = frame["message"].as_str().unwrap_or_default();
                if code == "forbidden" {
                    return Err(CliError::new(
                        Kind::Refused,
                        format!("the socket service refused: {message}"),
                    )
                    .with_hint("a user may watch only `user:<own id>` and `catalog`"));
                }
                self.out
                    .status(&self.spinner, &format!("error {code}: {message}"));
            }
            _ => {}
        }
        Ok(None)
    }
}

/// The states after which an order does not change again by itself.
pub fn is_final(state: &str) -> bool {
    matches!(state, "APPROVED" | "REJECTED" | "CANCELLED")
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

/// The `sub` claim of a JWT, read without verification (the server verifies;
/// this only picks the default channel name).
pub fn subject(token: &str) -> Result<String, CliError> {
    let not_a_token = || CliError::not_logged_in("the stored access token is not a JWT");
    let payload = token.split('.').nth(1).ok_or_else(not_a_token)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| not_a_token())?;
    let claims: Value = serde_json::from_slice(&bytes).map_err(|_| not_a_token())?;
    claims["sub"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(not_a_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_moves_forward_within_an_epoch_and_resets_with_a_new_one() {
        let mut positions = HashMap::new();
        let frame = |epoch: &str, offset: u64| json!({"channel": "user:1", "epoch": epoch, "offset": offset});
        remember(&mut positions, &frame("e1", 5));
        remember(&mut positions, &frame("e1", 3));
        assert_eq!(positions["user:1"], ("e1".to_owned(), 5));
        remember(&mut positions, &frame("e2", 1));
        assert_eq!(positions["user:1"], ("e2".to_owned(), 1));
        remember(&mut positions, &json!({"type": "pong"}));
        assert_eq!(positions.len(), 1);
    }

    #[test]
    fn the_default_channel_is_the_token_subjects() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"42"}"#);
        assert_eq!(subject(&format!("h.{claims}.s")).unwrap(), "42");
        assert_eq!(subject("opaque").unwrap_err().kind, Kind::NotLoggedIn);
    }
}
