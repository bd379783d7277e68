use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// The type of an event, e.g. `traffic-spike` or `change-approved`.
pub type EventType = Name;

/// Something that happened, published by a monitoring system or a person, that a policy may
/// require before allowing an action (an event gate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Unix time in seconds.
    pub time: i64,
    /// Who published it (a SPIFFE ID or a person's subject).
    pub publisher: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}
