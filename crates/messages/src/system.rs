//! Messages about the running system itself rather than its business: the
//! census that asks every instance of every service to say who it is.
//!
//! The census is the *publish / async responses* pattern: one request is
//! published on the events exchange (publish-subscribe, so every instance
//! that bound its private queue to [`CensusRequest::TYPE`] gets a copy), and
//! every instance answers on the requester's reply queue. The requester does
//! not know how many answers to expect; it collects what arrives before its
//! deadline.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{channels::system, Message, MessageKind};

/// "Every instance: say who you are." Carries nothing; the envelope's
/// `reply_to` and `correlation_id` say where and how to answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusRequest {}

impl Message for CensusRequest {
    const TYPE: &'static str = system::CENSUS;
    /// A command addressed to everyone: it asks for an answer, which an
    /// event never does. (Publishing it on the events exchange is what makes
    /// it reach every instance.)
    const KIND: MessageKind = MessageKind::Command;
}

/// One instance's answer to a [`CensusRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusReply {
    /// The service name, for example `orders`.
    pub service: String,
    /// Unique per running instance (a new one at every start).
    pub instance_id: String,
    /// The version of the service's build.
    pub version: String,
    pub started_at: DateTime<Utc>,
}

impl Message for CensusReply {
    const TYPE: &'static str = "system.census.reply";
    const KIND: MessageKind = MessageKind::Reply;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_census_reply_reads_back_from_its_wire_form() {
        let reply = CensusReply {
            service: "orders".into(),
            instance_id: "i-1".into(),
            version: "0.1.0".into(),
            started_at: Utc::now(),
        };
        let json = serde_json::to_value(&reply).unwrap();
        assert_eq!(json["service"], "orders");
        let back: CensusReply = serde_json::from_value(json).unwrap();
        assert_eq!(back, reply);
    }
}
