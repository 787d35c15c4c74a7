//! `signalbox census`: the instances that answered the gateway's census.

use signalbox_system_tests::{system::REALTIME_INSTANCES, TestSystem};

use crate::helpers::Terminal;

#[tokio::test]
async fn census_lists_every_instance_that_answers() -> anyhow::Result<()> {
    let system = TestSystem::start().await?;
    let terminal = Terminal::for_system(&system);

    let ran = terminal
        .run(&["census", "--deadline-ms", "2000", "--json"])
        .await;
    ran.assert_ok();
    let answer = ran.json();
    let services: Vec<&str> = answer["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["service"].as_str())
        .collect();
    assert_eq!(
        services.iter().filter(|s| **s == "realtime").count(),
        REALTIME_INSTANCES,
        "{answer}"
    );
    for service in ["orders", "catalog"] {
        assert!(services.contains(&service), "{service}: {answer}");
    }

    let shown = terminal.run(&["census", "--deadline-ms", "2000"]).await;
    shown.assert_ok();
    assert!(shown.stdout.starts_with("SERVICE"), "{shown:?}");
    assert!(
        shown.stdout.contains("instance(s) answered within 2000 ms"),
        "{shown:?}"
    );
    system.stop().await
}
