//! libFuzzer target `token`: the body in `fuzz/bodies/token.rs`, which the
//! corpus replay test runs too.
#![no_main]

#[path = "../bodies/token.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
