//! Fuzz body `token`: arbitrary bytes as a bearer token, against the
//! verifier every service uses (`signalbox_platform::tokens::TokenVerifier`)
//! with a fixed key ([`test_key`]).
//!
//! The bytes take both ways a token comes in: as the value of an
//! `Authorization: Bearer …` header (read by
//! `signalbox_platform::authorization::bearer_token`, as the gateway,
//! realtime's upgrade and orders' gRPC metadata read it), and as the string
//! a socket's first `auth` frame hands the verifier directly. Either must
//! answer a typed error or verified claims, never panic; claims that verify
//! must be the key's own (issuer, audience, a subject, not expired), and the
//! keys must never be reported unavailable (the JWKS server is up).
//!
//! Shared by `fuzz/fuzz_targets/token.rs` and the corpus replay
//! `crates/platform/tests/fuzz_corpus.rs`.

use std::sync::OnceLock;

use signalbox_platform::{
    authorization::bearer_token,
    config::VerifierSettings,
    tokens::{now_secs, AccessClaims, TokenError, TokenVerifier},
};

#[path = "test_key.rs"]
mod test_key;

/// One runtime and one verifier for the whole run, as a service has: the
/// key set is fetched once and then served from the cache.
fn verifier() -> &'static (tokio::runtime::Runtime, TokenVerifier) {
    static VERIFIER: OnceLock<(tokio::runtime::Runtime, TokenVerifier)> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let verifier = TokenVerifier::new(VerifierSettings {
            jwks_url: test_key::jwks_url().to_owned(),
            ..VerifierSettings::default()
        });
        (runtime, verifier)
    })
}

/// Verifies `data` as a token both ways; returns what the direct path
/// (the socket's `auth` frame) answered. Bytes that are not UTF-8 cannot
/// be a frame's string and are `Malformed` there.
pub fn run(data: &[u8]) -> Result<AccessClaims, TokenError> {
    let (runtime, verifier) = verifier();
    let settings = VerifierSettings::default();
    let check = |result: &Result<AccessClaims, TokenError>| match result {
        Ok(claims) => {
            assert_eq!(claims.iss, settings.issuer, "a foreign issuer verified");
            assert_eq!(claims.aud, settings.audience, "a foreign audience verified");
            assert!(!claims.sub.is_empty(), "a token without subject verified");
            assert!(
                claims.exp.saturating_add(settings.leeway_secs) >= now_secs(),
                "an expired token verified"
            );
        }
        Err(TokenError::KeysUnavailable(why)) => {
            panic!("the keys were reported unavailable with the JWKS server up: {why}")
        }
        Err(_) => {}
    };

    let mut header = b"Bearer ".to_vec();
    header.extend_from_slice(data);
    if let Ok(token) = bearer_token([header.as_slice()]) {
        check(&runtime.block_on(verifier.verify(token)));
    }

    let direct = match std::str::from_utf8(data) {
        Ok(token) => runtime.block_on(verifier.verify(token)),
        Err(_) => Err(TokenError::Malformed),
    };
    check(&direct);
    direct
}
