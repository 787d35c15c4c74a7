//! Auth settings: the shared listener, database and telemetry sections plus
//! the token policy and the login throttle. The signing key is a secret: it
//! is read from the environment (`APP__TOKENS__SIGNING_KEY_PEM`) and never
//! serialised back. Verify-only keys are public JWKs
//! (`APP__TOKENS__VERIFY_ONLY_KEYS`, a JWK Set document): see
//! [`crate::keys`] for how they make key rotation work.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};
use signalbox_discovery::DiscoverySettings;
use signalbox_platform::config::{DatabaseSettings, ListenSettings, TelemetrySettings};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub grpc: ListenSettings,
    /// JWKS and health endpoints.
    pub http: ListenSettings,
    pub database: DatabaseSettings,
    pub tokens: TokenSettings,
    /// Per-account limits on failed logins and client authentications.
    #[serde(default)]
    pub throttle: ThrottleSettings,
    /// Whether and how this instance announces its gRPC address
    /// (`APP__DISCOVERY__MODE=registry`, `APP__DISCOVERY__ETCD_ENDPOINTS`,
    /// `APP__DISCOVERY__ADVERTISE`, …).
    #[serde(default)]
    pub discovery: DiscoverySettings,
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: ListenSettings::on_port(50051),
            http: ListenSettings::on_port(8082),
            database: DatabaseSettings::local("auth"),
            tokens: TokenSettings::default(),
            throttle: ThrottleSettings::default(),
            discovery: DiscoverySettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// What the issued tokens say and how long they live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenSettings {
    /// The `iss` claim; verifiers require exactly this value.
    pub issuer: String,
    /// The `aud` claim; verifiers require exactly this value.
    pub audience: String,
    /// Lifetime of an access token. Short, because an access token cannot be
    /// revoked: it is checked offline against the JWKS until it expires.
    pub access_ttl_secs: u64,
    /// Lifetime of a refresh token; each rotation starts a new one.
    pub refresh_ttl_secs: u64,
    /// The `kid` of the signing key; the key's RFC 7638 thumbprint when unset.
    pub signing_kid: Option<String>,
    /// The Ed25519 signing key as a PKCS#8 PEM document
    /// (`openssl genpkey -algorithm ed25519`). When unset an ephemeral key is
    /// generated at start-up: fine on a laptop, wrong for anything that
    /// restarts or runs more than one replica.
    #[serde(skip_serializing, default)]
    pub signing_key_pem: Option<SecretString>,
    /// Public keys published in the JWKS beside the signing key, which never
    /// sign: the previous signing key after a rotation (until every token it
    /// signed has expired), or the next one before it is promoted. Given as a
    /// JWK Set document (`{"keys":[…]}`, e.g. copied from the JWKS before the
    /// rotation), a JSON array of JWKs, or a YAML list.
    #[serde(deserialize_with = "jwk_list")]
    pub verify_only_keys: Vec<VerifyOnlyKey>,
    /// Space-separated scopes of the access tokens issued to users (at login
    /// and on refresh). Service accounts get the scopes they were created
    /// with.
    pub user_scopes: String,
}

/// A public Ed25519 key as a JWK (RFC 8037): `kty: OKP`, `crv: Ed25519`,
/// `x`, and the `kid` its tokens carry (the RFC 7638 thumbprint when absent).
/// Other members (`alg`, `use`) are accepted and ignored; a private `d` is
/// refused, so a secret cannot end up published by mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOnlyKey {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing)]
    pub d: Option<String>,
}

/// How many failed attempts one account (an email at login, a client id at
/// the token endpoint) may make in a window before it must wait for the
/// window to end. Kept in the auth database, so every gateway and every
/// auth replica counts against the same limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleSettings {
    pub max_failures: u32,
    pub window_secs: u64,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window_secs: 15 * 60,
        }
    }
}

/// Reads the verify-only keys from a YAML list, a JWK Set document or a
/// JSON string holding either (what an environment variable can carry).
fn jwk_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<VerifyOnlyKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        Text(String),
        Set { keys: Vec<VerifyOnlyKey> },
        List(Vec<VerifyOnlyKey>),
    }
    match Keys::deserialize(deserializer)? {
        Keys::Set { keys } | Keys::List(keys) => Ok(keys),
        Keys::Text(text) if text.trim().is_empty() => Ok(Vec::new()),
        Keys::Text(text) => {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Json {
                Set { keys: Vec<VerifyOnlyKey> },
                List(Vec<VerifyOnlyKey>),
                One(VerifyOnlyKey),
            }
            match serde_json::from_str::<Json>(&text) {
                Ok(Json::Set { keys } | Json::List(keys)) => Ok(keys),
                Ok(Json::One(key)) => Ok(vec![key]),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "verify_only_keys is not a JWK Set or a list of JWKs: {e}"
                ))),
            }
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            issuer: "signalbox-auth".to_owned(),
            audience: "signalbox".to_owned(),
            access_ttl_secs: 300,
            refresh_ttl_secs: 14 * 24 * 60 * 60,
            signing_kid: None,
            signing_key_pem: None,
            verify_only_keys: Vec::new(),
            user_scopes: "orders:read orders:write".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_signing_key_is_never_serialised() {
        let mut settings = Settings::default();
        settings.tokens.signing_key_pem = Some(SecretString::from("-----BEGIN PRIVATE KEY-----"));

        let shown = serde_json::to_string(&settings).unwrap();

        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(!shown.contains("signing_key_pem"), "{shown}");
    }

    #[test]
    fn token_settings_come_from_the_environment() {
        // The only test in this binary that touches `APP__*` variables.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        std::env::set_var("APP__TOKENS__SIGNING_KEY_PEM", pem);
        std::env::set_var("APP__TOKENS__SIGNING_KID", "2025");
        std::env::set_var("APP__TOKENS__ACCESS_TTL_SECS", "60");
        std::env::set_var(
            "APP__TOKENS__VERIFY_ONLY_KEYS",
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"2024"}]}"#,
        );
        std::env::set_var("APP__THROTTLE__MAX_FAILURES", "3");

        let loaded = signalbox_platform::config::load::<Settings>("auth-config-test");

        for name in [
            "APP__TOKENS__SIGNING_KEY_PEM",
            "APP__TOKENS__SIGNING_KID",
            "APP__TOKENS__ACCESS_TTL_SECS",
            "APP__TOKENS__VERIFY_ONLY_KEYS",
            "APP__THROTTLE__MAX_FAILURES",
        ] {
            std::env::remove_var(name);
        }
        let settings = loaded.unwrap();
        let tokens = settings.tokens;
        assert_eq!(
            tokens.signing_key_pem.as_ref().map(|s| s.expose_secret()),
            Some(pem)
        );
        assert_eq!(tokens.signing_kid.as_deref(), Some("2025"));
        assert_eq!(tokens.access_ttl_secs, 60);
        assert_eq!(tokens.refresh_ttl_secs, 14 * 24 * 60 * 60);
        assert_eq!(tokens.issuer, "signalbox-auth");
        assert_eq!(tokens.verify_only_keys.len(), 1);
        assert_eq!(tokens.verify_only_keys[0].kid.as_deref(), Some("2024"));
        assert_eq!(tokens.user_scopes, "orders:read orders:write");
        assert_eq!(settings.throttle.max_failures, 3);
        assert_eq!(settings.throttle.window_secs, 900);
        assert_eq!(settings.grpc.port, 50051);
        assert_eq!(settings.http.port, 8082);
    }

    #[test]
    fn verify_only_keys_read_from_a_jwk_set_document_or_a_list() {
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"2024","alg":"EdDSA","use":"sig"}"#;
        let expected = vec![VerifyOnlyKey {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo".into(),
            kid: Some("2024".into()),
            d: None,
        }];
        for raw in [
            format!(
                r#"{{"verify_only_keys": {}}}"#,
                serde_json::to_string(&format!(r#"{{"keys":[{jwk}]}}"#)).unwrap()
            ),
            format!(
                r#"{{"verify_only_keys": {}}}"#,
                serde_json::to_string(&format!("[{jwk}]")).unwrap()
            ),
            format!(r#"{{"verify_only_keys": [{jwk}]}}"#),
            format!(r#"{{"verify_only_keys": {{"keys": [{jwk}]}}}}"#),
        ] {
            let tokens: TokenSettings = serde_json::from_str(&raw).unwrap();
            assert_eq!(tokens.verify_only_keys, expected, "{raw}");
        }
        let empty: TokenSettings = serde_json::from_str(r#"{"verify_only_keys": ""}"#).unwrap();
        assert!(empty.verify_only_keys.is_empty());
        assert!(serde_json::from_str::<TokenSettings>(r#"{"verify_only_keys": "nope"}"#).is_err());
    }
}
