//! `signalbox dlq list|replay <queue>`: the operator's side of the
//! dead-letter queues. The operations, and what makes them safe (listing
//! consumes nothing, replay publishes with a confirm before it acks), are in
//! `signalbox_messaging::dead_letters`; this connects, calls them and prints
//! what they return.

use std::fmt;

use serde_json::{json, Value};
use signalbox_messaging::dead_letters::{self, DeadLetter};

use crate::{
    error::{CliError, Kind},
    output::Output,
};

pub enum Operation {
    List,
    Replay,
}

pub async fn run(
    out: &Output,
    amqp_url: &str,
    operation: Operation,
    queue: &str,
    limit: Option<usize>,
) -> Result<(), CliError> {
    let connection = dead_letters::connect(amqp_url)
        .await
        .map_err(|e| CliError::from_broker(&e, amqp_url))?;
    let outcome = match connection.create_channel().await {
        Ok(channel) => match operation {
            Operation::List => list(out, &channel, queue, limit).await,
            Operation::Replay => replay(out, &channel, queue, limit).await,
        },
        Err(error) => Err(CliError::from_broker(&error, amqp_url)),
    };
    // Close politely whatever happened: the broker requeues anything still
    // held, and does so at once rather than after a heartbeat timeout.
    if let Err(error) = connection.close(200, "done".into()).await {
        tracing::debug!(%error, "connection close");
    }
    outcome
}

async fn list(
    out: &Output,
    channel: &lapin::Channel,
    queue: &str,
    limit: Option<usize>,
) -> Result<(), CliError> {
    let letters = dead_letters::list(channel, queue, limit)
        .await
        .map_err(|e| refused(e, queue))?;
    let dlq = dead_letters::queue_pair(queue).1;
    let value = json!({
        "queue": dlq,
        "count": letters.len(),
        "dead_letters": letters.iter().map(to_json).collect::<Vec<_>>(),
    });
    out.result(&value, || {
        let mut text = String::new();
        for letter in &letters {
            text.push_str(&format!("{}\n\n", Shown(letter)));
        }
        text.push_str(&format!("{} dead letter(s) in {dlq}", letters.len()));
        text
    });
    Ok(())
}

async fn replay(
    out: &Output,
    channel: &lapin::Channel,
    queue: &str,
    limit: Option<usize>,
) -> Result<(), CliError> {
    let moved = dead_letters::replay(channel, queue, limit)
        .await
        .map_err(|e| refused(e, queue))?;
    let (work, dlq) = dead_letters::queue_pair(queue);
    let value = json!({"moved": moved, "from": dlq, "to": work});
    out.result(&value, || {
        format!("moved {moved} message(s) from {dlq} to {work}")
    });
    Ok(())
}

/// A queue that does not exist is the caller's mistake; anything else is
/// the broker's.
fn refused(error: dead_letters::DeadLetterError, queue: &str) -> CliError {
    match &error {
        dead_letters::DeadLetterError::NoQueue { queue: missing, .. } => {
            CliError::bad_input(format!("there is no queue `{missing}`"))
                .with_hint(format!(
                    "name the work queue with its namespace, e.g. signalbox.orders.replies (asked for `{queue}`); the RabbitMQ management UI lists them"
                ))
        }
        _ => CliError::new(
            Kind::ServerError,
            format!("the broker failed: {}", crate::error::chain(&error)),
        ),
    }
}

fn to_json(letter: &DeadLetter) -> Value {
    json!({
        "message_id": letter.message_id,
        "type": letter.message_type,
        "failure_reason": letter.failure_reason,
        "retry_count": letter.retry_count,
        "failed_at": letter.failed_at,
        "original_queue": letter.original_queue,
        "replayed_at": letter.replayed_at,
        "body_preview": letter.body_preview,
    })
}

/// A dead letter as `dlq list` prints it.
struct Shown<'a>(&'a DeadLetter);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = self.0;
        let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
        writeln!(
            f,
            "message {}  type {}  retries {}  failed at {}",
            or_dash(&letter.message_id),
            or_dash(&letter.message_type),
            letter.retry_count,
            or_dash(&letter.failed_at),
        )?;
        writeln!(f, "  reason: {}", or_dash(&letter.failure_reason))?;
        if let Some(replayed_at) = &letter.replayed_at {
            writeln!(f, "  replayed before at {replayed_at}")?;
        }
        write!(f, "  body:   {}", letter.body_preview)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_dead_letter_shows_its_story_and_a_dash_for_what_is_unknown() {
        let letter = DeadLetter {
            message_id: Some("m-1".into()),
            message_type: Some("order.cancelled".into()),
            failure_reason: Some("product does not exist".into()),
            retry_count: 2,
            failed_at: None,
            original_queue: Some("q.x".into()),
            replayed_at: Some("2025-01-01T00:00:00Z".into()),
            body_preview: "{}".into(),
        };
        assert_eq!(
            Shown(&letter).to_string(),
            "message m-1  type order.cancelled  retries 2  failed at -\n  \
             reason: product does not exist\n  \
             replayed before at 2025-01-01T00:00:00Z\n  \
             body:   {}"
        );
        assert_eq!(to_json(&letter)["failed_at"], Value::Null);
        assert_eq!(to_json(&letter)["retry_count"], 2);
    }
}
