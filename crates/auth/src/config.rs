//! Auth settings: the shared listener, database and telemetry sections plus
//! the token policy. The signing key is a secret: it is read from the
//! environment (`APP__TOKENS__SIGNING_KEY_PEM`) and never serialised back.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use signalbox_platform::config::{DatabaseSettings, ListenSettings, TelemetrySettings};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub grpc: ListenSettings,
    /// JWKS and health endpoints.
    pub http: ListenSettings,
    pub database: DatabaseSettings,
    pub tokens: TokenSettings,
    pub telemetry: TelemetrySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: ListenSettings::on_port(50051),
            http: ListenSettings::on_port(8082),
            database: DatabaseSettings::local("auth"),
            tokens: TokenSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

/// What the issued tokens say and how long they live.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

        let loaded = signalbox_platform::config::load::<Settings>("auth-config-test");

        std::env::remove_var("APP__TOKENS__SIGNING_KEY_PEM");
        std::env::remove_var("APP__TOKENS__SIGNING_KID");
        std::env::remove_var("APP__TOKENS__ACCESS_TTL_SECS");
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
        assert_eq!(settings.grpc.port, 50051);
        assert_eq!(settings.http.port, 8082);
    }
}
