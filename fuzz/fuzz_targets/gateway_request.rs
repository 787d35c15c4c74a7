//! libFuzzer target `gateway_request`: the body in `fuzz/bodies/gateway_request.rs`, which the
//! corpus replay test runs too.
#![no_main]

#[path = "../bodies/gateway_request.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = body::run(data);
});
