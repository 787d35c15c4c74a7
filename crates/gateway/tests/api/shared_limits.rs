//! One limit across gateway instances through Redis, and the fallback to
//! per-instance counting while Redis is unreachable.
//!
//! The shared tests use the Redis on 127.0.0.1:6379 with a key prefix of
//! their own; the fallback test starts a private `redis-server` on a free
//! port and stops it, never the shared one.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use secrecy::SecretString;
use signalbox_gateway::{config::Rate, Settings};
use signalbox_testkit::probe;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::helpers::{spawn_app_configured, TestApp, World};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// Two gateways on one Redis, each read limited to `burst` per IP.
async fn two_gateways(redis_url: &str, prefix: &str, burst: u32) -> (TestApp, TestApp) {
    let configure = |s: &mut Settings| {
        s.limits.reads.per_ip = Rate::new(burst, 1);
        s.limits.redis_url = Some(SecretString::from(redis_url.to_owned()));
        s.limits.redis_prefix = prefix.to_owned();
    };
    (
        spawn_app_configured(World::all_up(), configure).await,
        spawn_app_configured(World::all_up(), configure).await,
    )
}

async fn status(app: &TestApp) -> u16 {
    app.get("/api/catalog/products").await.status().as_u16()
}

fn prefix() -> String {
    format!("test:{}", Uuid::new_v4().simple())
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let (a, b) = two_gateways(SHARED_REDIS, &prefix(), 3).await;

    let admitted = [status(&a).await, status(&b).await, status(&a).await];
    let past_it = [status(&b).await, status(&a).await];

    assert_eq!(admitted, [200, 200, 200]);
    assert_eq!(
        past_it,
        [429, 429],
        "the third request used up the burst of both"
    );
}

#[tokio::test]
async fn the_shared_count_answers_with_the_fields_of_the_whole_edge() {
    let (a, b) = two_gateways(SHARED_REDIS, &prefix(), 3).await;

    status(&a).await;
    let second = b.get("/api/catalog/products").await;

    assert_eq!(second.headers()["ratelimit"], r#""reads";r=1;t=120"#);
}

/// A `redis-server` of the test's own on a free port, without persistence.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        Self::start_on(port).await
    }

    /// A new server on `port` (after [`Self::stop`]: Redis is back, empty).
    async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services)");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).unwrap();
        probe::until("private redis answers", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                // Refused until the server listens: "not yet", not a failure.
                let pong: Result<String, _> = async {
                    let mut connection = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async(&mut connection).await
                }
                .await;
                Ok(match pong {
                    Ok(_) => Ok(()),
                    Err(error) => Err(error.to_string()),
                })
            }
        })
        .await
        .unwrap();
        Self { child, url }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn with_redis_stopped_each_gateway_counts_alone_and_no_request_fails() {
    let mut redis = PrivateRedis::start().await;
    let (a, b) = two_gateways(&redis.url, &prefix(), 2).await;
    assert_eq!([status(&a).await, status(&b).await], [200, 200]);
    assert_eq!(status(&a).await, 429, "shared while Redis runs");

    redis.stop();
    // Each instance now counts alone, from zero: its own burst of 2.
    let a_alone = [status(&a).await, status(&a).await, status(&a).await];
    let b_alone = [status(&b).await, status(&b).await, status(&b).await];

    assert_eq!(a_alone, [200, 200, 429]);
    assert_eq!(b_alone, [200, 200, 429]);
}

/// The requests left in the `reads` policy of a catalog read on `app`.
async fn remaining(app: &TestApp) -> anyhow::Result<i64> {
    let response = app.get("/api/catalog/products").await;
    let field = response.headers()["ratelimit"].to_str()?;
    let r = field
        .split(';')
        .find_map(|p| p.strip_prefix("r="))
        .ok_or_else(|| anyhow::anyhow!("no r in {field}"))?;
    Ok(r.parse()?)
}

#[tokio::test]
async fn when_redis_is_back_the_gateways_share_the_limit_again() {
    let mut redis = PrivateRedis::start().await;
    let port = redis.port();
    let (a, b) = two_gateways(&redis.url, &prefix(), 100).await;
    redis.stop();
    assert_eq!(status(&a).await, 200, "counted locally while Redis is away");

    let _redis = PrivateRedis::start_on(port).await;
    // Counted apart, b is one request behind a; counted together in the
    // new (empty) Redis, b's request comes right after a's.
    probe::until(
        "the gateways share the count again",
        Duration::from_secs(20),
        || async {
            let (after_a, after_b) = (remaining(&a).await?, remaining(&b).await?);
            Ok(if after_b == after_a - 1 {
                Ok(())
            } else {
                Err(format!("a left {after_a}, b left {after_b}"))
            })
        },
    )
    .await
    .unwrap();
}
