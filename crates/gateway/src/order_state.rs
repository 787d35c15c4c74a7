//! The public names of order states: the proto enum names without their
//! `ORDER_STATE_` prefix, as every JSON body that shows a state spells them
//! (the bodies of `routes::orders` and the aggregated order of
//! `aggregate`).

use signalbox_proto::orders::v1::OrderState;

/// The names [`state_name`] gives, as the OpenAPI document lists them (a
/// test checks the two agree).
#[derive(utoipa::ToSchema)]
#[schema(as = OrderState)]
#[allow(clippy::upper_case_acronyms, dead_code)]
pub enum StateName {
    PENDING,
    APPROVED,
    REJECTED,
    CANCELLED,
    UNSPECIFIED,
    /// A state this gateway does not know yet (a newer orders service).
    UNKNOWN,
}

/// The public name of the order state `raw`. A value this gateway does not
/// know yet (a newer orders service) reads as `UNKNOWN` rather than failing
/// the request.
pub fn state_name(raw: i32) -> &'static str {
    match OrderState::try_from(raw) {
        Ok(OrderState::Pending) => "PENDING",
        Ok(OrderState::Approved) => "APPROVED",
        Ok(OrderState::Rejected) => "REJECTED",
        Ok(OrderState::Cancelled) => "CANCELLED",
        Ok(OrderState::Unspecified) => "UNSPECIFIED",
        Err(_) => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_enum_names_without_prefix() {
        assert_eq!(state_name(OrderState::Pending as i32), "PENDING");
        assert_eq!(state_name(OrderState::Approved as i32), "APPROVED");
        assert_eq!(state_name(OrderState::Rejected as i32), "REJECTED");
        assert_eq!(state_name(OrderState::Cancelled as i32), "CANCELLED");
        assert_eq!(state_name(OrderState::Unspecified as i32), "UNSPECIFIED");
    }

    #[test]
    fn every_named_state_matches_the_proto_name_minus_prefix() {
        for state in [
            OrderState::Pending,
            OrderState::Approved,
            OrderState::Rejected,
            OrderState::Cancelled,
            OrderState::Unspecified,
        ] {
            let proto = state.as_str_name();
            assert_eq!(
                Some(state_name(state as i32)),
                proto.strip_prefix("ORDER_STATE_")
            );
        }
    }

    #[test]
    fn the_documented_names_are_the_names_given() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(StateName::schema()).unwrap();
        let mut documented: Vec<String> = serde_json::from_value(schema["enum"].clone()).unwrap();
        let mut given: Vec<String> = (0..=4)
            .chain([99])
            .map(|raw| state_name(raw).to_owned())
            .collect();
        documented.sort();
        given.sort();
        assert_eq!(documented, given);
    }

    #[test]
    fn a_state_from_a_newer_service_reads_as_unknown() {
        assert_eq!(state_name(99), "UNKNOWN");
    }
}
