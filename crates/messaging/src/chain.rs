//! An error with its causes, on one line.
//!
//! Errors here keep their causes as sources (`#[source]`, `#[from]`) instead
//! of flattening them into their message. Where the story must become text
//! (a log line, the `x-failure-reason` header of a dead letter, `signalbox
//! dlq`'s output) [`Chain`] writes all of it: `outer: inner: innermost`.

use std::{error::Error, fmt};

/// Displays an error followed by its sources, `outer: inner: innermost`.
///
/// Some errors (lapin's, for one) already end their message with their
/// source's; such a cause is not written twice.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("quiet")]
    struct Quiet(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_outermost_first() {
        let error = Outer(Middle(std::io::Error::other("disk on fire")));
        assert_eq!(Chain(&error).to_string(), "outer: middle: disk on fire");
        let error = Quiet(std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&error).to_string(), "quiet: disk on fire");
    }

    #[test]
    fn a_cause_the_message_already_ends_with_is_not_repeated() {
        let error = Middle(std::io::Error::other("disk on fire"));
        assert_eq!(Chain(&error).to_string(), "middle: disk on fire");
    }
}
