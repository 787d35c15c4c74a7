//! `dlq`: list and replay dead letters. The operations, and what makes them
//! safe, are in `signalbox_messaging::dead_letters`; this binary parses the
//! command line, connects, calls them and prints what they return.

use std::{fmt, num::ParseIntError, process::ExitCode};

use signalbox_messaging::{
    chain::Chain,
    dead_letters::{self, DeadLetter},
};

/// Where the tool connects unless told otherwise.
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const USAGE: &str = "\
usage: dlq list   <queue> [--limit N] [--amqp-url URL]
       dlq replay <queue> [--limit N] [--amqp-url URL]

  list     print the dead letters of <queue> (that is, <queue>.dlq) with
           their failure reason, retry count and a body preview; nothing is
           consumed
  replay   move dead letters from <queue>.dlq back to <queue>, oldest first,
           with the retry count reset

  <queue>      the full queue name, e.g. signalbox.orders.replies
  --limit N    at most N messages
  --amqp-url   broker URL (default: $APP__AMQP__URL, else
               amqp://guest:guest@127.0.0.1:5672/%2f)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse_args(
        std::env::args().skip(1),
        std::env::var("APP__AMQP__URL").ok(),
    ) {
        Ok(cli) => cli,
        Err(problem) => {
            eprintln!("dlq: {}\n\n{USAGE}", Chain(&problem));
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dlq: {}", Chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// What the binary was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    List { queue: String, limit: Option<usize> },
    Replay { queue: String, limit: Option<usize> },
    Help,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cli {
    command: Command,
    amqp_url: String,
}

/// A command line that cannot be run.
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error("missing command")]
    MissingCommand,
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("expected exactly one queue name")]
    QueueCount,
    #[error("unknown option `{0}`")]
    UnknownOption(String),
    #[error("{option} needs {what}")]
    MissingValue {
        option: &'static str,
        what: &'static str,
    },
    #[error("--limit needs a number, not `{value}`")]
    BadLimit {
        value: String,
        #[source]
        source: ParseIntError,
    },
}

/// Parses the arguments after the program name. `env_url` is the value of
/// `APP__AMQP__URL`, if set.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env_url: Option<String>,
) -> Result<Cli, UsageError> {
    let mut amqp_url = env_url.unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
    let mut limit = None;
    let mut positional = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => {
                return Ok(Cli {
                    command: Command::Help,
                    amqp_url,
                })
            }
            "--limit" => {
                let value = args.next().ok_or(UsageError::MissingValue {
                    option: "--limit",
                    what: "a number",
                })?;
                let n = value
                    .parse()
                    .map_err(|source| UsageError::BadLimit { value, source })?;
                limit = Some(n);
            }
            "--amqp-url" => {
                amqp_url = args.next().ok_or(UsageError::MissingValue {
                    option: "--amqp-url",
                    what: "a URL",
                })?
            }
            flag if flag.starts_with("--") => return Err(UsageError::UnknownOption(arg)),
            _ => positional.push(arg),
        }
    }
    let command = match positional.as_slice() {
        [verb, queue] if verb == "list" => Command::List {
            queue: queue.clone(),
            limit,
        },
        [verb, queue] if verb == "replay" => Command::Replay {
            queue: queue.clone(),
            limit,
        },
        [] => return Err(UsageError::MissingCommand),
        [verb, ..] if verb != "list" && verb != "replay" => {
            return Err(UsageError::UnknownCommand(verb.clone()))
        }
        _ => return Err(UsageError::QueueCount),
    };
    Ok(Cli { command, amqp_url })
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if cli.command == Command::Help {
        println!("{USAGE}");
        return Ok(());
    }
    let connection = dead_letters::connect(&cli.amqp_url).await?;
    let channel = connection.create_channel().await?;
    let outcome =
        match &cli.command {
            Command::List { queue, limit } => dead_letters::list(&channel, queue, *limit)
                .await
                .map(|letters| {
                    for letter in &letters {
                        println!("{}\n", Shown(letter));
                    }
                    println!(
                        "{} dead letter(s) in {}",
                        letters.len(),
                        dead_letters::queue_pair(queue).1
                    );
                }),
            Command::Replay { queue, limit } => dead_letters::replay(&channel, queue, *limit)
                .await
                .map(|moved| {
                    let (work, dlq) = dead_letters::queue_pair(queue);
                    println!("moved {moved} message(s) from {dlq} to {work}");
                }),
            Command::Help => Ok(()),
        };
    // Close politely whatever happened: the broker requeues anything still
    // held, and does so at once rather than after a heartbeat timeout.
    if let Err(error) = connection.close(200, "done".into()).await {
        tracing::debug!(%error, "connection close");
    }
    Ok(outcome?)
}

/// A dead letter as `dlq list` prints it.
struct Shown<'a>(&'a DeadLetter);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = self.0;
        let or_dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".to_owned());
        writeln!(
            f,
            "message {}  type {}  retries {}  failed at {}",
            or_dash(&letter.message_id),
            or_dash(&letter.message_type),
            letter.retry_count,
            or_dash(&letter.failed_at),
        )?;
        writeln!(f, "  reason: {}", or_dash(&letter.failure_reason))?;
        if let Some(replayed_at) = &letter.replayed_at {
            writeln!(f, "  replayed before at {replayed_at}")?;
        }
        write!(f, "  body:   {}", letter.body_preview)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_command_line_names_the_queue_the_limit_and_the_broker() {
        let cli = parse_args(args("replay q.x --limit 5 --amqp-url amqp://b"), None).unwrap();
        assert_eq!(
            cli.command,
            Command::Replay {
                queue: "q.x".into(),
                limit: Some(5)
            }
        );
        assert_eq!(cli.amqp_url, "amqp://b");
    }

    #[test]
    fn the_broker_url_comes_from_the_environment_then_the_default() {
        let cli = parse_args(args("list q.x"), Some("amqp://env".into())).unwrap();
        assert_eq!(cli.amqp_url, "amqp://env");
        let cli = parse_args(args("list q.x"), None).unwrap();
        assert_eq!(cli.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(
            cli.command,
            Command::List {
                queue: "q.x".into(),
                limit: None
            }
        );
    }

    #[test]
    fn a_wrong_command_line_is_refused_with_a_reason() {
        for (line, reason) in [
            ("", "missing command"),
            ("purge q", "unknown command"),
            ("list", "exactly one queue"),
            ("list a b", "exactly one queue"),
            ("list q --limit x", "needs a number"),
            ("list q --limit", "needs a number"),
            ("list q --amqp-url", "needs a URL"),
            ("list q --force", "unknown option"),
        ] {
            let error = parse_args(args(line), None).unwrap_err().to_string();
            assert!(error.contains(reason), "{line:?}: {error}");
        }
    }

    #[test]
    fn a_limit_that_is_not_a_number_keeps_the_parse_error() {
        let error = parse_args(args("list q --limit x"), None).unwrap_err();
        let source = std::error::Error::source(&error).expect("the parse error");
        assert!(source.is::<ParseIntError>(), "{source}");
    }

    #[test]
    fn a_listed_dead_letter_shows_its_story_and_a_dash_for_what_is_unknown() {
        let letter = DeadLetter {
            message_id: Some("m-1".into()),
            message_type: Some("order.cancelled".into()),
            failure_reason: Some("product does not exist".into()),
            retry_count: 2,
            failed_at: None,
            original_queue: Some("q.x".into()),
            replayed_at: Some("2025-01-01T00:00:00Z".into()),
            body_preview: "{}".into(),
        };
        assert_eq!(
            Shown(&letter).to_string(),
            "message m-1  type order.cancelled  retries 2  failed at -\n  \
             reason: product does not exist\n  \
             replayed before at 2025-01-01T00:00:00Z\n  \
             body:   {}"
        );
    }
}
