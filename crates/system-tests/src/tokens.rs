//! A token factory for security tests: the auth service's signing key, held
//! by the test, so it can mint tokens that are validly signed yet wrong in
//! exactly one way, and an attacker's key for tokens that are not.
//!
//! Tokens are assembled by hand (base64url header and payload, Ed25519
//! signature over them) rather than through a JWT library, so a test can
//! write any header: `alg: none`, an embedded `jwk`, a `jku`, no `typ`. What
//! is not about defects comes from elsewhere: the valid claims are the test
//! kit's, the JWK is built by the auth service's own key code.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{pkcs8::EncodePrivateKey, Signer, SigningKey};
use serde_json::{json, Value};
use signalbox_auth::keys::PublicKey;
use signalbox_platform::tokens::now_secs;

/// An Ed25519 key that signs tokens under a `kid`.
pub struct TokenFactory {
    kid: String,
    key: SigningKey,
}

impl TokenFactory {
    /// A fresh random key named `kid`.
    pub fn generate(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            key: SigningKey::generate(&mut rand::rng()),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM: what `APP__TOKENS__SIGNING_KEY_PEM`
    /// holds.
    pub fn pem(&self) -> String {
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|pem| pem.to_string())
            .expect("an Ed25519 key encodes as PKCS#8")
    }

    /// The public half under this factory's `kid`.
    pub fn public(&self) -> PublicKey {
        signalbox_auth::keys::SigningKey::from_pkcs8_pem(&self.pem(), Some(self.kid.clone()))
            .expect("the auth service reads its own key format")
            .public()
            .clone()
    }

    /// The public key as a JWK (RFC 8037), as the JWKS publishes it.
    pub fn jwk(&self) -> Value {
        self.public().jwk()
    }

    /// The header of a valid access token from this key.
    pub fn header(&self) -> Value {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid})
    }

    /// Signs `header` and `claims` as given (compact JWS).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// A valid access token for `sub` with a user's scopes.
    pub fn token(&self, sub: &str) -> String {
        self.sign(&self.header(), &claims(sub))
    }
}

/// Valid access-token claims for `sub` (five minutes left, a user's scopes),
/// as JSON that a defect can be written into.
pub fn claims(sub: &str) -> Value {
    serde_json::to_value(signalbox_testkit::tokens::claims(sub))
        .expect("access-token claims serialise")
}

/// `base64url(header).base64url(claims)`.
fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header), b64(claims))
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// `claims` without `name`.
fn without(mut claims: Value, name: &str) -> Value {
    if let Some(object) = claims.as_object_mut() {
        object.remove(name);
    }
    claims
}

/// `claims` with `name` set to `value`.
fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

/// A token that must be refused, and what is wrong with it.
pub struct BadToken {
    pub defect: &'static str,
    pub token: String,
}

/// Every way an access token must be refused (RFC 8725, RFC 9068), for a
/// real user `sub`: each differs from a valid token of `auth` in one defect.
/// `refresh_token` is a real refresh token of that user; `leeway_secs` the
/// verifiers' clock-skew allowance.
pub fn bad_tokens(
    auth: &TokenFactory,
    sub: &str,
    refresh_token: &str,
    leeway_secs: u64,
) -> Vec<BadToken> {
    let now = now_secs();
    let valid = claims(sub);
    let header = auth.header();
    let attacker = TokenFactory::generate(auth.kid());
    let stranger = TokenFactory::generate("kid-nobody-published");
    let bad = |defect, token| BadToken { defect, token };

    let tampered = {
        let token = auth.token(sub);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = with(
            valid.clone(),
            "sub",
            json!(uuid::Uuid::now_v7().to_string()),
        );
        format!("{}.{}.{}", parts[0], b64(&forged), parts[2])
    };
    let hs256 = {
        // The classic confusion: HMAC keyed with the (public) verification key.
        let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": auth.kid()});
        let input = signing_input(&header, &valid);
        let public = auth.public().x().to_owned();
        let signature = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes())
                .expect("the key is not empty"),
            jsonwebtoken::Algorithm::HS256,
        )
        .expect("HMAC signs anything");
        format!("{input}.{signature}")
    };
    let expired = with(
        with(valid.clone(), "exp", json!(now - leeway_secs - 60)),
        "iat",
        json!(now - leeway_secs - 660),
    );
    let immature = with(valid.clone(), "nbf", json!(now + leeway_secs + 600));
    let oversized = with(valid.clone(), "padding", json!("x".repeat(5000)));
    let truncated = {
        let token = auth.token(sub);
        token[..token.len() - 10].to_owned()
    };

    vec![
        bad(
            "alg none",
            format!(
                "{}.",
                signing_input(&json!({"alg": "none", "typ": "at+jwt", "kid": auth.kid()}), &valid)
            ),
        ),
        bad("HS256 keyed with the public key", hs256),
        bad("tampered payload", tampered),
        bad(
            "foreign key under the published kid",
            attacker.sign(&header, &valid),
        ),
        bad(
            "embedded jwk",
            attacker.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": auth.kid(), "jwk": attacker.jwk()}),
                &valid,
            ),
        ),
        bad(
            "jku header",
            attacker.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": auth.kid(), "jku": "http://127.0.0.1:9/jwks.json"}),
                &valid,
            ),
        ),
        bad(
            "x5u header",
            attacker.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": auth.kid(), "x5u": "http://127.0.0.1:9/cert.pem"}),
                &valid,
            ),
        ),
        bad("unknown kid", stranger.sign(&stranger.header(), &valid)),
        bad("expired beyond the leeway", auth.sign(&header, &expired)),
        bad("nbf in the future", auth.sign(&header, &immature)),
        bad("missing exp", auth.sign(&header, &without(valid.clone(), "exp"))),
        bad("missing aud", auth.sign(&header, &without(valid.clone(), "aud"))),
        bad("missing iss", auth.sign(&header, &without(valid.clone(), "iss"))),
        bad("missing sub", auth.sign(&header, &without(valid.clone(), "sub"))),
        bad(
            "wrong aud",
            auth.sign(&header, &with(valid.clone(), "aud", json!("another-api"))),
        ),
        bad(
            "wrong iss",
            auth.sign(&header, &with(valid.clone(), "iss", json!("https://evil.example"))),
        ),
        bad("a refresh token used as an access token", refresh_token.to_owned()),
        bad(
            "typ JWT (an ID token or any other JWT)",
            auth.sign(&json!({"alg": "EdDSA", "typ": "JWT", "kid": auth.kid()}), &valid),
        ),
        bad(
            "no typ",
            auth.sign(&json!({"alg": "EdDSA", "kid": auth.kid()}), &valid),
        ),
        bad(
            "no kid",
            auth.sign(&json!({"alg": "EdDSA", "typ": "at+jwt"}), &valid),
        ),
        bad(
            "crit header",
            auth.sign(
                &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": auth.kid(), "crit": ["exp"]}),
                &valid,
            ),
        ),
        bad("truncated", truncated),
        bad("oversized", auth.sign(&header, &oversized)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_names_each_defect_once_and_starts_from_a_valid_shape() {
        let auth = TokenFactory::generate("k");
        let tokens = bad_tokens(&auth, "u", "opaque", 30);
        let mut defects: Vec<_> = tokens.iter().map(|t| t.defect).collect();
        defects.sort_unstable();
        defects.dedup();
        assert_eq!(defects.len(), tokens.len());
        assert!(tokens.len() >= 15);
        assert!(
            tokens.iter().any(|t| t.token.len() > 4096),
            "one is oversized"
        );
        assert_eq!(auth.token("u").split('.').count(), 3);
    }
}
