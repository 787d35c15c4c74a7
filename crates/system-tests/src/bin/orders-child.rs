//! Orders in a process of its own, for the scenarios that kill it
//! (`signalbox_system_tests::child`), optionally at an armed fault point
//! (`SIGNALBOX_TEST_ABORT_AT`). Built from the same code as the tests that
//! start it: cargo builds a package's binaries for its integration tests
//! and names this one in `CARGO_BIN_EXE_orders-child`.

fn main() {
    signalbox_system_tests::child::orders_main();
}
