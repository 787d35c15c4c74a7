use signalbox_auth::{Application, Settings};
use signalbox_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("auth")?;
    telemetry::init("auth", settings.telemetry.format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown::on_signal()).await
}
