use signalbox_platform::{config, runtime, shutdown, telemetry};
use signalbox_realtime::{Application, Settings};

fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("realtime")?;
    // Built by hand rather than with `#[tokio::main]` for its worker count
    // (`Settings::worker_threads`, `signalbox_platform::runtime`).
    runtime::beside_the_broker(settings.worker_threads)?.block_on(async {
        telemetry::init("realtime", settings.telemetry.format);
        let app = Application::build(settings).await?;
        app.run_until_stopped(shutdown::on_signal()).await
    })
}
