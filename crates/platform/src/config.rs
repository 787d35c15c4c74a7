//! Configuration: defaults in code, then an optional file, then environment.
//!
//! Layers, later ones win:
//! 1. the service's `Default` settings (so a bare binary runs on a laptop);
//! 2. `config/<service>.yaml`, if it exists (directory from `APP_CONFIG_DIR`);
//! 3. environment variables `APP__<SECTION>__<KEY>`, for example
//!    `APP__DATABASE__URL` or `APP__HTTP__PORT` (what compose and Kubernetes set).
//!
//! Database and broker URLs can carry passwords, so they are
//! [`SecretString`]s: their `Debug` shows `[REDACTED]`, and the one place
//! that reads them is where a connection is opened
//! (`platform::serve::database`, `signalbox_servicekit::connect_broker`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::SecretString;
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize};

/// Loads the settings of `service`.
pub fn load<T>(service: &str) -> Result<T, config::ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let dir = std::env::var("APP_CONFIG_DIR").unwrap_or_else(|_| "config".to_owned());
    let file = PathBuf::from(dir).join(format!("{service}.yaml"));
    let defaults = secret::exposed(|| config::Config::try_from(&T::default()))?;
    config::Config::builder()
        .add_source(defaults)
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
    /// `postgres://user:password@host:port/database`.
    #[serde(serialize_with = "secret::serialize")]
    pub url: SecretString,
    pub max_connections: u32,
    /// How long a query waits for a free connection before it fails with
    /// `PoolTimedOut`, which the services answer `UNAVAILABLE` (503 at the
    /// gateway). Shorter than every deadline a call to a service can carry
    /// on purpose (the gateway's 5 s; orders' 2 s for its calls to catalog,
    /// which is what an order waits on): while the database is down, a
    /// request is refused with a clear 503 rather than outlived by a
    /// deadline and answered 504.
    #[serde(default = "DatabaseSettings::default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl DatabaseSettings {
    /// The database at `url`, with the default acquire timeout.
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: url.into().into(),
            max_connections,
            acquire_timeout_ms: Self::default_acquire_timeout_ms(),
        }
    }

    /// The database `name` on the local PostgreSQL server.
    pub fn local(name: &str) -> Self {
        Self::new(format!("postgres://postgres@127.0.0.1:5432/{name}"), 10)
    }

    fn default_acquire_timeout_ms() -> u64 {
        1_000
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`.
    #[serde(serialize_with = "secret::serialize")]
    pub url: SecretString,
    /// Prefix of every exchange and queue name (see `Namespace`).
    pub namespace: String,
    /// How long start-up waits for the broker before giving up.
    pub connect_timeout_secs: u64,
}

impl AmqpSettings {
    /// [`Self::connect_timeout_secs`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            namespace: "signalbox".to_owned(),
            connect_timeout_secs: 60,
        }
    }
}

/// Serialising a secret setting.
///
/// Settings serialise for one reason: [`load`] turns `T::default()` into its
/// first layer through serde. A secret is written out for that layer only;
/// serialised anywhere else (a settings dump, a log line) it reads
/// `[redacted]`, like its `Debug`.
pub mod secret {
    use std::cell::Cell;

    use secrecy::{ExposeSecret, SecretString};
    use serde::Serializer;

    /// What a secret serialises as outside [`super::load`].
    pub const REDACTED: &str = "[redacted]";

    thread_local! {
        /// Set while `load` serialises the defaults, on its own thread: the
        /// serialisation is synchronous, so nothing else runs under it.
        static EXPOSED: Cell<bool> = const { Cell::new(false) };
    }

    /// `#[serde(serialize_with = "secret::serialize")]` for a [`SecretString`].
    pub fn serialize<S: Serializer>(
        secret: &SecretString,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if EXPOSED.get() {
            serializer.serialize_str(secret.expose_secret())
        } else {
            serializer.serialize_str(REDACTED)
        }
    }

    /// Runs `serialize_defaults` with secrets written out.
    pub(super) fn exposed<T>(serialize_defaults: impl FnOnce() -> T) -> T {
        /// Resets the flag also if the serialisation panics.
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                EXPOSED.set(false);
            }
        }
        EXPOSED.set(true);
        let _reset = Reset;
        serialize_defaults()
    }
}

/// How gateway, realtime and orders verify access tokens.
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
    use secrecy::ExposeSecret;

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

    #[derive(Debug, Serialize, Deserialize)]
    struct Service {
        database: DatabaseSettings,
        amqp: AmqpSettings,
    }

    impl Default for Service {
        fn default() -> Self {
            Self {
                database: DatabaseSettings::local("config_test"),
                amqp: AmqpSettings {
                    url: "amqp://user:hunter2@broker:5672/%2f".into(),
                    ..AmqpSettings::default()
                },
            }
        }
    }

    #[test]
    fn debug_output_never_shows_a_database_or_broker_url() {
        let settings = Service {
            database: DatabaseSettings {
                url: "postgres://app:s3cret@db:5432/orders".into(),
                max_connections: 1,
                acquire_timeout_ms: 100,
            },
            ..Service::default()
        };

        let shown = format!("{settings:?}");

        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("db:5432"), "{shown}");
    }

    #[test]
    fn a_url_serialises_redacted_outside_the_loader() {
        let shown = serde_json::to_string(&Service::default()).unwrap();

        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(secret::REDACTED), "{shown}");
    }

    #[test]
    fn the_loader_keeps_a_default_url_and_takes_one_from_the_environment() {
        // The only test in this binary that sets `APP__*` variables.
        std::env::set_var("APP__DATABASE__URL", "postgres://app:s3cret@db:5432/orders");
        let loaded = load::<Service>("platform-config-test");
        std::env::remove_var("APP__DATABASE__URL");
        let settings = loaded.unwrap();

        assert_eq!(
            settings.database.url.expose_secret(),
            "postgres://app:s3cret@db:5432/orders"
        );
        assert_eq!(
            settings.amqp.url.expose_secret(),
            "amqp://user:hunter2@broker:5672/%2f"
        );
        // Layered, not replaced: the rest of the section keeps its default.
        assert_eq!(settings.database.max_connections, 10);
    }
}
