//! Task grants: Biscuit tokens naming the agent, its task and purpose, an expiry, the holder they
//! are bound to, and what the task may touch.
//!
//! Every block — the authority's and each attenuation appended after it — states its claims twice:
//! as Datalog checks any Biscuit verifier enforces, and as JSON in the block's context that Warden
//! reads. A block is accepted only if its Datalog is exactly what Warden generates from that JSON,
//! so the two can never disagree, and the fast path can check rights in plain Rust. Each block's
//! constraints must all hold: a child's effective rights are the intersection of its ancestors'.

use std::time::Duration;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, KeyPair, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use warden_model::{Labels, SpiffeId, TaskId};

use crate::rights::{Pattern, Right, first_uncovered};

/// Lifetime of a grant when the caller does not ask for another.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest lifetime a grant may have.
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(60 * 60);
/// How many delegation steps (online or offline) may separate a grant from its root by default.
pub const DEFAULT_MAX_DEPTH: usize = 3;
/// Largest grant accepted, in bytes of its base64 form.
pub const MAX_GRANT_BYTES: usize = 16 * 1024;
/// Most rights one block may list.
pub const MAX_RIGHTS: usize = 64;
/// Longest stated purpose, in bytes.
pub const MAX_PURPOSE_BYTES: usize = 1024;
/// Largest context (claims JSON) one block may carry.
const MAX_CLAIMS_BYTES: usize = 8 * 1024;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GrantError {
    #[error("the grant is larger than {MAX_GRANT_BYTES} bytes")]
    TooLarge,
    #[error("the grant is not a well-formed Warden grant: {0}")]
    Malformed(String),
    #[error("the grant's signature does not verify against this authority's keys")]
    BadSignature,
    #[error("block {block} of the grant is not in Warden's form: {reason}")]
    NotCanonical { block: usize, reason: String },
    #[error("the grant expired at {0} (unix seconds)")]
    Expired(i64),
    #[error("the grant is bound to {expected}, but was presented by {presented}")]
    WrongHolder { expected: String, presented: String },
    #[error("the grant is {depth} delegation steps from its root; at most {max} are allowed here")]
    TooDeep { depth: usize, max: usize },
    #[error("the grant was revoked ({0})")]
    Revoked(String),
    #[error("the grant does not allow {action} on {target}")]
    NotPermitted { action: String, target: String },
    #[error(
        "the delegation asks for more than the parent holds: {0} is not within the parent's rights"
    )]
    Widening(String),
    #[error("invalid right: {0}")]
    InvalidRight(String),
    #[error("invalid grant request: {0}")]
    Invalid(String),
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
}

/// Who may present a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Holder {
    /// Over mTLS, by an SVID for this SPIFFE ID or one under it (its sub-agents).
    Spiffe(SpiffeId),
    /// With a DPoP-shaped proof signed by the key with this RFC 7638 thumbprint.
    Key(String),
}

impl Holder {
    pub(crate) fn admits(&self, presenter: &Presenter<'_>) -> bool {
        match (self, presenter) {
            (Self::Spiffe(bound), Presenter::Svid(id)) => is_at_or_under(id, bound),
            (Self::Key(bound), Presenter::Key(jkt)) => bound == jkt,
            _ => false,
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Spiffe(id) => write!(f, "{id} (or its sub-agents) over mTLS"),
            Self::Key(jkt) => write!(f, "the key with thumbprint {jkt}"),
        }
    }
}

/// Who presents a grant with a request, as the gateway established it.
#[derive(Debug, Clone, Copy)]
pub enum Presenter<'a> {
    /// The SPIFFE ID of the client certificate the connection was authenticated with.
    Svid(&'a SpiffeId),
    /// The thumbprint of the key a verified proof of possession was signed with.
    Key(&'a str),
}

impl std::fmt::Display for Presenter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Svid(id) => write!(f, "{id}"),
            Self::Key(jkt) => write!(f, "key {jkt}"),
        }
    }
}

pub(crate) fn is_at_or_under(id: &SpiffeId, ancestor: &SpiffeId) -> bool {
    let (id, ancestor) = (id.as_str(), ancestor.as_str());
    id == ancestor || (id.starts_with(ancestor) && id.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// What the authority block of a grant says about the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantHeader {
    /// Unique id of this grant (128 random bits, hex); what `revoke grant` names.
    pub id: String,
    /// The agent the grant was issued to.
    pub agent: SpiffeId,
    pub task: TaskId,
    pub purpose: String,
    /// Unix seconds.
    pub issued: i64,
    /// Delegation steps already taken before this grant was minted (online delegation).
    pub depth: usize,
    /// Ids of the grants this one was delegated from, root first.
    #[serde(default)]
    pub lineage: Vec<String>,
    /// The agents that delegated, root first: RFC 8693's actor chain.
    #[serde(default)]
    pub actors: Vec<SpiffeId>,
    /// The agent's labels as registered, which policies select on; sub-agents inherit them.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// The claims of one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockClaims {
    /// Present in the authority block only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantHeader>,
    /// Unix seconds.
    pub expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    pub rights: Vec<Right>,
}

/// RFC 3339 in UTC, as Biscuit prints dates.
fn rfc3339(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Whether a string can sit inside a Datalog string literal as is: no quote, backslash or
/// control character, so the printed form of a block is unambiguous.
pub(crate) fn datalog_safe(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
}

impl BlockClaims {
    /// The Datalog of a block with these claims, exactly as Biscuit prints it. Every string in it
    /// has passed [`datalog_safe`] (validated types, or `validate`), so values are inlined.
    pub(crate) fn source(&self) -> String {
        let mut code = String::new();
        if let Some(header) = &self.grant {
            code += &format!(
                "grant(\"{}\");\nagent(\"{}\");\ntask(\"{}\");\ndepth({});\n",
                header.id, header.agent, header.task, header.depth
            );
        }
        code += &format!(
            "check if time($time), $time <= {};\n",
            rfc3339(self.expires)
        );
        match &self.holder {
            Some(Holder::Spiffe(id)) => {
                code += &format!(
                    "check if presenter($p), $p == \"{id}\" || $p.starts_with(\"{id}/\");\n"
                );
            }
            Some(Holder::Key(jkt)) => {
                code += &format!("check if presenter_key($k), $k == \"{jkt}\";\n");
            }
            None => {}
        }
        let alternatives: Vec<String> = self
            .rights
            .iter()
            .map(|right| {
                let mut clause = String::from("action($a, $r)");
                for (var, pattern) in [("$a", &right.action), ("$r", &right.target)] {
                    match pattern {
                        Pattern::Exact(v) => clause += &format!(", {var} == \"{v}\""),
                        Pattern::Prefix(p) if p.is_empty() => {}
                        Pattern::Prefix(p) => clause += &format!(", {var}.starts_with(\"{p}\")"),
                    }
                }
                clause
            })
            .collect();
        code += &format!("check if {};\n", alternatives.join(" or "));
        code
    }

    /// The block to append or sign: the Datalog, with the claims as its context.
    pub(crate) fn to_block(&self) -> Result<BlockBuilder, GrantError> {
        let context = serde_json::to_string(self).map_err(|e| GrantError::Crypto(e.to_string()))?;
        BlockBuilder::new()
            .code(self.source())
            .map(|b| b.context(context))
            .map_err(|e| GrantError::Invalid(format!("could not encode the grant: {e}")))
    }

    fn validate(&self) -> Result<(), GrantError> {
        if self.rights.is_empty() {
            return Err(GrantError::Invalid(
                "a grant must list at least one right".into(),
            ));
        }
        if self.rights.len() > MAX_RIGHTS {
            return Err(GrantError::Invalid(format!(
                "a grant may list at most {MAX_RIGHTS} rights"
            )));
        }
        for right in &self.rights {
            right.validate()?;
        }
        if let Some(Holder::Key(jkt)) = &self.holder
            && (jkt.is_empty()
                || jkt.len() > 128
                || !jkt
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(GrantError::Invalid(
                "a key binding is a base64url RFC 7638 thumbprint".into(),
            ));
        }
        if let Some(header) = &self.grant {
            if header.purpose.len() > MAX_PURPOSE_BYTES {
                return Err(GrantError::Invalid(format!(
                    "the purpose is longer than {MAX_PURPOSE_BYTES} bytes"
                )));
            }
            if header.id.len() != 32 || !header.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(GrantError::Invalid("a grant id is 32 hex digits".into()));
            }
        }
        Ok(())
    }
}

/// A grant as issued: the token and what it says. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct IssuedGrant {
    /// Base64url Biscuit; present it as `Authorization: Bearer` (or `Proxy-Authorization`).
    pub token: String,
    pub id: String,
    pub expires: OffsetDateTime,
}

impl std::fmt::Debug for IssuedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedGrant")
            .field("token", &"<redacted>")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .finish()
    }
}

/// What the authority mints a grant for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    pub agent: SpiffeId,
    /// The agent's registered labels, carried signed so gateways can apply policy.
    pub labels: Labels,
    pub task: TaskId,
    pub purpose: String,
    pub rights: Vec<Right>,
    pub ttl: Option<Duration>,
    pub holder: Holder,
}

/// What a parent asks for its sub-agent. Rights must lie within the parent's; the lifetime ends
/// no later than the parent's.
#[derive(Debug, Clone)]
pub struct DelegationRequest {
    /// The sub-agent's SPIFFE ID: under the parent's.
    pub agent: SpiffeId,
    pub rights: Vec<Right>,
    pub ttl: Option<Duration>,
    pub holder: Holder,
    /// The sub-agent's purpose; defaults to the parent's.
    pub purpose: Option<String>,
}

/// What an attenuation block narrows: offline, by whoever holds the grant.
#[derive(Debug, Clone, Default)]
pub struct Attenuation {
    /// The rights to keep; each must lie within the grant's.
    pub rights: Vec<Right>,
    /// An earlier expiry.
    pub expires: Option<OffsetDateTime>,
    /// Narrow the holder to a sub-agent's SPIFFE ID (under the current holder's).
    pub holder: Option<SpiffeId>,
}

fn random_id() -> Result<String, GrantError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| GrantError::Crypto("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn checked_ttl(ttl: Option<Duration>) -> Result<Duration, GrantError> {
    let ttl = ttl.unwrap_or(DEFAULT_GRANT_TTL);
    if ttl.is_zero() || ttl > MAX_GRANT_TTL {
        return Err(GrantError::Invalid(format!(
            "grant lifetime must be between 1 second and {} minutes, not {ttl:?}",
            MAX_GRANT_TTL.as_secs() / 60
        )));
    }
    Ok(ttl)
}

/// A root key for grants, with the id tokens name it by (so keys can rotate).
pub struct GrantKey {
    pub id: u32,
    pair: KeyPair,
}

impl GrantKey {
    pub fn generate(id: u32) -> Self {
        Self {
            id,
            pair: KeyPair::new(),
        }
    }

    /// Restores a key from [`GrantKey::private_bytes`].
    pub fn from_private_bytes(id: u32, bytes: &[u8]) -> Result<Self, GrantError> {
        let private = PrivateKey::from_bytes(bytes, biscuit_auth::Algorithm::Ed25519)
            .map_err(|e| GrantError::Crypto(e.to_string()))?;
        Ok(Self {
            id,
            pair: KeyPair::from(&private),
        })
    }

    /// The Ed25519 private key: store it as secretly as the CA key.
    pub fn private_bytes(&self) -> Vec<u8> {
        self.pair.private().to_bytes().to_vec()
    }

    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }
}

/// Mints grants with the active root key.
pub struct GrantIssuer {
    key: GrantKey,
    max_depth: usize,
}

impl GrantIssuer {
    pub fn new(key: GrantKey, max_depth: usize) -> Self {
        Self { key, max_depth }
    }

    pub fn key(&self) -> &GrantKey {
        &self.key
    }

    pub fn mint(
        &self,
        request: GrantRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedGrant, GrantError> {
        let ttl = checked_ttl(request.ttl)?;
        if let Holder::Spiffe(bound) = &request.holder
            && !is_at_or_under(bound, &request.agent)
        {
            return Err(GrantError::Invalid(format!(
                "the holder {bound} must be the agent {} or one of its sub-agents",
                request.agent
            )));
        }
        self.sign(
            GrantHeader {
                id: random_id()?,
                agent: request.agent,
                task: request.task,
                purpose: request.purpose,
                issued: now.unix_timestamp(),
                depth: 0,
                lineage: Vec::new(),
                actors: Vec::new(),
                labels: request.labels,
            },
            (now + ttl).unix_timestamp(),
            request.holder,
            request.rights,
        )
    }

    /// Online delegation (the token-exchange endpoint): a fresh grant for a sub-agent whose rights
    /// lie within every block of the verified parent grant, expiring no later than it, recording
    /// the parent in its lineage and actor chain so revoking the parent revokes it.
    pub fn delegate(
        &self,
        parent: &crate::VerifiedGrant,
        request: DelegationRequest,
        now: OffsetDateTime,
    ) -> Result<IssuedGrant, GrantError> {
        let parent_agent = parent.agent();
        if request.agent == *parent_agent || !is_at_or_under(&request.agent, parent_agent) {
            return Err(GrantError::Invalid(format!(
                "a sub-agent's SPIFFE ID must lie under its parent's ({parent_agent}/agent/<name>/<instance>), not {}",
                request.agent
            )));
        }
        let depth = parent.depth() + 1;
        if depth > self.max_depth {
            return Err(GrantError::TooDeep {
                depth,
                max: self.max_depth,
            });
        }
        for block in parent.blocks() {
            if let Some(extra) = first_uncovered(&block.rights, &request.rights) {
                return Err(GrantError::Widening(extra.to_string()));
            }
        }
        let ttl = checked_ttl(request.ttl)?;
        let expires = (now + ttl).unix_timestamp().min(parent.expires());
        let header = parent.header();
        let mut lineage = header.lineage.clone();
        lineage.push(header.id.clone());
        let mut actors = header.actors.clone();
        actors.push(parent_agent.clone());
        self.sign(
            GrantHeader {
                id: random_id()?,
                agent: request.agent,
                task: header.task.clone(),
                purpose: request.purpose.unwrap_or_else(|| header.purpose.clone()),
                issued: now.unix_timestamp(),
                depth,
                lineage,
                actors,
                labels: header.labels.clone(),
            },
            expires,
            request.holder,
            request.rights,
        )
    }

    fn sign(
        &self,
        header: GrantHeader,
        expires: i64,
        holder: Holder,
        rights: Vec<Right>,
    ) -> Result<IssuedGrant, GrantError> {
        let id = header.id.clone();
        let claims = BlockClaims {
            grant: Some(header),
            expires,
            holder: Some(holder),
            rights,
        };
        claims.validate()?;
        let block = claims.to_block()?;
        let token = Biscuit::builder()
            .merge(block)
            .root_key_id(self.key.id)
            .build(&self.key.pair)
            .and_then(|b| b.to_base64())
            .map_err(|e| GrantError::Crypto(e.to_string()))?;
        if token.len() > MAX_GRANT_BYTES {
            return Err(GrantError::TooLarge);
        }
        Ok(IssuedGrant {
            token,
            id,
            expires: OffsetDateTime::from_unix_timestamp(expires)
                .map_err(|e| GrantError::Invalid(e.to_string()))?,
        })
    }
}

/// Reads the claims of every block.
fn read_claims(contexts: Vec<Option<String>>) -> Result<Vec<BlockClaims>, GrantError> {
    contexts
        .into_iter()
        .enumerate()
        .map(|(block, context)| {
            let context = context.ok_or_else(|| GrantError::NotCanonical {
                block,
                reason: "the block carries no claims".into(),
            })?;
            if context.len() > MAX_CLAIMS_BYTES {
                return Err(GrantError::NotCanonical {
                    block,
                    reason: format!("claims larger than {MAX_CLAIMS_BYTES} bytes"),
                });
            }
            serde_json::from_str::<BlockClaims>(&context).map_err(|e| GrantError::NotCanonical {
                block,
                reason: format!("unreadable claims: {e}"),
            })
        })
        .collect()
}

/// Checks each block's shape and Datalog against its claims, and that attenuation blocks only
/// narrow the holder. Returns the claims.
fn canonical_claims(biscuit: &Biscuit) -> Result<Vec<BlockClaims>, GrantError> {
    let claims = read_claims(biscuit.context())?;
    let source = |block: usize| {
        let symbols = biscuit.block_symbols(block).map_err(|e| e.to_string())?;
        if !symbols.iter().all(|s| datalog_safe(s)) {
            return Err("it holds a string with a quote, backslash or control character".into());
        }
        biscuit.print_block_source(block).map_err(|e| e.to_string())
    };
    let mut holder: Option<&Holder> = None;
    for (block, c) in claims.iter().enumerate() {
        let fail = |reason: String| GrantError::NotCanonical { block, reason };
        match (block, &c.grant, &c.holder) {
            (0, None, _) => return Err(fail("the authority block names no grant".into())),
            (0, Some(_), None) => return Err(fail("the authority block names no holder".into())),
            (1.., Some(_), _) => {
                return Err(fail("only the authority block may name a grant".into()));
            }
            _ => {}
        }
        c.validate().map_err(|e| fail(e.to_string()))?;
        if let Some(next) = &c.holder {
            match (holder, next) {
                (None, _) => {}
                (Some(Holder::Spiffe(current)), Holder::Spiffe(narrower))
                    if is_at_or_under(narrower, current) => {}
                (Some(current), next) => {
                    return Err(fail(format!(
                        "the holder may only narrow to a sub-agent, not from {current} to {next}"
                    )));
                }
            }
            holder = Some(next);
        }
        let actual = source(block).map_err(fail)?;
        if c.source() != actual {
            return Err(fail(
                "its Datalog does not match its claims (was it written by hand?)".into(),
            ));
        }
    }
    Ok(claims)
}

/// The public root keys grants are verified with, by key id: the active one and any retired one
/// whose grants may still be live. Published with the trust bundle, so holders can attenuate and
/// anyone can verify offline.
#[derive(Debug, Clone, Default)]
pub struct GrantRoots(Vec<(u32, PublicKey)>);

impl GrantRoots {
    pub fn new(keys: impl IntoIterator<Item = (u32, PublicKey)>) -> Self {
        Self(keys.into_iter().collect())
    }

    /// `{"keys": [{"id": 1, "alg": "ed25519", "public": "<hex>"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let keys: Vec<_> = self
            .0
            .iter()
            .map(|(id, key)| serde_json::json!({"id": id, "alg": "ed25519", "public": key.to_bytes_hex()}))
            .collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Self, GrantError> {
        #[derive(Deserialize)]
        struct Keys {
            keys: Vec<Key>,
        }
        #[derive(Deserialize)]
        struct Key {
            id: u32,
            alg: String,
            public: String,
        }
        let keys: Keys = serde_json::from_value(value.clone())
            .map_err(|e| GrantError::Malformed(format!("grant root keys: {e}")))?;
        keys.keys
            .into_iter()
            .map(|k| {
                if k.alg != "ed25519" {
                    return Err(GrantError::Malformed(format!(
                        "grant root key {} has algorithm {}, expected ed25519",
                        k.id, k.alg
                    )));
                }
                PublicKey::from_bytes_hex(&k.public, biscuit_auth::Algorithm::Ed25519)
                    .map(|p| (k.id, p))
                    .map_err(|e| GrantError::Malformed(format!("grant root key {}: {e}", k.id)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }
}

impl biscuit_auth::RootKeyProvider for &GrantRoots {
    fn choose(&self, key_id: Option<u32>) -> Result<PublicKey, biscuit_auth::error::Format> {
        let id = key_id.ok_or(biscuit_auth::error::Format::UnknownPublicKey)?;
        self.0
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, key)| *key)
            .ok_or(biscuit_auth::error::Format::UnknownPublicKey)
    }
}

/// Parses a grant, checking its signatures against `roots` and its blocks' form.
pub(crate) fn parse(
    token: &str,
    roots: &GrantRoots,
) -> Result<(Biscuit, Vec<BlockClaims>), GrantError> {
    if token.len() > MAX_GRANT_BYTES {
        return Err(GrantError::TooLarge);
    }
    let biscuit = Biscuit::from_base64(token, roots).map_err(|e| match e {
        biscuit_auth::error::Token::Format(
            biscuit_auth::error::Format::Signature(_)
            | biscuit_auth::error::Format::UnknownPublicKey,
        ) => GrantError::BadSignature,
        other => GrantError::Malformed(other.to_string()),
    })?;
    let claims = canonical_claims(&biscuit)?;
    Ok((biscuit, claims))
}

/// Appends an attenuation block, offline, with no key but the grant itself (and the public
/// roots, to read it). The new block must narrow: its rights within the grant's, its expiry no
/// later, its holder a sub-agent of the current one. The verifier enforces every block anyway;
/// checking here gives the holder a precise error instead of a grant that permits nothing.
pub fn attenuate(
    token: &str,
    roots: &GrantRoots,
    attenuation: Attenuation,
) -> Result<String, GrantError> {
    let (parsed, claims) = parse(token, roots)?;
    for block in &claims {
        if let Some(extra) = first_uncovered(&block.rights, &attenuation.rights) {
            return Err(GrantError::Widening(extra.to_string()));
        }
    }
    let current_expiry = claims.iter().map(|c| c.expires).min().unwrap_or(0);
    let expires = attenuation
        .expires
        .map_or(current_expiry, |t| t.unix_timestamp().min(current_expiry));
    let holder = match attenuation.holder {
        None => None,
        Some(id) => {
            let current = claims.iter().rev().find_map(|c| c.holder.as_ref());
            match current {
                Some(Holder::Spiffe(bound)) if is_at_or_under(&id, bound) => {
                    Some(Holder::Spiffe(id))
                }
                Some(current) => {
                    return Err(GrantError::Invalid(format!(
                        "the grant is bound to {current}; it can be narrowed to a sub-agent of that, not to {id} (a key-bound grant is delegated online)"
                    )));
                }
                None => return Err(GrantError::Malformed("the grant names no holder".into())),
            }
        }
    };
    let block = BlockClaims {
        grant: None,
        expires,
        holder,
        rights: attenuation.rights,
    };
    block.validate()?;
    let appended = parsed
        .append(block.to_block()?)
        .and_then(|b| b.to_base64())
        .map_err(|e| GrantError::Crypto(e.to_string()))?;
    if appended.len() > MAX_GRANT_BYTES {
        return Err(GrantError::TooLarge);
    }
    Ok(appended)
}
