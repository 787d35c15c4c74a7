//! Standing in for the auth service: an Ed25519 signing key the test holds,
//! its JWK Set served on port 0, and EdDSA access tokens with the Signalbox
//! claims, as the verifiers of the gateway and realtime expect them.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{pkcs8::EncodePrivateKey, SigningKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Value};
use signalbox_platform::tokens::{now_secs, AccessClaims};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The issuer and audience the verifiers expect by default.
pub const ISSUER: &str = "signalbox-auth";
pub const AUDIENCE: &str = "signalbox";

/// A fresh Ed25519 signing key under a random `kid`, published as a JWKS,
/// that signs access tokens.
pub struct TestKey {
    kid: String,
    signing: SigningKey,
}

impl TestKey {
    pub fn generate() -> Self {
        Self {
            kid: format!("test-{}", uuid::Uuid::new_v4().simple()),
            signing: SigningKey::generate(&mut rand::rng()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK Set (RFC 8037), as the auth service
    /// publishes it.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]})
    }

    /// Signs `claims` as an access token (`typ: at+jwt`) under this key's
    /// `kid`.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        self.sign_typed(claims, Some("at+jwt"))
    }

    /// Signs `claims` with the given `typ` header (anything but `at+jwt`
    /// must be refused as an access token).
    pub fn sign_typed(&self, claims: &impl Serialize, typ: Option<&str>) -> String {
        let der = self
            .signing
            .to_pkcs8_der()
            .expect("an Ed25519 key encodes as PKCS#8");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .expect("the claims serialise")
    }
}

/// Valid access-token claims for `sub` with a user's scopes, expiring in
/// five minutes.
pub fn claims(sub: &str) -> AccessClaims {
    let now = now_secs();
    AccessClaims {
        sub: sub.to_owned(),
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        exp: now + 300,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "orders:read orders:write".to_owned(),
        client_id: None,
    }
}

/// Serves `jwks` on port 0 the way the auth service's HTTP side does, until
/// `stop`; returns the URL of `/.well-known/jwks.json`.
pub async fn serve_jwks(jwks: Value, stop: CancellationToken) -> anyhow::Result<String> {
    let router = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr()?);
    // The JWKS server: answers the verifiers until the test stops it.
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    Ok(url)
}
