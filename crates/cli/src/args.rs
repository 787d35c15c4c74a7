//! The command line, as clap derives it: every command, option and default
//! readable in one file.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::EXIT_CODES;

/// Where the gateway answers unless told otherwise (scripts/up, compose).
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";
/// The socket service (scripts/up's first instance; compose's load balancer).
pub const DEFAULT_REALTIME: &str = "ws://127.0.0.1:8081/ws";
/// The broker, for `dlq` (scripts/services' RabbitMQ, compose's).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Parser)]
#[command(
    name = "signalbox",
    version,
    about = "Use Signalbox from a terminal: an account, the catalog, orders, and watching them move live.",
    long_about = "Use Signalbox from a terminal: register and log in (the login is kept in \
                  your config directory, e.g. ~/.config/signalbox/session.json, readable by \
                  you only), list products, place, list and cancel orders, watch them move \
                  PENDING -> APPROVED live over the socket, take the census of running \
                  instances, and list or replay dead letters.\n\n\
                  Start with:  signalbox register --email ada@example.com && signalbox login \
                  --email ada@example.com && signalbox order place SIG-LAMP --wait",
    after_help = EXIT_CODES,
)]
pub struct Cli {
    /// The gateway's base URL.
    #[arg(long, global = true, env = "SIGNALBOX_GATEWAY", default_value = DEFAULT_GATEWAY)]
    pub gateway: String,

    /// The socket service's URL (watch, order place --wait).
    #[arg(long, global = true, env = "SIGNALBOX_REALTIME", default_value = DEFAULT_REALTIME)]
    pub realtime: String,

    /// Use this access token instead of the stored login (it is not
    /// refreshed or stored).
    #[arg(long, global = true, env = "SIGNALBOX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Print results as JSON (one document, or one line per frame for
    /// watch), errors as JSON on stderr.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account.
    Register(Credentials),
    /// Log in and keep the login for the next commands.
    Login(Credentials),
    /// End the stored login (the refresh token is revoked).
    Logout,
    /// List the products of the catalog.
    Products,
    /// Place, list or cancel your orders.
    #[command(subcommand)]
    Order(OrderCommand),
    /// Watch your events live on the socket (reconnects and recovers what it missed).
    Watch(WatchArgs),
    /// Which service instances are running, by asking them all (scatter-gather).
    Census {
        /// How long to wait for answers, in milliseconds (at most 5000).
        #[arg(long, default_value_t = 500)]
        deadline_ms: u64,
    },
    /// List or replay the dead letters of a queue (talks to the broker directly).
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Args)]
pub struct Credentials {
    #[arg(long, env = "SIGNALBOX_EMAIL")]
    pub email: String,
    /// The password; without it (and without SIGNALBOX_PASSWORD) it is
    /// read from the first line of stdin.
    #[arg(long, env = "SIGNALBOX_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Place an order: each item is a product id or SKU, with `:N` for a
    /// quantity other than 1 (e.g. `SIG-LAMP:2`).
    Place {
        #[arg(required = true, value_name = "PRODUCT[:QUANTITY]", value_parser = parse_item)]
        items: Vec<Item>,
        /// Wait on the socket until the order is approved or rejected.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        timeout: u64,
    },
    /// List your orders, newest first.
    List,
    /// Cancel one of your orders.
    Cancel {
        #[arg(value_name = "ORDER_ID")]
        order_id: String,
    },
}

/// One line of an order as the command line gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// A product id (UUID) or a SKU, resolved against the catalog.
    pub product: String,
    pub quantity: i64,
}

fn parse_item(text: &str) -> Result<Item, String> {
    let (product, quantity) = match text.rsplit_once(':') {
        Some((product, quantity)) => {
            let quantity: i64 = quantity.parse().map_err(|_| {
                format!("`{quantity}` is not a quantity (PRODUCT:N, N a whole number)")
            })?;
            (product, quantity)
        }
        None => (text, 1),
    };
    if product.is_empty() {
        return Err("a product id or SKU is needed before `:`".to_owned());
    }
    if quantity < 1 {
        return Err(format!("the quantity must be at least 1, not {quantity}"));
    }
    Ok(Item {
        product: product.to_owned(),
        quantity,
    })
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A channel to subscribe to (repeatable); default: your own `user:<id>`.
    /// `catalog` carries price and stock changes.
    #[arg(long = "channel", value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Stop (exit 0) at the first event with this state (repeatable, or
    /// `APPROVED|REJECTED`).
    #[arg(long, value_name = "STATE", value_delimiter = '|')]
    pub until: Vec<String>,
    /// Only events of this order; without --until, stop when it is
    /// approved, rejected or cancelled.
    #[arg(long, value_name = "ORDER_ID")]
    pub order: Option<String>,
    /// Do not reconnect: a socket that closes ends the watch (exit 7 if an
    /// awaited event had not come).
    #[arg(long)]
    pub once: bool,
    /// Stop after this many seconds (exit 7 if an awaited event had not come).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

impl WatchArgs {
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.map(Duration::from_secs)
    }
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters of QUEUE (that is, QUEUE.dlq) with their
    /// failure reason, retry count and a body preview; nothing is consumed.
    List(DlqArgs),
    /// Move dead letters from QUEUE.dlq back to QUEUE, oldest first, with
    /// the retry count reset.
    Replay(DlqArgs),
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The full work-queue name (or its .dlq), e.g. signalbox.orders.replies.
    pub queue: String,
    /// At most N messages.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The broker.
    #[arg(long, env = "APP__AMQP__URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("signalbox").chain(line.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_item_is_a_product_with_an_optional_quantity() {
        assert_eq!(
            parse_item("SIG-LAMP").unwrap(),
            Item {
                product: "SIG-LAMP".into(),
                quantity: 1
            }
        );
        assert_eq!(parse_item("p:3").unwrap().quantity, 3);
        for (bad, reason) in [
            ("p:x", "not a quantity"),
            ("p:0", "at least 1"),
            ("p:-2", "at least 1"),
            (":2", "product id or SKU"),
        ] {
            assert!(parse_item(bad).unwrap_err().contains(reason), "{bad}");
        }
    }

    #[test]
    fn dlq_names_the_queue_the_limit_and_the_broker() {
        let cli = parse("dlq replay q.x --limit 5 --amqp-url amqp://b").unwrap();
        let Command::Dlq(DlqCommand::Replay(args)) = cli.command else {
            panic!("not a replay")
        };
        assert_eq!((args.queue.as_str(), args.limit), ("q.x", Some(5)));
        assert_eq!(args.amqp_url, "amqp://b");
    }

    #[test]
    fn a_wrong_command_line_is_refused_with_a_reason() {
        for (line, reason) in [
            ("", "Usage"),
            ("dlq purge q", "unrecognized subcommand"),
            ("dlq list", "<QUEUE>"),
            ("dlq list a b", "unexpected argument"),
            ("dlq list q --limit x", "invalid value"),
            ("dlq list q --limit", "a value is required"),
            ("dlq list q --force", "unexpected argument"),
            ("order place", "PRODUCT[:QUANTITY]"),
            ("order place lamp:x", "not a quantity"),
            ("watch --timeout soon", "invalid value"),
        ] {
            let error = parse(line).expect_err(line).to_string();
            assert!(error.contains(reason), "{line:?}: {error}");
        }
    }

    #[test]
    fn until_takes_states_separated_by_a_bar() {
        let cli = parse("watch --until APPROVED|REJECTED --until CANCELLED").unwrap();
        let Command::Watch(args) = cli.command else {
            panic!("not a watch")
        };
        assert_eq!(args.until, ["APPROVED", "REJECTED", "CANCELLED"]);
    }
}
