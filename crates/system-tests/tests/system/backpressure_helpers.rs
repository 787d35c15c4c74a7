//! What the backpressure scenarios share: a socket client that resumes as
//! a real one would (reconnect, `recover` from its last position), catalog
//! events published straight to the events exchange, and the broker's own
//! view of its queues and connections (`rabbitmqctl`, read-only).

use std::time::Duration;

use serde_json::{json, Value};
use signalbox_messages::{catalog::PriceChanged, channels::Namespace, Envelope};
use signalbox_messaging::{backoff::Backoff, Broker, ConfirmedPublisher, Outgoing};
use signalbox_system_tests::{infra, socket::Received, Socket, DEADLINE};
use tokio::time::Instant;

/// A client of one channel that resumes after its socket closes (evicted
/// 1008, refused 1013, gone): it reconnects and subscribes with the
/// position of the last event it saw, as `target/debug/watch` does.
pub struct Resuming {
    url: String,
    token: String,
    channel: String,
    socket: Socket,
    epoch: String,
    /// The offset of the last event received.
    pub last: Option<u64>,
    /// How often it had to resume, and whether each was `recovered`.
    pub resumes: Vec<bool>,
    /// Close codes it saw.
    pub closes: Vec<Option<u16>>,
}

impl Resuming {
    pub async fn open(url: &str, token: &str, channel: &str) -> anyhow::Result<Self> {
        let mut socket = Socket::connect(url, Some(token)).await?;
        socket.expect("welcome", DEADLINE).await?;
        let subscribed = socket.subscribe(channel, DEADLINE).await?;
        anyhow::ensure!(subscribed["type"] == "subscribed", "{subscribed}");
        Ok(Self {
            url: url.to_owned(),
            token: token.to_owned(),
            channel: channel.to_owned(),
            socket,
            epoch: subscribed["epoch"].as_str().unwrap_or_default().to_owned(),
            last: None,
            resumes: Vec::new(),
            closes: Vec::new(),
        })
    }

    /// The next `event` or `error` frame, resuming the socket as often as
    /// it closes, within `deadline`. Event offsets must grow.
    pub async fn next(&mut self, deadline: Duration) -> anyhow::Result<Value> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "no frame on {} in time", self.channel);
            match self.socket.receive(left).await {
                Ok(Received::Frame(frame)) if frame["type"] == "event" => {
                    let offset = frame["offset"].as_u64().unwrap_or_default();
                    if let Some(last) = self.last {
                        anyhow::ensure!(offset > last, "offset {offset} after {last}: {frame}");
                    }
                    self.last = Some(offset);
                    return Ok(frame);
                }
                Ok(Received::Frame(frame)) if frame["type"] == "error" => return Ok(frame),
                Ok(Received::Frame(_)) => continue,
                Ok(Received::Closed(code)) => {
                    self.closes.push(code);
                    self.resume(until).await?;
                }
                Err(error) if error.to_string().starts_with("no frame") => return Err(error),
                Err(_) => {
                    self.closes.push(None);
                    self.resume(until).await?;
                }
            }
        }
    }

    /// Reconnects (again after a refusal, as a client's backoff would) and
    /// subscribes with `recover`.
    async fn resume(&mut self, until: Instant) -> anyhow::Result<()> {
        // The project's one retry backoff, as `signalbox watch` uses it.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            anyhow::ensure!(Instant::now() < until, "could not resume in time");
            let Ok(mut socket) = Socket::connect(&self.url, Some(&self.token)).await else {
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            };
            match socket.receive(DEADLINE).await? {
                Received::Frame(frame) if frame["type"] == "welcome" => {}
                // Refused (1013) or closed: a client backs off and retries.
                _ => {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
            let mut subscribe = json!({"type": "subscribe", "channel": self.channel});
            if let Some(offset) = self.last {
                subscribe["recover"] = json!({"epoch": self.epoch, "offset": offset});
            }
            socket.send(subscribe).await?;
            let subscribed = socket
                .wait_for(DEADLINE, |f| f["type"] == "subscribed")
                .await?;
            self.resumes.push(subscribed["recovered"] == true);
            self.socket = socket;
            return Ok(());
        }
    }
}

/// Publishes `count` price changes of `product` on the events exchange of
/// `ns`, confirmed, as catalog's relay would.
pub async fn publish_prices(ns: &Namespace, product: &str, count: usize) -> anyhow::Result<()> {
    let broker = Broker::connect(&infra::amqp_url(), ns.clone(), "test-prices", DEADLINE).await?;
    let publisher = ConfirmedPublisher::new(&broker).await?;
    let product_id = product.parse()?;
    let messages: Vec<Outgoing> = (0..count)
        .map(|n| {
            let payload = PriceChanged {
                product_id,
                price_cents: 1_000 + n as i64,
                currency: "EUR".to_owned(),
            };
            Outgoing::event(ns, Envelope::new::<PriceChanged>(), &payload)
        })
        .collect();
    for batch in messages.chunks(200) {
        publisher.publish_all(batch).await?;
    }
    publisher.close().await;
    broker.close().await;
    Ok(())
}

/// Runs `rabbitmqctl` (read-only listings) and returns its output lines.
pub async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<Vec<String>> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", "--no-table-headers"])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "rabbitmqctl {args:?} failed");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// `(messages, arguments)` of `queue`, as the broker lists it.
pub async fn queue_state(queue: &str) -> anyhow::Result<(u64, String)> {
    let lines = rabbitmqctl(&["list_queues", "name", "messages", "arguments"]).await?;
    let line = lines
        .iter()
        .find(|line| line.split('\t').next() == Some(queue))
        .ok_or_else(|| anyhow::anyhow!("no queue {queue} on the broker"))?;
    let mut fields = line.split('\t').skip(1);
    let messages = fields.next().unwrap_or("0").trim().parse()?;
    Ok((messages, fields.collect::<Vec<_>>().join("\t")))
}

/// Whether any connection on the broker is blocked by a resource alarm
/// (memory or disk): then every publisher waits.
pub async fn any_connection_blocked() -> anyhow::Result<bool> {
    let lines = rabbitmqctl(&["list_connections", "state"]).await?;
    Ok(lines.iter().any(|state| state.trim().starts_with("block")))
}
