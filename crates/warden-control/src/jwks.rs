//! Attestors: trusted issuers of identity tokens, with their JWKS fetched, cached, and refetched
//! when a token names a key the cache does not hold (the issuer rotated).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use thiserror::Error;
use tokio::sync::Mutex;
use warden_authority::{
    EvidenceError, EvidenceIssuer, IdentityRule, MAX_TOKEN_BYTES, VerifiedEvidence,
};

use crate::config::AttestorConfig;
use warden_http::HttpClient;

/// Keys older than this are refetched before use.
const MAX_KEY_AGE: Duration = Duration::from_secs(300);
/// A token naming an unknown key triggers a refetch at most this often, so junk tokens cannot
/// make Warden hammer the issuer.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Error)]
pub enum AttestError {
    #[error("the evidence is not a JWT from a configured issuer: {0}")]
    UnknownIssuer(String),
    #[error("the issuer's keys could not be fetched: {0}")]
    Jwks(String),
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
}

enum KeySource {
    Url(String),
    Inline,
}

pub struct Attestor {
    pub name: String,
    pub rules: Vec<IdentityRule>,
    source: KeySource,
    current: ArcSwap<EvidenceIssuer>,
    /// When keys were last fetched; the lock also keeps fetches one at a time.
    fetched: Mutex<Fetches>,
}

#[derive(Default)]
struct Fetches {
    /// Last fetch of any kind.
    last: Option<Instant>,
    /// Last fetch forced by a token naming an unknown key.
    forced: Option<Instant>,
}

impl Attestor {
    pub fn from_config(config: &AttestorConfig) -> anyhow::Result<Self> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| {
                a.parse::<jsonwebtoken::Algorithm>()
                    .map_err(|_| anyhow::anyhow!("attestor {}: unknown algorithm {a}", config.name))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (source, keys) = match (&config.jwks_url, &config.jwks) {
            (Some(url), None) => {
                check_jwks_url(url)
                    .map_err(|e| anyhow::anyhow!("attestor {}: {e}", config.name))?;
                (KeySource::Url(url.clone()), JwkSet { keys: Vec::new() })
            }
            (None, Some(inline)) => (
                KeySource::Inline,
                serde_json::from_value(inline.clone())
                    .map_err(|e| anyhow::anyhow!("attestor {}: invalid jwks: {e}", config.name))?,
            ),
            _ => anyhow::bail!(
                "attestor {}: set exactly one of jwksUrl and jwks",
                config.name
            ),
        };
        anyhow::ensure!(
            !config.rules.is_empty(),
            "attestor {}: at least one identity rule is needed (no rule, no identity)",
            config.name
        );
        Ok(Self {
            name: config.name.clone(),
            rules: config.rules.iter().map(|r| r.to_rule()).collect(),
            source,
            current: ArcSwap::from_pointee(EvidenceIssuer {
                issuer: config.issuer.clone(),
                audiences: config.audiences.clone(),
                algorithms,
                keys,
                leeway: Duration::from_secs(config.leeway_seconds),
            }),
            fetched: Mutex::new(Fetches::default()),
        })
    }

    pub fn issuer(&self) -> String {
        self.current.load().issuer.clone()
    }

    /// Verifies a token, fetching the issuer's keys when they are stale or lack the token's key.
    pub async fn verify(
        &self,
        token: &str,
        client: &HttpClient,
    ) -> Result<VerifiedEvidence, AttestError> {
        let KeySource::Url(url) = &self.source else {
            return Ok(self.current.load().verify(token)?);
        };
        let stale = self
            .fetched
            .lock()
            .await
            .last
            .is_none_or(|at| at.elapsed() > MAX_KEY_AGE);
        if stale {
            self.refresh(url, client, false).await?;
        }
        match self.current.load().verify(token) {
            Err(EvidenceError::UnknownKey(_)) => {
                self.refresh(url, client, true).await?;
                Ok(self.current.load().verify(token)?)
            }
            other => Ok(other?),
        }
    }

    async fn refresh(
        &self,
        url: &str,
        client: &HttpClient,
        forced: bool,
    ) -> Result<(), AttestError> {
        let mut fetched = self.fetched.lock().await;
        if forced {
            if fetched
                .forced
                .is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL)
            {
                return Ok(());
            }
            fetched.forced = Some(Instant::now());
        } else if fetched.last.is_some_and(|at| at.elapsed() <= MAX_KEY_AGE) {
            // Another request refreshed while this one waited for the lock.
            return Ok(());
        }
        let result = async {
            let response = client
                .send(
                    http::Method::GET,
                    url,
                    &[("accept", "application/json")],
                    None,
                    MAX_JWKS_BYTES,
                )
                .await
                .map_err(|e| e.to_string())?;
            if !response.status.is_success() {
                return Err(format!("{url} answered {}", response.status));
            }
            serde_json::from_slice::<JwkSet>(&response.body)
                .map_err(|e| format!("{url} did not return a JWK Set: {e}"))
        }
        .await;
        fetched.last = Some(Instant::now());
        match result {
            Ok(keys) => {
                let mut next = EvidenceIssuer::clone(&self.current.load());
                next.keys = keys;
                self.current.store(Arc::new(next));
                Ok(())
            }
            // Keys fetched earlier stay usable while the issuer is unreachable.
            Err(_) if !self.current.load().keys.keys.is_empty() => Ok(()),
            Err(e) => Err(AttestError::Jwks(e)),
        }
    }
}

fn check_jwks_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid jwksUrl {url}: {e}"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(uri.host().unwrap_or_default()) => Ok(()),
        _ => Err(format!(
            "jwksUrl {url} must use https (plain http only on loopback), or keys could be swapped in transit"
        )),
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The `iss` claim of a JWT, read without verification — only to choose which attestor will
/// verify it.
pub fn unverified_issuer(token: &str) -> Result<String, AttestError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(EvidenceError::TooLarge.into());
    }
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| AttestError::UnknownIssuer("not a JWT".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AttestError::UnknownIssuer("the payload is not base64url".into()))?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| AttestError::UnknownIssuer("the payload is not JSON".into()))?;
    claims
        .get("iss")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| AttestError::UnknownIssuer("the token has no `iss`".into()))
}
