//! Catalog in a process of its own, for the scenarios that freeze it
//! (`signalbox_system_tests::child`). Built from the same code as the tests
//! that start it: cargo builds a package's binaries for its integration
//! tests and names this one in `CARGO_BIN_EXE_catalog-child`.

fn main() {
    signalbox_system_tests::child::catalog_main();
}
