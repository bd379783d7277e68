use thiserror::Error;

/// Why a value was refused. Messages say what was wrong and what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("invalid SPIFFE ID `{value}`: {reason}")]
    SpiffeId { value: String, reason: String },
    #[error("invalid agent identity `{value}`: {reason}")]
    AgentId { value: String, reason: String },
    #[error("invalid label {what} `{value}`: {reason}")]
    Label {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid {what} `{value}`: {reason}")]
    Name {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid host `{value}`: {reason}")]
    Host { value: String, reason: String },
    #[error("invalid HTTP path `{value}`: {reason}")]
    Path { value: String, reason: String },
    #[error("invalid HTTP method `{value}`: {reason}")]
    Method { value: String, reason: String },
    #[error("invalid action: {0}")]
    Action(String),
    #[error("invalid decision id `{0}`: expected 32 lowercase hex digits")]
    DecisionId(String),
    #[error("invalid bundle hash `{0}`: expected `sha256:` and 64 lowercase hex digits")]
    BundleHash(String),
}

/// Shortens a hostile value before it is echoed back in an error message.
pub(crate) fn excerpt(value: &str) -> String {
    const MAX: usize = 96;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &value[..end], value.len())
}
