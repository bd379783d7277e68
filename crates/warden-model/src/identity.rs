use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, excerpt};
use crate::name::Name;

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
        let value = value.into();
        check_trust_domain(&value).map_err(|reason| ModelError::SpiffeId {
            value: excerpt(&value),
            reason,
        })?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("the trust domain is empty".into());
    }
    if td.len() > 255 {
        return Err("the trust domain is longer than 255 characters".into());
    }
    if let Some(bad) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "the trust domain may contain only lowercase letters, digits, `.`, `-` and `_` (found {bad:?})"
        ));
    }
    Ok(())
}

impl TryFrom<String> for TrustDomain {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> Self {
        td.0
    }
}
impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid SPIFFE ID (`spiffe://trust-domain/path`), per the SPIFFE ID specification: lowercase
/// trust domain, path segments of `A-Z a-z 0-9 . - _`, no empty, `.` or `..` segments, no
/// trailing slash, no query or fragment, at most 2048 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    id: String,
    /// Byte offset where the path starts (the `/` after the trust domain), or `id.len()`.
    path_start: usize,
}

impl SpiffeId {
    pub const MAX_LEN: usize = 2048;
    const SCHEME: &'static str = "spiffe://";

    pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
        let id = value.into();
        let fail = |reason: String| ModelError::SpiffeId {
            value: excerpt(&id),
            reason,
        };
        if id.len() > Self::MAX_LEN {
            return Err(fail("longer than 2048 bytes".into()));
        }
        let Some(rest) = id.strip_prefix(Self::SCHEME) else {
            return Err(fail("must start with `spiffe://`".into()));
        };
        if rest.contains(['?', '#']) {
            return Err(fail("must not contain a query or fragment".into()));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.contains([':', '@']) {
            return Err(fail(
                "the trust domain must not carry a port or user info".into(),
            ));
        }
        check_trust_domain(td).map_err(fail)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                check_path_segment(segment).map_err(fail)?;
            }
        }
        let path_start = Self::SCHEME.len() + td.len();
        Ok(Self { id, path_start })
    }

    /// Builds `spiffe://<td>/<segments joined by />`.
    pub fn from_parts<'a>(
        td: &TrustDomain,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ModelError> {
        let mut id = format!("{}{}", Self::SCHEME, td.as_str());
        for segment in segments {
            id.push('/');
            id.push_str(segment);
        }
        Self::new(id)
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[Self::SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }
}

fn check_path_segment(segment: &str) -> Result<(), String> {
    match segment {
        "" => Err("the path has an empty segment (a double or trailing `/`)".into()),
        "." | ".." => Err("the path must not contain `.` or `..` segments".into()),
        s => match s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            Some(bad) => Err(format!(
                "path segments may contain only letters, digits, `.`, `-` and `_` (found {bad:?})"
            )),
            None => Ok(()),
        },
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> Self {
        id.id
    }
}
impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// A label key in Kubernetes syntax: an optional DNS-subdomain prefix and `/`, then a name of at
/// most 63 characters (letters, digits, `-`, `_`, `.`; starting and ending alphanumeric).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelKey(String);

/// A label value in Kubernetes syntax: empty, or at most 63 characters (letters, digits, `-`,
/// `_`, `.`; starting and ending alphanumeric).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelValue(String);

fn check_label_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    let bytes = name.as_bytes();
    if let (Some(first), Some(last)) = (bytes.first(), bytes.last())
        && !(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric())
    {
        return Err("must start and end with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may contain only letters, digits, `-`, `_` and `.`");
    }
    Ok(())
}

impl LabelKey {
    pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
        let value = value.into();
        let fail = |reason: &str| ModelError::Label {
            what: "key",
            value: excerpt(&value),
            reason: reason.to_owned(),
        };
        let name = match value.rsplit_once('/') {
            Some((prefix, name)) => {
                if prefix.is_empty() || prefix.len() > 253 {
                    return Err(fail(
                        "the prefix must be a DNS subdomain of 1–253 characters",
                    ));
                }
                if !prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                }) {
                    return Err(fail("the prefix must be a lowercase DNS subdomain"));
                }
                name
            }
            None => value.as_str(),
        };
        if name.is_empty() {
            return Err(fail("the name part must not be empty"));
        }
        check_label_name(name).map_err(fail)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl LabelValue {
    pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
        let value = value.into();
        check_label_name(&value).map_err(|reason| ModelError::Label {
            what: "value",
            value: excerpt(&value),
            reason: reason.to_owned(),
        })?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = ModelError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> Self {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype_conversions!(LabelKey);
string_newtype_conversions!(LabelValue);

/// An agent's labels. Keys and values are validated; order is canonical.
pub type Labels = BTreeMap<LabelKey, LabelValue>;

/// The task a credential was issued for.
pub type TaskId = Name;

/// Who is calling: one agent instance.
///
/// Its SPIFFE ID follows Warden's layout,
/// `spiffe://<trust-domain>/tenant/<tenant>/agent/<name>/<instance>`, and a sub-agent's ID extends
/// its parent's with another `/agent/<name>/<instance>` pair. Tenant, name and parents are read
/// from the ID, so they can never disagree with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "AgentIdentityWire", into = "AgentIdentityWire")]
pub struct AgentIdentity {
    spiffe_id: SpiffeId,
    tenant: Name,
    name: Name,
    parents: Vec<SpiffeId>,
    labels: Labels,
    task: Option<TaskId>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AgentIdentityWire {
    spiffe_id: SpiffeId,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<TaskId>,
}

impl AgentIdentity {
    /// The deepest delegation chain an identity may express (agent plus sub-agents).
    pub const MAX_DEPTH: usize = 16;

    pub fn new(
        spiffe_id: SpiffeId,
        labels: Labels,
        task: Option<TaskId>,
    ) -> Result<Self, ModelError> {
        let fail = |reason: &str| ModelError::AgentId {
            value: excerpt(spiffe_id.as_str()),
            reason: format!(
                "{reason}; agent IDs look like spiffe://<trust-domain>/tenant/<tenant>/agent/<name>/<instance>, \
                 with /agent/<name>/<instance> appended per sub-agent"
            ),
        };
        let segments: Vec<&str> = spiffe_id.segments().collect();
        if segments.len() < 5 || segments[0] != "tenant" {
            return Err(fail(
                "the path does not start with /tenant/<tenant>/agent/<name>/<instance>",
            ));
        }
        let chain = &segments[2..];
        if !chain.len().is_multiple_of(3) {
            return Err(fail(
                "the path has an incomplete /agent/<name>/<instance> triple",
            ));
        }
        let depth = chain.len() / 3;
        if depth > Self::MAX_DEPTH {
            return Err(fail("the delegation chain is deeper than 16 agents"));
        }
        if chain.chunks(3).any(|triple| triple[0] != "agent") {
            return Err(fail("each agent in the path must be introduced by `agent`"));
        }
        let td = TrustDomain::new(spiffe_id.trust_domain())?;
        let tenant = Name::parse("tenant", segments[1].to_owned())?;
        let name = Name::parse("agent name", chain[chain.len() - 2].to_owned())?;
        let parents = (1..depth)
            .map(|d| SpiffeId::from_parts(&td, segments[..2 + 3 * d].iter().copied()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            spiffe_id,
            tenant,
            name,
            parents,
            labels,
            task,
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }
    pub fn trust_domain(&self) -> &str {
        self.spiffe_id.trust_domain()
    }
    pub fn tenant(&self) -> &Name {
        &self.tenant
    }
    /// The agent's name (not its instance): `support-bot` in `.../agent/support-bot/i-1`.
    pub fn name(&self) -> &Name {
        &self.name
    }
    /// Ancestors, outermost first; empty for a top-level agent.
    pub fn parents(&self) -> &[SpiffeId] {
        &self.parents
    }
    /// 1 for a top-level agent, 2 for its sub-agent, and so on.
    pub fn depth(&self) -> usize {
        self.parents.len() + 1
    }
    pub fn labels(&self) -> &Labels {
        &self.labels
    }
    pub fn task(&self) -> Option<&TaskId> {
        self.task.as_ref()
    }
}

impl TryFrom<AgentIdentityWire> for AgentIdentity {
    type Error = ModelError;
    fn try_from(w: AgentIdentityWire) -> Result<Self, Self::Error> {
        Self::new(w.spiffe_id, w.labels, w.task)
    }
}
impl From<AgentIdentity> for AgentIdentityWire {
    fn from(a: AgentIdentity) -> Self {
        Self {
            spiffe_id: a.spiffe_id,
            labels: a.labels,
            task: a.task,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_id_accepts_valid_ids() {
        let id = SpiffeId::new("spiffe://acme.example/tenant/acme/agent/bot/i-1").unwrap();
        assert_eq!(id.trust_domain(), "acme.example");
        assert_eq!(id.path(), "/tenant/acme/agent/bot/i-1");
        assert!(SpiffeId::new("spiffe://acme.example").is_ok());
    }

    #[test]
    fn spiffe_id_rejects_malformed_ids() {
        for bad in [
            "",
            "http://acme/x",
            "spiffe://",
            "spiffe://Acme/x",
            "spiffe://acme:443/x",
            "spiffe://user@acme/x",
            "spiffe://acme/x/",
            "spiffe://acme//x",
            "spiffe://acme/./x",
            "spiffe://acme/../x",
            "spiffe://acme/x?q=1",
            "spiffe://acme/x#f",
            "spiffe://acme/x y",
            "spiffe://acme/%2e%2e",
        ] {
            assert!(SpiffeId::new(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("spiffe://acme/{}", "a".repeat(2100));
        assert!(SpiffeId::new(long).is_err());
    }

    #[test]
    fn agent_identity_derives_tenant_name_and_parents_from_the_id() {
        let id =
            SpiffeId::new("spiffe://td/tenant/acme/agent/planner/p1/agent/researcher/r7").unwrap();
        let agent = AgentIdentity::new(id, Labels::new(), None).unwrap();
        assert_eq!(agent.tenant().as_str(), "acme");
        assert_eq!(agent.name().as_str(), "researcher");
        assert_eq!(agent.depth(), 2);
        assert_eq!(
            agent.parents()[0].as_str(),
            "spiffe://td/tenant/acme/agent/planner/p1"
        );
    }

    #[test]
    fn agent_identity_rejects_ids_outside_the_layout() {
        for bad in [
            "spiffe://td/tenant/acme",
            "spiffe://td/tenant/acme/agent/bot",
            "spiffe://td/tenants/acme/agent/bot/i",
            "spiffe://td/tenant/acme/agent/bot/i/agent/sub",
            "spiffe://td/tenant/acme/robot/bot/i",
        ] {
            let id = SpiffeId::new(bad).unwrap();
            assert!(
                AgentIdentity::new(id, Labels::new(), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn agent_identity_deserialization_validates() {
        let ok = r#"{"spiffeId":"spiffe://td/tenant/t/agent/a/1","labels":{"team":"x"}}"#;
        assert!(serde_json::from_str::<AgentIdentity>(ok).is_ok());
        for bad in [
            r#"{"spiffeId":"spiffe://td/x"}"#,
            r#"{"spiffeId":"spiffe://td/tenant/t/agent/a/1","labels":{"bad key!":"x"}}"#,
            r#"{"spiffeId":"spiffe://td/tenant/t/agent/a/1","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<AgentIdentity>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_syntax_follows_kubernetes() {
        assert!(LabelKey::new("team").is_ok());
        assert!(LabelKey::new("warden.dev/tier").is_ok());
        assert!(LabelKey::new("-team").is_err());
        assert!(LabelKey::new("Warden.dev/tier").is_err());
        assert!(LabelKey::new("/x").is_err());
        assert!(LabelValue::new("").is_ok());
        assert!(LabelValue::new("a".repeat(64)).is_err());
        assert!(LabelValue::new("x y").is_err());
    }
}
