//! The Tokio runtime of a process that reads the broker: one worker fewer
//! than the cores.
//!
//! Every delivery from RabbitMQ arrives through lapin's I/O thread, a thread
//! of its own outside the runtime that reads and parses the broker's frames
//! and hands each delivery over. With as many workers as cores, that thread
//! and the workers take turns on the same cores, and each hand-off preempts
//! or wakes a worker. On a 2-core machine, one worker instead of two
//! delivered 1.2–1.5× as much per CPU-second on user channels and
//! 1.04–1.10× on a public one, at no lower sustained rate
//! (`docs/benchmarks.md`, B1). The realtime service and the benchmark's
//! ceiling server both run this way, so that they differ in what they do,
//! not in how they run.

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// One fewer than the cores the process may use, and at least one.
pub fn one_core_left_for_the_broker() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cores| cores.get() - 1)
        .max(1)
}

/// A multi-threaded runtime with `workers` worker threads, or
/// [`one_core_left_for_the_broker`] of them when `None`.
pub fn beside_the_broker(workers: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(workers.map_or_else(one_core_left_for_the_broker, NonZeroUsize::get))
        .enable_all()
        .build()
}
