//! The `client_frame` fuzz target's corpus (`fuzz/corpus/client_frame/`),
//! replayed on the stable toolchain by `cargo test`: every file goes through
//! the same body the fuzz target runs (`fuzz/bodies/client_frame.rs`), so
//! the two cannot drift and a crash, once found and kept in the corpus,
//! stays fixed whether or not a nightly toolchain is at hand. `ok-*` files
//! must parse, `bad-*` ones must be refused. A `crash-*` file (a regression
//! kept from a fuzzing run) must merely not panic.

#[path = "../../../fuzz/bodies/client_frame.rs"]
mod body;

use std::{fs, path::PathBuf};

#[test]
fn every_client_frame_of_the_corpus_parses_or_is_refused_without_a_panic() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/client_frame");
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("the corpus in {}: {error}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no corpus in {}", dir.display());
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let outcome = body::run(&fs::read(&path).expect("a corpus file"));
        if name.starts_with("ok-") {
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        } else if name.starts_with("bad-") {
            assert!(outcome.is_err(), "{name} parsed: {outcome:?}");
        }
    }
}
