//! Configuration: defaults in code, then an optional file, then environment.
//!
//! Layers, later ones win:
//! 1. the service's `Default` settings (so a bare binary runs on a laptop);
//! 2. `config/<service>.yaml`, if it exists (directory from `APP_CONFIG_DIR`);
//! 3. environment variables `APP__<SECTION>__<KEY>`, for example
//!    `APP__DATABASE__URL` or `APP__HTTP__PORT` (what compose and Kubernetes set).

use std::{net::SocketAddr, path::PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};

/// Loads the settings of `service`.
pub fn load<T>(service: &str) -> Result<T, config::ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let dir = std::env::var("APP_CONFIG_DIR").unwrap_or_else(|_| "config".to_owned());
    let file = PathBuf::from(dir).join(format!("{service}.yaml"));
    config::Config::builder()
        .add_source(config::Config::try_from(&T::default())?)
        .add_source(config::File::from(file).required(false))
        .add_source(
            config::Environment::with_prefix("APP")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()?
        .try_deserialize()
}

/// Where a listener binds. Port 0 asks the OS for a free port (tests do).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListenSettings {
    pub host: String,
    pub port: u16,
}

impl ListenSettings {
    pub fn on_port(port: u16) -> Self {
        Self {
            host: "0.0.0.0".to_owned(),
            port,
        }
    }

    /// Loopback with an OS-chosen port, for tests.
    pub fn ephemeral() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
        }
    }

    pub fn addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        format!("{}:{}", self.host, self.port).parse()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// The database `name` on the local PostgreSQL server.
    pub fn local(name: &str) -> Self {
        Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AmqpSettings {
    pub url: String,
    /// Prefix of every exchange and queue name (see `Namespace`).
    pub namespace: String,
    /// How long start-up waits for the broker before giving up.
    pub connect_timeout_secs: u64,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            namespace: "signalbox".to_owned(),
            connect_timeout_secs: 60,
        }
    }
}

/// How gateway and realtime verify access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifierSettings {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` / `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            jwks_url: "http://127.0.0.1:8082/.well-known/jwks.json".to_owned(),
            issuer: "signalbox-auth".to_owned(),
            audience: "signalbox".to_owned(),
            leeway_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TelemetrySettings {
    pub format: crate::telemetry::LogFormat,
}

/// Accepts a list either as a YAML sequence or as one comma-separated string
/// (what an environment variable can hold).
pub fn comma_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(match List::deserialize(deserializer)? {
        List::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        List::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Settings {
        #[serde(deserialize_with = "comma_list")]
        origins: Vec<String>,
    }

    #[test]
    fn a_list_reads_from_a_comma_separated_string_or_a_sequence() {
        let from_env: Settings =
            serde_json::from_str(r#"{"origins":"http://a, http://b"}"#).unwrap();
        let from_file: Settings =
            serde_json::from_str(r#"{"origins":["http://a","http://b"]}"#).unwrap();
        assert_eq!(from_env.origins, vec!["http://a", "http://b"]);
        assert_eq!(from_file.origins, from_env.origins);
    }
}
