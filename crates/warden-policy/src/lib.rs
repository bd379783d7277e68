//! Warden's policy engine.
//!
//! Authors write `AgentPolicy` documents (Kubernetes-shaped YAML) and, where YAML cannot say it,
//! raw Cedar. A directory of them loads as one [`Bundle`]: compiled to Cedar, validated in strict
//! mode against Warden's schema, indexed for slicing, and hashed. [`Bundle::decide`] answers a
//! [`warden_model::DecisionRequest`] deny-by-default, with `forbid` over `permit`, and any
//! evaluation error denying. Decisions evaluate only the policies the slicing index selects, and
//! of those, Cedar sees only what Warden's exact matchers leave to it; the unsliced Cedar
//! evaluation stays the reference, and tests hold the two equal. [`Engine`] holds the bundle in
//! service and swaps in a new one atomically, keeping the last good one when a reload fails.

mod bundle;
mod compile;
mod decide;
mod diagnostic;
mod document;
mod engine;
mod export;
mod index;
mod locate;
mod matcher;
mod pattern;
mod recommend;
mod schema;
pub mod synth;
pub mod testing;

pub use bundle::{
    Bundle, DETECTORS, DetectionResponse, LoadLimits, PolicyInfo, SourceFile, TestCase,
};
pub use compile::{PolicyRole, Samples};
pub use decide::{Explanation, PolicySource, Slicing};
pub use diagnostic::{Diagnostic, LoadError, Severity};
pub use document::{
    DetectionAction, ExpectedOutcome, PolicyMode, TestCaseSpec, UndoArgument, UndoSpec,
};
pub use engine::{Engine, ReloadOutcome, WatchGuard};
pub use export::{ExportOptions, Exported, NetworkFormat, network_policies};
pub use recommend::{AgentSummary, Observed, Recommendation, Recommender, route_pattern};

/// Parses one YAML (or JSON) document from outside, refusing pathological nesting first: the YAML
/// deserializer takes time quadratic in nesting depth, the pre-check stops at its limit at once.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    if let Err((message, line, column)) = locate::Locator::new(text) {
        return Err(format!(
            "not valid YAML at line {line}, column {column}: {message}"
        ));
    }
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}
