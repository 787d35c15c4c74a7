//! The hub's memory follows the sockets open now, not every user who ever
//! connected: a channel goes when its last subscriber leaves, whichever way
//! the subscriber leaves.

use futures::{stream, StreamExt};
use serde_json::json;
use signalbox_testkit::{probe, DEADLINE};

use crate::helpers::{spawn_app, Client, TestApp};

/// Distinct users who come and go.
const USERS: usize = 2_000;
/// Users connected at the same time in the first wave.
const HELD: usize = 100;
/// Sockets opening or closing at once.
const CONCURRENCY: usize = 50;

/// How a user leaves; every way must drop the user's channel.
#[derive(Clone, Copy)]
enum Leave {
    /// `unsubscribe` from each channel, then the close handshake.
    Unsubscribe,
    /// The close handshake, still subscribed.
    Close,
    /// The TCP connection just ends, with no close frame.
    Drop,
}

impl Leave {
    fn of(user: usize) -> Self {
        [Self::Unsubscribe, Self::Close, Self::Drop][user % 3]
    }
}

/// A socket of `user-<n>`, subscribed to the user's channel and the catalog.
async fn arrive(app: &TestApp, n: usize) -> (usize, Client) {
    let mut client = app.client(&format!("user-{n}")).await;
    client.subscribe(&format!("user:user-{n}")).await;
    client.subscribe("catalog").await;
    (n, client)
}

async fn leave(n: usize, mut client: Client) {
    let how = Leave::of(n);
    if let Leave::Unsubscribe = how {
        for channel in [format!("user:user-{n}"), "catalog".to_owned()] {
            client
                .send_json(json!({"type": "unsubscribe", "channel": channel}))
                .await;
            assert_eq!(client.next_frame().await["type"], "unsubscribed");
        }
    }
    match how {
        Leave::Unsubscribe | Leave::Close => {
            client
                .stream
                .close(None)
                .await
                .expect("send the close frame");
            // Read on until the server's close reply ends the stream.
            while let Some(Ok(_)) = client.stream.next().await {}
        }
        Leave::Drop => drop(client),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_users_coming_and_going_leave_no_channel_behind() {
    let app = spawn_app().await;
    let hub = app.instances[0].hub.clone();

    // A first wave connected at once: one channel per user, plus the
    // catalog they share.
    let held: Vec<_> = stream::iter(0..HELD)
        .map(|n| arrive(&app, n))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    assert_eq!(hub.channel_count(), HELD + 1);

    // The first wave leaves, then every other user comes and goes, at most
    // CONCURRENCY sockets at a time.
    stream::iter(held)
        .for_each_concurrent(CONCURRENCY, |(n, client)| leave(n, client))
        .await;
    let app_ref = &app;
    stream::iter(HELD..USERS)
        .for_each_concurrent(CONCURRENCY, |n| async move {
            let (n, client) = arrive(app_ref, n).await;
            leave(n, client).await;
        })
        .await;

    // A dropped connection is noticed by its socket task a moment later;
    // wait for the last ones rather than guess how long that takes.
    probe::until("every channel is dropped", DEADLINE, || async {
        Ok(match hub.channel_count() {
            0 => Ok(()),
            left => Err(format!("{left} channels")),
        })
    })
    .await
    .expect("no channel outlives its subscribers");

    // The hub still serves: a newcomer's channel is created afresh.
    let (n, mut client) = arrive(&app, USERS).await;
    assert_eq!(hub.channel_count(), 2);
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.next_frame().await["type"], "pong");
    leave(n, client).await;
    app.cleanup().await;
}
