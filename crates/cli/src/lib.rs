//! `signalbox`: the system's command line, a client of its public contract
//! like the live page and any script: REST through the gateway, the socket
//! of the realtime service with a bearer token, and (for the operator's
//! `dlq`) the broker.
//!
//! - [`args`]: the commands and options (clap);
//! - [`gateway`]: the REST calls, and the stored login that refreshes itself;
//! - [`credentials`]: where the login is kept (the user's config directory, 0600);
//! - [`watch`]: the socket, with reconnect, recovery and in-band token refresh;
//! - [`dlq`]: dead letters, through `signalbox_messaging::dead_letters`;
//! - [`output`]: text or `--json`, and the spinner;
//! - [`error`]: what can fail, the exit code of each, and what to do.

#![forbid(unsafe_code)]

pub mod args;
pub mod credentials;
pub mod dlq;
pub mod error;
pub mod gateway;
pub mod output;
pub mod watch;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    args::{Cli, Command, Credentials, DlqCommand, Item, OrderCommand, WatchArgs},
    credentials::{Store, Stored},
    error::{CliError, Kind},
    gateway::{Gateway, Session},
    output::{money, table, Output},
};

/// Parses the command line, runs the command, prints the error if any, and
/// returns the exit code that says how it went.
pub async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version are successes; anything else is bad input
            // (clap's own exit code 2, the same as `Kind::BadInput`).
            let _ = error.print();
            return ExitCode::from(error.exit_code() as u8);
        }
    };
    let out = Output { json: cli.json };
    match run(cli, &out).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if out.json {
                eprintln!("{}", error.to_json());
            } else {
                eprintln!("signalbox: {error}");
            }
            error.exit_code()
        }
    }
}

pub async fn run(cli: Cli, out: &Output) -> Result<(), CliError> {
    let gateway = Gateway::new(&cli.gateway)?;
    let session = || match &cli.token {
        Some(token) => Ok(Session::with_token(gateway.clone(), token.clone())),
        None => Session::stored(gateway.clone(), Store::in_config_dir()?),
    };
    match &cli.command {
        Command::Register(credentials) => register(out, &gateway, credentials).await,
        Command::Login(credentials) => login(out, &gateway, credentials).await,
        Command::Logout => logout(out, &gateway).await,
        Command::Products => products(out, &gateway).await,
        Command::Order(OrderCommand::Place {
            items,
            wait,
            timeout,
        }) => {
            let mut session = session()?;
            place(out, &mut session, &cli.realtime, items, *wait, *timeout).await
        }
        Command::Order(OrderCommand::List) => list_orders(out, &mut session()?).await,
        Command::Order(OrderCommand::Cancel { order_id }) => {
            cancel(out, &mut session()?, order_id).await
        }
        Command::Watch(args) => watch(out, &mut session()?, &cli.realtime, args).await,
        Command::Census { deadline_ms } => census(out, &gateway, *deadline_ms).await,
        Command::Dlq(DlqCommand::List(args)) => {
            dlq::run(
                out,
                &args.amqp_url,
                dlq::Operation::List,
                &args.queue,
                args.limit,
            )
            .await
        }
        Command::Dlq(DlqCommand::Replay(args)) => {
            dlq::run(
                out,
                &args.amqp_url,
                dlq::Operation::Replay,
                &args.queue,
                args.limit,
            )
            .await
        }
    }
}

/// The password from the options, or else the first line of stdin.
fn password(credentials: &Credentials) -> Result<String, CliError> {
    if let Some(password) = &credentials.password {
        return Ok(password.clone());
    }
    if std::io::stdin().is_terminal() {
        eprint!("password for {} (shown as you type): ", credentials.email);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::failed(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err(CliError::bad_input("no password given")
            .with_hint("pass --password, set SIGNALBOX_PASSWORD, or write it to stdin"));
    }
    Ok(password)
}

async fn register(
    out: &Output,
    gateway: &Gateway,
    credentials: &Credentials,
) -> Result<(), CliError> {
    let password = password(credentials)?;
    let answer = gateway
        .register(&credentials.email, &password)
        .await
        .map_err(|error| match error.code.as_deref() {
            Some("already_exists") | Some("conflict") => {
                error.with_hint("that email has an account: `signalbox login --email …`")
            }
            _ => error,
        })?;
    out.result(&answer, || {
        format!(
            "registered {} (user {}); next: signalbox login --email {}",
            answer["email"].as_str().unwrap_or(&credentials.email),
            answer["user_id"].as_str().unwrap_or("?"),
            credentials.email
        )
    });
    Ok(())
}

async fn login(out: &Output, gateway: &Gateway, credentials: &Credentials) -> Result<(), CliError> {
    let password = password(credentials)?;
    let tokens = gateway
        .login(&credentials.email, &password)
        .await
        .map_err(|error| match error.kind {
            Kind::NotLoggedIn => CliError {
                hint: Some(
                    "wrong email or password; no account yet? `signalbox register --email …`"
                        .to_owned(),
                ),
                ..error
            },
            _ => error,
        })?;
    let store = Store::in_config_dir()?;
    store.save(&Stored {
        gateway: gateway.base().to_owned(),
        email: credentials.email.clone(),
        access_token: tokens.access_token.clone(),
        refresh_token: tokens.refresh_token,
    })?;
    let user = watch::subject(&tokens.access_token).unwrap_or_default();
    let answer = json!({
        "email": credentials.email,
        "user_id": user,
        "gateway": gateway.base(),
        "session_file": store.path(),
    });
    out.result(&answer, || {
        format!(
            "logged in as {} (user {user}); the login is kept in {}",
            credentials.email,
            store.path().display()
        )
    });
    Ok(())
}

async fn logout(out: &Output, gateway: &Gateway) -> Result<(), CliError> {
    let store = Store::in_config_dir()?;
    let revoked = match store.load()? {
        Some(stored) if stored.gateway == gateway.base() => {
            gateway.logout(&stored.refresh_token).await.is_ok()
        }
        _ => false,
    };
    store.remove()?;
    out.result(&json!({"logged_out": true, "revoked": revoked}), || {
        "logged out".to_owned()
    });
    Ok(())
}

async fn fetch_products(gateway: &Gateway) -> Result<Value, CliError> {
    gateway
        .call(Method::GET, "/api/catalog/products", None, None)
        .await
}

async fn products(out: &Output, gateway: &Gateway) -> Result<(), CliError> {
    let answer = fetch_products(gateway).await?;
    out.result(&answer, || {
        let rows: Vec<Vec<String>> = answer["products"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    text(&p["sku"]),
                    text(&p["name"]),
                    money(
                        p["price_cents"].as_i64().unwrap_or_default(),
                        p["currency"].as_str().unwrap_or_default(),
                    ),
                    p["stock"].to_string(),
                    text(&p["id"]),
                ]
            })
            .collect();
        let mut shown = table(&["SKU", "NAME", "PRICE", "STOCK", "ID"], &rows);
        if answer["stale"] == true {
            shown.push_str("\n(catalog is not answering: this is its last known list)");
        }
        shown
    });
    Ok(())
}

/// The items as the gateway takes them: a SKU becomes its product's id.
async fn resolve(gateway: &Gateway, items: &[Item]) -> Result<Vec<Value>, CliError> {
    let needs_catalog = items
        .iter()
        .any(|item| uuid::Uuid::parse_str(&item.product).is_err());
    let catalog = if needs_catalog {
        fetch_products(gateway).await?
    } else {
        Value::Null
    };
    items
        .iter()
        .map(|item| {
            let id = if uuid::Uuid::parse_str(&item.product).is_ok() {
                item.product.clone()
            } else {
                catalog["products"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| {
                        p["sku"]
                            .as_str()
                            .is_some_and(|sku| sku.eq_ignore_ascii_case(&item.product))
                    })
                    .and_then(|p| p["id"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        CliError::bad_input(format!(
                            "no product has the id or SKU `{}`",
                            item.product
                        ))
                        .with_hint("`signalbox products` lists them")
                    })?
            };
            Ok(json!({"product_id": id, "quantity": item.quantity}))
        })
        .collect()
}

async fn place(
    out: &Output,
    session: &mut Session,
    realtime: &str,
    items: &[Item],
    wait: bool,
    timeout: u64,
) -> Result<(), CliError> {
    let body = json!({ "items": resolve(&session.gateway, items).await? });
    if !wait {
        let answer = session
            .call(Method::POST, "/api/orders", Some(&body))
            .await?;
        out.result(&answer, || placed(&answer));
        return Ok(());
    }
    // Subscribe first, then place: every event of the new order arrives
    // on a socket that is already listening.
    let options = watch::Options {
        url: realtime.to_owned(),
        channels: Vec::new(),
        until: Vec::new(),
        order: None,
        once: false,
        timeout: Some(std::time::Duration::from_secs(timeout)),
        raw_frames: false,
    };
    let mut watcher = watch::Watcher::new(options, session, out)?;
    watcher.subscribe().await?;
    let answer = watcher
        .session()
        .call(Method::POST, "/api/orders", Some(&body))
        .await?;
    let order_id = text(&answer["order_id"]);
    if !out.json {
        println!("{}", placed(&answer));
    }
    watcher.follow_order(&order_id);
    let final_event = watcher.run().await?.unwrap_or(Value::Null);
    let state = text(&final_event["state"]);
    let result = json!({"order_id": order_id, "state": state, "event": final_event});
    if out.json {
        println!("{result}");
    }
    if state == "REJECTED" {
        return Err(CliError::new(
            Kind::Rejected,
            format!(
                "order {order_id} was rejected: {}",
                final_event["reason"].as_str().unwrap_or("no reason given")
            ),
        ));
    }
    Ok(())
}

fn placed(answer: &Value) -> String {
    format!(
        "order {} placed: {}",
        text(&answer["order_id"]),
        text(&answer["state"])
    )
}

async fn list_orders(out: &Output, session: &mut Session) -> Result<(), CliError> {
    let answer = session.call(Method::GET, "/api/orders", None).await?;
    out.result(&answer, || {
        let rows: Vec<Vec<String>> = answer["orders"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let items: i64 = o["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| i["quantity"].as_i64().unwrap_or_default())
                    .sum();
                vec![
                    text(&o["id"]),
                    text(&o["state"]),
                    items.to_string(),
                    money(
                        o["total_cents"].as_i64().unwrap_or_default(),
                        o["currency"].as_str().unwrap_or_default(),
                    ),
                    text(&o["created_at"]),
                    o["rejection_reason"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        if rows.is_empty() {
            return "no orders yet; place one with `signalbox order place SIG-LAMP`".to_owned();
        }
        table(
            &["ID", "STATE", "ITEMS", "TOTAL", "CREATED", "REASON"],
            &rows,
        )
    });
    Ok(())
}

async fn cancel(out: &Output, session: &mut Session, order_id: &str) -> Result<(), CliError> {
    if uuid::Uuid::parse_str(order_id).is_err() {
        return Err(
            CliError::bad_input(format!("`{order_id}` is not an order id"))
                .with_hint("`signalbox order list` shows your orders' ids"),
        );
    }
    let answer = session
        .call(
            Method::POST,
            &format!("/api/orders/{order_id}/cancel"),
            None,
        )
        .await
        .map_err(|error| match error.kind {
            Kind::BadInput if error.code.as_deref() == Some("not_found") => {
                error.with_hint("`signalbox order list` shows your orders")
            }
            _ => error,
        })?;
    out.result(&answer, || {
        format!(
            "order {} is {}",
            text(&answer["id"]),
            text(&answer["state"])
        )
    });
    Ok(())
}

async fn watch(
    out: &Output,
    session: &mut Session,
    realtime: &str,
    args: &WatchArgs,
) -> Result<(), CliError> {
    let options = watch::Options {
        url: realtime.to_owned(),
        channels: args.channels.clone(),
        until: args.until.clone(),
        order: args.order.clone(),
        once: args.once,
        timeout: args.timeout(),
        raw_frames: true,
    };
    watch::Watcher::new(options, session, out)?.run().await?;
    Ok(())
}

async fn census(out: &Output, gateway: &Gateway, deadline_ms: u64) -> Result<(), CliError> {
    let answer = gateway
        .call(
            Method::GET,
            &format!("/api/system/instances?deadline_ms={deadline_ms}"),
            None,
            None,
        )
        .await
        .map_err(|error| match error.kind {
            Kind::ServerError => error.with_hint(
                "the census goes through RabbitMQ: is the broker running, and does the gateway have its address (APP__AMQP__URL)?",
            ),
            _ => error,
        })?;
    out.result(&answer, || {
        let rows: Vec<Vec<String>> = answer["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                vec![
                    text(&i["service"]),
                    text(&i["instance_id"]),
                    text(&i["version"]),
                    text(&i["started_at"]),
                ]
            })
            .collect();
        format!(
            "{}\n{} instance(s) answered within {} ms",
            table(&["SERVICE", "INSTANCE", "VERSION", "STARTED"], &rows),
            rows.len(),
            answer["deadline_ms"]
        )
    });
    Ok(())
}

/// A JSON string's text, or `-`.
fn text(value: &Value) -> String {
    value.as_str().unwrap_or("-").to_owned()
}
