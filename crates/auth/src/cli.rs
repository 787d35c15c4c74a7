//! The `auth` binary's command line: serving is the default; `create-client`
//! creates a service account and prints its secret, once.
//!
//! ```text
//! auth                                                  # serve
//! auth create-client --id reporting --scopes "orders:read"
//! ```
//!
//! `create-client` uses the same configuration as the service (file and
//! `APP__DATABASE__URL`), applies the migrations, inserts the account and
//! exits; the running service sees the account at once.

use signalbox_platform::serve;

use crate::{clients, Settings};

pub const USAGE: &str = "usage: auth [create-client --id <client id> --scopes \"<scope> …\"]";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    CreateClient { id: String, scopes: String },
    Help,
}

impl Command {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut args = args.into_iter();
        match args.next().as_deref() {
            None => Ok(Self::Serve),
            Some("-h" | "--help" | "help") => Ok(Self::Help),
            Some("create-client") => {
                let (mut id, mut scopes) = (None, None);
                while let Some(flag) = args.next() {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                    match flag.as_str() {
                        "--id" => id = Some(value),
                        "--scopes" => scopes = Some(value),
                        other => return Err(format!("unknown option `{other}`\n{USAGE}")),
                    }
                }
                match (id, scopes) {
                    (Some(id), Some(scopes)) => Ok(Self::CreateClient { id, scopes }),
                    _ => Err(format!("create-client needs --id and --scopes\n{USAGE}")),
                }
            }
            Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
        }
    }
}

/// Creates a service account and prints its credentials to stdout.
pub async fn create_client(settings: &Settings, id: &str, scopes: &str) -> anyhow::Result<()> {
    let pool = serve::database(&settings.database).await?;
    sqlx::migrate!("../../migrations/auth").run(&pool).await?;
    let created = clients::create(&pool, id, scopes).await;
    pool.close().await;
    let created = created?;
    println!("client_id:     {}", created.client_id.as_str());
    println!("client_secret: {}", created.secret);
    println!("scope:         {}", created.scopes);
    println!("The secret is shown only this once and stored only as a hash: keep it now.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        Command::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn no_arguments_serve() {
        assert_eq!(parse(&[]), Ok(Command::Serve));
    }

    #[test]
    fn create_client_takes_an_id_and_scopes_in_any_order() {
        let expected = Command::CreateClient {
            id: "reporting".into(),
            scopes: "orders:read".into(),
        };
        assert_eq!(
            parse(&[
                "create-client",
                "--id",
                "reporting",
                "--scopes",
                "orders:read"
            ]),
            Ok(expected)
        );
        assert!(parse(&[
            "create-client",
            "--scopes",
            "orders:read",
            "--id",
            "reporting"
        ])
        .is_ok());
    }

    #[test]
    fn missing_or_unknown_options_are_errors_with_usage() {
        for args in [
            &["create-client", "--id", "reporting"][..],
            &["create-client", "--id"],
            &["create-client", "--name", "x", "--scopes", "y"],
            &["delete-client"],
        ] {
            assert!(parse(args).unwrap_err().contains("usage:"), "{args:?}");
        }
    }
}
