//! What a caller gets when a layer refuses a call, as a gRPC status.
//!
//! A rejection never reached the upstream. It is a [`tonic::Status`] so that a
//! generated client returns it like any error of the call, with a metadata
//! entry (`signalbox-rejected`) that tells it apart from the same code sent
//! by the upstream itself: the edge answers an open breaker with
//! `upstream_unavailable` and `Retry-After`, a plain `Unavailable` from the
//! upstream with `upstream_error`.

use std::time::Duration;

use tonic::{metadata::MetadataValue, Code, Status};

/// The metadata key a rejection carries.
pub const REJECTED: &str = "signalbox-rejected";
/// The metadata key of how long an open breaker stays open, in seconds.
pub const RETRY_AFTER: &str = "retry-after";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The breaker is open: the upstream failed too often recently. The call
    /// may be tried again after `retry_after`.
    Open { retry_after: Duration },
    /// The bulkhead is full: too many calls to this upstream are outstanding.
    Overloaded,
    /// The call's deadline passed (before it was sent, or while it waited).
    DeadlineExceeded,
}

impl Rejection {
    fn tag(&self) -> &'static str {
        match self {
            Self::Open { .. } => "breaker-open",
            Self::Overloaded => "bulkhead-full",
            Self::DeadlineExceeded => "deadline",
        }
    }

    /// The rejection carried by `status`, if a layer produced it.
    pub fn of(status: &Status) -> Option<Self> {
        let tag = status.metadata().get(REJECTED)?.to_str().ok()?;
        match tag {
            "breaker-open" => {
                let secs = status
                    .metadata()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(Self::Open {
                    retry_after: Duration::from_secs(secs),
                })
            }
            "bulkhead-full" => Some(Self::Overloaded),
            "deadline" => Some(Self::DeadlineExceeded),
            _ => None,
        }
    }

    /// Boxed, as the layers return it.
    pub fn boxed(self) -> crate::BoxError {
        Box::new(Status::from(self))
    }
}

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        let (code, message) = match &rejection {
            Rejection::Open { .. } => (Code::Unavailable, "circuit breaker open"),
            Rejection::Overloaded => (Code::ResourceExhausted, "too many calls in flight"),
            Rejection::DeadlineExceeded => (Code::DeadlineExceeded, "deadline exceeded"),
        };
        let mut status = Status::new(code, message);
        status
            .metadata_mut()
            .insert(REJECTED, MetadataValue::from_static(rejection.tag()));
        if let Rejection::Open { retry_after } = rejection {
            // Whole seconds, rounded up, as HTTP's Retry-After wants them.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            status
                .metadata_mut()
                .insert(RETRY_AFTER, secs.max(1).into());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_survives_the_trip_through_a_status() {
        for rejection in [
            Rejection::Open {
                retry_after: Duration::from_millis(1500),
            },
            Rejection::Overloaded,
            Rejection::DeadlineExceeded,
        ] {
            let status = Status::from(rejection.clone());
            let back = Rejection::of(&status).expect("tagged");
            match rejection {
                // Rounded up to whole seconds.
                Rejection::Open { .. } => assert_eq!(
                    back,
                    Rejection::Open {
                        retry_after: Duration::from_secs(2)
                    }
                ),
                other => assert_eq!(back, other),
            }
        }
    }

    #[test]
    fn an_upstreams_own_unavailable_is_not_a_rejection() {
        assert_eq!(Rejection::of(&Status::unavailable("down")), None);
    }
}
