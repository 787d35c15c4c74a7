//! The `gateway_request` fuzz target's corpus
//! (`fuzz/corpus/gateway_request/`), replayed on the stable toolchain by
//! `cargo test`: every file goes through the same body the fuzz target runs
//! (`fuzz/bodies/gateway_request.rs`), so the two cannot drift and a crash,
//! once found and kept in the corpus, stays fixed whether or not a nightly
//! toolchain is at hand. `ok-*` requests must get past the edge's checks
//! (answered 2xx, or 503 by the upstream that is down), `bad-*` ones must be
//! refused with a 4xx (or not be representable in HTTP/1.1 at all). A
//! `crash-*` file (a regression kept from a fuzzing run) must merely not
//! panic.

#[path = "../../../fuzz/bodies/gateway_request.rs"]
mod body;

use std::{fs, path::PathBuf};

#[test]
fn every_request_of_the_corpus_is_answered_as_documented() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gateway_request");
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
            let status = outcome.unwrap_or_else(|| panic!("{name}: not a request"));
            assert!(
                status.is_success() || status.as_u16() == 503,
                "{name}: {status}"
            );
        } else if name.starts_with("bad-") {
            assert!(
                outcome.is_none_or(|status| status.is_client_error()),
                "{name}: {outcome:?}"
            );
        }
    }
}
