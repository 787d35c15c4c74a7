//! Running the real binary: a config directory per test, the system's
//! URLs in the environment, a deadline on every run.

use std::{path::PathBuf, process::Stdio};

use serde_json::Value;
use signalbox_system_tests::{TestSystem, DEADLINE};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStderr, ChildStdout, Command},
};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_signalbox");

pub const PASSWORD: &str = "correct horse battery staple";

/// One user's terminal: the binary with a config directory of its own.
pub struct Terminal {
    pub gateway: String,
    pub realtime: String,
    pub config: PathBuf,
}

/// What a finished run left.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The `--json` result on stdout.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, Some(0), "{self:?}");
        self
    }
}

impl Terminal {
    pub fn for_system(system: &TestSystem) -> Self {
        Self::new(&system.api.base, &system.realtime[0])
    }

    pub fn new(gateway: &str, realtime: &str) -> Self {
        let config = std::env::temp_dir().join(format!(
            "signalbox-cli-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        Self {
            gateway: gateway.to_owned(),
            realtime: realtime.to_owned(),
            config,
        }
    }

    /// Where `login` keeps the session.
    pub fn session_file(&self) -> PathBuf {
        self.config.join("signalbox").join("session.json")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("XDG_CONFIG_HOME", &self.config)
            .env("SIGNALBOX_GATEWAY", &self.gateway)
            .env("SIGNALBOX_REALTIME", &self.realtime)
            .env_remove("SIGNALBOX_TOKEN")
            .env_remove("SIGNALBOX_PASSWORD")
            .env_remove("SIGNALBOX_EMAIL")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs the binary to its end, within the deadline.
    pub async fn run(&self, args: &[&str]) -> Ran {
        let output = tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("signalbox {args:?} did not end within {DEADLINE:?}"))
            .expect("the binary runs");
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Registers and logs in a fresh user; returns the email.
    pub async fn logged_in(&self) -> String {
        let email = format!("cli-{}@example.com", uuid::Uuid::new_v4().simple());
        self.run(&["register", "--email", &email, "--password", PASSWORD])
            .await
            .assert_ok();
        self.run(&["login", "--email", &email, "--password", PASSWORD])
            .await
            .assert_ok();
        email
    }

    /// Starts the binary and hands back its stdout and stderr line by line.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        Running {
            child,
            stdout,
            stderr,
        }
    }
}

/// A binary still running.
pub struct Running {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
}

impl Running {
    /// Its exit code, within the deadline.
    pub async fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        Ok(tokio::time::timeout(DEADLINE, self.child.wait())
            .await??
            .code())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.config);
    }
}

/// The next line that `matches`, within the deadline.
pub async fn line_where<R>(
    lines: &mut Lines<R>,
    matches: impl Fn(&str) -> bool,
) -> anyhow::Result<String>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await? {
            if matches(&line) {
                return Ok(line);
            }
        }
        anyhow::bail!("the output ended before the line")
    })
    .await?
}

/// The access token `login` stored.
pub fn stored_token(terminal: &Terminal) -> String {
    let text = std::fs::read_to_string(terminal.session_file()).expect("a stored session");
    let session: Value = serde_json::from_str(&text).expect("the session is JSON");
    session["access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}
