//! Every way a command can fail, the exit code each one means, and the
//! advice printed with it: the one place where the gateway's problems, the
//! socket's close codes and the broker's errors become what a user reads.

use std::{fmt, process::ExitCode};

use serde_json::{json, Value};

/// The advice for a system that cannot be reached.
const START_IT: &str = "is Signalbox running? Start it with `scripts/up` (or `docker compose up \
                        --wait`), or point --gateway / SIGNALBOX_GATEWAY at it";

/// What went wrong, as a script tells it by the exit code. The numbers are
/// part of the command line's contract (printed by `--help`, [`EXIT_CODES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anything not covered below (a bug, a full disk).
    Failed = 1,
    /// The command line or what it names is wrong: an unknown option, a
    /// product or order that does not exist, a request the gateway refused
    /// as invalid (400, 404).
    BadInput = 2,
    /// No stored login, or it expired and could not be refreshed (401).
    NotLoggedIn = 3,
    /// The gateway, the socket service or the broker could not be reached.
    Unreachable = 4,
    /// The system understood and said no: not allowed (403), not in this
    /// state (409, 422), too many requests (429).
    Refused = 5,
    /// The system failed to answer (5xx, 503 while an upstream is down).
    ServerError = 6,
    /// `--until` / `--wait`: the awaited event did not come before the
    /// deadline, or the socket closed first with `--once`.
    NoOutcome = 7,
    /// `order place --wait`: the order was rejected.
    Rejected = 8,
}

/// What `--help` says about exit codes; kept beside [`Kind`] so the two
/// cannot disagree for long.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  failed for another reason (see the message)
  2  bad input: a wrong argument, or a product, order or queue that does not exist
  3  not logged in, or the login expired: run `signalbox login`
  4  the gateway, the socket service or the broker cannot be reached
  5  refused: not allowed, not possible in the order's state, or rate-limited
  6  the system failed to answer (a server error, an upstream down)
  7  the awaited event did not arrive in time (watch --until, order place --wait)
  8  the order was rejected (order place --wait)";

/// A failed command: its kind, what happened, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    pub hint: Option<String>,
    /// The problem's stable `code` when the gateway answered with one.
    pub code: Option<String>,
}

impl CliError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            hint: None,
            code: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, message)
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(Kind::BadInput, message)
    }

    pub fn not_logged_in(message: impl Into<String>) -> Self {
        Self::new(Kind::NotLoggedIn, message).with_hint("run `signalbox login --email <email>`")
    }

    pub fn no_outcome(message: impl Into<String>) -> Self {
        Self::new(Kind::NoOutcome, message)
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind as u8)
    }

    /// The error as `--json` prints it on stderr.
    pub fn to_json(&self) -> Value {
        json!({
            "error": {
                "exit_code": self.kind as u8,
                "code": self.code,
                "message": self.message,
                "hint": self.hint,
            }
        })
    }

    /// An HTTP call that got no answer at all.
    pub fn from_http(error: &reqwest::Error, url: &str) -> Self {
        if error.is_connect() || error.is_timeout() {
            let what = if error.is_timeout() {
                "did not answer in time"
            } else {
                "cannot be reached"
            };
            return Self::new(Kind::Unreachable, format!("the gateway at {url} {what}"))
                .with_hint(START_IT);
        }
        if error.is_builder() {
            return Self::bad_input(format!("`{url}` is not a usable URL"))
                .with_hint("--gateway takes a URL such as http://127.0.0.1:8080");
        }
        Self::new(
            Kind::Unreachable,
            format!("the call to {url} failed: {}", chain(error)),
        )
        .with_hint(START_IT)
    }

    /// A gateway answer that is not a success: the problem+json body's
    /// `code` and `detail` (RFC 9457), or the OAuth error (RFC 6749 §5.2) of
    /// `/oauth/*`, turned into the kind its status means.
    pub fn from_answer(status: u16, body: &str, url: &str) -> Self {
        let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let code = parsed["code"]
            .as_str()
            .or_else(|| parsed["error"].as_str())
            .map(str::to_owned);
        let detail = parsed["detail"]
            .as_str()
            .or_else(|| parsed["error_description"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let text = body.trim();
                if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.chars().take(200).collect()
                }
            });
        let (kind, hint) = match status {
            401 => (
                Kind::NotLoggedIn,
                Some("run `signalbox login --email <email>`".to_owned()),
            ),
            400 | 404 | 405 | 413 | 415 => (Kind::BadInput, None),
            // Forbidden; a conflict; not possible in the current state
            // (`failed_precondition`: cancelling a cancelled order).
            403 | 409 | 422 => (Kind::Refused, None),
            429 => (
                Kind::Refused,
                Some("too many requests: wait a moment and try again".to_owned()),
            ),
            503 | 504 => (
                Kind::ServerError,
                Some("a service behind the gateway is down or slow; try again, or check the services' logs (.run/logs/ under scripts/up, `docker compose logs`)".to_owned()),
            ),
            s if s >= 500 => (
                Kind::ServerError,
                Some("check the services' logs (.run/logs/ under scripts/up, `docker compose logs`)".to_owned()),
            ),
            _ => (Kind::Failed, None),
        };
        let code_text = code
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        Self {
            kind,
            message: format!("{url} answered {status}{code_text}: {detail}"),
            hint,
            code,
        }
    }

    /// A broker operation of `dlq` that failed.
    pub fn from_broker(error: &(dyn std::error::Error + 'static), url: &str) -> Self {
        Self::new(
            Kind::Unreachable,
            format!("the broker at {} failed: {}", redact(url), chain(error)),
        )
        .with_hint("is RabbitMQ running (scripts/services starts it)? --amqp-url / APP__AMQP__URL names another")
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

/// An error followed by its causes, on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    signalbox_messaging::chain::Chain(error).to_string()
}

/// A URL with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_becomes_the_kind_its_status_means_with_its_code() {
        let body = r#"{"type":"urn:signalbox:problem:not_found","title":"Not Found","status":404,"detail":"no such order","code":"not_found"}"#;
        let error = CliError::from_answer(404, body, "http://g/api/orders/x");
        assert_eq!(error.kind, Kind::BadInput);
        assert_eq!(error.code.as_deref(), Some("not_found"));
        assert!(error.message.contains("no such order"), "{}", error.message);

        let error = CliError::from_answer(401, "", "http://g/api/orders");
        assert_eq!(error.kind, Kind::NotLoggedIn);
        assert!(error.hint.unwrap().contains("signalbox login"));

        for (status, kind) in [
            (409, Kind::Refused),
            (429, Kind::Refused),
            (403, Kind::Refused),
            (503, Kind::ServerError),
            (500, Kind::ServerError),
            (422, Kind::Refused),
            (400, Kind::BadInput),
        ] {
            assert_eq!(
                CliError::from_answer(status, "{}", "u").kind,
                kind,
                "{status}"
            );
        }
    }

    #[test]
    fn an_oauth_error_keeps_its_error_code() {
        let body = r#"{"error":"invalid_grant","error_description":"refresh token reused"}"#;
        let error = CliError::from_answer(400, body, "http://g/oauth/token");
        assert_eq!(error.code.as_deref(), Some("invalid_grant"));
        assert!(error.message.contains("refresh token reused"));
    }

    #[test]
    fn every_exit_code_is_documented() {
        for kind in [
            Kind::Failed,
            Kind::BadInput,
            Kind::NotLoggedIn,
            Kind::Unreachable,
            Kind::Refused,
            Kind::ServerError,
            Kind::NoOutcome,
            Kind::Rejected,
        ] {
            let line = format!("\n  {}  ", kind as u8);
            assert!(EXIT_CODES.contains(&line), "{kind:?}");
        }
    }

    #[test]
    fn a_broker_url_loses_its_password_in_messages() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("not a url"), "not a url");
    }
}
