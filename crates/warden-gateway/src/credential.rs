//! The upstream's own credential, which the gateway sends in place of anything the agent sent: a
//! static secret, or an OAuth 2.0 client-credentials token it fetches and refreshes.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use http::{HeaderName, HeaderValue, Method};
use tokio::sync::Mutex;
use warden_http::HttpClient;

use crate::config::{InjectedCredential, OAuthClient};

/// A token is replaced this long before it expires.
const EARLY: Duration = Duration::from_secs(30);
/// Largest token response accepted.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

pub enum UpstreamCredential {
    Static(HeaderName, HeaderValue),
    OAuth {
        header: HeaderName,
        client: OAuthClient,
        secret: String,
        cached: Mutex<Option<(HeaderValue, Instant)>>,
    },
}

fn secret_from_env(var: &str, upstream: &str) -> anyhow::Result<String> {
    std::env::var(var).with_context(|| {
        format!("upstream {upstream}: environment variable {var} (its credential) is not set")
    })
}

impl UpstreamCredential {
    pub fn from_config(config: &InjectedCredential, upstream: &str) -> anyhow::Result<Self> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .with_context(|| format!("upstream {upstream}: invalid header name"))?;
        match (&config.value_env, &config.value, &config.oauth) {
            (Some(_), None, None) | (None, Some(_), None) => {
                let value = match (&config.value_env, &config.value) {
                    (Some(var), _) => secret_from_env(var, upstream)?,
                    (None, Some(value)) => value.clone(),
                    (None, None) => unreachable!("matched above"),
                };
                let mut value = HeaderValue::from_str(&value)
                    .with_context(|| format!("upstream {upstream}: invalid credential value"))?;
                value.set_sensitive(true);
                Ok(Self::Static(header, value))
            }
            (None, None, Some(oauth)) => {
                warden_http::secure_url(&oauth.token_url)
                    .map_err(|e| anyhow::anyhow!("upstream {upstream}: tokenUrl {e}"))?;
                Ok(Self::OAuth {
                    header,
                    secret: secret_from_env(&oauth.client_secret_env, upstream)?,
                    client: oauth.clone(),
                    cached: Mutex::new(None),
                })
            }
            _ => bail!(
                "upstream {upstream}: set exactly one of credential.valueEnv, credential.value and credential.oauth"
            ),
        }
    }

    /// The header to send now, fetching a fresh token when needed.
    pub async fn header(&self, http: &HttpClient) -> anyhow::Result<(HeaderName, HeaderValue)> {
        match self {
            Self::Static(name, value) => Ok((name.clone(), value.clone())),
            Self::OAuth {
                header,
                client,
                secret,
                cached,
            } => {
                let mut cached = cached.lock().await;
                if let Some((value, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok((header.clone(), value.clone()));
                }
                let (value, lifetime) = fetch(http, client, secret).await?;
                let until =
                    Instant::now() + lifetime.saturating_sub(EARLY).max(Duration::from_secs(5));
                *cached = Some((value.clone(), until));
                Ok((header.clone(), value))
            }
        }
    }
}

/// RFC 6749 §4.4, client authenticated with HTTP Basic (§2.3.1).
async fn fetch(
    http: &HttpClient,
    client: &OAuthClient,
    secret: &str,
) -> anyhow::Result<(HeaderValue, Duration)> {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        encode(&client.client_id),
        encode(secret)
    ));
    let body = {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &client.scope {
            form.append_pair("scope", scope);
        }
        form.finish()
    };
    let authorization = format!("Basic {basic}");
    let response = http
        .send(
            Method::POST,
            &client.token_url,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
                ("authorization", &authorization),
            ],
            Some(body.into_bytes()),
            MAX_TOKEN_RESPONSE,
        )
        .await?;
    if !response.status.is_success() {
        bail!("the token endpoint answered {}", response.status);
    }
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    let token: Token = serde_json::from_slice(&response.body)
        .context("the token endpoint's answer is not a token")?;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.access_token))
        .context("the access token is not a valid header value")?;
    value.set_sensitive(true);
    Ok((value, Duration::from_secs(token.expires_in.unwrap_or(300))))
}
