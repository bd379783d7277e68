//! Warden's control plane: the REST API over the authority — agents, attestation, credentials,
//! delegation, revocation, trust bundles — with its state in an embedded store.

mod api;
mod approvals;
mod config;
mod control;
mod events;
mod jwks;
mod oversight;
mod store;
mod tools;
mod trail;

pub use api::{OPENAPI, router, serve};
pub use approvals::{
    Approval, ApprovalBinding, ApprovalRequest, ApprovalStatus, SignOff, Spent, Use, Verdict,
};
pub use config::{AttestorConfig, ControlConfig, RuleConfig};
pub use control::{
    AgentRecord, AgentView, AttestRequest, Control, ControlError, CredentialRequest, Credentials,
    Evidence, ExchangeRequest, ExchangeResponse, GRANT_TOKEN_TYPE, GrantRecord, InstanceNode,
    InstanceRecord, RegisterAgent, RevocationsView, Role, SvidView, TOKEN_EXCHANGE_GRANT_TYPE,
    parse_scope,
};
pub use events::{EventsView, PublishEvent, SignedEvent};
pub use jwks::{AttestError, Attestor};
pub use store::{Store, StoreError};
pub use tools::{Pinned, ToolPin, ToolSeen};
pub use warden_http::{ClientError, HttpClient, HttpResponse};
