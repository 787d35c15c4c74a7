//! `GET /ws`: one WebSocket, one task.
//!
//! This is where the browser meets the backend in the order scenario: the
//! client opens a socket with the access token it got through the gateway,
//! subscribes to `user:<its id>`, and sees `PENDING → APPROVED` arrive as
//! `event` frames that the hub routes here.
//!
//! Before the upgrade (plain HTTP, refusals are problem+json, see
//! [`crate::error`]): the `Origin` is checked against the allowlist (a
//! browser page from another site must not ride on the user's session), the
//! `signalbox.v1` subprotocol must be offered, and a bearer token in the
//! `Authorization` header is verified. A socket without the header is
//! upgraded but must authenticate with its first frame within
//! `ws.auth_timeout_secs`, because browsers cannot set headers on a
//! WebSocket. A token is never read from the URL: URLs end up in logs.
//!
//! After the upgrade, one task owns the socket and waits on everything
//! that can happen to it ([`Session::poll_wake`]):
//!
//! ```text
//!            ┌────────── hub events (bounded queue, filled by the events consumer)
//!            │ ┌──────── eviction by the hub (slow consumer, close 1008), or
//!            │ │         shutdown (close 1001): one token, a child of the shutdown token
//!  socket ◀──┤ │ ┌────── client frames (auth, subscribe, refresh, command, ping)
//!   task     │ │ │ ┌──── replies to this socket's commands (JoinSet)
//!            │ │ │ │ ┌── one timer: the nearest of the heartbeat (ping; 3 silent
//!            │ │ │ │ │   intervals close), the token_expiring warning and expiry (4001)
//! ```
//!
//! A socket on a busy channel is woken for its events far more often than
//! for anything else, so the wait is shaped for that: the queue is looked
//! at first, and the read side only when its own waker fired (or it
//! returned a frame last time, since more may be buffered), so a wake-up
//! for an event does not read from the connection; the three deadlines
//! share one timer. The queue yields to the others after a few turns in a
//! row, so a queue that never empties cannot starve pings, client frames
//! or expiry.
//!
//! A `command` is not answered inside the loop: its round trip to the
//! backend may take up to the command deadline, and the socket must keep
//! pushing events and answering pings meanwhile. Each one runs as a task of
//! the socket's own `JoinSet` ([`crate::commands`]), whose result is the
//! `reply` frame; the set is dropped with the session, which aborts what is
//! still waiting. A per-socket token bucket bounds how many are started.
//!
//! A `subscribe` with `recover` replays the channel's missed events from
//! the event log before any live one ([`crate::recovery`]): the socket joins
//! the channel first, so live events queue while the replay is read, and
//! the queued ones the replay already covered are skipped.
//!
//! Whatever ends the socket, its [`Membership`] is dropped, which removes
//! it from every channel it joined, before the close handshake.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::{poll_fn, Future},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, CloseFrame, Message, Utf8Bytes, WebSocket},
        State, WebSocketUpgrade,
    },
    http::{header, HeaderMap},
    response::Response,
    routing::get,
    Router,
};
use futures::{task::AtomicWaker, SinkExt, StreamExt};
use signalbox_messages::inbound::{codes, ClientReply};
use signalbox_platform::{
    authorization::{self, AuthorizationError},
    tokens::{AccessClaims, TokenError, TokenVerifier},
};
use tokio::{
    task::{JoinError, JoinSet},
    time::{sleep_until, timeout, Instant, Sleep},
};
use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFutureOwned},
    task::TaskTracker,
};
use tracing::Instrument;

use crate::{
    commands::{reply_frame, Commands, RateLimit},
    config::WsSettings,
    error::{close, frame_code, UpgradeError},
    frames::{ClientFrame, ServerFrame, StreamPosition, SUBPROTOCOL},
    hub::{user_channel, Hub, Membership, Outbound, CATALOG_CHANNEL},
    queue,
    recovery::{History, Replay},
};

/// How long before expiry the client is sent `token_expiring`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30);
/// A write that takes longer than this means the client stopped reading;
/// the socket is dropped rather than left hanging.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many queued events are written before one flush (the
/// hub's queue holds `ws.send_buffer`); the loop then turns, so pings,
/// client frames and expiry are not held up behind a long queue.
const BATCH: usize = 64;
/// After our close frame, how long we wait for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A heartbeat is lost after this many silent intervals.
const HEARTBEAT_MISSES: u32 = 3;
/// After this many wake-ups in a row served from the queue (each up to
/// [`BATCH`] events, so the whole default `ws.send_buffer`), the next one
/// looks at everything else first.
const QUEUE_TURNS: u32 = 4;

/// What every socket task shares.
pub struct SocketContext {
    pub hub: Arc<Hub>,
    /// The event log, read again for `subscribe {recover}`.
    pub history: Arc<History>,
    /// Sends the sockets' commands to the backend and awaits the replies.
    pub commands: Arc<Commands>,
    pub verifier: Arc<TokenVerifier>,
    pub settings: WsSettings,
    /// Cancelled when the service shuts down; every socket then closes 1001.
    pub shutdown: CancellationToken,
    /// Tracks socket tasks so shutdown can wait for their close handshakes.
    pub tracker: TaskTracker,
}

/// The `/ws` route.
pub fn router(context: Arc<SocketContext>) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(context)
}

/// The upgrade handler: every check that can be answered with an HTTP status
/// happens here, before the connection stops being HTTP.
#[tracing::instrument(skip_all, fields(origin = ?headers.get(header::ORIGIN)))]
async fn upgrade(
    State(context): State<Arc<SocketContext>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, UpgradeError> {
    check_origin(&headers, &context.settings.allowed_origins)?;
    let ws = ws?.protocols([SUBPROTOCOL]);
    if ws.selected_protocol().is_none() {
        return Err(UpgradeError::SubprotocolMissing);
    }
    let claims = match bearer_token(&headers)? {
        Some(token) => Some(context.verifier.verify(token).await?),
        None => None,
    };

    let max = context.settings.max_frame_bytes;
    let read_buffer = context.settings.read_buffer_bytes;
    let write_buffer = context.settings.write_buffer_bytes;
    Ok(ws
        // Buffers sized for many idle sockets with small JSON frames, not
        // for throughput: an idle socket costs 1 KiB of read buffer instead
        // of tungstenite's 128 KiB (the numbers, and why, are in
        // `WsSettings`). The write buffer gathers the frames of one batch
        // (`send_batch`) into one write of at most `write_buffer_bytes`; it
        // keeps tungstenite's default bound (none) because it never holds
        // more than that plus one frame: a write that cannot go through
        // holds the next frame back until it does (at most `SEND_TIMEOUT`),
        // and the hub's queue in front of it is bounded. A bound would only
        // refuse events larger than it.
        .read_buffer_size(read_buffer)
        .write_buffer_size(write_buffer)
        // A client message (or single frame) above the limit fails the read
        // with a capacity error; the socket task answers it with close 1009
        // "frame too large". The client sees that close frame unless its own
        // send is still blocked when the server drops the TCP connection, in
        // which case it sees a reset (1006).
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let tracker = context.tracker.clone();
            tracker.track_future(serve(socket, context, claims))
        }))
}

/// An `Origin` header, when present, must be on the allowlist.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), UpgradeError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&origin)) {
        Ok(())
    } else {
        Err(UpgradeError::OriginNotAllowed(origin.into_owned()))
    }
}

/// The token of an `Authorization: Bearer <token>` header, read by the
/// parser every edge shares; `None` without the header, since the socket may
/// then authenticate with its first frame. Any other header is refused.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, UpgradeError> {
    match authorization::bearer_in(headers) {
        Ok(token) => Ok(Some(token)),
        Err(AuthorizationError::Missing) => Ok(None),
        Err(refused) => Err(UpgradeError::Authorization(refused)),
    }
}

/// How a socket's task ends.
#[derive(Debug)]
enum Exit {
    /// Tell the client why with a close frame.
    Close(u16, &'static str),
    /// The client closed, or the connection broke: nothing more to say.
    Gone,
}

/// The socket task. `claims` are set when the upgrade carried a valid token.
async fn serve(mut socket: WebSocket, context: Arc<SocketContext>, claims: Option<AccessClaims>) {
    // Shedding, last step (`crate::backpressure`): an instance far behind
    // the event log takes no new socket, which would only add fan-out; the
    // client retries later, or another instance.
    if context.hub.load().refuse_new_socket() {
        finish(
            &mut socket,
            Exit::Close(close::TRY_AGAIN_LATER, "try again later"),
        )
        .await;
        return;
    }
    // The eviction token is a child of the shutdown token, so the socket
    // waits on one token of its own for both.
    let (membership, outbound) = context
        .hub
        .join_under(context.settings.send_buffer, &context.shutdown);
    let span = tracing::info_span!(
        "socket",
        id = membership.id(),
        user_id = tracing::field::Empty
    );
    async move {
        tracing::debug!("socket opened");
        let Err(exit) = open(&mut socket, &context, claims, membership, outbound).await;
        // Boxed: the close handshake happens once; see `open`.
        Box::pin(finish(&mut socket, exit)).await;
    }
    .instrument(span)
    .await
}

/// Authenticates the socket, unless the upgrade already did, and serves it
/// until something ends it; only ever returns `Err`. `membership` is dropped
/// on the way out, whatever the way: the socket leaves every channel before
/// its close handshake.
async fn open(
    socket: &mut WebSocket,
    context: &SocketContext,
    claims: Option<AccessClaims>,
    membership: Membership,
    outbound: queue::Receiver<Outbound>,
) -> Result<Infallible, Exit> {
    let claims = match claims {
        Some(claims) => claims,
        // Boxed, like the other rare steps (a client frame's handling, the
        // close handshake): a future's state is part of the socket task's
        // for the socket's whole life, and the token check's is large, so
        // inline it would make every idle socket pay for it.
        None => Box::pin(authenticate(socket, context)).await?,
    };
    tracing::Span::current().record("user_id", claims.sub.as_str());
    Session::new(context, claims, membership, outbound)
        .run(socket)
        .await
}

/// Waits for the first frame of a socket opened without a token; it must be
/// `{"type":"auth","token":…}` and arrive within `ws.auth_timeout_secs`.
async fn authenticate(
    socket: &mut WebSocket,
    context: &SocketContext,
) -> Result<AccessClaims, Exit> {
    let deadline = tokio::time::sleep(Duration::from_secs(context.settings.auth_timeout_secs));
    tokio::pin!(deadline);
    // The client's first application frame (control frames do not count),
    // or the refusal of a binary one.
    let first = loop {
        tokio::select! {
            // The service is stopping: nobody will be served here.
            _ = context.shutdown.cancelled() => {
                return Err(Exit::Close(close::GOING_AWAY, "server shutting down"))
            }
            // An unauthenticated socket holds resources; it gets a few
            // seconds to prove who it is.
            () = &mut deadline => {
                return Err(Exit::Close(close::POLICY, "authentication timeout"))
            }
            // The client's next frame.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => break Ok(text),
                Some(Ok(Message::Binary(_))) => {
                    break Err(ServerFrame::error(frame_code::BAD_REQUEST, "frames are JSON text"))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Err(Exit::Gone),
                Some(Err(error)) => return Err(read_error(error)),
            },
        }
    };
    let refusal = match first.map(|text| ClientFrame::parse(&text)) {
        Ok(Ok(ClientFrame::Auth { token })) => {
            return match context.verifier.verify(&token).await {
                Ok(claims) => Ok(claims),
                Err(error) => {
                    send(socket, &token_error_frame(&error)).await?;
                    Err(refuse_token(&error))
                }
            };
        }
        Ok(Ok(_)) => ServerFrame::error(
            frame_code::UNAUTHENTICATED,
            "the first frame must be `auth`",
        ),
        Ok(Err(error)) => ServerFrame::error(frame_code::BAD_REQUEST, error.to_string()),
        Err(refusal) => refusal,
    };
    send(socket, &refusal).await?;
    Err(Exit::Close(close::POLICY, "authentication required"))
}

/// How a failed first-frame authentication closes the socket.
fn refuse_token(error: &TokenError) -> Exit {
    match error {
        TokenError::KeysUnavailable(_) => {
            Exit::Close(close::TRY_AGAIN_LATER, "cannot verify tokens now")
        }
        _ => Exit::Close(close::POLICY, "invalid token"),
    }
}

/// The `error` frame for a token that did not verify.
fn token_error_frame(error: &TokenError) -> ServerFrame {
    match error {
        TokenError::KeysUnavailable(_) => ServerFrame::error(
            frame_code::UNAVAILABLE,
            "tokens cannot be verified right now",
        ),
        other => ServerFrame::error(frame_code::INVALID_TOKEN, other.to_string()),
    }
}

/// An authenticated socket.
struct Session<'a> {
    context: &'a SocketContext,
    user_id: String,
    /// The scopes of the socket's current token (replaced by a `refresh`),
    /// sent with every command for the handler's permission check.
    scopes: Vec<String>,
    membership: Membership,
    /// Events the hub routed to this socket.
    outbound: queue::Receiver<Outbound>,
    /// Wake-ups in a row served from the queue (see [`QUEUE_TURNS`]).
    queue_turns: u32,
    /// Whether the connection may have something to read.
    read: ReadSide,
    /// When the token expires; moved by a successful `refresh`.
    expires_at: Instant,
    /// When to send `token_expiring` (`EXPIRY_WARNING` before `expires_at`,
    /// or at once), unless `warned` already.
    warn_at: Instant,
    warned: bool,
    /// The heartbeat's interval, and its next tick.
    period: Duration,
    next_heartbeat: Instant,
    /// The last time anything arrived from the client.
    last_seen: Instant,
    /// Commands waiting for their replies; each task's output is the
    /// `reply` frame. Made by the socket's first command: most sockets
    /// only listen, and an empty set is still an allocation.
    commands: Option<JoinSet<ServerFrame>>,
    /// How many commands the socket may start (`rate_limited` beyond).
    rate: RateLimit,
    /// Per channel, the offset up to which the client already has every
    /// event (a recovery told it so): live events at or below it that were
    /// queued meanwhile are not sent twice.
    floors: HashMap<String, u64>,
    /// `realtime_frames_out_total`, looked up once per socket instead of
    /// once per write.
    frames_out: metrics::Counter,
}

/// What woke the socket task.
enum Woken {
    /// The hub evicted the socket, or the service is stopping.
    Stopped,
    /// A frame from the client, an error, or the end of the connection.
    Incoming(Option<Result<Message, axum::Error>>),
    /// An event from the hub (more may be queued behind it).
    Event(Outbound),
    /// A command's reply, or the command task's failure.
    Reply(Result<ServerFrame, JoinError>),
    /// The nearest of the heartbeat, the expiry warning and the expiry.
    Timer,
}

/// The read side's own waker. The connection's read readiness (and the
/// write readiness that tungstenite's reads may wait on) wakes this, which
/// notes it and wakes the task; a wake-up of the task without the note
/// came from somewhere else (the queue, mostly), and the connection is
/// not read then. `Release`/`Acquire` on the note: whatever the waking
/// thread saw is visible to the task that reads after taking it.
struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Reads client frames only when the connection may have one.
struct ReadSide {
    flag: Arc<ReadWake>,
    /// `flag` as a waker, made once: the connection keeps it between reads.
    waker: Waker,
}

impl ReadSide {
    fn new() -> Self {
        let flag = Arc::new(ReadWake {
            // Read at once: frames may already be buffered.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(Arc::clone(&flag)),
            flag,
        }
    }

    /// The next client frame, if the connection was woken since the last
    /// read that came back empty.
    fn poll_next(
        &self,
        cx: &mut Context<'_>,
        socket: &mut WebSocket,
    ) -> Poll<Option<Result<Message, axum::Error>>> {
        // First the task's waker, then the note: a wake in between is not
        // lost, it sets the note this poll then takes.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let item = socket.poll_next_unpin(&mut Context::from_waker(&self.waker));
        if item.is_ready() {
            // More frames may be in tungstenite's buffer, which no wake-up
            // will announce: read again next time.
            self.flag.woken.store(true, Ordering::Release);
        }
        item
    }
}

impl<'a> Session<'a> {
    fn new(
        context: &'a SocketContext,
        claims: AccessClaims,
        membership: Membership,
        outbound: queue::Receiver<Outbound>,
    ) -> Self {
        let expires_at = deadline_of(claims.exp);
        let settings = &context.settings;
        let period = Duration::from_secs(settings.heartbeat_secs.max(1));
        Self {
            context,
            scopes: scopes_of(&claims),
            user_id: claims.sub,
            membership,
            outbound,
            queue_turns: 0,
            read: ReadSide::new(),
            expires_at,
            warn_at: warning_of(expires_at),
            warned: false,
            period,
            next_heartbeat: Instant::now() + period,
            last_seen: Instant::now(),
            commands: None,
            rate: RateLimit::new(settings.command_rate_per_sec, settings.command_burst),
            floors: HashMap::new(),
            frames_out: metrics::counter!("realtime_frames_out_total"),
        }
    }

    /// Serves the socket until something ends it; only ever returns `Err`.
    async fn run(&mut self, socket: &mut WebSocket) -> Result<Infallible, Exit> {
        tracing::info!("socket authenticated");
        // `realtime_sockets_open` counts this socket until `run` returns.
        let _open = OpenSocket::count();
        send(socket, &ServerFrame::Welcome { ttl: self.ttl() }).await?;

        // The two ways the service ends a socket, eviction by the hub and
        // shutdown, are one token (the socket's eviction token is a child
        // of the shutdown token), waited for by one future made once: a
        // `cancelled()` future takes its token's lock whenever it is
        // polled, and the shutdown token is shared by every socket.
        let context = self.context;
        let stopped = self.membership.eviction();
        tokio::pin!(stopped);
        // One timer for the heartbeat, the expiry warning and the expiry,
        // set to the nearest of them: one to poll on a wake-up, not three.
        let timer = sleep_until(self.next_deadline());
        tokio::pin!(timer);

        loop {
            let wake =
                poll_fn(|cx| self.poll_wake(cx, socket, stopped.as_mut(), timer.as_mut())).await;
            match wake {
                // The service is stopping: say so, so clients reconnect
                // elsewhere at once instead of waiting for a timeout. Or
                // the hub found this socket's buffer full and dropped it.
                Woken::Stopped => {
                    if context.shutdown.is_cancelled() {
                        return Err(Exit::Close(close::GOING_AWAY, "server shutting down"));
                    }
                    metrics::counter!("realtime_slow_consumer_evictions_total").increment(1);
                    return Err(Exit::Close(close::POLICY, "slow consumer"));
                }
                // A frame from the client (any frame proves it is alive).
                Woken::Incoming(incoming) => {
                    self.last_seen = Instant::now();
                    // Boxed (see `open`): a client's frames are rare next to
                    // the events pushed to it, and handling one (subscribe
                    // with its replay, refresh, command) is the largest
                    // state this loop has.
                    Box::pin(self.on_message(socket, incoming)).await?;
                }
                // An event the hub routed to this socket, and every event
                // queued behind it: written together, flushed once.
                Woken::Event(event) => self.push_queued(socket, event).await?,
                // A command's reply (or the error standing in for it).
                Woken::Reply(Ok(frame)) => send(socket, &frame).await?,
                Woken::Reply(Err(error)) => tracing::error!(%error, "command task failed"),
                // A deadline is due; the timer's own deadline bounds "now"
                // from below, so what made it fire is handled.
                Woken::Timer => {
                    let now = Instant::now().max(timer.deadline());
                    self.on_deadline(socket, now).await?;
                }
            }
            // A tick moves the heartbeat, a warning or a `refresh` the
            // token's deadlines: the timer follows the nearest.
            let next = self.next_deadline();
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
        }
    }

    /// What woke the task, looked at in this order: the queue (unless it
    /// answered the last [`QUEUE_TURNS`] wake-ups), the stop token, the
    /// connection (only when its own waker fired, see [`ReadSide`]), the
    /// commands' replies, the timer, and the queue if it was skipped. Each
    /// source that is not ready keeps this task's waker, so any of them
    /// wakes it.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut WebSocket,
        stopped: Pin<&mut WaitForCancellationFutureOwned>,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Woken> {
        let queue_first = self.queue_turns < QUEUE_TURNS;
        if queue_first {
            if let Poll::Ready(event) = self.outbound.poll_recv(cx) {
                self.queue_turns += 1;
                return Poll::Ready(Woken::Event(event));
            }
        }
        // Everything else is looked at now.
        self.queue_turns = 0;
        if stopped.poll(cx).is_ready() {
            return Poll::Ready(Woken::Stopped);
        }
        if let Poll::Ready(incoming) = self.read.poll_next(cx, socket) {
            return Poll::Ready(Woken::Incoming(incoming));
        }
        if let Some(commands) = self.commands.as_mut().filter(|set| !set.is_empty()) {
            if let Poll::Ready(Some(done)) = commands.poll_join_next(cx) {
                return Poll::Ready(Woken::Reply(done));
            }
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Woken::Timer);
        }
        if !queue_first {
            if let Poll::Ready(event) = self.outbound.poll_recv(cx) {
                self.queue_turns = 1;
                return Poll::Ready(Woken::Event(event));
            }
        }
        Poll::Pending
    }

    /// The nearest of the heartbeat's next tick, the expiry warning (until
    /// it is sent) and the expiry.
    fn next_deadline(&self) -> Instant {
        let mut next = self.next_heartbeat.min(self.expires_at);
        if !self.warned {
            next = next.min(self.warn_at);
        }
        next
    }

    /// Handles every deadline that is due at `now`.
    async fn on_deadline(&mut self, socket: &mut WebSocket, now: Instant) -> Result<(), Exit> {
        // The token expired and was not refreshed.
        if now >= self.expires_at {
            metrics::counter!("realtime_token_expiries_total").increment(1);
            return Err(Exit::Close(close::TOKEN_EXPIRED, "token expired"));
        }
        // Shortly before expiry: ask the client to refresh.
        if !self.warned && now >= self.warn_at {
            self.warned = true;
            let in_secs = self.ttl();
            tracing::debug!(in_secs, "token expiring");
            send(socket, &ServerFrame::TokenExpiring { in_secs }).await?;
        }
        // Heartbeat: a client that has been silent for three intervals is
        // gone (a half-open TCP connection sends no error); otherwise ping
        // it so that it answers. The next tick is a period after this one
        // ran, so late ticks do not bunch up after a busy moment.
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.period;
            if self.last_seen.elapsed() >= self.period * HEARTBEAT_MISSES {
                return Err(Exit::Close(close::POLICY, "heartbeat timeout"));
            }
            send_message(socket, Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// Writes `first` and the events queued behind it (at most
    /// [`BATCH`]), skipping those a recovery already sent, then flushes
    /// once. One wake-up of the socket task and one write to the connection
    /// carry a burst of events, instead of one of each per event; the
    /// tungstenite write buffer (`ws.write_buffer_bytes`) gathers them.
    async fn push_queued(&mut self, socket: &mut WebSocket, first: Outbound) -> Result<(), Exit> {
        let (outbound, floors) = (&mut self.outbound, &self.floors);
        let queued = std::iter::once(first)
            .chain(std::iter::from_fn(|| outbound.try_recv().ok()))
            .take(BATCH)
            .filter(|event| {
                floors
                    .get(&event.channel)
                    .is_none_or(|floor| event.offset > *floor)
            })
            .map(|event| event.frame.clone());
        send_batch(socket, queued, &self.frames_out).await
    }

    /// Seconds until the token expires.
    fn ttl(&self) -> u64 {
        self.expires_at
            .saturating_duration_since(Instant::now())
            .as_secs()
    }

    async fn on_message(
        &mut self,
        socket: &mut WebSocket,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<(), Exit> {
        match incoming {
            Some(Ok(Message::Text(text))) => {
                metrics::counter!("realtime_frames_in_total").increment(1);
                self.on_text(socket, &text).await
            }
            Some(Ok(Message::Binary(_))) => {
                let frame = ServerFrame::error(
                    frame_code::BAD_REQUEST,
                    "binary frames are not supported; send JSON text",
                );
                send(socket, &frame).await
            }
            // Pings are answered automatically; a pong is our heartbeat's
            // answer. Either way `last_seen` was already updated.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            // The client closed (the close reply is sent automatically).
            Some(Ok(Message::Close(frame))) => {
                tracing::debug!(?frame, "client closed");
                Err(Exit::Gone)
            }
            None => Err(Exit::Gone),
            Some(Err(error)) => Err(read_error(error)),
        }
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Exit> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                let frame = ServerFrame::error(frame_code::BAD_REQUEST, error.to_string());
                return send(socket, &frame).await;
            }
        };
        match frame {
            ClientFrame::Auth { .. } => {
                let frame = ServerFrame::error(frame_code::BAD_REQUEST, "already authenticated");
                send(socket, &frame).await
            }
            ClientFrame::Subscribe { channel, recover } => {
                if !may_subscribe(&self.user_id, &channel) {
                    tracing::info!(%channel, "subscription refused");
                    let frame = ServerFrame::error(
                        frame_code::FORBIDDEN,
                        format!("you may not subscribe to `{channel}`"),
                    );
                    return send(socket, &frame).await;
                }
                // From here on, live events of the channel queue for this
                // socket; `position` is the last one handled before.
                let position = self.membership.subscribe(&channel);
                let live = position.offset.unwrap_or(0);
                let (recovered, replay) = match recover {
                    None => (false, Vec::new()),
                    Some(from) => {
                        let recovery = self.recover(&channel, &from, position.offset).await;
                        let result = if recovery.0 { "hit" } else { "miss" };
                        metrics::counter!("realtime_recoveries_total", "result" => result)
                            .increment(1);
                        recovery
                    }
                };
                tracing::debug!(%channel, live, recovered, replayed = replay.len(), "subscribed");
                let frame = ServerFrame::Subscribed {
                    channel,
                    recovered,
                    epoch: position.epoch,
                    offset: live,
                };
                send(socket, &frame).await?;
                // The missed events, in order, before any live one; written
                // together and flushed once.
                let frames = replay.iter().map(|event| event.frame.clone());
                send_batch(socket, frames, &self.frames_out).await
            }
            ClientFrame::Unsubscribe { channel } => {
                // Idempotent: unsubscribing from a channel one is not in is
                // answered the same way.
                self.membership.unsubscribe(&channel);
                self.floors.remove(&channel);
                send(socket, &ServerFrame::Unsubscribed { channel }).await
            }
            ClientFrame::Refresh { token } => self.refresh(socket, &token).await,
            ClientFrame::Command { id, name, data } => {
                if !self.rate.try_take() {
                    tracing::info!(%name, "command rate limited");
                    let reply =
                        ClientReply::failed(codes::RATE_LIMITED, "too many commands; slow down");
                    return send(socket, &reply_frame(id, reply)).await;
                }
                metrics::counter!("realtime_commands_total").increment(1);
                let commands = Arc::clone(&self.context.commands);
                let (user_id, scopes) = (self.user_id.clone(), self.scopes.clone());
                self.commands.get_or_insert_with(JoinSet::new).spawn(
                    async move { commands.send(&user_id, scopes, id, name, data).await }
                        .in_current_span(),
                );
                Ok(())
            }
            ClientFrame::Ping => send(socket, &ServerFrame::Pong).await,
        }
    }

    /// Replays what the client missed on `channel` since `from`, up to
    /// `live` (the last event handled before the subscription; later ones
    /// are queued for the socket). Returns whether that was possible and the
    /// events to send first. A client ahead of this instance (it saw events
    /// on a faster instance) needs no replay: its floor keeps the queued
    /// events it already has from being sent again.
    async fn recover(
        &mut self,
        channel: &str,
        from: &StreamPosition,
        live: Option<u64>,
    ) -> (bool, Vec<Outbound>) {
        let history = &self.context.history;
        if from.epoch != history.epoch() {
            tracing::info!(channel, epoch = %from.epoch, "recovery from another epoch");
            return (false, Vec::new());
        }
        let Some(live) = live else {
            // Not even the start-up marker handled yet: the log's end is
            // unknown here.
            return (false, Vec::new());
        };
        match history.replay(channel, from.offset, live).await {
            Replay::Recovered(events) => {
                self.floors
                    .insert(channel.to_owned(), from.offset.max(live));
                (true, events)
            }
            Replay::Impossible(reason) => {
                tracing::info!(channel, %reason, "recovery impossible");
                (false, Vec::new())
            }
        }
    }

    /// In-band token refresh. A valid token of the same user moves the
    /// socket's expiry; the acknowledgement is a new `welcome {ttl}` with the
    /// new time to live. A token that does not verify is answered with
    /// `error {code: "invalid_token"}` and changes nothing: the socket still
    /// closes at the old expiry unless a later refresh succeeds. A token of
    /// another user closes the socket with 4003: a socket never changes
    /// owner.
    async fn refresh(&mut self, socket: &mut WebSocket, token: &str) -> Result<(), Exit> {
        match self.context.verifier.verify(token).await {
            Ok(claims) if claims.sub != self.user_id => {
                tracing::warn!(other = %claims.sub, "refresh with another user's token");
                let frame =
                    ServerFrame::error(frame_code::FORBIDDEN, "the token belongs to another user");
                send(socket, &frame).await?;
                Err(Exit::Close(close::FORBIDDEN, "token of another user"))
            }
            Ok(claims) => {
                self.scopes = scopes_of(&claims);
                // The socket's loop moves its timer to the new deadlines.
                self.expires_at = deadline_of(claims.exp);
                self.warn_at = warning_of(self.expires_at);
                self.warned = false;
                tracing::debug!(ttl = self.ttl(), "token refreshed");
                send(socket, &ServerFrame::Welcome { ttl: self.ttl() }).await
            }
            Err(error) => send(socket, &token_error_frame(&error)).await,
        }
    }
}

/// Who may subscribe to what: one's own user channel and public channels.
fn may_subscribe(user_id: &str, channel: &str) -> bool {
    channel == CATALOG_CHANNEL || channel == user_channel(user_id)
}

/// The scopes a token grants (its space-separated `scope` claim).
fn scopes_of(claims: &AccessClaims) -> Vec<String> {
    claims.scope.split_whitespace().map(str::to_owned).collect()
}

/// The instant a token's `exp` (seconds since the epoch) falls on.
fn deadline_of(exp: u64) -> Instant {
    let left = (UNIX_EPOCH + Duration::from_secs(exp))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

/// When to warn about an expiry at `expires_at` (now, if that is sooner).
fn warning_of(expires_at: Instant) -> Instant {
    expires_at
        .checked_sub(EXPIRY_WARNING)
        .map_or_else(Instant::now, |at| at.max(Instant::now()))
}

/// What a failed read means. tungstenite refuses a message or frame above
/// the configured maximum with a capacity error ("Space limit exceeded:
/// Message too long …"); axum wraps it without exposing the type (its
/// tungstenite version is private), so the message text is what we match.
fn read_error(error: axum::Error) -> Exit {
    if error.to_string().contains("Space limit exceeded") {
        tracing::info!(%error, "message too large");
        Exit::Close(close::TOO_LARGE, "frame too large")
    } else {
        tracing::debug!(%error, "socket read failed");
        Exit::Gone
    }
}

async fn send(socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), Exit> {
    send_text(socket, Utf8Bytes::from(frame.to_json())).await
}

async fn send_text(socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), Exit> {
    send_message(socket, Message::Text(text)).await
}

/// Writes the frames one after the other without flushing in between, then
/// flushes once, all bounded by [`SEND_TIMEOUT`] (failing like
/// [`send_message`]). What is not flushed waits in the tungstenite write
/// buffer, which writes to the connection whenever it holds more than
/// `ws.write_buffer_bytes`: so it never holds more than that and one frame.
async fn send_batch(
    socket: &mut WebSocket,
    frames: impl Iterator<Item = Utf8Bytes>,
    frames_out: &metrics::Counter,
) -> Result<(), Exit> {
    let written = async {
        let mut count = 0u64;
        for frame in frames {
            socket.feed(Message::Text(frame)).await?;
            count += 1;
        }
        socket.flush().await.map(|()| count)
    };
    match timeout(SEND_TIMEOUT, written).await {
        Ok(Ok(count)) => {
            frames_out.increment(count);
            Ok(())
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "socket write failed");
            Err(Exit::Gone)
        }
        Err(_) => {
            tracing::info!("socket write timed out");
            Err(Exit::Gone)
        }
    }
}

/// Writes one message, bounded by [`SEND_TIMEOUT`]. A failed or stuck write
/// means the client is gone or not reading: either way the socket is done.
async fn send_message(socket: &mut WebSocket, message: Message) -> Result<(), Exit> {
    match timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => {
            metrics::counter!("realtime_frames_out_total").increment(1);
            Ok(())
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "socket write failed");
            Err(Exit::Gone)
        }
        Err(_) => {
            tracing::info!("socket write timed out");
            Err(Exit::Gone)
        }
    }
}

/// Sends the close frame, if there is still someone to send it to, and lets
/// the client answer it (the close handshake) for a bounded time.
async fn finish(socket: &mut WebSocket, exit: Exit) {
    match exit {
        Exit::Gone => tracing::debug!("socket gone"),
        Exit::Close(code, reason) => {
            tracing::info!(code, reason, "closing socket");
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            if send_message(socket, Message::Close(Some(frame)))
                .await
                .is_ok()
            {
                // Read (and discard) until the client's close frame arrives
                // or the connection ends.
                let _ = timeout(CLOSE_GRACE, async {
                    while let Some(Ok(message)) = socket.recv().await {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }
}

/// One open (authenticated) socket in `realtime_sockets_open`, for as long
/// as this value lives: a guard, so every way out of `run` counts it out.
struct OpenSocket;

impl OpenSocket {
    fn count() -> Self {
        metrics::gauge!("realtime_sockets_open").increment(1.0);
        Self
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        metrics::gauge!("realtime_sockets_open").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_user_may_subscribe_to_their_own_channel_and_the_catalog_only() {
        assert!(may_subscribe("42", "user:42"));
        assert!(may_subscribe("42", "catalog"));
        assert!(!may_subscribe("42", "user:43"));
        assert!(!may_subscribe("42", "user:42:admin"));
        assert!(!may_subscribe("42", "orders"));
    }

    #[test]
    fn a_request_without_origin_passes_the_origin_check() {
        assert!(check_origin(&HeaderMap::new(), &[]).is_ok());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://app.example"),
        );
        assert!(check_origin(&headers, &["https://app.example".into()]).is_ok());
        assert!(check_origin(&headers, &["https://other.example".into()]).is_err());
    }

    #[test]
    fn only_a_bearer_authorization_is_accepted_and_others_are_401s() {
        use axum::{http::StatusCode, response::IntoResponse};

        let refusal = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            let response = bearer_token(&headers).expect_err("refused").into_response();
            let challenge = response.headers()[header::WWW_AUTHENTICATE].clone();
            (response.status(), challenge)
        };
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers).ok().flatten(), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers).ok().flatten(), Some("abc"));

        // RFC 6750 §3.1: another scheme is no bearer credentials at all (a
        // challenge without error); a malformed one is an invalid token.
        assert_eq!(
            refusal("Basic abc"),
            (StatusCode::UNAUTHORIZED, HeaderValue::from_static("Bearer"))
        );
        for malformed in ["Bearer ", "Bearer a b"] {
            assert_eq!(
                refusal(malformed),
                (
                    StatusCode::UNAUTHORIZED,
                    HeaderValue::from_static(r#"Bearer error="invalid_token""#)
                ),
                "{malformed}"
            );
        }
    }

    #[tokio::test]
    async fn the_warning_comes_thirty_seconds_before_expiry_or_at_once() {
        let now = Instant::now();
        let far = now + Duration::from_secs(300);
        assert_eq!(warning_of(far), far - EXPIRY_WARNING);
        assert!(warning_of(now + Duration::from_secs(5)) <= Instant::now());
    }
}
