use signalbox_platform::{config, shutdown, telemetry};
use signalbox_realtime::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("realtime")?;
    telemetry::init("realtime", settings.telemetry.format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown::on_signal()).await
}
