use signalbox_platform::{config, shutdown, telemetry};
use signalbox_realtime::{Application, Settings};

fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("realtime")?;
    // Built by hand rather than with `#[tokio::main]` for its worker count
    // (see `Settings::worker_threads`).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads())
        .enable_all()
        .build()?
        .block_on(async {
            telemetry::init("realtime", settings.telemetry.format);
            let app = Application::build(settings).await?;
            app.run_until_stopped(shutdown::on_signal()).await
        })
}
