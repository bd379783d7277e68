//! Attestation evidence: a JWT issued by the platform a workload runs on (a Kubernetes projected
//! ServiceAccount token, a cloud OIDC identity token), verified against its issuer's JWKS before
//! Warden trusts anything it says.
//!
//! Only asymmetric algorithms the issuer is configured for are accepted; the key is chosen by
//! `kid` and must be of the algorithm's family, so neither `alg: none` nor algorithm confusion
//! (a public key used as an HMAC secret) can get through. Issuer, audience, expiry and
//! not-before are always checked.

use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use thiserror::Error;

/// Longest token accepted, in bytes; real identity tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why evidence was refused. Each says what failed; none says more than the caller should know.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("the token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("algorithm `{0}` is not accepted from this issuer")]
    Algorithm(String),
    #[error("no key `{0}` in the issuer's key set; refresh the JWKS if the issuer rotated keys")]
    UnknownKey(String),
    #[error("the token names no key (`kid`) and the issuer has several")]
    MissingKeyId,
    #[error("the key `{0}` does not fit the token's algorithm")]
    KeyMismatch(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(String),
}

/// A trusted issuer of evidence, with its current keys.
#[derive(Debug, Clone)]
pub struct EvidenceIssuer {
    /// Expected `iss`.
    pub issuer: String,
    /// Accepted `aud` values (one must match).
    pub audiences: Vec<String>,
    /// Asymmetric algorithms this issuer signs with.
    pub algorithms: Vec<Algorithm>,
    pub keys: JwkSet,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Claims of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedEvidence {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The algorithm named in the token's header, read before anything else is trusted.
fn header_algorithm(token: &str) -> Result<(String, Option<String>), EvidenceError> {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| EvidenceError::Malformed("the header is not base64url".into()))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|_| EvidenceError::Malformed("the header is not JSON".into()))?;
    let alg = json
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| EvidenceError::Malformed("the header has no `alg`".into()))?
        .to_owned();
    let kid = json.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok((alg, kid))
}

impl EvidenceIssuer {
    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedEvidence, EvidenceError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(EvidenceError::TooLarge);
        }
        if token.split('.').count() != 3 {
            return Err(EvidenceError::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        }
        let (alg_name, kid) = header_algorithm(token)?;
        let alg = alg_name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| is_asymmetric(*a) && self.algorithms.contains(a))
            .ok_or_else(|| EvidenceError::Algorithm(alg_name.clone()))?;
        let jwk = self.key(kid.as_deref())?;
        let key_name = kid.clone().unwrap_or_else(|| "(only key)".into());
        if jwk
            .common
            .key_algorithm
            .is_some_and(|k| k.to_string() != alg_name)
        {
            return Err(EvidenceError::KeyMismatch(key_name));
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| EvidenceError::KeyMismatch(key_name.clone()))?;
        if key.family() != alg.family() {
            return Err(EvidenceError::KeyMismatch(key_name));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::InvalidSignature => EvidenceError::BadSignature,
                    ErrorKind::InvalidIssuer => EvidenceError::WrongIssuer,
                    ErrorKind::InvalidAudience => EvidenceError::WrongAudience,
                    ErrorKind::ExpiredSignature => EvidenceError::Expired,
                    ErrorKind::ImmatureSignature => EvidenceError::NotYetValid,
                    ErrorKind::MissingRequiredClaim(claim) => {
                        EvidenceError::MissingClaim(claim.clone())
                    }
                    ErrorKind::InvalidAlgorithm => EvidenceError::Algorithm(alg_name.clone()),
                    other => EvidenceError::Malformed(format!("{other:?}")),
                }
            })?;
        let subject = data
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| EvidenceError::MissingClaim("sub".into()))?
            .to_owned();
        Ok(VerifiedEvidence {
            issuer: self.issuer.clone(),
            subject,
            claims: data.claims,
        })
    }

    fn key(&self, kid: Option<&str>) -> Result<&Jwk, EvidenceError> {
        match kid {
            Some(kid) => self
                .keys
                .find(kid)
                .ok_or_else(|| EvidenceError::UnknownKey(kid.to_owned())),
            None => match self.keys.keys.as_slice() {
                [only] => Ok(only),
                _ => Err(EvidenceError::MissingKeyId),
            },
        }
    }
}
