//! A part of a test played by a process of its own, so that the test can
//! kill it the way a crash does: `SIGKILL`, no ack, no close, no cleanup;
//! the kernel drops its sockets and the broker requeues what it held.
//!
//! The child is this very test binary, run again for one test only
//! (`<module>::<test> --exact`) with [`ROLE`] set to the part it plays, as
//! JSON. The test asks [`role`] first: in the child it gets the part and
//! plays it instead of its own body. The child speaks to the parent in lines
//! on its stdout that carry [`PREFIX`] ([`say`]); everything else there (the
//! harness's own lines) is passed over.
//!
//! ```text
//!   parent test ── spawn(test, role) ──▶ child: same binary, same test, ROLE set
//!        ▲                                  │ role() → Some(part): plays it
//!        └──── "signalbox-child <text>" ◀───┘ say(text), one line each
//!   parent ── kill() ──▶ SIGKILL, reaped; the lines it said before dying are kept
//! ```

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Write},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
};

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;

use crate::helpers::DEADLINE;

/// The environment variable that carries the child's part.
const ROLE: &str = "SIGNALBOX_TEST_CHILD_ROLE";

/// What begins every line the child says to the parent.
const PREFIX: &str = "signalbox-child ";

/// In a child: the part the parent gave it. `None` in the test itself.
pub fn role<T: DeserializeOwned>() -> Option<T> {
    let json = std::env::var(ROLE).ok()?;
    Some(serde_json::from_str(&json).expect("the parent wrote the role"))
}

/// In a child: one line to the parent. Written and flushed under the stdout
/// lock, so lines said from several tasks do not mix.
pub fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{PREFIX}{text}");
    let _ = stdout.flush();
}

/// The child process, seen from the test.
pub struct Child {
    process: Option<std::process::Child>,
    /// The child's lines, read on a thread of their own (a blocking read of
    /// the pipe; it ends when the child's stdout closes, that is, when it
    /// dies).
    lines: mpsc::UnboundedReceiver<String>,
    /// The last few other lines on its stdout (the harness's, a failure's
    /// report), quoted when the child fails to say what it should. A `std`
    /// mutex: the reader thread and the test hold it only to push or copy.
    other: Arc<Mutex<VecDeque<String>>>,
}

/// How many of the child's other lines are kept.
const OTHER_LINES: usize = 40;

impl Child {
    /// Runs the test `test` (`module_path!()::name`, as in this binary)
    /// again in a child process, playing `role`.
    pub fn spawn(test: &str, role: &impl Serialize) -> anyhow::Result<Self> {
        // `module_path!()` begins with the binary's crate; the harness names
        // tests without it.
        let test = test.split_once("::").map_or(test, |(_, path)| path);
        let mut process = Command::new(std::env::current_exe()?)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, serde_json::to_string(role)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = process.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::unbounded_channel();
        let other = Arc::new(Mutex::new(VecDeque::new()));
        let others = other.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness writes `test <name> ... ` without a newline
                // before the test runs, so the child's first line may
                // follow it.
                match line.split_once(PREFIX) {
                    Some((_, text)) => {
                        if tx.send(text.to_owned()).is_err() {
                            break;
                        }
                    }
                    None => {
                        let mut others = others.lock().unwrap();
                        if others.len() == OTHER_LINES {
                            others.pop_front();
                        }
                        others.push_back(line);
                    }
                }
            }
        });
        Ok(Self {
            process: Some(process),
            lines,
            other,
        })
    }

    /// The next line the child says; an error if it says none within
    /// [`DEADLINE`] or exits first.
    pub async fn next(&mut self) -> anyhow::Result<String> {
        let failed = match tokio::time::timeout(DEADLINE, self.lines.recv()).await {
            Ok(Some(line)) => return Ok(line),
            Ok(None) => "the child exited".to_owned(),
            Err(_) => format!("the child said nothing within {DEADLINE:?}"),
        };
        let other = self
            .other
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>();
        anyhow::bail!("{failed}; its other output:\n{}", other.join("\n"))
    }

    /// Kills the child with `SIGKILL` and reaps it; returns how it ended and
    /// the lines it said that were not read yet.
    pub async fn kill(mut self) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        let mut process = self.process.take().expect("killed once");
        // Reaped even if the kill failed (the child had exited already,
        // which the caller then hears about).
        let killed = process.kill();
        let status = tokio::task::spawn_blocking(move || process.wait()).await??;
        killed?;
        let mut rest = Vec::new();
        // The pipe is closed now: the reader thread ends after the last line.
        while let Some(line) = tokio::time::timeout(DEADLINE, self.lines.recv()).await? {
            rest.push(line);
        }
        Ok((status, rest))
    }
}

impl Drop for Child {
    /// A test that failed before the kill leaves no process behind.
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
