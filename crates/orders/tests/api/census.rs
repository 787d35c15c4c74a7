//! A running orders instance answers the system census.

use std::time::Duration;

use signalbox_messaging::{census, Requester, RequesterOptions};

use crate::helpers::{distant_deadline, spawn_app, DEADLINE};

#[tokio::test]
async fn a_running_orders_instance_answers_the_census() -> anyhow::Result<()> {
    let app = spawn_app(distant_deadline()).await?;
    let requester = Requester::start(app.broker(), RequesterOptions::new("test-census")).await?;

    // The responder starts with the service, so the first census may go out
    // before its queue is bound (the broker then returns it at once, and the
    // census is empty): ask again until it answers, within the deadline.
    let answered = tokio::time::timeout(DEADLINE, async {
        loop {
            let answered = census::gather(&requester, Duration::from_secs(1), Some(1)).await?;
            if !answered.is_empty() {
                return anyhow::Ok(answered);
            }
        }
    })
    .await??;

    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0].service, "orders");
    assert_eq!(answered[0].version, env!("CARGO_PKG_VERSION"));
    requester.close().await;
    app.cleanup().await
}
