use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, excerpt};

/// A name of something an agent reaches: an upstream service, an MCP server, tool or prompt, an
/// A2A peer, an approver group. 1–128 characters from `A-Z a-z 0-9 _ - . / :` — the characters
/// MCP allows in tool names, plus `/` and `:` for namespaced names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 128;

    pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
        Self::parse("name", value.into())
    }

    /// Like [`Name::new`], naming what the value is in the error.
    pub fn parse(what: &'static str, value: String) -> Result<Self, ModelError> {
        let fail = |reason: &str| ModelError::Name {
            what,
            value: excerpt(&value),
            reason: reason.to_owned(),
        };
        if value.is_empty() {
            return Err(fail("must not be empty"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(fail("longer than 128 characters"));
        }
        if !value.bytes().all(is_name_byte) {
            return Err(fail(
                "may contain only letters, digits and the characters _ - . / :",
            ));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':')
}

impl TryFrom<String> for Name {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> Self {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_mcp_style_names() {
        for ok in [
            "github",
            "list_issues",
            "k8s.scale-deployment",
            "ns/tool",
            "a:b",
        ] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_empty_long_and_odd_characters() {
        assert!(Name::new("").is_err());
        assert!(Name::new("a".repeat(129)).is_err());
        for bad in ["has space", "semi;colon", "quote\"", "new\nline", "é"] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
    }
}
