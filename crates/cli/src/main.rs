//! `signalbox`: see the library (`signalbox_cli`) for the commands.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    signalbox_cli::main().await
}
