//! Protocol-neutral types shared by every Warden component.
//!
//! Every type here validates on construction and on deserialization, so a value that exists is a
//! valid one: a [`SpiffeId`] is always a well-formed SPIFFE ID, an [`HttpPath`] is always
//! canonical, a [`Decision`] that allows never carries evaluation errors.

mod action;
mod decision;
mod error;
mod event;
mod identity;
mod name;
mod oversight;
mod request;

pub use action::{
    A2aMethod, Action, ActionKind, Host, HttpMethod, HttpPath, Protocol, Resource,
    canonical_resource_uri,
};
pub use decision::{
    ApprovalRequirement, BundleHash, Decision, DecisionId, DenyReason, Outcome, PolicyRef,
};
pub use error::ModelError;
pub use event::{Event, EventType};
pub use identity::{AgentIdentity, LabelKey, LabelValue, Labels, SpiffeId, TaskId, TrustDomain};
pub use name::Name;
pub use oversight::{Freeze, Hold, Oversight, scopes};
pub use request::{DecisionRequest, Finding, FindingKind, RequestContext, Usage};
