//! Fault points: named places in a service where a test may make the
//! process die, to prove that a crash at exactly that place loses nothing
//! and does nothing twice (docs/patterns/failure-testing.md).
//!
//! A service calls [`point`] where a crash is the interesting one, such as
//! `catalog.command.committed`: a command's transaction has committed, its
//! delivery is not acked yet. Nothing happens there unless a hook was
//! installed with [`install`], which only the test binaries of
//! `signalbox-system-tests` do (`orders-child`, `catalog-child`, when the
//! test asks for it); the service binaries never install one, so in them a
//! point costs one load of an initialised-once cell.

use std::sync::OnceLock;

/// The hook, set at most once per process, before the service starts.
static HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// Installs `hook`, called with the name of every fault point reached.
/// Returns false when a hook was installed already (the first one stays).
/// Test-only: a service binary never calls it.
pub fn install(hook: fn(&str)) -> bool {
    HOOK.set(hook).is_ok()
}

/// Marks the fault point `name`: calls the installed hook, if any.
#[inline]
pub fn point(name: &str) {
    if let Some(hook) = HOOK.get() {
        hook(name);
    }
}

/// Names of the fault points, one place for the service and the test.
pub mod points {
    /// Catalog: a stock command's transaction (claim, stock, reply in the
    /// outbox) committed; the delivery is not acked, the reply not published.
    pub const CATALOG_COMMAND_COMMITTED: &str = "catalog.command.committed";
    /// Orders: a saga reply's transaction (claim, decision, event in the
    /// outbox) committed; the delivery is not acked, the event not published.
    pub const ORDERS_REPLY_COMMITTED: &str = "orders.reply.committed";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SEEN: AtomicUsize = AtomicUsize::new(0);

    fn count(name: &str) {
        if name == points::ORDERS_REPLY_COMMITTED {
            // Relaxed: a counter read after the calls, on the same thread.
            SEEN.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_point_calls_the_installed_hook_and_the_first_hook_stays() {
        point(points::ORDERS_REPLY_COMMITTED);
        assert_eq!(SEEN.load(Ordering::Relaxed), 0, "no hook yet");
        assert!(install(count));
        assert!(!install(|_| panic!("a second hook")));
        point(points::ORDERS_REPLY_COMMITTED);
        point(points::CATALOG_COMMAND_COMMITTED);
        assert_eq!(SEEN.load(Ordering::Relaxed), 1);
    }
}
