//! What a task grant lets its holder touch: rights as (action pattern, target pattern) pairs.
//!
//! A pattern is either an exact string or a prefix ending in `*`; `*` alone matches everything.
//! Both the Rust check here and the Datalog a grant carries read patterns the same way, and
//! "covers" (one pattern includes another) is decidable, which is what lets the authority refuse a
//! delegation that asks for more than the parent holds.

use std::fmt;

use serde::{Deserialize, Serialize};
use warden_model::{Action, ActionKind, Host};

use crate::grant::GrantError;

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// An exact string, or every string starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, GrantError> {
        if text.len() > MAX_PATTERN_BYTES {
            return Err(GrantError::InvalidRight(format!(
                "pattern longer than {MAX_PATTERN_BYTES} bytes"
            )));
        }
        if !crate::grant::datalog_safe(text) {
            return Err(GrantError::InvalidRight(
                "patterns may not contain quotes, backslashes or control characters".into(),
            ));
        }
        match text.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(GrantError::InvalidRight(format!(
                "`{text}`: `*` may only end a pattern"
            ))),
            Some(prefix) => Ok(Self::Prefix(prefix.to_owned())),
            None if text.contains('*') => Err(GrantError::InvalidRight(format!(
                "`{text}`: `*` may only end a pattern"
            ))),
            None if text.is_empty() => Err(GrantError::InvalidRight(
                "an empty pattern matches nothing; use `*` for everything".into(),
            )),
            None => Ok(Self::Exact(text.to_owned())),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == value,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }

    /// Whether every string `other` matches, `self` matches too.
    pub fn covers(&self, other: &Pattern) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(_), Self::Prefix(_)) => false,
            (Self::Prefix(p), Self::Exact(b)) => b.starts_with(p.as_str()),
            (Self::Prefix(p), Self::Prefix(q)) => q.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(exact) => f.write_str(exact),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One thing a grant allows: actions whose kind matches `action` on targets matching `target`.
///
/// Targets are the action's resource written flat: `service/path` for HTTP, `host:port` for
/// egress, `server/tool`, `server/uri` and `server/prompt` for MCP (`server/` for listing tools),
/// and the peer's name for A2A.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Right {
    pub action: Pattern,
    pub target: Pattern,
}

impl Right {
    pub fn new(action: &str, target: &str) -> Result<Self, GrantError> {
        let right = Self {
            action: Pattern::parse(action)?,
            target: Pattern::parse(target)?,
        };
        right.validate()?;
        Ok(right)
    }

    /// An exact action pattern must name a real action kind, and a prefix one must be the start
    /// of at least one, so a typo cannot silently grant nothing (or everything).
    pub fn validate(&self) -> Result<(), GrantError> {
        let known = match &self.action {
            Pattern::Exact(kind) => kind.parse::<ActionKind>().is_ok(),
            Pattern::Prefix(prefix) => ActionKind::ALL
                .iter()
                .any(|k| k.as_str().starts_with(prefix.as_str())),
        };
        if known {
            Ok(())
        } else {
            Err(GrantError::InvalidRight(format!(
                "`{}` matches no action kind; kinds are {}",
                self.action,
                ActionKind::ALL.map(ActionKind::as_str).join(", ")
            )))
        }
    }

    pub fn permits(&self, kind: &str, target: &str) -> bool {
        self.action.matches(kind) && self.target.matches(target)
    }

    pub fn covers(&self, other: &Right) -> bool {
        self.action.covers(&other.action) && self.target.covers(&other.target)
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.action, self.target)
    }
}

/// Whether any of `rights` permits the action.
pub fn any_permits(rights: &[Right], kind: &str, target: &str) -> bool {
    rights.iter().any(|r| r.permits(kind, target))
}

/// The first right of `narrower` that no right of `wider` covers, if any: `None` means whatever
/// `narrower` permits, `wider` permits too.
pub fn first_uncovered<'a>(wider: &[Right], narrower: &'a [Right]) -> Option<&'a Right> {
    narrower.iter().find(|n| !wider.iter().any(|w| w.covers(n)))
}

/// The flat target string of an action, as rights' target patterns match it.
pub fn target_of(action: &Action) -> String {
    match action {
        Action::Http { service, path, .. } => format!("{service}{}", path.as_str()),
        Action::EgressConnect {
            host: Host::Ip(std::net::IpAddr::V6(ip)),
            port,
            ..
        } => format!("[{ip}]:{port}"),
        Action::EgressConnect { host, port, .. } => format!("{host}:{port}"),
        Action::McpToolsCall { server, tool, .. } => format!("{server}/{tool}"),
        Action::McpToolsList { server } | Action::McpClientMessage { server, .. } => {
            format!("{server}/")
        }
        Action::McpResourcesRead { server, uri } => format!("{server}/{uri}"),
        Action::McpPromptsGet { server, prompt, .. } => format!("{server}/{prompt}"),
        Action::A2a { peer, .. } => peer.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_cover() {
        let all = Pattern::parse("*").unwrap();
        let gh = Pattern::parse("github/*").unwrap();
        let issue = Pattern::parse("github/create_issue").unwrap();
        assert!(all.covers(&gh) && gh.covers(&issue) && !issue.covers(&gh));
        assert!(!gh.covers(&Pattern::parse("git*").unwrap()));
        assert!(Pattern::parse("a*b").is_err());
        assert!(Pattern::parse("a**").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a\nb").is_err());
        assert!(Pattern::parse("a\"b").is_err());
        assert!(Pattern::parse("a\\\\b").is_err());
    }

    #[test]
    fn action_patterns_must_name_kinds() {
        assert!(Right::new("mcp.*", "github/*").is_ok());
        assert!(Right::new("mcp.tools/call", "github/*").is_ok());
        assert!(Right::new("mcp.tool/call", "github/*").is_err());
        assert!(Right::new("xyz*", "*").is_err());
    }
}
