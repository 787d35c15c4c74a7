//! `dlq`: list and replay dead letters. The logic, and what makes it safe,
//! is in `signalbox_messaging::dead_letters`; this only parses the command
//! line, connects, and prints.

use std::process::ExitCode;

use signalbox_messaging::{
    chain::Chain,
    dead_letters::{self, Cli, Command, USAGE},
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match dead_letters::parse_args(
        std::env::args().skip(1),
        std::env::var("APP__AMQP__URL").ok(),
    ) {
        Ok(cli) => cli,
        Err(problem) => {
            eprintln!("dlq: {problem}\n\n{USAGE}");
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
                        println!("{letter}\n");
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
