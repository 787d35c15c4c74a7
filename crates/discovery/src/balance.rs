//! One cloneable service over a changing set of endpoints: the client side
//! of both ways of discovery.
//!
//! ```text
//!   UpstreamService (a BoxCloneSyncService, what the guarded stack sits on)
//!     └─ Buffer ─────────── one task owns the balancer; every clone sends to it
//!         └─ FailFast ───── no endpoint ready → Rejection::Open at once
//!             └─ Balance (p2c) ─ of two random ready endpoints, the one with fewer calls out
//!                 ├─ Endpoint 10.1.0.7 ─ in-flight count ─ breaker (unready while open) ─ Channel
//!                 └─ Endpoint 10.1.0.9 ─ …
//!                     ▲
//!   Discovered ───────┘ Insert / Remove, from the Source's sets (DNS or registry)
//! ```
//!
//! Power of two choices: picking the less loaded of two random endpoints
//! avoids both round-robin's blindness to a slow endpoint and the herd that
//! "always the least loaded" sends to one endpoint at once, and it costs two
//! comparisons per call. Failing and hung endpoints drop out of the choice
//! because their breakers make them unready.

use tower::{balance::p2c::Balance, buffer::Buffer, util::BoxCloneSyncService};

use crate::{
    discover::Discovered, endpoint::EndpointSettings, fail_fast::FailFast, view::UpstreamView,
    Mode, Source,
};

/// A balanced upstream is the boxed, cloneable service every guarded
/// client's stack is built on (`signalbox_resilience::UpstreamService`), so
/// it drops in under that stack where one channel was; clones share the
/// balancer.
pub use signalbox_resilience::UpstreamService;

/// Calls queued between their callers and the balancer's task. The task
/// never waits on the balancer (FailFast decides at once), so a call spends
/// only a task switch here; the bound is headroom for a burst, and a full
/// buffer makes callers wait in `ready()`, under their own deadline.
const BUFFER: usize = 1024;

/// Balances over the endpoints `source` publishes. `mode` is for the admin
/// view. Must be called within a Tokio runtime (the buffer's task).
pub fn balanced(
    upstream: &str,
    mode: Mode,
    source: Source,
    settings: EndpointSettings,
) -> (UpstreamService, UpstreamView) {
    let view = UpstreamView::new(upstream, mode, source.status.clone());
    // Insertions and removals from the source's sets.
    let discovered = Discovered::new(upstream, source, settings, view.inner.clone());
    // p2c over the ready endpoints, by calls in flight (`Endpoint: Load`).
    let balance = Balance::new(discovered);
    // Refuse at once when no endpoint is ready, instead of waiting.
    let fail_fast = FailFast::new(balance, view.inner.clone());
    // One task owns the balancer; the handles are cheap clones.
    let buffer = Buffer::new(fail_fast, BUFFER);
    (BoxCloneSyncService::new(buffer), view)
}
