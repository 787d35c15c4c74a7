//! libFuzzer target `client_frame`: the body in `fuzz/bodies/client_frame.rs`, which the
//! corpus replay test runs too.
#![no_main]

#[path = "../bodies/client_frame.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
