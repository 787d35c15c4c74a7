//! The gateway in a process of its own, for the scenarios that run two of
//! them and stop each with `SIGTERM` (`signalbox_system_tests::child`).
//! Built from the same code as the tests that start it: cargo builds a
//! package's binaries for its integration tests and names this one in
//! `CARGO_BIN_EXE_gateway-child`.

fn main() {
    signalbox_system_tests::child::gateway_main();
}
