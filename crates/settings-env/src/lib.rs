//! The environment variables a service reads, derived from its settings
//! type, so that a deployment file can be checked against the code and the
//! two cannot drift apart.
//!
//! `signalbox_platform::config::load` builds a service's settings from its
//! `Default`, then `config/<service>.yaml`, then `APP__SECTION__KEY`
//! variables: every leaf of the settings, serialised, is one variable. So
//! serialising `Settings::default()` and joining the path of every leaf
//! with `__` gives exactly the names `load` accepts, with their defaults.
//!
//! A deployment must set a variable whose default only works on a
//! developer's machine: one that points at loopback (`127.0.0.1`,
//! `localhost`: a database, a broker, an upstream, a listen address) or a
//! secret (written as `[redacted]`; a URL with credentials, a signing key),
//! which has no business being a default in a deployment. Those are marked
//! `required`.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use signalbox_platform::config::secret::REDACTED;

/// One variable a service reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variable {
    /// The default, as `load` starts from it (secrets redacted).
    pub default: Value,
    /// The default does not work inside a deployment.
    pub required: bool,
}

/// Every variable of a settings type, by name (`APP__HTTP__PORT`).
pub fn variables<T: Serialize>(
    defaults: &T,
) -> Result<BTreeMap<String, Variable>, serde_json::Error> {
    let mut out = BTreeMap::new();
    flatten("APP", &serde_json::to_value(defaults)?, &mut out);
    Ok(out)
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Variable>) {
    match value {
        Value::Object(fields) if !fields.is_empty() => {
            for (key, field) in fields {
                flatten(&format!("{prefix}__{}", key.to_uppercase()), field, out);
            }
        }
        leaf => {
            out.insert(
                prefix.to_owned(),
                Variable {
                    required: only_local(leaf),
                    default: leaf.clone(),
                },
            );
        }
    }
}

/// A default that cannot be right in a deployment.
fn only_local(value: &Value) -> bool {
    match value {
        Value::String(text) => {
            text == REDACTED || text.contains("127.0.0.1") || text.contains("localhost")
        }
        Value::Array(items) => items.iter().any(only_local),
        _ => false,
    }
}

/// Settings that are read but never serialised (secrets kept out of every
/// listing of the settings), so the walk above cannot see them: each one's
/// service and variable. The test below proves each name is read.
pub const UNSERIALISED: &[(&str, &str)] = &[
    // The token signing key: without it auth makes a key of its own at
    // start-up, which no other replica shares and no restart keeps.
    ("auth", "APP__TOKENS__SIGNING_KEY_PEM"),
];

/// The variables of every service, by service name (the name of its binary
/// and of its container's command).
pub fn all() -> Result<BTreeMap<&'static str, BTreeMap<String, Variable>>, serde_json::Error> {
    let mut all = listed()?;
    for (service, name) in UNSERIALISED {
        if let Some(variables) = all.get_mut(service) {
            variables.insert(
                (*name).to_owned(),
                Variable {
                    default: Value::Null,
                    required: true,
                },
            );
        }
    }
    Ok(all)
}

fn listed() -> Result<BTreeMap<&'static str, BTreeMap<String, Variable>>, serde_json::Error> {
    Ok(BTreeMap::from([
        ("auth", variables(&signalbox_auth::Settings::default())?),
        (
            "catalog",
            variables(&signalbox_catalog::Settings::default())?,
        ),
        (
            "gateway",
            variables(&signalbox_gateway::Settings::default())?,
        ),
        ("orders", variables(&signalbox_orders::Settings::default())?),
        (
            "realtime",
            variables(&signalbox_realtime::Settings::default())?,
        ),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_leaf_is_a_variable_and_loopback_or_secret_defaults_are_required() {
        let settings = json!({
            "http": {"host": "127.0.0.1", "port": 8080},
            "database": {"url": REDACTED},
            "tokens": {"issuer": "signalbox-auth"},
            "discovery": {"etcd_endpoints": ["http://localhost:2379"]},
            "limits": {"redis_url": null},
        });
        let found = variables(&settings).unwrap();
        let required: Vec<&str> = found
            .iter()
            .filter(|(_, v)| v.required)
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            required,
            [
                "APP__DATABASE__URL",
                "APP__DISCOVERY__ETCD_ENDPOINTS",
                "APP__HTTP__HOST"
            ]
        );
        assert_eq!(found["APP__HTTP__PORT"].default, 8080);
        assert!(found.contains_key("APP__LIMITS__REDIS_URL"));
        assert_eq!(found.len(), 6);
    }

    #[test]
    fn the_unserialised_secret_is_read_under_its_name() {
        // The one test in this binary that sets the environment.
        std::env::set_var("APP__TOKENS__SIGNING_KEY_PEM", "a key");
        let settings: signalbox_auth::Settings =
            signalbox_platform::config::load("settings-env-test").unwrap();
        std::env::remove_var("APP__TOKENS__SIGNING_KEY_PEM");
        assert!(settings.tokens.signing_key_pem.is_some());
        assert_eq!(UNSERIALISED, [("auth", "APP__TOKENS__SIGNING_KEY_PEM")]);
        assert!(all().unwrap()["auth"]["APP__TOKENS__SIGNING_KEY_PEM"].required);
    }

    #[test]
    fn every_service_reads_its_listener_and_the_gateway_its_broker() {
        let all = all().unwrap();
        for (service, variables) in &all {
            assert!(variables.contains_key("APP__HTTP__PORT"), "{service}");
        }
        assert!(all["gateway"]["APP__AMQP__URL"].required);
    }
}
