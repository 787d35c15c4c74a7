//! Commands from sockets: one durable work queue, competing consumers, one
//! effect per command, the reply back to the socket's instance.
//!
//! A client sends `command {id, name: "order.place", data}` on its socket;
//! the realtime instance that holds the socket publishes it (confirmed) on
//! the inbound exchange with the verified user, a message id derived from
//! (user, command id), and its own reply queue as `reply_to`. Every orders
//! instance consumes `<ns>.orders.inbound`, so exactly one of them takes
//! each delivery; this handler runs the same [`crate::actions`] the gRPC
//! service runs and answers on the `reply_to` queue.
//!
//! ```text
//!  realtime ──ClientCommand──▶ inbound exchange ──name──▶ <ns>.orders.inbound
//!     ▲                                                      │ (one of N orders instances)
//!     │                                                      ▼
//!     │                         tx: claim(message id) → action → store reply → commit
//!     └──────── ClientReply (reply_to, correlation id) ◀─────┘ then ack
//! ```
//!
//! Idempotent, with the answer kept: the processed-messages claim, the
//! effect and the reply commit together (the reply in the claimed row's
//! `reply` column). A duplicate — a redelivery, or the client resending the
//! same command id, which gives the same message id — finds its claim taken
//! and gets the stored reply again, with its own correlation id and to its
//! own `reply_to` (the resend may come through another socket).
//!
//! What is *not* stored: answers that do not depend on the orders database
//! and would be the same on a resend anyway (a malformed `data`, a missing
//! scope: checked before the claim), and answers that a resend should get a
//! new chance at (catalog unavailable: the transaction rolls back, the
//! reply says `unavailable`). A database failure is a transient handler
//! error: the message is retried through the queue's retry queues, and the
//! socket, which waits at most its deadline, may see `timeout`.
//!
//! The reply is published after the commit and the delivery acked after the
//! broker confirmed the reply. A crash in between redelivers the command,
//! which then takes the duplicate path and replies from the stored row. A
//! reply nobody can take (the socket's instance is gone, its queue with it)
//! is dropped: there is no socket left to answer.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use signalbox_messages::{
    channels::Namespace,
    decode,
    inbound::{codes, names, ClientCommand, ClientReply},
    Envelope,
};
use signalbox_messaging::{
    processed, publisher::PublishError, Broker, ConfirmedPublisher, HandleError, Handler, Incoming,
    Outgoing, WorkQueue,
};
use sqlx::{types::Json, PgConnection, PgPool};
use tokio::sync::Mutex;

use signalbox_platform::caller::CallerError;

use crate::{
    actions, catalog::CatalogClient, domain::RequestedItems, error::OrdersError, grpc::WRITE_SCOPE,
};

/// The consumer name under which handled commands are recorded.
pub const CONSUMER: &str = "orders.inbound";

/// The consumer tag of the inbound consumer (shown in the RabbitMQ UI).
pub const CONSUMER_TAG: &str = "orders-inbound";

/// The commands orders handles, which are the routing keys its queue is
/// bound with. A command of any other name is routed to no queue, and the
/// realtime instance answers `unknown_command` at once.
pub const COMMANDS: [&str; 2] = [names::ORDER_PLACE, names::ORDER_CANCEL];

/// Orders' work queue on the inbound exchange, one binding per command.
pub fn work_queue(ns: &Namespace) -> WorkQueue {
    COMMANDS.iter().fold(
        WorkQueue::new(ns.orders_inbound_queue()),
        |queue, command| queue.bind(ns.inbound_exchange(), *command),
    )
}

/// `data` of `order.place`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceData {
    items: Vec<PlaceItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceItem {
    product_id: String,
    quantity: i64,
}

/// `data` of `order.cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelData {
    order_id: String,
}

/// A command whose `data` was read, ready to act on.
enum Parsed {
    Place(RequestedItems),
    Cancel(String),
}

/// Handles the commands of `<ns>.orders.inbound`.
pub struct InboundHandler {
    pool: PgPool,
    catalog: CatalogClient,
    broker: Arc<Broker>,
    /// The confirm-mode channel replies are published on, opened on first
    /// use and again after it closed. A tokio mutex: the consumer handles
    /// one delivery at a time, so it is never contended, but it is held
    /// across the publish's `.await`.
    publisher: Mutex<Option<ConfirmedPublisher>>,
}

impl InboundHandler {
    pub fn new(pool: PgPool, catalog: CatalogClient, broker: Arc<Broker>) -> Self {
        Self {
            pool,
            catalog,
            broker,
            publisher: Mutex::new(None),
        }
    }

    fn ns(&self) -> &Namespace {
        self.broker.namespace()
    }

    /// The reply to `command` of `user_id`, with its effect committed.
    async fn answer(
        &self,
        envelope: &Envelope,
        user_id: &str,
        command: &ClientCommand,
    ) -> Result<ClientReply, HandleError> {
        // Checks that need no database and answer a resend the same way.
        if !command.scopes.iter().any(|scope| scope == WRITE_SCOPE) {
            return Ok(ClientReply::failed(
                codes::FORBIDDEN,
                format!("the token does not grant the `{WRITE_SCOPE}` scope"),
            ));
        }
        let parsed = match parse(command) {
            Ok(parsed) => parsed,
            Err(reply) => return Ok(reply),
        };
        // Priced before the claim: catalog is called without holding a
        // transaction (a duplicate prices again, and then uses the stored
        // reply).
        let priced = match &parsed {
            Parsed::Place(items) => match actions::price(&self.catalog, items).await {
                Ok(priced) => Some(priced),
                Err(error) => return final_or_transient(error),
            },
            Parsed::Cancel(_) => None,
        };

        let mut tx = self.pool.begin().await?;
        if !processed::claim(&mut tx, CONSUMER, envelope.message_id).await? {
            let stored = stored_reply(&mut tx, envelope).await?;
            tx.commit().await?;
            tracing::info!("duplicate command; sending the stored reply");
            return stored.ok_or_else(|| {
                HandleError::Reject("a processed command without a stored reply".to_owned())
            });
        }
        let outcome = match (&parsed, &priced) {
            (Parsed::Place(_), Some(priced)) => actions::place(&mut tx, self.ns(), user_id, priced)
                .await
                .map(|order| json!({"order_id": order.row.id, "state": order.row.state})),
            (Parsed::Cancel(order_id), _) => actions::cancel(&mut tx, self.ns(), user_id, order_id)
                .await
                .map(|row| json!({"order_id": row.id, "state": row.state})),
            (Parsed::Place(_), None) => unreachable!("a place command is priced above"),
        };
        let reply = match outcome {
            Ok(data) => ClientReply::ok(data),
            Err(error) => match final_or_transient(error)? {
                reply
                    if reply
                        .error
                        .as_ref()
                        .is_some_and(|e| e.code == codes::UNAVAILABLE) =>
                {
                    // Not stored: a resend deserves a new attempt.
                    tx.rollback().await?;
                    return Ok(reply);
                }
                reply => reply,
            },
        };
        store_reply(&mut tx, envelope, &reply).await?;
        tx.commit().await?;
        Ok(reply)
    }

    /// Publishes `reply` to the requester's queue and waits for the confirm.
    async fn send(&self, request: &Envelope, reply: &ClientReply) -> Result<(), HandleError> {
        let Some(reply_to) = request.reply_to.as_deref() else {
            return Ok(());
        };
        let message = Outgoing::reply(reply_to, Envelope::caused_by::<ClientReply>(request), reply);
        let mut slot = self.publisher.lock().await;
        let publisher = ConfirmedPublisher::reuse_or_open(&mut slot, &self.broker)
            .await
            .map_err(HandleError::transient)?;
        match publisher.publish(&message).await {
            Ok(()) => Ok(()),
            // The requesting instance is gone, and its reply queue with it:
            // nobody is left to answer. The effect is committed; done.
            Err(PublishError::Unroutable { .. }) => {
                tracing::info!(%reply_to, "reply queue gone; reply dropped");
                Ok(())
            }
            Err(error) => Err(HandleError::transient(error)),
        }
    }
}

impl Handler for InboundHandler {
    #[tracing::instrument(skip_all, fields(user_id, command))]
    async fn handle(&self, message: Incoming) -> Result<(), HandleError> {
        let command: ClientCommand = decode(&message.envelope, &message.body)?;
        let Some(user_id) = message
            .envelope
            .user_id
            .as_deref()
            .filter(|u| !u.is_empty())
        else {
            return Err(HandleError::Reject(
                "a client command without a user".to_owned(),
            ));
        };
        let span = tracing::Span::current();
        span.record("user_id", user_id);
        span.record("command", command.name.as_str());
        let reply = self.answer(&message.envelope, user_id, &command).await?;
        self.send(&message.envelope, &reply).await
    }
}

/// Reads the command's `data`; a failure is the `bad_request` (or
/// `unknown_command`) reply.
fn parse(command: &ClientCommand) -> Result<Parsed, ClientReply> {
    let bad = |error: String| ClientReply::failed(codes::BAD_REQUEST, error);
    match command.name.as_str() {
        names::ORDER_PLACE => {
            let data: PlaceData =
                serde_json::from_value(command.data.clone()).map_err(|e| bad(e.to_string()))?;
            let items = RequestedItems::parse(
                data.items
                    .iter()
                    .map(|item| (item.product_id.as_str(), item.quantity)),
            )
            .map_err(bad)?;
            Ok(Parsed::Place(items))
        }
        names::ORDER_CANCEL => {
            let data: CancelData =
                serde_json::from_value(command.data.clone()).map_err(|e| bad(e.to_string()))?;
            actions::order_id(&data.order_id).map_err(|e| bad(e.to_string()))?;
            Ok(Parsed::Cancel(data.order_id))
        }
        other => Err(ClientReply::failed(
            codes::UNKNOWN_COMMAND,
            format!("orders does not handle `{other}`"),
        )),
    }
}

/// The reply for an action's failure, or a transient handler error for a
/// database failure (retried through the queue).
fn final_or_transient(error: OrdersError) -> Result<ClientReply, HandleError> {
    let code = match &error {
        OrdersError::InvalidInput(_) => codes::BAD_REQUEST,
        OrdersError::NotFound(_) => codes::NOT_FOUND,
        OrdersError::Caller(CallerError::MissingScope(_)) => codes::FORBIDDEN,
        OrdersError::FailedPrecondition(_) | OrdersError::Conflict(_) => codes::FAILED_PRECONDITION,
        OrdersError::CatalogUnavailable(_) | OrdersError::Caller(CallerError::KeysUnavailable) => {
            codes::UNAVAILABLE
        }
        OrdersError::Caller(CallerError::Unauthenticated(_)) | OrdersError::Unimplemented(_) => {
            codes::BAD_REQUEST
        }
        OrdersError::Database(_) => {
            let OrdersError::Database(cause) = error else {
                unreachable!()
            };
            return Err(HandleError::transient(cause));
        }
    };
    Ok(ClientReply::failed(code, error.to_string()))
}

async fn store_reply(
    conn: &mut PgConnection,
    envelope: &Envelope,
    reply: &ClientReply,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE processed_messages SET reply = $3 WHERE consumer = $1 AND message_id = $2")
        .bind(CONSUMER)
        .bind(envelope.message_id)
        .bind(Json(reply))
        .execute(conn)
        .await?;
    Ok(())
}

async fn stored_reply(
    conn: &mut PgConnection,
    envelope: &Envelope,
) -> Result<Option<ClientReply>, sqlx::Error> {
    let reply: Option<Option<Json<ClientReply>>> = sqlx::query_scalar(
        "SELECT reply FROM processed_messages WHERE consumer = $1 AND message_id = $2",
    )
    .bind(CONSUMER)
    .bind(envelope.message_id)
    .fetch_optional(conn)
    .await?;
    Ok(reply.flatten().map(|Json(reply)| reply))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn command(name: &str, data: Value) -> ClientCommand {
        ClientCommand {
            command_id: "c1".into(),
            name: name.into(),
            data,
            scopes: vec![WRITE_SCOPE.into()],
        }
    }

    fn code_of(reply: ClientReply) -> String {
        reply.error.expect("a failed reply").code
    }

    #[test]
    fn malformed_data_is_a_bad_request_saying_what_is_wrong() {
        let no_items = parse(&command(names::ORDER_PLACE, json!({})))
            .err()
            .unwrap();
        assert!(no_items.error.as_ref().unwrap().message.contains("items"));
        assert_eq!(code_of(no_items), codes::BAD_REQUEST);
        let zero = json!({"items": [{"product_id": uuid::Uuid::now_v7(), "quantity": 0}]});
        assert_eq!(
            code_of(parse(&command(names::ORDER_PLACE, zero)).err().unwrap()),
            codes::BAD_REQUEST
        );
        let bad_id = json!({"order_id": "nope"});
        assert_eq!(
            code_of(parse(&command(names::ORDER_CANCEL, bad_id)).err().unwrap()),
            codes::BAD_REQUEST
        );
    }

    #[test]
    fn the_queue_is_bound_to_every_command_it_handles() {
        let queue = work_queue(&Namespace::new("t1"));
        assert_eq!(queue.name, "t1.orders.inbound");
        assert_eq!(
            queue.bindings,
            vec![
                ("t1.inbound".to_owned(), "order.place".to_owned()),
                ("t1.inbound".to_owned(), "order.cancel".to_owned()),
            ]
        );
    }
}
