//! Socket commands through the inbound exchange, with a stand-in backend:
//! the test binds its own queue for `order.place` and answers (or does not)
//! as the case needs. The real handler (orders) is proven in the system
//! tests; here it is the realtime side: routing, ids, deadlines, limits.

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties, Channel,
};
use serde_json::{json, Value};
use signalbox_messages::inbound::{command_message_id, ClientCommand};
use signalbox_testkit::broker;

use crate::helpers::{spawn_app_with, DEADLINE};

/// A stand-in backend: a private queue bound to `<ns>.inbound` for
/// `order.place`, read by the test.
struct Backend {
    channel: Channel,
    deliveries: lapin::Consumer,
    _connection: lapin::Connection,
}

impl Backend {
    async fn bind(namespace: &str) -> Self {
        let connection = broker::connect().await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .expect("declare");
        channel
            .queue_bind(
                queue.name().as_str().into(),
                format!("{namespace}.inbound").as_str().into(),
                "order.place".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let deliveries = channel
            .basic_consume(
                queue.name().as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Self {
            channel,
            deliveries,
            _connection: connection,
        }
    }

    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(DEADLINE, self.deliveries.next())
            .await
            .expect("a command within the deadline")
            .expect("consuming")
            .expect("a delivery")
    }

    /// Answers `request` with `data` the way a handler does: to its
    /// `reply_to`, with its correlation id.
    async fn reply(&self, request: &Delivery, data: Value) {
        let properties = BasicProperties::default()
            .with_type("client.reply".into())
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_correlation_id(
                request
                    .properties
                    .correlation_id()
                    .clone()
                    .expect("a correlation id"),
            );
        let reply_to = request.properties.reply_to().clone().expect("a reply_to");
        self.channel
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&json!({"ok": true, "data": data})).unwrap(),
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

fn place(id: &str) -> Value {
    json!({"type": "command", "id": id, "name": "order.place", "data": {"items": []}})
}

#[tokio::test]
async fn a_command_reaches_the_backend_with_the_verified_user_and_its_reply_comes_back() {
    let app = spawn_app_with(|_| {}).await;
    let mut backend = Backend::bind(&app.namespace).await;
    let mut client = app.client("alice").await;

    client.send_json(place("c-1")).await;
    let request = backend.next().await;

    let envelope = signalbox_messaging::amqp::from_properties(&request.properties).unwrap();
    assert_eq!(envelope.user_id.as_deref(), Some("alice"));
    assert_eq!(envelope.message_id, command_message_id("alice", "c-1"));
    let command: ClientCommand = serde_json::from_slice(&request.data).unwrap();
    assert_eq!(
        (command.command_id.as_str(), command.name.as_str()),
        ("c-1", "order.place")
    );
    backend
        .reply(&request, json!({"order_id": "o1", "state": "PENDING"}))
        .await;

    let reply = client.next_frame().await;
    assert_eq!(
        reply,
        json!({"type": "reply", "id": "c-1", "ok": true,
               "data": {"order_id": "o1", "state": "PENDING"}})
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_command_no_service_handles_is_an_unknown_command() {
    let app = spawn_app_with(|_| {}).await;
    let mut client = app.client("alice").await;

    client
        .send_json(json!({"type": "command", "id": "c-1", "name": "order.frobnicate", "data": {}}))
        .await;
    let reply = client.next_frame().await;

    assert_eq!(reply["id"], "c-1");
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "unknown_command", "{reply}");
    app.cleanup().await;
}

#[tokio::test]
async fn no_reply_within_the_deadline_is_a_timeout_and_the_late_reply_is_dropped() {
    let app = spawn_app_with(|settings| settings.ws.command_timeout_ms = 500).await;
    let mut backend = Backend::bind(&app.namespace).await;
    let mut client = app.client("alice").await;

    // The backend takes the command and holds its reply back.
    client.send_json(place("slow")).await;
    let slow = backend.next().await;
    let timed_out = client.next_frame().await;
    assert_eq!(timed_out["id"], "slow");
    assert_eq!(timed_out["error"]["code"], "timeout", "{timed_out}");

    // Now the late reply, confirmed by the broker before the next command
    // is even sent; both replies go to the same reply queue, in order.
    backend.reply(&slow, json!({"late": true})).await;
    client.send_json(place("fast")).await;
    let fast = backend.next().await;
    backend.reply(&fast, json!({"late": false})).await;

    // Had the late reply reached the socket, it would come first.
    let next = client.next_frame().await;
    assert_eq!(next["id"], "fast", "{next}");
    assert_eq!(next["data"], json!({"late": false}));
    app.cleanup().await;
}

#[tokio::test]
async fn commands_beyond_the_sockets_burst_are_rate_limited_without_reaching_the_backend() {
    let app = spawn_app_with(|settings| {
        settings.ws.command_burst = 3;
        settings.ws.command_rate_per_sec = 0;
    })
    .await;
    let mut backend = Backend::bind(&app.namespace).await;
    let mut client = app.client("alice").await;

    for n in 0..4 {
        client.send_json(place(&format!("c-{n}"))).await;
    }
    // Three reach the backend; the fourth is refused on the socket.
    let mut requests = Vec::new();
    for n in 0..3 {
        let request = backend.next().await;
        let command: ClientCommand = serde_json::from_slice(&request.data).unwrap();
        assert_eq!(command.command_id, format!("c-{n}"));
        requests.push(request);
    }
    let refused = client.next_frame().await;
    assert_eq!(refused["id"], "c-3");
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");

    // The three sent are answered; nothing else reached the backend.
    for request in &requests {
        backend.reply(request, json!({})).await;
    }
    let mut answered: Vec<String> = Vec::new();
    for _ in 0..3 {
        let reply = client.next_frame().await;
        assert_eq!(reply["ok"], true, "{reply}");
        answered.push(reply["id"].as_str().unwrap().to_owned());
    }
    answered.sort();
    assert_eq!(answered, ["c-0", "c-1", "c-2"]);
    app.cleanup().await;
}
