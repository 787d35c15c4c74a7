use signalbox_gateway::{Application, Settings};
use signalbox_platform::{config, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("gateway")?;
    telemetry::init("gateway", settings.telemetry.format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown::on_signal()).await
}
