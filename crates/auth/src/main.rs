use signalbox_auth::{
    cli::{self, Command},
    Application, Settings,
};
use signalbox_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let command = Command::parse(std::env::args().skip(1)).map_err(anyhow::Error::msg)?;
    let settings: Settings = config::load("auth")?;
    match command {
        Command::Serve => {
            telemetry::init("auth", settings.telemetry.format);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown::on_signal()).await
        }
        Command::CreateClient { id, scopes } => cli::create_client(&settings, &id, &scopes).await,
        Command::Help => {
            println!("{}", cli::USAGE);
            Ok(())
        }
    }
}
