//! A service in a process of its own, for scenarios that must freeze one
//! service (`SIGSTOP`) while the rest of the system runs in the test's
//! process.
//!
//! The child is this package's `catalog-child` binary
//! (`src/bin/catalog-child.rs`), which cargo builds with the package's
//! integration tests, from the same code, and names in
//! `CARGO_BIN_EXE_catalog-child`: a test passes that path in
//! [`Options::catalog_process`](crate::Options::catalog_process).
//!
//! The child reads its settings from `APP__…` variables like the real
//! `catalog` binary, prints one line with its ports when it listens, and
//! stops when its stdin closes (the parent went away, also by a panic) or on
//! `SIGTERM`.

use std::{io::Read, path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

/// The line a child prints once it listens.
const READY: &str = "signalbox-child-ready";

/// A catalog running in a child process.
pub struct ChildService {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
}

impl ChildService {
    /// Starts catalog in a child process with `env` (its `APP__…`
    /// settings), and waits until it listens.
    pub async fn catalog(exe: &Path, env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A child that was not stopped (the test failed) is killed when
            // its handle goes, also when frozen.
            .kill_on_drop(true)
            .spawn()
            .context("start the catalog child process")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        // A task reads the child's stdout: it hands over the ready line,
        // then keeps draining, so that the child never blocks on a full pipe.
        let (ready, ports) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready = Some(ready);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix(READY) {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(rest.to_owned());
                    }
                }
            }
        });
        let mut service = Self {
            child,
            grpc_port: 0,
            http_port: 0,
        };
        let line = tokio::time::timeout(crate::DEADLINE, ports)
            .await
            .context("the catalog child did not start in time")?
            .context("the catalog child exited before it listened")?;
        let port = |key: &str| -> anyhow::Result<u16> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .context("a port in the ready line")?
                .parse()
                .context("a port number")
        };
        service.grpc_port = port("grpc=")?;
        service.http_port = port("http=")?;
        Ok(service)
    }

    /// The child's pid (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Freezes the process (`SIGSTOP`): its sockets stay open, the kernel
    /// still accepts connections, and nothing answers.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// Lets a frozen process run again (`SIGCONT`).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Stops the child gracefully (thawed first), and waits for its exit
    /// (within 15 s; killed on drop otherwise).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.thaw()?;
        self.signal("TERM")?;
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .context("the catalog child did not stop within 15 s")??;
        anyhow::ensure!(status.success(), "the catalog child exited with {status}");
        Ok(())
    }
}

/// The child's side: runs catalog from its `APP__…` settings until stdin
/// closes or `SIGTERM`.
pub fn catalog_main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let result: anyhow::Result<()> = runtime.block_on(async {
        let settings: signalbox_catalog::Settings = signalbox_platform::config::load("catalog")?;
        let app = signalbox_catalog::Application::build(settings).await?;
        println!("{READY} grpc={} http={}", app.grpc_port(), app.http_port());
        let shutdown = signalbox_platform::shutdown::on_signal();
        watch_parent(shutdown.clone());
        app.run_until_stopped(shutdown).await
    });
    result.expect("the catalog child");
}

/// Cancels `shutdown` when stdin reaches its end: the parent closed it or
/// died. A thread, because reading stdin blocks.
fn watch_parent(shutdown: CancellationToken) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock().by_ref(), &mut std::io::sink());
        shutdown.cancel();
    });
}
