//! The signing key the `token` and `gateway_request` targets verify
//! against: the Ed25519 test key of RFC 8037 (appendix A), published under
//! the `kid` `fuzz-key` by a JWKS server of the process's own, so that a
//! verifier built from ordinary settings fetches it exactly as it fetches
//! the auth service's keys.
//!
//! The corpus's valid tokens (`fuzz/corpus/*/ok-*`) are signed with this key
//! and expire in 2100; the key is public (it is printed in the RFC), so they
//! grant nothing anywhere else.

use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::OnceLock,
};

/// The JWK Set: RFC 8037's public key `x` under the `kid` the corpus's
/// tokens name.
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"fuzz-key","alg":"EdDSA","use":"sig"}]}"#;

/// The URL of the JWKS server, started on the first call. It answers every
/// request with [`JWKS`] (a day's `max-age`, so a verifier fetches it once)
/// from a thread that lives as long as the process.
pub fn jwks_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the JWKS server");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().expect("the JWKS server's address")
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                // Reads the request head (verifiers send no body), bounded
                // so a stuck client cannot hold the thread's buffer forever.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     cache-control: public, max-age=86400\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{JWKS}",
                    JWKS.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        });
        url
    })
}
