//! libFuzzer target `envelope`: the body in `fuzz/bodies/envelope.rs`, which the
//! corpus replay test runs too.
#![no_main]

#[path = "../bodies/envelope.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
