use signalbox_gateway::{Application, Settings};
use signalbox_platform::{config, shutdown, telemetry};

/// The gateway allocates and frees on every request, on both cores (the
/// request and its headers, the boxed futures of the edge stack and of the
/// guarded client, the gRPC frames, the JSON answer), and glibc's
/// allocator was a fifth of its CPU in B2's profile (`docs/benchmarks.md`).
/// mimalloc keeps a heap per thread and frees to it without a lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = config::load("gateway")?;
    telemetry::init("gateway", settings.telemetry.format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown::on_signal()).await
}
