//! Auth in a process of its own, for the scenarios that stop it with
//! `SIGTERM` and start it again (`signalbox_system_tests::child`). Built
//! from the same code as the tests that start it: cargo builds a package's
//! binaries for its integration tests and names this one in
//! `CARGO_BIN_EXE_auth-child`.

fn main() {
    signalbox_system_tests::child::auth_main();
}
