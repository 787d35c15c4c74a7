//! What the commands print. Human-readable text by default; with `--json`,
//! exactly one JSON document per result (one line per frame for `watch`) on
//! stdout and nothing else there, so a script can parse it. Progress and
//! notes go to stderr; the spinner only when stderr is a terminal.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

/// A spinner on stderr while a command waits for something; a no-op when
/// stderr is not a terminal or the output is JSON.
pub struct Spinner(ProgressBar);

impl Spinner {
    /// Prints `f`'s output without tearing the spinner's line.
    fn suspend(&self, f: impl FnOnce()) {
        self.0.suspend(f)
    }

    pub fn set_message(&self, message: &str) {
        self.0.set_message(message.to_owned());
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Output {
    /// A result: `value` as JSON, or `human` as text.
    pub fn result(&self, value: &Value, human: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    pub fn spinner(&self, message: &str) -> Spinner {
        if self.json || !std::io::stderr().is_terminal() {
            return Spinner(ProgressBar::hidden());
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner(bar)
    }

    /// A note about progress (connected, reconnecting), on stderr.
    pub fn status(&self, spinner: &Spinner, note: &str) {
        if !self.json {
            spinner.suspend(|| eprintln!("# {note}"));
        }
    }

    /// A socket frame, with `--json`: one line, as it came.
    pub fn frame(&self, spinner: &Spinner, frame: &Value) {
        if self.json {
            spinner.suspend(|| println!("{frame}"));
        }
    }

    /// A pushed event, as text (with `--json` [`Output::frame`] printed it).
    pub fn event(&self, spinner: &Spinner, frame: &Value) {
        if !self.json {
            spinner.suspend(|| println!("{}", describe_event(frame)));
        }
    }
}

/// One line for an event: `order <id> APPROVED` for an order, the type and
/// data for anything else.
pub fn describe_event(frame: &Value) -> String {
    let data = &frame["data"];
    let kind = data["type"].as_str().unwrap_or("event");
    match (data["order_id"].as_str(), data["state"].as_str()) {
        (Some(order), Some(state)) => {
            let mut line = format!("order {order}  {state:<9}  ({kind})");
            if let Some(reason) = data["reason"].as_str().filter(|r| !r.is_empty()) {
                line.push_str(&format!("  reason: {reason}"));
            }
            line
        }
        _ => format!(
            "{}  {kind}  {data}",
            frame["channel"].as_str().unwrap_or("?")
        ),
    }
}

/// Cents as `49.00 EUR`.
pub fn money(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", cents / 100, cents % 100)
}

/// Rows as columns padded to the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.iter().map(|row| line(row.clone())));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_order_event_reads_as_one_line_with_its_reason() {
        let frame = json!({"type": "event", "channel": "user:1", "data": {"type": "order.rejected", "order_id": "o1", "state": "REJECTED", "reason": "out of stock"}});
        assert_eq!(
            describe_event(&frame),
            "order o1  REJECTED   (order.rejected)  reason: out of stock"
        );
        let frame = json!({"channel": "catalog", "data": {"type": "catalog.price_changed", "product_id": "p"}});
        assert!(describe_event(&frame).starts_with("catalog  catalog.price_changed  {"));
    }

    #[test]
    fn money_and_tables_line_up() {
        assert_eq!(money(4900, "EUR"), "49.00 EUR");
        assert_eq!(money(-5, "EUR"), "-0.05 EUR");
        assert_eq!(
            table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]),
            "A    BB\nxxx  y"
        );
    }
}
