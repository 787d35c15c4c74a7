//! Self-registration: a server puts its own address in the registry, under
//! a lease it keeps alive, and takes it out when it stops.
//!
//! ```text
//!   register() ──► task: connect ─► grant lease (TTL) ─► put key = URL (with the lease)
//!                        ▲                                   │
//!                        │ backoff                           ▼
//!                        └──── failed ◄──── renew every TTL/3, check the answer
//!
//!   revoke()  ──► stop the task ─► revoke the lease (the key goes with it, at once)
//!   dropped   ──► stop the task; the lease expires within its TTL (as after a crash)
//! ```
//!
//! The lease is what makes a registry trustworthy: a key without one would
//! outlive a crashed instance forever. Renewing three times per TTL means
//! one lost renewal costs nothing. When renewing fails — etcd restarted and
//! lost the lease, or is unreachable — the task starts over with backoff:
//! a new lease, the same key put again. Clients see the same address under
//! the same key, so nothing changes for them.

use std::{convert::Infallible, time::Duration};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, PutOptions};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::within;
use signalbox_resilience::backoff::Backoff;

use crate::{url::Target, DiscoverySettings, Mode};

/// How long a graceful shutdown waits for etcd to confirm the revocation;
/// past it, the lease expires on its own.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a registration stands, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// `dns` mode: the platform announces instances, this one registers
    /// nowhere.
    Disabled,
    /// The first attempt is under way.
    Registering,
    /// The key is in the registry under `lease`, and the lease is renewed.
    Registered { lease: i64 },
    /// The last attempt failed (`reason`); the next waits for its backoff.
    Retrying { reason: String },
    /// Stopped: revoked, or dropped and left to expire.
    Stopped,
}

/// One instance's entry in the registry, kept alive until
/// [`revoke`](Self::revoke) (graceful shutdown) or until it is dropped
/// (then the lease expires, as after a crash).
#[derive(Debug)]
pub struct Registration {
    state: watch::Receiver<RegistrationState>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    key: String,
    address: String,
    /// Stops the task: cancelled by `revoke` and on drop.
    stop: CancellationToken,
    /// The task hands back the lease it held when it stopped, for `revoke`.
    task: JoinHandle<Option<Lease>>,
}

struct Lease {
    client: Client,
    id: i64,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What the task registers, and with whom.
struct Plan {
    key: String,
    address: String,
    settings: DiscoverySettings,
}

/// Registers this instance of `service` — reachable at the advertised
/// address, by default `http://<advertise_host>:<grpc_port>` — in
/// `registry` mode, and keeps it registered in the background; in `dns`
/// mode does nothing. Returns at once: registering waits for etcd, the
/// service need not. Call it once the instance serves (its listener is
/// bound, its dependencies connected), within a Tokio runtime.
pub fn register(
    service: &str,
    grpc_port: u16,
    settings: &DiscoverySettings,
) -> anyhow::Result<Registration> {
    if settings.mode == Mode::Dns {
        return Ok(Registration::disabled());
    }
    let address = match &settings.advertise {
        Some(url) => url.clone(),
        None if settings.advertise_host.contains(':') => {
            format!("http://[{}]:{grpc_port}", settings.advertise_host)
        }
        None => format!("http://{}:{grpc_port}", settings.advertise_host),
    };
    Target::parse(&address).context("the advertised address of this instance")?;
    let key = format!(
        "{}{}",
        settings.service_prefix(service),
        uuid::Uuid::new_v4().simple()
    );
    let (state, state_rx) = watch::channel(RegistrationState::Registering);
    let stop = CancellationToken::new();
    let plan = Plan {
        key: key.clone(),
        address: address.clone(),
        settings: settings.clone(),
    };
    let task = tokio::spawn(run(plan, state, stop.clone()));
    Ok(Registration {
        state: state_rx,
        running: Some(Running {
            key,
            address,
            stop,
            task,
        }),
    })
}

impl Registration {
    /// A registration that registers nothing (`dns` mode).
    pub fn disabled() -> Self {
        Self {
            state: watch::channel(RegistrationState::Disabled).1,
            running: None,
        }
    }

    /// The key this instance registers under, `<prefix><service>/<id>`.
    pub fn key(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.key.as_str())
    }

    /// The URL it registers.
    pub fn address(&self) -> Option<&str> {
        self.running.as_ref().map(|r| r.address.as_str())
    }

    /// Where it stands now and from here on.
    pub fn state(&self) -> watch::Receiver<RegistrationState> {
        self.state.clone()
    }

    /// Takes this instance out of the registry now: stops renewing and
    /// revokes the lease, which deletes the key, so watchers drop the
    /// instance at once rather than when the lease would have expired.
    pub async fn revoke(mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.cancel();
        let Ok(Some(mut lease)) = running.task.await else {
            return;
        };
        match tokio::time::timeout(REVOKE_TIMEOUT, lease.client.lease_revoke(lease.id)).await {
            Ok(Ok(_)) => tracing::info!(key = %running.key, lease = lease.id, "deregistered"),
            Ok(Err(error)) => {
                tracing::warn!(key = %running.key, %error, "cannot revoke; the lease will expire")
            }
            Err(_) => {
                tracing::warn!(key = %running.key, "revoking timed out; the lease will expire")
            }
        }
    }

    /// Stays registered until `shutdown`, then revokes: the registration
    /// as one of a service's tasks (`serve::background`).
    pub async fn hold_until(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.revoke().await;
    }
}

/// Dropped without `revoke`: stop renewing and let the lease expire, which
/// is what a crashed instance does.
impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}

/// The registration task: sessions, each ending only by a failure, with
/// backoff between them, until stopped.
async fn run(
    plan: Plan,
    state: watch::Sender<RegistrationState>,
    stop: CancellationToken,
) -> Option<Lease> {
    let mut backoff = Backoff::default();
    // The lease of the current (or last) session, for `revoke`.
    let mut lease = None;
    loop {
        let failed = tokio::select! {
            // Revoked or dropped: stop, and hand back the lease.
            _ = stop.cancelled() => None,
            // Registered and renewing; returns only when that fails.
            failed = session(&plan, &mut lease, &state, &mut backoff) => Some(failed),
        };
        let Some(failed) = failed else { break };
        let delay = backoff.next_delay();
        tracing::warn!(key = %plan.key, error = format!("{failed:#}"), ?delay, "registration lost; registering again");
        state.send_replace(RegistrationState::Retrying {
            reason: format!("{failed:#}"),
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            // The backoff before the next session.
            _ = tokio::time::sleep(delay) => {}
        }
    }
    state.send_replace(RegistrationState::Stopped);
    lease
}

async fn session(
    plan: &Plan,
    lease: &mut Option<Lease>,
    state: &watch::Sender<RegistrationState>,
    backoff: &mut Backoff,
) -> anyhow::Error {
    match registered(plan, lease, state, backoff).await {
        Ok(never) => match never {},
        Err(error) => error,
    }
}

/// Grants a lease, puts the key with it and renews it, until that fails.
async fn registered(
    plan: &Plan,
    lease: &mut Option<Lease>,
    state: &watch::Sender<RegistrationState>,
    backoff: &mut Backoff,
) -> anyhow::Result<Infallible> {
    let mut client = super::connect(&plan.settings).await?;
    let granted = within(
        "cannot grant a lease",
        client.lease_grant(plan.settings.lease_ttl(), None),
    )
    .await?;
    let id = granted.id();
    *lease = Some(Lease {
        client: client.clone(),
        id,
    });
    within(
        "cannot put the registration",
        client.put(
            plan.key.as_str(),
            plan.address.as_str(),
            Some(PutOptions::new().with_lease(id)),
        ),
    )
    .await?;
    state.send_replace(RegistrationState::Registered { lease: id });
    backoff.reset();
    // etcd may grant more than asked (it has a minimum TTL).
    let ttl = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(1).max(1));
    tracing::info!(key = %plan.key, address = %plan.address, lease = id, ?ttl, "registered");

    let (mut keeper, mut answers) = within(
        "cannot open the keep-alive stream",
        client.lease_keep_alive(id),
    )
    .await?;
    // Three renewals per TTL: one lost renewal leaves two more chances.
    let every = ttl / 3;
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        within("cannot send a renewal", keeper.keep_alive()).await?;
        let answer = tokio::time::timeout(every, answers.message())
            .await
            .map_err(|_| anyhow!("no answer to a renewal within {every:?}"))?
            .context("a renewal failed")?
            .ok_or_else(|| anyhow!("etcd closed the keep-alive stream"))?;
        // TTL 0: etcd no longer knows the lease (it expired, or was
        // revoked from outside); the key went with it.
        if answer.ttl() <= 0 {
            bail!("lease {id} is gone");
        }
    }
}
