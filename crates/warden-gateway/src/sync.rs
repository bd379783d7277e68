//! Keeping the gateway's trust current: grant root keys and the trust bundle from the control
//! plane, and the revocation set by long poll, so a revocation reaches this gateway within
//! about a second.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::Method;
use serde_json::Value;
use warden_authority::{GrantRoots, GrantVerifier, Revocation, RevocationSet};
use warden_http::HttpClient;

/// How long one revocation long poll waits at the control plane.
const WATCH_SECONDS: u64 = 25;
/// What to do with the X.509 roots (DER) when they change.
pub type RootsChanged = dyn Fn(&[Vec<u8>]) + Send + Sync;
pub type OnRoots = Box<RootsChanged>;
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub struct Trust {
    pub grants: Arc<GrantVerifier>,
    /// X.509 roots, DER, for verifying client certificates.
    pub roots_der: Vec<Vec<u8>>,
    /// The bundle as fetched, so later refreshes act only on change.
    pub bundle: Value,
}

async fn get_json(client: &HttpClient, url: &str) -> anyhow::Result<Value> {
    let response = client
        .send(
            Method::GET,
            url,
            &[("accept", "application/json")],
            None,
            MAX_RESPONSE_BYTES,
        )
        .await?;
    anyhow::ensure!(
        response.status.is_success(),
        "{url} answered {}",
        response.status
    );
    serde_json::from_slice(&response.body).with_context(|| format!("{url} did not return JSON"))
}

fn roots_der(bundle: &Value) -> anyhow::Result<Vec<Vec<u8>>> {
    let pem = bundle["x509Pem"]
        .as_str()
        .context("the bundle has no x509Pem")?;
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| {
            p.map(|p| p.contents)
                .map_err(|e| anyhow::anyhow!("bad root PEM: {e}"))
        })
        .collect()
}

impl Trust {
    pub async fn fetch(client: &HttpClient, control_url: &str) -> anyhow::Result<Self> {
        let base = control_url.trim_end_matches('/');
        let bundle = get_json(client, &format!("{base}/v1/bundle")).await?;
        let roots = GrantRoots::from_json(&bundle["grantRoots"])?;
        let depth = bundle["maxDelegationDepth"]
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .unwrap_or(warden_authority::DEFAULT_MAX_DEPTH);
        let grants = Arc::new(GrantVerifier::new(roots, depth));
        let revocations = get_json(client, &format!("{base}/v1/revocations?since=0")).await?;
        grants.set_revocations(revocation_set(&revocations, &RevocationSet::default())?);
        Ok(Self {
            grants,
            roots_der: roots_der(&bundle)?,
            bundle,
        })
    }
}

/// Applies a `/v1/revocations` answer on top of `current`.
fn revocation_set(answer: &Value, current: &RevocationSet) -> anyhow::Result<RevocationSet> {
    let mut set = current.clone();
    for entry in answer["entries"].as_array().into_iter().flatten() {
        let version = entry["version"]
            .as_u64()
            .context("a revocation without version")?;
        let revocation: Revocation = serde_json::from_value(entry["revocation"].clone())?;
        set.apply(version, revocation);
    }
    Ok(set)
}

/// Follows the control plane for as long as the gateway runs. While it is unreachable the last
/// known state keeps serving, and the gateway retries with backoff.
pub async fn follow(
    client: HttpClient,
    control_url: String,
    grants: Arc<GrantVerifier>,
    fetched: Value,
    refresh: Duration,
    on_roots: Option<OnRoots>,
) {
    let base = control_url.trim_end_matches('/').to_owned();
    let mut backoff = Duration::from_millis(250);
    let mut last_bundle = tokio::time::Instant::now();
    let mut seen = fetched;
    loop {
        if last_bundle.elapsed() > refresh {
            match get_json(&client, &format!("{base}/v1/bundle")).await {
                Ok(bundle) => {
                    last_bundle = tokio::time::Instant::now();
                    if seen["grantRoots"] != bundle["grantRoots"]
                        || seen["x509Pem"] != bundle["x509Pem"]
                    {
                        apply_bundle(&bundle, &grants, on_roots.as_deref());
                        seen = bundle;
                    }
                }
                Err(e) => tracing::warn!("trust bundle refresh failed: {e:#}"),
            }
        }
        let current = grants.revocations();
        let wait = WATCH_SECONDS.min(refresh.as_secs().max(1));
        let url = format!(
            "{base}/v1/revocations?since={}&wait={wait}",
            current.version()
        );
        match get_json(&client, &url)
            .await
            .and_then(|answer| revocation_set(&answer, &current))
        {
            Ok(set) => {
                grants.set_revocations(set);
                backoff = Duration::from_millis(250);
            }
            Err(e) => {
                tracing::warn!("revocation watch failed, retrying in {backoff:?}: {e:#}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Takes in a changed bundle: grant keys (cached verifications start over) and X.509 roots.
fn apply_bundle(bundle: &Value, grants: &GrantVerifier, on_roots: Option<&RootsChanged>) {
    match GrantRoots::from_json(&bundle["grantRoots"]) {
        Ok(roots) => grants.set_roots(roots),
        Err(e) => tracing::warn!("the trust bundle's grant keys are unreadable: {e}"),
    }
    match (roots_der(bundle), on_roots) {
        (Ok(roots), Some(apply)) => apply(&roots),
        (Err(e), _) => tracing::warn!("the trust bundle's roots are unreadable: {e:#}"),
        (Ok(_), None) => {}
    }
}
