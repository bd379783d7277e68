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

/// How verified evidence becomes a SPIFFE ID: the first rule whose conditions hold wins.
///
/// Claims are addressed by JSON pointer (`/kubernetes.io/namespace`), since claim names contain
/// dots. A template is a SPIFFE ID with `{pointer}` placeholders; every substituted value must be
/// a single valid path segment, so a hostile claim (`../admin`, `a/b`) cannot forge another
/// identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRule {
    /// Claims that must hold exactly these string values.
    pub when: Vec<(String, String)>,
    /// e.g. `spiffe://acme.example/tenant/{/kubernetes.io/namespace}/agent/{/kubernetes.io/serviceaccount/name}/{/kubernetes.io/pod/name}`
    pub spiffe_id: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("no identity rule matches this evidence")]
    NoMatchingRule,
    #[error("claim `{pointer}` is missing or not a string")]
    MissingClaim { pointer: String },
    #[error(
        "claim `{pointer}` is not usable in a SPIFFE ID (letters, digits, `.`, `-`, `_`; not `.` or `..`)"
    )]
    UnsafeClaim { pointer: String },
    #[error("the template `{0}` has an unclosed `{{`")]
    Template(String),
    #[error(transparent)]
    Id(#[from] warden_model::ModelError),
}

/// Looks a claim up by JSON pointer (RFC 6901) and returns it if it is a string.
fn claim<'a>(claims: &'a Map<String, Value>, pointer: &str) -> Option<&'a str> {
    let mut tokens = pointer
        .strip_prefix('/')?
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"));
    let mut value = claims.get(&tokens.next()?)?;
    for token in tokens {
        value = match value {
            Value::Object(map) => map.get(&token)?,
            Value::Array(items) => items.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    value.as_str()
}

fn safe_segment(value: &str) -> bool {
    !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl IdentityRule {
    /// The SPIFFE ID this rule gives `evidence`, or `None` if its conditions do not hold.
    fn apply(
        &self,
        evidence: &VerifiedEvidence,
    ) -> Result<Option<warden_model::SpiffeId>, MappingError> {
        if !self
            .when
            .iter()
            .all(|(pointer, want)| claim(&evidence.claims, pointer) == Some(want.as_str()))
        {
            return Ok(None);
        }
        let mut id = String::with_capacity(self.spiffe_id.len());
        let mut rest = self.spiffe_id.as_str();
        while let Some(open) = rest.find('{') {
            id.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| MappingError::Template(self.spiffe_id.clone()))?;
            let pointer = &rest[open + 1..open + close];
            let value =
                claim(&evidence.claims, pointer).ok_or_else(|| MappingError::MissingClaim {
                    pointer: pointer.to_owned(),
                })?;
            if !safe_segment(value) {
                return Err(MappingError::UnsafeClaim {
                    pointer: pointer.to_owned(),
                });
            }
            id.push_str(value);
            rest = &rest[open + close + 1..];
        }
        id.push_str(rest);
        Ok(Some(warden_model::SpiffeId::new(id)?))
    }
}

/// The SPIFFE ID of the first rule whose conditions hold for `evidence`.
pub fn map_identity(
    rules: &[IdentityRule],
    evidence: &VerifiedEvidence,
) -> Result<warden_model::SpiffeId, MappingError> {
    for rule in rules {
        if let Some(id) = rule.apply(evidence)? {
            return Ok(id);
        }
    }
    Err(MappingError::NoMatchingRule)
}
