//! A small HTTP client (hyper + rustls on aws-lc-rs) with bounded responses and timeouts: the
//! control plane fetches issuers' JWKS with it, gateways the trust bundle and revocations, and the
//! CLI talks to the control plane.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid URL `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{url} did not answer within {0:?}", timeout)]
    Timeout { url: String, timeout: Duration },
    #[error("the response from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Whether `url` may carry what must not be read or changed on the way (trust roots, grant keys,
/// tokens): `https`, or plain `http` to a loopback address only.
pub fn secure_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let loopback = uri.host().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!(
            "`{url}` must be https (plain http is allowed only to a loopback address)"
        )),
    }
}

pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client trusting the public web PKI roots.
    pub fn new(timeout: Duration) -> Result<Self, ClientError> {
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self::from_connector(builder, timeout))
    }

    fn from_connector(
        builder: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
        timeout: Duration,
    ) -> Self {
        let connector = builder.https_or_http().enable_http1().wrap_connector(tcp());
        Self {
            inner: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// A client trusting only `roots_pem` (a Warden trust bundle), optionally presenting a client
    /// certificate (an SVID) for mTLS.
    pub fn with_tls(
        timeout: Duration,
        roots_pem: &str,
        client_identity: Option<(&str, &str)>,
    ) -> Result<Self, ClientError> {
        let config = client_tls(roots_pem, client_identity)?;
        Ok(Self::from_connector(
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
            timeout,
        ))
    }

    /// Sends a request and reads at most `limit` bytes of the answer.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<HttpResponse, ClientError> {
        let bad_url = |reason: String| ClientError::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_url(e.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad_url("only http and https URLs are supported".into()));
        }
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| bad_url(e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.to_owned(),
                    reason: error_chain(&e),
                })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|_| ClientError::TooLarge {
                    url: url.to_owned(),
                    limit,
                })?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.to_owned(),
                timeout: self.timeout,
            })?
    }
}

impl HttpClient {
    /// Sends a prepared request and returns as soon as the response head arrives; the body
    /// streams. The timeout covers connecting and the head only.
    pub async fn stream(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let url = request.uri().to_string();
        tokio::time::timeout(self.timeout, self.inner.request(request))
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                timeout: self.timeout,
            })?
            .map_err(|e| ClientError::Connect {
                url,
                reason: error_chain(&e),
            })
    }
}

/// TCP with Nagle off: requests and answers here are small, and waiting to coalesce them only
/// adds latency.
fn tcp() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// A TLS client configuration (aws-lc-rs) trusting only `roots_pem`, optionally presenting
/// `client_identity` (certificate chain and key, PEM) for mTLS.
pub fn client_tls(
    roots_pem: &str,
    client_identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
    match client_identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_travel_over_https_or_loopback_only() {
        for ok in [
            "https://control.example:8181",
            "http://127.0.0.1:8181",
            "http://localhost:8181",
            "http://[::1]:8181",
        ] {
            assert!(secure_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:8181",
            "http://control.example",
            "ftp://x",
            "nonsense",
        ] {
            assert!(secure_url(bad).is_err(), "{bad}");
        }
    }
}
