//! Test harness: a JWKS server with a fresh Ed25519 key, realtime instances
//! on port 0 in a random AMQP namespace, WebSocket clients, and a publisher
//! that puts events on the namespace's events exchange.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use lapin::{options::BasicPublishOptions, Connection};
use serde_json::{json, Value};
use signalbox_messages::{channels::Namespace, Envelope, Message as _};
use signalbox_platform::{
    config::ListenSettings,
    tokens::{now_secs, AccessClaims},
};
use signalbox_realtime::{hub::Hub, recovery, Application, Settings};
use signalbox_testkit::{
    broker::{self, amqp_url, random_namespace},
    tokens::{self, serve_jwks, TestKey},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::{
    client_async, connect_async,
    tungstenite::{self, client::IntoClientRequest, handshake::client::Request, Message},
    MaybeTlsStream, WebSocketStream,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// The browser origin the test instances allow.
pub const ALLOWED_ORIGIN: &str = "https://app.signalbox.test";
/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The test's signing key, minting the tokens realtime checks: the
/// Signalbox claims without scopes (realtime asks for none), by lifetime.
pub struct Keys(TestKey);

impl Keys {
    pub fn generate() -> Self {
        Self(TestKey::generate())
    }

    /// An access token for `sub` that expires `ttl` from now.
    pub fn token(&self, sub: &str, ttl: Duration) -> String {
        self.token_expiring_at(sub, now_secs() + ttl.as_secs())
    }

    /// An access token for `sub` with `exp` (seconds since the epoch).
    pub fn token_expiring_at(&self, sub: &str, exp: u64) -> String {
        self.token_typed(sub, exp, Some("at+jwt"))
    }

    /// A token for `sub` with `exp` and the given JWT `typ` header (access
    /// tokens are `at+jwt`; anything else must be refused).
    pub fn token_typed(&self, sub: &str, exp: u64, typ: Option<&str>) -> String {
        let claims = AccessClaims {
            exp,
            scope: String::new(),
            ..tokens::claims(sub)
        };
        self.0.sign_typed(&claims, typ)
    }
}

/// One running realtime instance.
pub struct Instance {
    pub port: u16,
    pub epoch: String,
    /// The instance's hub, to read its state (how many channels it holds).
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

pub struct TestApp {
    pub namespace: String,
    pub keys: Arc<Keys>,
    pub settings: Settings,
    pub instances: Vec<Instance>,
    /// The publishing connection, kept open for the life of the test.
    _amqp: Connection,
    publisher: lapin::Channel,
    /// Stops the JWKS server when the test ends.
    _jwks: DropGuard,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns one instance with test settings, changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    // Logs go through the test harness: shown for failing tests only.
    signalbox_platform::telemetry::init_for_tests();
    let keys = Arc::new(Keys::generate());
    let jwks = CancellationToken::new();
    let jwks_url = serve_jwks(keys.0.jwks(), jwks.clone())
        .await
        .expect("serve the JWKS");
    let namespace = random_namespace();

    let mut settings = Settings {
        http: ListenSettings::ephemeral(),
        ..Settings::default()
    };
    settings.amqp.url = amqp_url().into();
    settings.amqp.namespace = namespace.clone();
    settings.amqp.connect_timeout_secs = 10;
    settings.tokens.jwks_url = jwks_url;
    settings.ws.allowed_origins = vec![ALLOWED_ORIGIN.to_owned()];
    configure(&mut settings);

    let amqp = broker::connect().await.expect("connect to RabbitMQ");
    let publisher = amqp.create_channel().await.expect("AMQP channel");

    let mut app = TestApp {
        namespace,
        keys,
        settings,
        instances: Vec::new(),
        _amqp: amqp,
        publisher,
        _jwks: jwks.drop_guard(),
    };
    app.add_instance().await;
    app
}

impl TestApp {
    /// Starts one more instance in the same namespace with the same keys;
    /// returns its index in `instances`.
    pub async fn add_instance(&mut self) -> usize {
        let application = Application::build(self.settings.clone())
            .await
            .expect("build the realtime application");
        let shutdown = CancellationToken::new();
        let instance = Instance {
            port: application.http_port(),
            epoch: application.epoch().to_owned(),
            hub: application.hub(),
            shutdown: shutdown.clone(),
            handle: tokio::spawn(application.run_until_stopped(shutdown)),
        };
        // Ready, as a load balancer would wait for: the instance has handled
        // its start-up marker, so it knows where the event log stands.
        let ready = format!("http://127.0.0.1:{}/health/ready", instance.port);
        signalbox_testkit::probe::until("the instance ready", DEADLINE, || {
            let request = reqwest::get(ready.clone());
            async move {
                Ok(match request.await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(response.status().to_string()),
                    Err(error) => Err(error.to_string()),
                })
            }
        })
        .await
        .expect("the instance becomes ready");
        self.instances.push(instance);
        self.instances.len() - 1
    }

    pub fn token(&self, user: &str) -> String {
        self.keys.token(user, Duration::from_secs(3600))
    }

    /// The upgrade request for instance `index`, offering the subprotocol.
    pub fn request_to(&self, index: usize) -> Request {
        let url = format!("ws://127.0.0.1:{}/ws", self.instances[index].port);
        let mut request = url.into_client_request().expect("a valid URL");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "signalbox.v1".parse().unwrap());
        request
    }

    pub fn request(&self) -> Request {
        self.request_to(0)
    }

    /// The upgrade request with `Authorization: Bearer <token>`.
    pub fn request_with_token(&self, index: usize, token: &str) -> Request {
        let mut request = self.request_to(index);
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    /// A socket on instance `index`, authenticated by header as `user`, past
    /// its `welcome`.
    pub async fn client_on(&self, index: usize, user: &str) -> Client {
        let mut client = Client::connect(self.request_with_token(index, &self.token(user)))
            .await
            .expect("upgrade succeeds");
        let welcome = client.next_frame().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    pub async fn client(&self, user: &str) -> Client {
        self.client_on(0, user).await
    }

    /// Publishes an event to `<ns>.events` the way the outbox relay does:
    /// envelope as AMQP properties, JSON payload as body.
    pub async fn publish(&self, routing_key: &str, envelope: &Envelope, payload: &Value) {
        self.publisher
            .basic_publish(
                format!("{}.events", self.namespace).into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(payload).unwrap(),
                signalbox_messaging::amqp::to_properties(envelope),
            )
            .await
            .expect("publish")
            .await
            .expect("publish settles");
    }

    /// Publishes `order.approved` for `user`; returns the order id.
    pub async fn publish_order_approved(&self, user: &str) -> Uuid {
        self.publish_order_approved_padded(user, 0).await
    }

    /// Publishes `order.approved` for `user` with `padding` extra bytes in
    /// the payload (to make big frames); returns the order id.
    pub async fn publish_order_approved_padded(&self, user: &str, padding: usize) -> Uuid {
        use signalbox_messages::orders::OrderApproved;
        let order_id = Uuid::now_v7();
        let envelope = Envelope::new::<OrderApproved>().with_user_id(user);
        let mut payload = json!({"order_id": order_id, "user_id": user, "state": "APPROVED"});
        if padding > 0 {
            payload["padding"] = Value::String("x".repeat(padding));
        }
        self.publish(OrderApproved::TYPE, &envelope, &payload).await;
        order_id
    }

    /// Stops every instance cleanly (each must exit `Ok`); dropping the app
    /// then deletes the namespace's exchanges.
    pub async fn cleanup(mut self) {
        self.stop_instances().await;
    }

    /// Stops every instance cleanly (each must exit `Ok`), keeping the app
    /// (its namespace, the event log) for instances started later.
    pub async fn stop_instances(&mut self) {
        for instance in self.instances.drain(..) {
            instance.shutdown.cancel();
            let stopped = tokio::time::timeout(Duration::from_secs(10), instance.handle).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "instance stops cleanly: {stopped:?}"
            );
        }
    }
}

impl Drop for TestApp {
    /// Deletes the exchanges of the namespace, also when a test panicked
    /// (the instance queues are exclusive and go with their connections).
    /// Drop cannot await, so a helper thread does it with its own executor.
    fn drop(&mut self) {
        let ns = Namespace::new(self.namespace.clone());
        // The event log and its epoch are durable; the rest is exclusive.
        let stream = recovery::stream_queue(&ns, &self.settings.recovery).name;
        let queues = [signalbox_messaging::stream::epoch_queue(&stream), stream];
        let deleted = signalbox_testkit::block_on_thread(async move {
            broker::delete_namespace(&ns, &queues).await
        });
        if let Err(error) = deleted {
            eprintln!(
                "could not delete the exchanges of {}: {error:#}",
                self.namespace
            );
        }
    }
}

/// A WebSocket client speaking `signalbox.v1`, over a plain TCP stream or a
/// [`Muted`] one.
pub struct Client<S = MaybeTlsStream<TcpStream>> {
    pub stream: WebSocketStream<S>,
    /// The handshake's `Sec-WebSocket-Protocol` answer.
    pub protocol: Option<String>,
}

/// A TCP stream whose writes can be switched off after the upgrade: the
/// client goes on reading, but nothing it sends — in particular the pongs
/// its WebSocket library answers pings with — reaches the server. That is a
/// client that has gone silent, without the test having to stop reading.
pub struct Muted {
    inner: TcpStream,
    muted: Arc<AtomicBool>,
}

impl AsyncRead for Muted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Muted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.muted.load(Ordering::Acquire) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Client<Muted> {
    /// A socket on instance 0, authenticated as `user` and past its
    /// `welcome`, that then goes silent (see [`Muted`]).
    pub async fn silent(app: &TestApp, user: &str) -> Self {
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], app.instances[0].port)))
            .await
            .expect("connect");
        let muted = Arc::new(AtomicBool::new(false));
        let stream = Muted {
            inner: tcp,
            muted: muted.clone(),
        };
        let request = app.request_with_token(0, &app.token(user));
        let (stream, response) = client_async(request, stream).await.expect("upgrade");
        let mut client = Self::upgraded(stream, &response);
        let welcome = client.next_frame().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        muted.store(true, Ordering::Release);
        client
    }
}

impl Client {
    pub async fn connect(request: Request) -> Result<Self, tungstenite::Error> {
        let (stream, response) = connect_async(request).await?;
        Ok(Self::upgraded(stream, &response))
    }

    /// Connects with a small, fixed TCP receive buffer (which also switches
    /// off the kernel's buffer autotuning), so that a client that stops
    /// reading makes the server's writes block after a bounded amount of data.
    pub async fn connect_with_small_receive_buffer(
        request: Request,
        port: u16,
    ) -> Result<Self, tungstenite::Error> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(64 * 1024)?;
        let tcp = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        let (stream, response) = client_async(request, MaybeTlsStream::Plain(tcp)).await?;
        Ok(Self::upgraded(stream, &response))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// The client over an upgraded `stream`, with the protocol the server
    /// chose.
    fn upgraded(
        stream: WebSocketStream<S>,
        response: &tungstenite::handshake::client::Response,
    ) -> Self {
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self { stream, protocol }
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    /// The next JSON frame within `wait`, skipping control frames; `None` if
    /// none came in time. Panics on a close.
    pub async fn frame_within(&mut self, wait: Duration) -> Option<Value> {
        let next = async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        return serde_json::from_str::<Value>(&text).expect("JSON frame")
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        };
        tokio::time::timeout(wait, next).await.ok()
    }

    /// The next JSON frame; fails the test if none comes within [`DEADLINE`].
    pub async fn next_frame(&mut self) -> Value {
        self.frame_within(DEADLINE)
            .await
            .expect("a frame within the deadline")
    }

    /// Waits for the server's close frame (skipping anything before it) and
    /// returns its code and reason.
    pub async fn closed_within(&mut self, wait: Duration) -> (u16, String) {
        let closed = async {
            loop {
                match self.stream.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return (u16::from(frame.code), frame.reason.to_string())
                    }
                    Some(Ok(Message::Close(None))) => return (1005, String::new()),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        };
        let (code, reason) = tokio::time::timeout(wait, closed)
            .await
            .expect("the socket is closed within the deadline");
        // Finish the close handshake as a well-behaved client does: reading
        // on sends our close reply, and the server then drops the connection.
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await;
        (code, reason)
    }

    pub async fn closed(&mut self) -> (u16, String) {
        self.closed_within(DEADLINE).await
    }

    /// Subscribes with a `recover` position and returns the `subscribed`
    /// answer.
    pub async fn recover(&mut self, channel: &str, epoch: &str, offset: u64) -> Value {
        self.send_json(json!({"type": "subscribe", "channel": channel,
                              "recover": {"epoch": epoch, "offset": offset}}))
            .await;
        let answer = self.next_frame().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }

    /// Subscribes and returns the `subscribed` answer.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send_json(json!({"type": "subscribe", "channel": channel}))
            .await;
        let answer = self.next_frame().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }
}

/// The HTTP status and body of a refused upgrade.
pub fn refusal(error: tungstenite::Error) -> (u16, http::HeaderMap, Value) {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .body()
                .as_deref()
                .map(|b| serde_json::from_slice(b).expect("a JSON body"))
                .unwrap_or(Value::Null);
            (status, headers, body)
        }
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}
