//! A private PostgreSQL server, for a test that must restart or kill its
//! database: the shared server (127.0.0.1:5432) serves every other test and
//! is never touched.
//!
//! [`PrivateServer::start`] runs `initdb` into a fresh directory under the
//! system's temporary directory and starts a postmaster on a free port,
//! listening on 127.0.0.1 and on a Unix socket in that directory, with
//! `trust` authentication for the user `postgres` and without `fsync` (a
//! test's data does not outlive it). [`PrivateServer::crash`] stops it the
//! way a crash does (`pg_ctl stop -m immediate`: every backend dies at once,
//! the next start runs crash recovery); [`PrivateServer::start_again`]
//! starts it again on the same port and data. Dropping it stops the server
//! and removes the directory.
//!
//! PostgreSQL refuses to run as root: when the test runs as root, every
//! command runs as the OS user `postgres` (`runuser -u postgres --`), which
//! owns the directory. The binaries are those of the newest
//! `/usr/lib/postgresql/<version>/bin`, or of `SIGNALBOX_TEST_PG_BIN`.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

/// A PostgreSQL server of one test's own. Blocking calls (a start takes a
/// second or two): from async code, call them in `spawn_blocking`.
pub struct PrivateServer {
    bin: PathBuf,
    /// The temporary directory: `data/`, the socket, the server's log.
    dir: PathBuf,
    port: u16,
    /// Whether the commands run through `runuser -u postgres` (we are root).
    as_postgres: bool,
}

impl PrivateServer {
    /// Initialises a cluster in a fresh directory and starts it on a free
    /// port; returns once it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("signalbox-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let server = Self {
            bin,
            dir,
            port: free_port()?,
            as_postgres,
        };
        // From here on, a failure removes the directory (Drop).
        if as_postgres {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&server.dir)
                .status()
                .context("run chown")?;
            anyhow::ensure!(status.success(), "chown postgres {}", server.dir.display());
        }
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    /// The server's URL without a database:
    /// `postgres://postgres@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`):
    /// every connection drops at once, nothing is shut down cleanly.
    pub fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Starts the server (again) on its port and data, and waits until it
    /// accepts connections (`pg_ctl -w`, after crash recovery).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log.to_string_lossy(),
            "-o",
            &options,
        ])
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let data = self.data();
        let mut all = vec!["-D", data.to_str().context("a UTF-8 path")?];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    /// Runs one of the server's programs (as `postgres` when we are root).
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&exe);
            command
        } else {
            Command::new(&exe)
        };
        let output = command
            .args(args)
            // The server's children must not inherit a test's pipes.
            .stdin(std::process::Stdio::null())
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            if let Err(error) = self.crash() {
                eprintln!("private PostgreSQL did not stop: {error:#}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's `bin` directory, or `SIGNALBOX_TEST_PG_BIN`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("SIGNALBOX_TEST_PG_BIN") {
        return Ok(dir.into());
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .with_context(|| format!("no PostgreSQL server under {}", root.display()))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            entry.path().join("bin/initdb").exists().then_some(version)
        })
        .max()
        .with_context(|| format!("no initdb under {}/<version>/bin", root.display()))?;
    Ok(root.join(newest.to_string()).join("bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// A port nobody listens on now (bound and released; the server binds it
/// a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
