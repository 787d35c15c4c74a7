//! `GET /api/system/instances`: the census through the gateway, against the
//! real broker (census responders run in the test), and without one.

use serde_json::Value;
use signalbox_messages::channels::Namespace;
use signalbox_messaging::{census::Responder, Broker};
use signalbox_platform::config::AmqpSettings;
use signalbox_testkit::{
    broker::{amqp_url, delete_namespace, random_namespace},
    DEADLINE,
};
use tokio_util::sync::CancellationToken;

use crate::helpers::{assert_problem, spawn_app_configured, World};

fn amqp(url: &str, namespace: &str) -> AmqpSettings {
    AmqpSettings {
        url: url.into(),
        namespace: namespace.to_owned(),
        connect_timeout_secs: 15,
    }
}

#[tokio::test]
async fn the_census_lists_every_instance_that_answers_within_the_deadline() -> anyhow::Result<()> {
    // Two service instances with census responders, in a namespace of
    // their own.
    let namespace = random_namespace();
    let ns = Namespace::new(namespace.clone());
    let broker = Broker::connect(&amqp_url(), ns.clone(), "test", DEADLINE).await?;
    let shutdown = CancellationToken::new();
    let mut identities = Vec::new();
    let mut responders = Vec::new();
    for service in ["orders", "catalog"] {
        let mut responder = Responder::new(broker.clone(), service, "9.9.9");
        responder.attach().await?;
        identities.push(responder.identity().clone());
        responders.push(tokio::spawn(responder.run(shutdown.clone())));
    }
    let app = spawn_app_configured(World::all_down(), |settings| {
        settings.amqp = Some(amqp(&amqp_url(), &namespace));
    })
    .await;

    let response = app.get("/api/system/instances?deadline_ms=300").await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["deadline_ms"], 300);
    let listed: Vec<(String, String)> = body["instances"]
        .as_array()
        .map(|instances| {
            instances
                .iter()
                .map(|i| {
                    assert_eq!(i["version"], "9.9.9");
                    assert!(i["started_at"].as_str().is_some());
                    (
                        i["service"].as_str().unwrap_or_default().to_owned(),
                        i["instance_id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let catalog = &identities[1];
    let orders = &identities[0];
    assert_eq!(
        listed,
        vec![
            (catalog.service.clone(), catalog.instance_id.clone()),
            (orders.service.clone(), orders.instance_id.clone()),
        ],
        "sorted by service"
    );

    drop(app);
    shutdown.cancel();
    for responder in responders {
        responder.await??;
    }
    delete_namespace(&ns, &[]).await?;
    broker.close().await;
    Ok(())
}

#[tokio::test]
async fn the_census_answers_503_when_the_broker_is_unreachable_and_the_rest_still_works() {
    // Nothing listens on port 1: the gateway starts all the same, because it
    // connects to the broker only when a census is asked for.
    let app = spawn_app_configured(World::all_up(), |settings| {
        settings.amqp = Some(amqp("amqp://guest:guest@127.0.0.1:1/%2f", "tunreachable"));
    })
    .await;

    let response = app.get("/api/system/instances").await;
    assert_problem(response, 503, "unavailable").await;

    let catalog = app.get("/api/catalog/products").await;
    assert_eq!(
        catalog.status().as_u16(),
        200,
        "other routes are unaffected"
    );
}

#[tokio::test]
async fn the_census_answers_503_when_no_broker_is_configured() {
    let app = spawn_app_configured(World::all_down(), |settings| settings.amqp = None).await;

    let response = app.get("/api/system/instances").await;

    assert_problem(response, 503, "unavailable").await;
}

#[tokio::test]
async fn a_census_deadline_out_of_bounds_is_refused_with_a_problem() {
    let app = spawn_app_configured(World::all_down(), |settings| settings.amqp = None).await;

    for query in [
        "deadline_ms=0",
        "deadline_ms=99",
        "deadline_ms=60000",
        "deadline_ms=soon",
    ] {
        let response = app.get(&format!("/api/system/instances?{query}")).await;
        assert_problem(response, 400, "invalid_input").await;
    }
}
