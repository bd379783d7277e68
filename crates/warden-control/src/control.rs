//! The control plane's operations, independent of HTTP: registering agents, issuing credentials,
//! attestation, delegation, revocation, rotation. Every change is committed to the store before it
//! is acknowledged.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use warden_authority::{
    CertificateAuthority, DelegationRequest, DpopError, DpopVerifier, GrantIssuer, GrantKey,
    GrantRequest, GrantRoots, GrantVerifier, Holder, MAX_GRANT_TTL, Presenter, ProofRequest,
    ReplayGuard, Revocation, RevocationSet, Right, StoredAuthority, VerifiedGrant,
};
use warden_model::{AgentIdentity, Labels, Name, SpiffeId, TaskId};

use crate::config::ControlConfig;
use crate::jwks::{AttestError, Attestor, unverified_issuer};
use crate::store::{
    ADMINS, AGENTS, EVENTS, GRANTS, INSTANCES, JOIN_TOKENS, META, Store, StoreError, Written,
};
use crate::trail::AuditTrail;
use warden_http::HttpClient;

/// Longest lifetime of a join token.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Token type naming a Warden grant in token exchange (RFC 8693 §3 allows URIs of one's own).
pub const GRANT_TOKEN_TYPE: &str = "urn:warden:params:oauth:token-type:grant";
pub const TOKEN_EXCHANGE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Why an operation was refused; each maps to one HTTP status.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<warden_authority::AuthorityError> for ControlError {
    fn from(e: warden_authority::AuthorityError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<warden_authority::GrantError> for ControlError {
    fn from(e: warden_authority::GrantError) -> Self {
        use warden_authority::GrantError as G;
        match e {
            G::Crypto(_) => Self::Internal(e.to_string()),
            G::Widening(_) | G::TooDeep { .. } => Self::Forbidden(e.to_string()),
            G::BadSignature
            | G::Expired(_)
            | G::Revoked(_)
            | G::WrongHolder { .. }
            | G::NotCanonical { .. } => Self::Unauthorized(e.to_string()),
            _ => Self::BadRequest(e.to_string()),
        }
    }
}

pub(crate) fn bad(message: impl Into<String>) -> ControlError {
    ControlError::BadRequest(message.into())
}

/// Roles of admin credentials, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    /// Co-signs actions that need approval, for the groups the admin belongs to.
    Approver,
    Auditor,
    /// Publishes events (monitoring systems, people) that event-gated policies wait for.
    Publisher,
    /// A gateway: files approval requests and spends approvals.
    Gateway,
    Viewer,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self == needed || self == Role::Admin || needed == Role::Viewer
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: String,
    pub role: Role,
    pub created: i64,
    /// Approver groups this admin belongs to (policies name the group whose members co-sign).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Name>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    pub tenant: Name,
    pub name: Name,
    #[serde(default)]
    pub labels: Labels,
    /// The most any grant for this agent may allow; requests may narrow it.
    pub rights: Vec<Right>,
    pub created: i64,
    /// The admin who registered it: never an approver of its actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<RevokedInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevokedInfo {
    pub at: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRecord {
    pub spiffe_id: SpiffeId,
    pub tenant: Name,
    pub agent: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SpiffeId>,
    pub created: i64,
    /// How it got credentials: `admin`, `join-token`, `attestation:<attestor>`, `delegation`.
    pub via: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    pub id: String,
    pub agent: SpiffeId,
    pub task: TaskId,
    pub purpose: String,
    pub issued: i64,
    pub expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub holder: Holder,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JoinTokenRecord {
    tenant: Name,
    agent: Name,
    expires: i64,
    #[serde(default)]
    used: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct StoredGrantKey {
    id: u32,
    private_hex: String,
    /// When it stopped signing; kept as a root until its last grant expired.
    #[serde(default)]
    retired: Option<i64>,
}

/// Registration of an agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterAgent {
    pub tenant: Name,
    pub name: Name,
    #[serde(default)]
    pub labels: Labels,
    pub rights: Vec<Right>,
}

/// What credentials are asked for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CredentialRequest {
    pub task: Option<TaskId>,
    #[serde(default)]
    pub purpose: String,
    /// Narrower than the agent's registered rights; defaults to them.
    #[serde(default)]
    pub rights: Option<Vec<Right>>,
    /// Seconds; default 15 minutes, at most an hour.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Instance name; generated when absent.
    #[serde(default)]
    pub instance: Option<Name>,
    /// Bind the grant to this key (RFC 7638 thumbprint) instead of an SVID, for callers without
    /// mTLS. No SVID is issued then.
    #[serde(default)]
    pub key_thumbprint: Option<String>,
}

/// An SVID as handed out. `Debug` of this and of the types below that carry a credential leaves
/// the secret out, so a log line or a panic message never holds one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SvidView {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub expires: i64,
}

/// Credentials for one agent instance.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub spiffe_id: SpiffeId,
    pub task: TaskId,
    pub grant: String,
    pub grant_id: String,
    pub expires: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid: Option<SvidView>,
    pub bundle_pem: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[serde(flatten)]
    pub agent: AgentRecord,
    /// Instances with their sub-agents, as a tree.
    pub instances: Vec<InstanceNode>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceNode {
    #[serde(flatten)]
    pub instance: InstanceRecord,
    pub grants: Vec<GrantRecord>,
    pub children: Vec<InstanceNode>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationEntry {
    pub version: u64,
    pub revocation: Revocation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationsView {
    pub version: u64,
    pub entries: Vec<RevocationEntry>,
}

/// What attestation presents.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "type")]
pub enum Evidence {
    /// A platform identity token (Kubernetes ServiceAccount, cloud OIDC).
    Jwt { token: String },
    /// A one-time join token from `warden agent join-token`.
    JoinToken { token: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestRequest {
    pub evidence: Evidence,
    #[serde(flatten)]
    pub credentials: CredentialRequest,
}

/// The token-exchange request (RFC 8693 §2.1, form-encoded), with Warden's extensions.
#[derive(Clone, Default)]
pub struct ExchangeRequest {
    pub grant_type: String,
    pub subject_token: String,
    pub subject_token_type: String,
    /// Space-separated `action=target` rights for the sub-agent.
    pub scope: String,
    /// The sub-agent's name.
    pub sub_agent: String,
    pub sub_instance: Option<String>,
    pub expires_in: Option<u64>,
    pub purpose: Option<String>,
    /// Bind the child's grant to this key instead of issuing it an SVID.
    pub holder_key: Option<String>,
    /// The parent's proof of possession (DPoP header).
    pub proof: Option<String>,
    /// The parent's SVID (base64 DER), for SVID-bound parents.
    pub svid: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct ExchangeResponse {
    pub access_token: String,
    pub issued_token_type: String,
    pub token_type: String,
    pub expires_in: i64,
    /// The actor chain (RFC 8693 §4.1), innermost actor first.
    pub act: serde_json::Value,
    pub spiffe_id: SpiffeId,
    pub grant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid: Option<SvidView>,
}

const REDACTED: &str = "<redacted>";

impl std::fmt::Debug for SvidView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidView")
            .field("certificate_pem", &self.certificate_pem)
            .field("private_key_pem", &REDACTED)
            .field("expires", &self.expires)
            .finish()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("spiffe_id", &self.spiffe_id)
            .field("task", &self.task)
            .field("grant", &REDACTED)
            .field("grant_id", &self.grant_id)
            .field("expires", &self.expires)
            .field("svid", &self.svid)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Jwt { .. } => f.write_str("Evidence::Jwt { token: <redacted> }"),
            Self::JoinToken { .. } => f.write_str("Evidence::JoinToken { token: <redacted> }"),
        }
    }
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("grant_type", &self.grant_type)
            .field("subject_token", &REDACTED)
            .field("subject_token_type", &self.subject_token_type)
            .field("scope", &self.scope)
            .field("sub_agent", &self.sub_agent)
            .field("sub_instance", &self.sub_instance)
            .field("expires_in", &self.expires_in)
            .field("purpose", &self.purpose)
            .field("holder_key", &self.holder_key)
            .field("proof", &self.proof.as_ref().map(|_| REDACTED))
            .field("svid", &self.svid.as_ref().map(|_| "<certificate>"))
            .finish()
    }
}

impl std::fmt::Debug for ExchangeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeResponse")
            .field("access_token", &REDACTED)
            .field("issued_token_type", &self.issued_token_type)
            .field("expires_in", &self.expires_in)
            .field("spiffe_id", &self.spiffe_id)
            .field("grant_id", &self.grant_id)
            .field("svid", &self.svid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleView {
    pub trust_domain: String,
    pub sequence: u64,
    pub x509_pem: String,
    /// The SPIFFE bundle (JWK Set of roots).
    pub spiffe: serde_json::Value,
    /// Public keys grants are signed with.
    pub grant_roots: serde_json::Value,
    /// Delegation steps allowed below a root grant; gateways enforce the same limit.
    pub max_delegation_depth: usize,
    /// The key that signs published events (and the control audit trail's checkpoints).
    pub event_key: String,
}

fn sha256_hex(value: &str) -> String {
    digest::digest(&digest::SHA256, value.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_token(prefix: &str) -> Result<String, ControlError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| ControlError::Internal("no randomness".into()))?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// `len` random bytes, in hex: for ids.
pub(crate) fn random_hex(len: usize) -> Result<String, ControlError> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| ControlError::Internal("no randomness".into()))?;
    Ok(hex(&bytes))
}

fn random_instance() -> Result<Name, ControlError> {
    Name::new(format!("i-{}", random_hex(5)?)).map_err(|e| ControlError::Internal(e.to_string()))
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn agent_key(tenant: &Name, name: &Name) -> String {
    format!("{tenant}/{name}")
}

/// Seen proof-of-possession ids, kept in the store so a restart does not reopen the replay window.
struct StoredReplays(Arc<Store>);

impl ReplayGuard for StoredReplays {
    fn remember(&self, key: &str, jti: &str, expires: i64, now: i64) -> Result<(), DpopError> {
        let id: String = warden_authority::replay_key(key, jti)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        match self.0.remember_proof(&id, expires, now) {
            Ok(true) => Ok(()),
            Ok(false) => Err(DpopError::Replayed),
            Err(e) => Err(DpopError::ReplayCheck(e.to_string())),
        }
    }
}

/// What gateways follow by long poll, each with versions that only grow.
#[derive(Debug, Clone, Copy)]
pub enum Feed {
    Revocations,
    /// Quarantine holds and the kill switch.
    Oversight,
    /// Published events.
    Events,
}

/// The control plane.
pub struct Control {
    store: Arc<Store>,
    config: ControlConfig,
    public_url: String,
    ca: RwLock<CertificateAuthority>,
    issuer: RwLock<GrantIssuer>,
    verifier: GrantVerifier,
    attestors: Vec<Attestor>,
    proofs: DpopVerifier,
    client: HttpClient,
    revocation_version: tokio::sync::watch::Sender<u64>,
    oversight_version: tokio::sync::watch::Sender<u64>,
    approvals_version: tokio::sync::watch::Sender<u64>,
    events_version: tokio::sync::watch::Sender<u64>,
    /// Set when the control plane stops: long polls answer at once instead of holding the
    /// shutdown for their full wait.
    stopping: tokio::sync::watch::Sender<bool>,
    trail: AuditTrail,
}

impl Control {
    /// Opens the store under the configured data directory, creating the CA and grant key on
    /// first start and restoring them afterwards.
    pub fn open(config: ControlConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let store = Arc::new(Store::open(&config.data_dir)?);
        let ca = match store.get::<StoredAuthority>(META, "authority")? {
            Some(stored) => CertificateAuthority::restore(&stored, now())
                .context("the stored CA could not be restored")?,
            None => {
                let ca = CertificateAuthority::new(
                    config.trust_domain.clone(),
                    Duration::from_secs(config.ca_lifetime_days * 86_400),
                    now(),
                )?;
                store.put(META, "authority", &ca.export())?;
                ca
            }
        };
        anyhow::ensure!(
            ca.trust_domain() == &config.trust_domain,
            "the data directory {} holds trust domain {}, but the configuration says {}; \
             use another data directory or the same trust domain",
            config.data_dir.display(),
            ca.trust_domain(),
            config.trust_domain
        );
        let mut keys: Vec<StoredGrantKey> = store.get(META, "grant_keys")?.unwrap_or_default();
        if keys.is_empty() {
            let key = GrantKey::generate(1);
            keys.push(StoredGrantKey {
                id: 1,
                private_hex: hex(&key.private_bytes()),
                retired: None,
            });
            store.put(META, "grant_keys", &keys)?;
        }
        let (active, roots) = grant_keys(&keys)?;
        let verifier = GrantVerifier::new(roots, config.max_delegation_depth);
        let revocations = store.revocations()?;
        let version = revocations.last().map_or(0, |(v, _)| *v);
        verifier.set_revocations(RevocationSet::new(
            version,
            revocations.into_iter().map(|(_, r)| r),
        ));
        let attestors = config
            .attestation
            .iter()
            .map(Attestor::from_config)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (revocation_version, _) = tokio::sync::watch::channel(version);
        let oversight = store
            .get::<warden_model::Oversight>(META, "oversight")?
            .unwrap_or_default();
        let (oversight_version, _) = tokio::sync::watch::channel(oversight.version);
        let trail = AuditTrail::open(&config.data_dir, config.trust_domain.as_str())?;
        let last_event = store.last_number(EVENTS)?;
        let replays = Box::new(StoredReplays(Arc::clone(&store)));
        Ok(Self {
            store,
            public_url: config.public_url(),
            ca: RwLock::new(ca),
            issuer: RwLock::new(GrantIssuer::new(active, config.max_delegation_depth)),
            verifier,
            attestors,
            proofs: DpopVerifier::with_guard(
                vec![
                    jsonwebtoken::Algorithm::ES256,
                    jsonwebtoken::Algorithm::EdDSA,
                ],
                Duration::from_secs(60),
                replays,
            ),
            client: HttpClient::new(Duration::from_secs(5)).map_err(|e| anyhow::anyhow!("{e}"))?,
            revocation_version,
            oversight_version,
            approvals_version: tokio::sync::watch::channel(0).0,
            events_version: tokio::sync::watch::channel(last_event).0,
            stopping: tokio::sync::watch::channel(false).0,
            trail,
            config,
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn trail(&self) -> &AuditTrail {
        &self.trail
    }

    pub(crate) fn oversight_version(&self) -> &tokio::sync::watch::Sender<u64> {
        &self.oversight_version
    }

    pub(crate) fn approvals_version(&self) -> &tokio::sync::watch::Sender<u64> {
        &self.approvals_version
    }

    pub(crate) fn events_version(&self) -> &tokio::sync::watch::Sender<u64> {
        &self.events_version
    }

    pub(crate) fn http_client(&self) -> &HttpClient {
        &self.client
    }

    /// Stops the control audit log after what is queued, with a last checkpoint.
    pub fn close(&self) {
        self.trail.close();
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    /// Creates the bootstrap admin if there is no admin yet, and returns its token — the only
    /// time it is ever shown.
    pub fn bootstrap(&self) -> Result<Option<String>, ControlError> {
        if !self.store.is_empty(ADMINS)? {
            return Ok(None);
        }
        self.create_admin("bootstrap", Role::Admin, Vec::new())
            .map(Some)
    }

    pub fn create_admin(
        &self,
        name: &str,
        role: Role,
        groups: Vec<Name>,
    ) -> Result<String, ControlError> {
        if name.is_empty() || name.len() > 128 {
            return Err(bad("an admin name is 1 to 128 characters"));
        }
        let token = random_token("wdn_")?;
        let record = AdminRecord {
            name: name.to_owned(),
            role,
            created: now().unix_timestamp(),
            groups,
        };
        self.store.put(ADMINS, &sha256_hex(&token), &record)?;
        Ok(token)
    }

    /// The admin an `Authorization: Bearer` token belongs to, if its role allows `needed`.
    pub fn authenticate(&self, token: &str, needed: Role) -> Result<AdminRecord, ControlError> {
        if token.len() > 256 {
            return Err(ControlError::Unauthorized(
                "the admin token is malformed".into(),
            ));
        }
        let admin: AdminRecord = self
            .store
            .get(ADMINS, &sha256_hex(token))?
            .ok_or_else(|| ControlError::Unauthorized("unknown admin token".into()))?;
        if admin.role.allows(needed) {
            Ok(admin)
        } else {
            Err(ControlError::Forbidden(format!(
                "admin {} has role {:?}; this needs {needed:?}",
                admin.name, admin.role
            )))
        }
    }

    pub fn register_agent(
        &self,
        request: RegisterAgent,
        by: &str,
    ) -> Result<AgentRecord, ControlError> {
        if request.rights.is_empty() {
            return Err(bad(
                "an agent needs at least one right (e.g. {\"action\": \"mcp.*\", \"target\": \"github/*\"}); policy still decides each call",
            ));
        }
        for right in &request.rights {
            right.validate()?;
        }
        let record = AgentRecord {
            tenant: request.tenant,
            name: request.name,
            labels: request.labels,
            rights: request.rights,
            created: now().unix_timestamp(),
            registered_by: Some(by.to_owned()),
            revoked: None,
        };
        let key = agent_key(&record.tenant, &record.name);
        match self.store.put_new(AGENTS, &key, &record)? {
            Written::Done => Ok(record),
            Written::Exists => Err(ControlError::Conflict(format!(
                "agent {key} is already registered"
            ))),
        }
    }

    pub(crate) fn agent_record(
        &self,
        tenant: &Name,
        name: &Name,
    ) -> Result<AgentRecord, ControlError> {
        self.store
            .get(AGENTS, &agent_key(tenant, name))?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "no agent {tenant}/{name}; register it first (`warden agent register`)"
                ))
            })
    }

    /// Every instance and grant record, to assemble lineage trees from.
    fn instances_and_grants(
        &self,
    ) -> Result<(Vec<InstanceRecord>, Vec<GrantRecord>), ControlError> {
        Ok((self.store.values(INSTANCES)?, self.store.values(GRANTS)?))
    }

    pub fn list_agents(&self) -> Result<Vec<AgentView>, ControlError> {
        let (instances, grants) = self.instances_and_grants()?;
        Ok(self
            .store
            .values::<AgentRecord>(AGENTS)?
            .into_iter()
            .map(|agent| lineage(agent, &instances, &grants))
            .collect())
    }

    pub fn agent(&self, tenant: &Name, name: &Name) -> Result<AgentView, ControlError> {
        let agent = self.agent_record(tenant, name)?;
        let (instances, grants) = self.instances_and_grants()?;
        Ok(lineage(agent, &instances, &grants))
    }

    /// Revokes an agent: every instance, sub-agent, SVID and grant, and refuses new credentials.
    pub fn revoke_agent(
        &self,
        tenant: &Name,
        name: &Name,
        reason: &str,
    ) -> Result<u64, ControlError> {
        let key = agent_key(tenant, name);
        let at = now().unix_timestamp();
        self.store
            .update(AGENTS, &key, |current: Option<AgentRecord>| {
                let mut record =
                    current.ok_or_else(|| ControlError::NotFound(format!("no agent {key}")))?;
                record.revoked.get_or_insert(RevokedInfo {
                    at,
                    reason: reason.to_owned(),
                });
                Ok::<_, ControlError>(record)
            })??;
        let id = self.spiffe_id(&format!("tenant/{tenant}/agent/{name}"))?;
        self.revoke(Revocation::Agent(id))
    }

    pub(crate) fn spiffe_id(&self, path: &str) -> Result<SpiffeId, ControlError> {
        SpiffeId::new(format!("spiffe://{}/{path}", self.config.trust_domain))
            .map_err(|e| bad(e.to_string()))
    }

    /// Issues an SVID (unless the grant is key-bound) and a grant for an instance of a
    /// registered agent.
    pub fn issue_credentials(
        &self,
        tenant: &Name,
        name: &Name,
        request: CredentialRequest,
        via: &str,
    ) -> Result<Credentials, ControlError> {
        let agent = self.agent_record(tenant, name)?;
        if let Some(revoked) = &agent.revoked {
            return Err(ControlError::Forbidden(format!(
                "agent {tenant}/{name} was revoked: {}",
                revoked.reason
            )));
        }
        let instance = match request.instance.clone() {
            Some(instance) => instance,
            None => random_instance()?,
        };
        let id = self.spiffe_id(&format!("tenant/{tenant}/agent/{name}/{instance}"))?;
        if let Some(hold) = self.oversight()?.hold_on(id.as_str(), []) {
            return Err(ControlError::Conflict(format!(
                "{} is quarantined ({}); release it before issuing credentials",
                hold.scope, hold.reason
            )));
        }
        self.issue_for(&agent, id, None, request, via)
    }

    fn issue_for(
        &self,
        agent: &AgentRecord,
        id: SpiffeId,
        parent: Option<SpiffeId>,
        request: CredentialRequest,
        via: &str,
    ) -> Result<Credentials, ControlError> {
        if let Some(revoked) = self.verifier.revocations().agent_revoked(id.as_str()) {
            return Err(ControlError::Forbidden(format!(
                "{id} is revoked (agent {revoked})"
            )));
        }
        let task = request
            .task
            .ok_or_else(|| bad("a task id is required (`task`): grants are per task"))?;
        let rights = request.rights.unwrap_or_else(|| agent.rights.clone());
        if let Some(extra) = warden_authority::first_uncovered(&agent.rights, &rights) {
            return Err(ControlError::Forbidden(format!(
                "{extra} is beyond what agent {}/{} is registered for",
                agent.tenant, agent.name
            )));
        }
        let ttl = request.ttl_seconds.map(Duration::from_secs);
        let holder = match request.key_thumbprint {
            Some(jkt) => Holder::Key(check_thumbprint(jkt)?),
            None => Holder::Spiffe(id.clone()),
        };
        let at = now();
        let svid = match holder {
            Holder::Spiffe(_) => {
                let ca = self.read_ca()?;
                let svid =
                    ca.issue_svid(&id, ttl.map(|t| t.min(warden_authority::MAX_SVID_TTL)), at)?;
                Some(SvidView {
                    certificate_pem: svid.certificate_pem,
                    private_key_pem: svid.private_key_pem,
                    expires: svid.not_after.unix_timestamp(),
                })
            }
            Holder::Key(_) => None,
        };
        let issued = self.read_issuer()?.mint(
            GrantRequest {
                agent: id.clone(),
                labels: agent.labels.clone(),
                task: task.clone(),
                purpose: request.purpose.clone(),
                rights,
                ttl,
                holder: holder.clone(),
            },
            at,
        )?;
        self.record_issue(
            &id,
            (&agent.tenant, &agent.name),
            parent,
            via,
            &issued,
            &task,
            &request.purpose,
            holder,
            None,
        )?;
        Ok(Credentials {
            spiffe_id: id,
            task,
            grant: issued.token,
            grant_id: issued.id,
            expires: issued.expires.unix_timestamp(),
            svid,
            bundle_pem: self.read_ca()?.trust_bundle().to_pem(),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn record_issue(
        &self,
        id: &SpiffeId,
        (tenant, agent): (&Name, &Name),
        parent: Option<SpiffeId>,
        via: &str,
        issued: &warden_authority::IssuedGrant,
        task: &TaskId,
        purpose: &str,
        holder: Holder,
        parent_grant: Option<String>,
    ) -> Result<(), ControlError> {
        let at = now().unix_timestamp();
        self.store.put_new(
            INSTANCES,
            id.as_str(),
            &InstanceRecord {
                spiffe_id: id.clone(),
                tenant: tenant.clone(),
                agent: agent.clone(),
                parent,
                created: at,
                via: via.to_owned(),
            },
        )?;
        self.store.put(
            GRANTS,
            &issued.id,
            &GrantRecord {
                id: issued.id.clone(),
                agent: id.clone(),
                task: task.clone(),
                purpose: purpose.to_owned(),
                issued: at,
                expires: issued.expires.unix_timestamp(),
                parent: parent_grant,
                holder,
            },
        )?;
        Ok(())
    }

    fn read_ca(
        &self,
    ) -> Result<std::sync::RwLockReadGuard<'_, CertificateAuthority>, ControlError> {
        self.ca
            .read()
            .map_err(|_| ControlError::Internal("CA lock poisoned".into()))
    }

    fn read_issuer(&self) -> Result<std::sync::RwLockReadGuard<'_, GrantIssuer>, ControlError> {
        self.issuer
            .read()
            .map_err(|_| ControlError::Internal("grant issuer lock poisoned".into()))
    }

    /// A one-time join token for a VM to attest as an instance of the agent.
    pub fn create_join_token(
        &self,
        tenant: &Name,
        name: &Name,
        ttl: Duration,
    ) -> Result<(String, i64), ControlError> {
        self.agent_record(tenant, name)?;
        if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
            return Err(bad(format!(
                "a join token lives between 1 second and {} hours",
                MAX_JOIN_TOKEN_TTL.as_secs() / 3600
            )));
        }
        let token = random_token("wjt_")?;
        let expires = (now() + ttl).unix_timestamp();
        self.store.put(
            JOIN_TOKENS,
            &sha256_hex(&token),
            &JoinTokenRecord {
                tenant: tenant.clone(),
                agent: name.clone(),
                expires,
                used: None,
            },
        )?;
        Ok((token, expires))
    }

    /// Exchanges evidence for credentials. No verified evidence, no credential.
    pub async fn attest(
        self: std::sync::Arc<Self>,
        request: AttestRequest,
    ) -> Result<Credentials, ControlError> {
        // An identity token is verified first (fetching keys may await); the store work after it
        // commits with fsync, off the async workers.
        let attested = match &request.evidence {
            Evidence::JoinToken { .. } => None,
            Evidence::Jwt { token } => Some(self.verify_identity_token(token).await?),
        };
        tokio::task::spawn_blocking(move || match (request.evidence, attested) {
            (_, Some((id, via))) => {
                let identity = AgentIdentity::new(id.clone(), Default::default(), None)
                    .map_err(|e| ControlError::Forbidden(e.to_string()))?;
                let agent = self.agent_record(identity.tenant(), identity.name())?;
                if let Some(revoked) = &agent.revoked {
                    return Err(ControlError::Forbidden(format!(
                        "agent {}/{} was revoked: {}",
                        agent.tenant, agent.name, revoked.reason
                    )));
                }
                self.issue_for(&agent, id, None, request.credentials, &via)
            }
            (Evidence::JoinToken { token }, None) => {
                let record = self.redeem_join_token(&token)?;
                self.issue_credentials(
                    &record.tenant,
                    &record.agent,
                    request.credentials,
                    "join-token",
                )
            }
            (Evidence::Jwt { .. }, None) => {
                Err(ControlError::Internal("identity token not verified".into()))
            }
        })
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?
    }

    /// Marks a join token used, atomically: of two concurrent redemptions one fails.
    fn redeem_join_token(&self, token: &str) -> Result<JoinTokenRecord, ControlError> {
        if token.len() > 128 {
            return Err(ControlError::Unauthorized(
                "the join token is malformed".into(),
            ));
        }
        let at = now().unix_timestamp();
        self.store.update(
            JOIN_TOKENS,
            &sha256_hex(token),
            |current: Option<JoinTokenRecord>| {
                let mut record = current
                    .ok_or_else(|| ControlError::Unauthorized("unknown join token".into()))?;
                if record.used.is_some() {
                    return Err(ControlError::Unauthorized(
                        "the join token was already used; join tokens are single-use".into(),
                    ));
                }
                if at > record.expires {
                    return Err(ControlError::Unauthorized("the join token expired".into()));
                }
                record.used = Some(at);
                Ok(record)
            },
        )?
    }

    /// Verifies an identity token with the attestor for its issuer and maps it to a top-level
    /// agent ID of this trust domain.
    async fn verify_identity_token(&self, token: &str) -> Result<(SpiffeId, String), ControlError> {
        let issuer = unverified_issuer(token).map_err(attest_error)?;
        let attestor = self
            .attestors
            .iter()
            .find(|a| a.issuer() == issuer)
            .ok_or_else(|| {
                ControlError::Unauthorized(format!(
                    "issuer {issuer:?} is not a configured attestor"
                ))
            })?;
        let evidence = attestor
            .verify(token, &self.client)
            .await
            .map_err(attest_error)?;
        let id = warden_authority::map_identity(&attestor.rules, &evidence)
            .map_err(|e| ControlError::Forbidden(format!("attestor {}: {e}", attestor.name)))?;
        let identity = AgentIdentity::new(id.clone(), Default::default(), None)
            .map_err(|e| ControlError::Forbidden(e.to_string()))?;
        if id.trust_domain() != self.config.trust_domain.as_str() || identity.depth() != 1 {
            return Err(ControlError::Forbidden(format!(
                "the identity rule produced {id}, which is not a top-level agent of trust domain {}",
                self.config.trust_domain
            )));
        }
        Ok((id, format!("attestation:{}", attestor.name)))
    }

    /// Online delegation (RFC 8693 token exchange): the holder of a grant, proving possession,
    /// obtains a narrower grant for a sub-agent under its own SPIFFE ID.
    pub fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ControlError> {
        if request.grant_type != TOKEN_EXCHANGE_GRANT_TYPE {
            return Err(bad(format!(
                "grant_type must be {TOKEN_EXCHANGE_GRANT_TYPE}"
            )));
        }
        if request.subject_token_type != GRANT_TOKEN_TYPE {
            return Err(bad(format!(
                "subject_token_type must be {GRANT_TOKEN_TYPE}"
            )));
        }
        let at = now();
        let parent = self
            .verifier
            .verify(&request.subject_token, at.unix_timestamp())?;
        self.check_possession(&parent, &request, at)?;
        let rights = parse_scope(&request.scope)?;
        let sub_agent =
            Name::new(request.sub_agent.clone()).map_err(|e| bad(format!("sub_agent: {e}")))?;
        let instance = match &request.sub_instance {
            Some(i) => Name::new(i.clone()).map_err(|e| bad(format!("sub_instance: {e}")))?,
            None => random_instance()?,
        };
        let child = SpiffeId::new(format!("{}/agent/{sub_agent}/{instance}", parent.agent()))
            .map_err(|e| bad(e.to_string()))?;
        let holder = match request.holder_key.clone() {
            Some(jkt) => Holder::Key(check_thumbprint(jkt)?),
            None => Holder::Spiffe(child.clone()),
        };
        let ttl = request.expires_in.map(Duration::from_secs);
        let issued = self.read_issuer()?.delegate(
            &parent,
            DelegationRequest {
                agent: child.clone(),
                rights,
                ttl,
                holder: holder.clone(),
                purpose: request.purpose.clone(),
            },
            at,
        )?;
        let svid = match holder {
            Holder::Spiffe(_) => {
                let lifetime = Duration::from_secs(
                    u64::try_from(issued.expires.unix_timestamp() - at.unix_timestamp())
                        .unwrap_or(1)
                        .max(1),
                );
                let svid = self.read_ca()?.issue_svid(
                    &child,
                    Some(lifetime.min(warden_authority::MAX_SVID_TTL)),
                    at,
                )?;
                Some(SvidView {
                    certificate_pem: svid.certificate_pem,
                    private_key_pem: svid.private_key_pem,
                    expires: svid.not_after.unix_timestamp(),
                })
            }
            Holder::Key(_) => None,
        };
        let tenant = AgentIdentity::new(child.clone(), Default::default(), None)
            .map_err(|e| bad(e.to_string()))?
            .tenant()
            .clone();
        let header = parent.header();
        self.record_issue(
            &child,
            (&tenant, &sub_agent),
            Some(parent.agent().clone()),
            "delegation",
            &issued,
            &header.task,
            request.purpose.as_deref().unwrap_or(&header.purpose),
            holder,
            Some(parent.id().to_owned()),
        )?;
        let mut actors = header.actors.clone();
        actors.push(parent.agent().clone());
        Ok(ExchangeResponse {
            access_token: issued.token,
            issued_token_type: GRANT_TOKEN_TYPE.to_owned(),
            token_type: "N_A".to_owned(),
            expires_in: issued.expires.unix_timestamp() - at.unix_timestamp(),
            act: actor_chain(&actors),
            spiffe_id: child,
            grant_id: issued.id,
            svid,
        })
    }

    /// The parent must prove it holds the grant: a DPoP-shaped proof for this request signed by
    /// the grant's key — or, for an SVID-bound grant, by its SVID's key, with the SVID attached.
    fn check_possession(
        &self,
        parent: &VerifiedGrant,
        request: &ExchangeRequest,
        at: OffsetDateTime,
    ) -> Result<(), ControlError> {
        let proof = request.proof.as_deref().ok_or_else(|| {
            ControlError::Unauthorized(
                "a DPoP proof of possession of the subject token is required".into(),
            )
        })?;
        let key_bound = parent.holders().any(|h| matches!(h, Holder::Key(_)));
        let (presenter_id, thumbprint) = if key_bound {
            let jkt = parent
                .holders()
                .find_map(|h| match h {
                    Holder::Key(k) => Some(k.clone()),
                    Holder::Spiffe(_) => None,
                })
                .unwrap_or_default();
            (None, jkt)
        } else {
            let svid = request.svid.as_deref().ok_or_else(|| {
                ControlError::Unauthorized(
                    "this grant is bound to an SVID: attach it (Warden-Svid header, base64 DER) and sign the proof with its key".into(),
                )
            })?;
            let der = base64::engine::general_purpose::STANDARD
                .decode(svid)
                .map_err(|_| ControlError::Unauthorized("the SVID is not base64".into()))?;
            let presented = self.read_ca()?.trust_bundle().verify_svid(&der, at)?;
            (Some(presented.spiffe_id), presented.key_thumbprint)
        };
        let url = format!("{}/v1/token", self.public_url);
        self.proofs
            .verify(
                proof,
                &ProofRequest {
                    method: "POST",
                    url: &url,
                    credential: &request.subject_token,
                    now: at.unix_timestamp(),
                },
                &thumbprint,
            )
            .map_err(|e| ControlError::Unauthorized(format!("proof of possession: {e}")))?;
        let presenter = match &presenter_id {
            Some(id) => Presenter::Svid(id),
            None => Presenter::Key(&thumbprint),
        };
        parent.check_presenter(presenter)?;
        Ok(())
    }

    /// Adds a revocation, durably, and pushes it to the verifier and subscribers.
    pub fn revoke(&self, revocation: Revocation) -> Result<u64, ControlError> {
        revocation.validate()?;
        let version = self.store.append_revocation(&revocation)?;
        let mut set = RevocationSet::clone(&self.verifier.revocations());
        set.apply(version, revocation);
        self.verifier.set_revocations(set);
        self.revocation_version.send_replace(version);
        Ok(version)
    }

    pub fn revocations_since(&self, since: u64) -> Result<RevocationsView, ControlError> {
        let all = self.store.revocations()?;
        let version = all.last().map_or(0, |(v, _)| *v);
        Ok(RevocationsView {
            version,
            entries: all
                .into_iter()
                .filter(|(v, _)| *v > since)
                .map(|(version, revocation)| RevocationEntry {
                    version,
                    revocation,
                })
                .collect(),
        })
    }

    /// Waits until the revocation set is newer than `since`, or `timeout` passes.
    /// Waits until `feed` is newer than version `since`, or `timeout` passes (a long poll).
    pub async fn wait_for(&self, feed: Feed, since: u64, timeout: Duration) {
        let version = match feed {
            Feed::Revocations => &self.revocation_version,
            Feed::Oversight => &self.oversight_version,
            Feed::Events => &self.events_version,
        };
        let mut rx = version.subscribe();
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > since)) => {}
            _ = stopping.wait_for(|stopping| *stopping) => {}
        }
    }

    /// Ends every long poll now and every later one at once: the control plane is stopping.
    pub fn stopping(&self) {
        self.stopping.send_replace(true);
    }

    pub fn bundle(&self) -> Result<BundleView, ControlError> {
        let bundle = self.read_ca()?.trust_bundle();
        Ok(BundleView {
            trust_domain: bundle.trust_domain.to_string(),
            sequence: bundle.sequence,
            x509_pem: bundle.to_pem(),
            spiffe: bundle.to_spiffe_json(Duration::from_secs(300)),
            grant_roots: self.grant_roots()?.to_json(),
            max_delegation_depth: self.config.max_delegation_depth,
            event_key: self.event_key(),
        })
    }

    fn grant_roots(&self) -> Result<GrantRoots, ControlError> {
        let keys: Vec<StoredGrantKey> = self.store.get(META, "grant_keys")?.unwrap_or_default();
        Ok(grant_keys(&keys)
            .map_err(|e| ControlError::Internal(e.to_string()))?
            .1)
    }

    /// A certificate for an in-process gateway: SPIFFE ID `spiffe://<td>/warden/gateway/<name>`
    /// plus the names and addresses clients dial. Valid for an hour; renew it well before.
    pub fn issue_server_identity(
        &self,
        name: &Name,
        dns_names: &[String],
        addresses: &[std::net::IpAddr],
    ) -> Result<SvidView, ControlError> {
        let id = self.spiffe_id(&format!("warden/gateway/{name}"))?;
        let svid = self.read_ca()?.issue_server_certificate(
            &id,
            dns_names,
            addresses,
            Some(warden_authority::MAX_SVID_TTL),
            now(),
        )?;
        Ok(SvidView {
            certificate_pem: svid.certificate_pem,
            private_key_pem: svid.private_key_pem,
            expires: svid.not_after.unix_timestamp(),
        })
    }

    /// Verifies a grant as gateways will: for `warden grant verify` and tests.
    pub fn verifier(&self) -> &GrantVerifier {
        &self.verifier
    }

    /// Rotates the CA key and the grant signing key. Old roots stay trusted until what they
    /// signed has expired.
    pub fn rotate(&self) -> Result<BundleView, ControlError> {
        let at = now();
        {
            let mut ca = self
                .ca
                .write()
                .map_err(|_| ControlError::Internal("CA lock poisoned".into()))?;
            let mut next = CertificateAuthority::restore(&ca.export(), at)?;
            next.rotate(at)?;
            self.store.put(META, "authority", &next.export())?;
            *ca = next;
        }
        let mut keys: Vec<StoredGrantKey> = self.store.get(META, "grant_keys")?.unwrap_or_default();
        let next_id = keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        for key in keys.iter_mut().filter(|k| k.retired.is_none()) {
            key.retired = Some(at.unix_timestamp());
        }
        let retention = i64::try_from(MAX_GRANT_TTL.as_secs()).unwrap_or(3600);
        keys.retain(|k| {
            k.retired
                .is_none_or(|r| r + retention > at.unix_timestamp())
        });
        let fresh = GrantKey::generate(next_id);
        keys.push(StoredGrantKey {
            id: next_id,
            private_hex: hex(&fresh.private_bytes()),
            retired: None,
        });
        self.store.put(META, "grant_keys", &keys)?;
        let (active, roots) =
            grant_keys(&keys).map_err(|e| ControlError::Internal(e.to_string()))?;
        self.verifier.set_roots(roots);
        *self
            .issuer
            .write()
            .map_err(|_| ControlError::Internal("grant issuer lock poisoned".into()))? =
            GrantIssuer::new(active, self.config.max_delegation_depth);
        self.bundle()
    }
}

fn attest_error(e: AttestError) -> ControlError {
    match e {
        AttestError::Jwks(_) => ControlError::Internal(e.to_string()),
        _ => ControlError::Unauthorized(e.to_string()),
    }
}

fn check_thumbprint(jkt: String) -> Result<String, ControlError> {
    let ok = jkt.len() == 43
        && URL_SAFE_NO_PAD
            .decode(&jkt)
            .is_ok_and(|bytes| bytes.len() == 32);
    if ok {
        Ok(jkt)
    } else {
        Err(bad(
            "a key thumbprint is the base64url SHA-256 JWK thumbprint of RFC 7638 (43 characters)",
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(
        text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "not an even-length hex string"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(Into::into))
        .collect()
}

/// The active grant key and the roots (active and still-trusted retired keys).
fn grant_keys(keys: &[StoredGrantKey]) -> anyhow::Result<(GrantKey, GrantRoots)> {
    let restored = keys
        .iter()
        .map(|k| {
            Ok((
                k,
                GrantKey::from_private_bytes(k.id, &unhex(&k.private_hex)?)?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let roots = GrantRoots::new(restored.iter().map(|(_, key)| (key.id, key.public())));
    let active = restored
        .into_iter()
        .find(|(k, _)| k.retired.is_none())
        .map(|(_, key)| key)
        .ok_or_else(|| anyhow::anyhow!("no active grant key in the store"))?;
    Ok((active, roots))
}

/// `action=target action=target …` → rights.
pub fn parse_scope(scope: &str) -> Result<Vec<Right>, ControlError> {
    let rights = scope
        .split_ascii_whitespace()
        .map(|item| {
            let (action, target) = item.split_once('=').ok_or_else(|| {
                bad(format!(
                    "scope item `{item}` is not `action=target` (e.g. mcp.tools/call=github/list_*)"
                ))
            })?;
            Ok(Right::new(action, target)?)
        })
        .collect::<Result<Vec<_>, ControlError>>()?;
    if rights.is_empty() {
        return Err(bad("scope must name at least one right: `action=target`"));
    }
    Ok(rights)
}

/// RFC 8693 §4.1 `act`: the most recent actor outermost, earlier ones nested inside.
fn actor_chain(actors: &[SpiffeId]) -> serde_json::Value {
    actors.iter().fold(serde_json::Value::Null, |inner, actor| {
        let mut act = serde_json::json!({ "sub": actor.as_str() });
        if !inner.is_null() {
            act["act"] = inner;
        }
        act
    })
}

fn lineage(agent: AgentRecord, instances: &[InstanceRecord], grants: &[GrantRecord]) -> AgentView {
    fn node(
        instance: &InstanceRecord,
        all: &[InstanceRecord],
        grants: &[GrantRecord],
    ) -> InstanceNode {
        InstanceNode {
            instance: instance.clone(),
            grants: grants
                .iter()
                .filter(|g| g.agent == instance.spiffe_id)
                .cloned()
                .collect(),
            children: all
                .iter()
                .filter(|c| c.parent.as_ref() == Some(&instance.spiffe_id))
                .map(|c| node(c, all, grants))
                .collect(),
        }
    }
    let roots = instances
        .iter()
        .filter(|i| i.parent.is_none() && i.tenant == agent.tenant && i.agent == agent.name)
        .map(|i| node(i, instances, grants))
        .collect();
    AgentView {
        agent,
        instances: roots,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_credential() {
        let svid = SvidView {
            certificate_pem: "CERT".into(),
            private_key_pem: "SECRET-KEY".into(),
            expires: 1,
        };
        let credentials = Credentials {
            spiffe_id: SpiffeId::new("spiffe://td/tenant/t/agent/a/i").unwrap(),
            task: TaskId::new("t").unwrap(),
            grant: "SECRET-GRANT".into(),
            grant_id: "g".into(),
            expires: 1,
            svid: Some(svid.clone()),
            bundle_pem: "B".into(),
        };
        let exchange = ExchangeRequest {
            subject_token: "SECRET-GRANT".into(),
            proof: Some("SECRET-PROOF".into()),
            ..ExchangeRequest::default()
        };
        let response = ExchangeResponse {
            access_token: "SECRET-GRANT".into(),
            issued_token_type: "t".into(),
            token_type: "Bearer".into(),
            expires_in: 1,
            act: serde_json::Value::Null,
            spiffe_id: credentials.spiffe_id.clone(),
            grant_id: "g".into(),
            svid: Some(svid.clone()),
        };
        let evidence = [
            Evidence::Jwt {
                token: "SECRET-JWT".into(),
            },
            Evidence::JoinToken {
                token: "SECRET-JOIN".into(),
            },
        ];
        let printed = format!("{svid:?} {credentials:?} {exchange:?} {response:?} {evidence:?}");
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
