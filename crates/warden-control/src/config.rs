//! Control-plane configuration: a YAML file, every setting with a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use warden_authority::IdentityRule;
use warden_model::TrustDomain;

/// Largest configuration file accepted.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ControlConfig {
    /// The SPIFFE trust domain agents' IDs live in.
    pub trust_domain: TrustDomain,
    /// Where the REST API listens. Without TLS only loopback addresses are allowed.
    pub listen: SocketAddr,
    /// The URL clients reach the API at (for proof-of-possession checks); defaults to
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// Where state (the embedded store) lives.
    pub data_dir: PathBuf,
    /// Delegation steps allowed below a root grant.
    pub max_delegation_depth: usize,
    /// Lifetime of the CA certificate, in days.
    pub ca_lifetime_days: u64,
    /// Issuers whose identity tokens are accepted as attestation evidence.
    pub attestation: Vec<AttestorConfig>,
    /// Where to POST each new approval request (JSON), for chat or paging integrations.
    pub approval_webhook: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::new("warden.local")
                .unwrap_or_else(|_| unreachable!("a valid literal")),
            listen: SocketAddr::from(([127, 0, 0, 1], 8181)),
            public_url: None,
            data_dir: PathBuf::from("warden-data"),
            max_delegation_depth: warden_authority::DEFAULT_MAX_DEPTH,
            ca_lifetime_days: 30,
            attestation: Vec::new(),
            approval_webhook: None,
        }
    }
}

/// One trusted issuer of attestation evidence (a Kubernetes cluster, a cloud's OIDC issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestorConfig {
    /// A name for messages and records, e.g. `prod-cluster`.
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Where its JWKS is fetched from (HTTPS; plain HTTP only on loopback).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Or the JWKS inline, for issuers without a reachable endpoint.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Accepted algorithms, e.g. `[RS256, ES256]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// How verified claims become a SPIFFE ID: the first matching rule wins.
    pub rules: Vec<RuleConfig>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConfig {
    /// JSON pointer → required string value.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// SPIFFE ID template with `{/json/pointer}` placeholders.
    pub spiffe_id: String,
}

impl RuleConfig {
    pub fn to_rule(&self) -> IdentityRule {
        IdentityRule {
            when: self
                .when
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            spiffe_id: self.spiffe_id.clone(),
        }
    }
}

impl ControlConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        anyhow::ensure!(
            meta.len() <= MAX_CONFIG_BYTES,
            "configuration {} is larger than {MAX_CONFIG_BYTES} bytes",
            path.display()
        );
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration {}", path.display()))?;
        let config: Self = serde_yaml::from_str(&text)
            .with_context(|| format!("configuration {} is invalid", path.display()))?;
        Ok(config)
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }
}
