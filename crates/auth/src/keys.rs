//! Signing keys and the JWK Set that publishes them.
//!
//! Access tokens are signed with Ed25519 (JWS `alg: EdDSA`). The private key
//! stays in this process; the public half is published as a JWK Set
//! (RFC 7517) at `/.well-known/jwks.json`, where the gateway and the realtime
//! service fetch it and pick the key named by a token's `kid`.
//!
//! [`KeySet`] is the seam for key rotation: exactly one key signs
//! (`tokens.signing_key_pem`), any number of others are published as
//! verify-only (`tokens.verify_only_keys`, public JWKs) so tokens they signed
//! keep verifying until they expire. Rotating from key A to key B:
//! 1. configure B as the signing key and A's public JWK (copied from the
//!    JWKS) as verify-only, and deploy: new tokens carry B's `kid`; a
//!    verifier that meets it for the first time refetches the JWKS once;
//! 2. after one access-token lifetime plus the verifiers' leeway and JWKS
//!    cache age (`max-age`), no token signed by A is still valid: remove A.
//!
//! With several auth replicas, publish B as verify-only everywhere first and
//! promote it in a second deploy, so no replica ever signs with a key the
//! JWKS of another replica does not show.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use jsonwebtoken::{
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
    },
    Algorithm, EncodingKey,
};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::config::{TokenSettings, VerifyOnlyKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the signing key is not an Ed25519 PKCS#8 PEM document")]
    Unreadable(#[source] ed25519_dalek::pkcs8::Error),
    #[error("the signing key cannot be encoded")]
    Encoding(#[source] ed25519_dalek::pkcs8::Error),
    #[error("the signing key cannot be published as a JWK")]
    Jwk(#[source] jsonwebtoken::errors::Error),
    #[error("a verify-only key is not a public Ed25519 JWK: {0}")]
    NotAPublicKey(String),
    #[error("the key id `{0}` is used by more than one key")]
    DuplicateKid(String),
}

/// The public half of a key, as verifiers see it: an Ed25519 JWK (RFC 8037)
/// with its `kid`.
#[derive(Debug, Clone)]
pub struct PublicKey {
    kid: String,
    /// Public members only (`kty`, `crv`, `x`); never a `d`.
    jwk: Jwk,
}

impl PublicKey {
    /// Names `jwk` by the configured `kid`, or by its RFC 7638 thumbprint
    /// when none is configured: a `kid` derived from the key itself needs no
    /// registry and cannot collide by accident.
    fn named(jwk: Jwk, kid: Option<String>) -> Result<Self, KeyError> {
        let kid = match kid {
            Some(kid) => kid,
            None => jwk
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(KeyError::Jwk)?,
        };
        Ok(Self { kid, jwk })
    }

    /// A verify-only key from configuration: an Ed25519 JWK with public
    /// members only.
    pub fn from_jwk(jwk: &VerifyOnlyKey) -> Result<Self, KeyError> {
        let refuse = |why: &str| KeyError::NotAPublicKey(why.to_owned());
        if jwk.d.is_some() {
            return Err(refuse(
                "it holds a private key (`d`); publish the public part only",
            ));
        }
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            return Err(refuse("`kty` must be `OKP` and `crv` `Ed25519`"));
        }
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&jwk.x)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| refuse("`x` is not 32 base64url bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| refuse("`x` is not an Ed25519 point"))?;
        let public = Jwk {
            common: CommonParameters::default(),
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: jwk.x.clone(),
            }),
        };
        Self::named(public, jwk.kid.clone())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The raw public key, base64url without padding (the JWK `x` member).
    pub fn x(&self) -> &str {
        match &self.jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(okp) => &okp.x,
            _ => unreachable!("only Ed25519 keys are ever built"),
        }
    }

    /// This key as a JWK (RFC 8037) for the JWK Set: public members only, no
    /// `d`, with the `kid`, `alg` and `use` verifiers select it by.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.jwk.clone();
        jwk.common = CommonParameters {
            key_id: Some(self.kid.clone()),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            public_key_use: Some(PublicKeyUse::Signature),
            ..CommonParameters::default()
        };
        serde_json::to_value(jwk).unwrap_or_else(|_| json!({}))
    }
}

/// A key that signs. Its `Debug` output never shows the private part.
pub struct SigningKey {
    public: PublicKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str, kid: Option<String>) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(KeyError::Unreadable)?;
        Self::from_dalek(&key, kid)
    }

    /// A fresh random key from the thread-local CSPRNG (seeded by the
    /// operating system).
    pub fn generate(kid: Option<String>) -> Result<Self, KeyError> {
        Self::from_dalek(&ed25519_dalek::SigningKey::generate(&mut rand::rng()), kid)
    }

    fn from_dalek(key: &ed25519_dalek::SigningKey, kid: Option<String>) -> Result<Self, KeyError> {
        // jsonwebtoken takes the key as PKCS#8 v1 DER (the secret alone, no
        // embedded public key) and derives the public JWK from it, so what is
        // published is what signs.
        let der = KeypairBytes {
            secret_key: key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_der()
        .map_err(KeyError::Encoding)?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA).map_err(KeyError::Jwk)?;
        let public = PublicKey::named(
            Jwk {
                common: CommonParameters::default(),
                ..jwk
            },
            kid,
        )?;
        Ok(Self { public, encoding })
    }

    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// The keys of this service: one that signs, older ones that only verify.
#[derive(Debug)]
pub struct KeySet {
    current: SigningKey,
    verify_only: Vec<PublicKey>,
}

impl KeySet {
    pub fn new(current: SigningKey) -> Self {
        Self {
            current,
            verify_only: Vec::new(),
        }
    }

    /// Keeps publishing `keys` (retired or not yet promoted) without signing
    /// with them.
    pub fn with_verify_only(mut self, keys: impl IntoIterator<Item = PublicKey>) -> Self {
        self.verify_only.extend(keys);
        self
    }

    /// The configured signing key (or an ephemeral one when none is
    /// configured) and the configured verify-only keys. Two keys under one
    /// `kid` are refused: a verifier could not tell which one to use.
    pub fn from_settings(settings: &TokenSettings) -> Result<Self, KeyError> {
        let set = Self::signing_from_settings(settings)?.with_verify_only(
            settings
                .verify_only_keys
                .iter()
                .map(PublicKey::from_jwk)
                .collect::<Result<Vec<_>, _>>()?,
        );
        let mut kids = std::collections::HashSet::new();
        for key in set.public_keys() {
            if !kids.insert(key.kid()) {
                return Err(KeyError::DuplicateKid(key.kid().to_owned()));
            }
        }
        for key in &set.verify_only {
            tracing::info!(kid = key.kid(), "verify-only key published");
        }
        Ok(set)
    }

    fn signing_from_settings(settings: &TokenSettings) -> Result<Self, KeyError> {
        let kid = settings.signing_kid.clone();
        let current = match &settings.signing_key_pem {
            Some(pem) => SigningKey::from_pkcs8_pem(pem.expose_secret(), kid)?,
            None => {
                let key = SigningKey::generate(kid)?;
                tracing::warn!(
                    kid = key.kid(),
                    "no signing key configured; using an ephemeral key: tokens will not survive \
                     a restart and replicas will not accept each other's tokens"
                );
                key
            }
        };
        tracing::info!(kid = current.kid(), "signing key loaded");
        Ok(Self::new(current))
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Every key a verifier should accept, the signing one first.
    pub fn public_keys(&self) -> impl Iterator<Item = &PublicKey> {
        std::iter::once(self.current.public()).chain(&self.verify_only)
    }

    /// The JWK Set document (RFC 7517 §5).
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.public_keys().map(PublicKey::jwk).collect::<Vec<_>>() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test key of RFC 8037, appendix A.1.
    const RFC8037_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn rfc8037_pem() -> String {
        let d: [u8; 32] = URL_SAFE_NO_PAD
            .decode(RFC8037_D)
            .unwrap()
            .try_into()
            .unwrap();
        ed25519_dalek::SigningKey::from_bytes(&d)
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_thumbprint_matches_rfc_8037() {
        // RFC 8037, appendix A.3.
        let jwk = VerifyOnlyKey {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: RFC8037_X.into(),
            kid: None,
            d: None,
        };
        assert_eq!(
            PublicKey::from_jwk(&jwk).unwrap().kid(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn a_pem_key_is_read_and_named_by_its_thumbprint() {
        let key = SigningKey::from_pkcs8_pem(&rfc8037_pem(), None).unwrap();
        assert_eq!(key.public().x(), RFC8037_X);
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn a_configured_kid_wins_over_the_thumbprint() {
        let key = SigningKey::from_pkcs8_pem(&rfc8037_pem(), Some("2025-01".to_owned())).unwrap();
        assert_eq!(key.kid(), "2025-01");
    }

    #[test]
    fn the_encoding_key_signs_with_the_loaded_key() {
        // RFC 8037, appendix A.4: Ed25519 is deterministic, so the same key
        // over the same input gives exactly this signature.
        let key = SigningKey::from_pkcs8_pem(&rfc8037_pem(), None).unwrap();
        let signature = jsonwebtoken::crypto::sign(
            b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
            key.encoding_key(),
            jsonwebtoken::Algorithm::EdDSA,
        )
        .unwrap();
        assert_eq!(
            signature,
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn garbage_is_not_a_signing_key() {
        let error = SigningKey::from_pkcs8_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
        )
        .unwrap_err();
        assert!(matches!(error, KeyError::Unreadable(_)));
    }

    #[test]
    fn the_jwks_publishes_every_public_key_and_no_private_part() {
        let current = SigningKey::generate(None).unwrap();
        let older = SigningKey::generate(Some("older".to_owned())).unwrap();
        let set = KeySet::new(current).with_verify_only([older.public().clone()]);

        let jwks = set.jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0]["kid"], set.current().kid());
        assert_eq!(keys[1]["kid"], "older");
        for key in keys {
            assert_eq!(key["kty"], "OKP");
            assert_eq!(key["crv"], "Ed25519");
            assert_eq!(key["alg"], "EdDSA");
            assert_eq!(key["use"], "sig");
            assert!(key.get("d").is_none());
        }
        // What verifiers parse it into.
        let parsed: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
        assert!(parsed.find(set.current().kid()).is_some());
    }

    fn jwk_of(key: &SigningKey, kid: Option<&str>) -> VerifyOnlyKey {
        VerifyOnlyKey {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: key.public().x().to_owned(),
            kid: kid.map(str::to_owned),
            d: None,
        }
    }

    #[test]
    fn configured_verify_only_keys_are_published_after_the_signing_key() {
        let previous = SigningKey::generate(None).unwrap();
        let settings = TokenSettings {
            signing_key_pem: Some(rfc8037_pem().into()),
            verify_only_keys: vec![jwk_of(&previous, None), jwk_of(&previous, Some("2024"))],
            ..TokenSettings::default()
        };

        let set = KeySet::from_settings(&settings).unwrap();

        let kids: Vec<_> = set.public_keys().map(PublicKey::kid).collect();
        assert_eq!(
            kids,
            [
                "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
                previous.kid(),
                "2024"
            ]
        );
        assert_eq!(
            set.current().kid(),
            kids[0],
            "only the configured key signs"
        );
    }

    #[test]
    fn a_verify_only_key_must_be_public_ed25519_and_its_kid_unique() {
        let key = SigningKey::from_pkcs8_pem(&rfc8037_pem(), None).unwrap();
        let with = |jwk: VerifyOnlyKey| TokenSettings {
            signing_key_pem: Some(rfc8037_pem().into()),
            verify_only_keys: vec![jwk],
            ..TokenSettings::default()
        };

        let private = VerifyOnlyKey {
            d: Some(RFC8037_D.into()),
            ..jwk_of(&key, Some("a"))
        };
        let wrong_curve = VerifyOnlyKey {
            crv: "X25519".into(),
            ..jwk_of(&key, Some("a"))
        };
        let short = VerifyOnlyKey {
            x: "AAAA".into(),
            ..jwk_of(&key, Some("a"))
        };
        for jwk in [private, wrong_curve, short] {
            assert!(matches!(
                KeySet::from_settings(&with(jwk)),
                Err(KeyError::NotAPublicKey(_))
            ));
        }
        // The signing key itself, again, under its own thumbprint.
        assert!(matches!(
            KeySet::from_settings(&with(jwk_of(&key, None))),
            Err(KeyError::DuplicateKid(_))
        ));
    }
}
