//! Proof of possession for callers without mTLS, in the shape of RFC 9449 (DPoP).
//!
//! With each request the holder signs a short JWT — method, URL, time, a unique id, and the hash
//! of the credential it presents — with the key the credential is bound to. A copied credential is
//! useless without that key, and a captured proof is useless for another request, another URL,
//! later, or twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Longest proof accepted, in bytes.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// JWK members that carry private or symmetric key material, never allowed in a proof.
const SECRET_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DpopError {
    #[error("the proof is larger than {MAX_PROOF_BYTES} bytes")]
    TooLarge,
    #[error("the proof is not a well-formed DPoP JWT: {0}")]
    Malformed(String),
    #[error("the proof's `typ` must be `dpop+jwt`")]
    Type,
    #[error("algorithm `{0}` is not accepted for proofs")]
    Algorithm(String),
    #[error("the proof's `jwk` must be a public key")]
    PrivateKey,
    #[error("the proof is signed with another key than the credential is bound to")]
    WrongKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the proof is for method {0}, not this request's")]
    Method(String),
    #[error("the proof is for another URL")]
    Url,
    #[error("the proof is too old or from the future")]
    Time,
    #[error("the proof was already used")]
    Replayed,
    #[error("the proof does not carry the hash of the presented credential")]
    CredentialHash,
    #[error("too many recent proofs to track replays; refusing until older ones age out")]
    Saturated,
    #[error("the proof could not be recorded against replay ({0}); refusing it")]
    ReplayCheck(String),
}

/// The request a proof must match.
pub struct ProofRequest<'a> {
    pub method: &'a str,
    pub url: &'a str,
    /// The credential presented with the request; its SHA-256 must be the proof's `ath`.
    pub credential: &'a str,
    /// Unix seconds.
    pub now: i64,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: i64,
    ath: Option<String>,
}

/// Verifies proofs and remembers their ids for as long as they could be replayed.
pub struct DpopVerifier {
    algorithms: Vec<Algorithm>,
    max_age: Duration,
    replays: Box<dyn ReplayGuard>,
}

/// Where seen proof ids are kept. In memory by default; a durable guard (the control plane's
/// store) keeps a restart from reopening the replay window.
pub trait ReplayGuard: Send + Sync {
    /// Records proof id `jti` of the key with thumbprint `key` until `expires` (unix seconds),
    /// refusing an id recorded and not yet expired.
    fn remember(&self, key: &str, jti: &str, expires: i64, now: i64) -> Result<(), DpopError>;
}

/// A proof id as the replay table keeps it: SHA-256 of the key's thumbprint and the id, so an
/// entry costs the same whatever the id's length, and one key's ids never collide with another's.
pub fn replay_key(key: &str, jti: &str) -> [u8; 32] {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    digest.update(key.as_bytes());
    digest.update(b"\0");
    digest.update(jti.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

/// Seen proof ids in memory, bounded in all and per key: a key with too many live ids has its
/// proofs refused (rather than replays risked) while every other key is served; when the whole
/// table is full of live ids, proofs are refused.
pub struct MemoryReplayGuard {
    max_tracked: usize,
    per_key: usize,
    table: Mutex<ReplayTable>,
}

#[derive(Default)]
struct ReplayTable {
    /// Replay key → the time after which its proof is too old anyway, and its key's digest.
    seen: HashMap<[u8; 32], (i64, [u8; 32])>,
    /// Live ids per key (by the key thumbprint's digest).
    per_key: HashMap<[u8; 32], usize>,
}

impl ReplayTable {
    fn expire(&mut self, now: i64) {
        let per_key = &mut self.per_key;
        self.seen.retain(|_, (until, key)| {
            let live = *until >= now;
            if !live && let Some(n) = per_key.get_mut(key) {
                *n -= 1;
            }
            live
        });
        per_key.retain(|_, n| *n > 0);
    }
}

impl MemoryReplayGuard {
    /// At most `max_tracked` live ids in all (48 bytes each), and a tenth of that (at least
    /// 1,000) for any one key.
    pub fn new(max_tracked: usize) -> Self {
        Self {
            max_tracked,
            per_key: (max_tracked / 10).max(1_000).min(max_tracked),
            table: Mutex::default(),
        }
    }
}

impl ReplayGuard for MemoryReplayGuard {
    /// Ids leave once their proof is too old to be accepted anyway, so the table holds only the
    /// replay window.
    fn remember(&self, key: &str, jti: &str, expires: i64, now: i64) -> Result<(), DpopError> {
        let entry = replay_key(key, jti);
        let holder = replay_key(key, "");
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((until, _)) = table.seen.get(&entry)
            && *until >= now
        {
            return Err(DpopError::Replayed);
        }
        let full = |table: &ReplayTable| {
            table.seen.len() >= self.max_tracked
                || table.per_key.get(&holder).copied().unwrap_or(0) >= self.per_key
        };
        if full(&table) {
            table.expire(now);
            if full(&table) {
                return Err(DpopError::Saturated);
            }
        }
        if table.seen.insert(entry, (expires, holder)).is_none() {
            *table.per_key.entry(holder).or_default() += 1;
        }
        Ok(())
    }
}

/// The RFC 7638 SHA-256 thumbprint of a public JWK, base64url: what a credential binds to.
pub fn thumbprint(jwk: &Jwk) -> Result<String, DpopError> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| DpopError::Malformed(e.to_string()))
}

fn normalise_url(url: &str) -> String {
    let without = url.split(['?', '#']).next().unwrap_or_default();
    match without.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let path = if path.is_empty() { "/" } else { path };
            format!(
                "{}://{}{}",
                scheme.to_ascii_lowercase(),
                authority.to_ascii_lowercase(),
                path
            )
        }
        None => without.to_owned(),
    }
}

impl DpopVerifier {
    /// Accepts proofs made with `algorithms` (asymmetric only) and at most `max_age` old,
    /// tracking up to `max_tracked` recent proof ids.
    pub fn new(algorithms: Vec<Algorithm>, max_age: Duration, max_tracked: usize) -> Self {
        Self::with_guard(
            algorithms,
            max_age,
            Box::new(MemoryReplayGuard::new(max_tracked)),
        )
    }

    /// As [`DpopVerifier::new`], keeping seen proof ids in `replays`.
    pub fn with_guard(
        algorithms: Vec<Algorithm>,
        max_age: Duration,
        replays: Box<dyn ReplayGuard>,
    ) -> Self {
        let algorithms = algorithms
            .into_iter()
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        Self {
            algorithms,
            max_age,
            replays,
        }
    }

    /// Checks `proof` for `request`, made with the key whose thumbprint is `bound_thumbprint`.
    pub fn verify(
        &self,
        proof: &str,
        request: &ProofRequest<'_>,
        bound_thumbprint: &str,
    ) -> Result<(), DpopError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(DpopError::TooLarge);
        }
        let mut parts = proof.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(DpopError::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| DpopError::Malformed("the header is not base64url JSON".into()))?;
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(DpopError::Type);
        }
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let alg = alg_name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(|| DpopError::Algorithm(alg_name.clone()))?;
        let raw_jwk = header
            .get("jwk")
            .ok_or_else(|| DpopError::Malformed("the header has no `jwk`".into()))?;
        if SECRET_MEMBERS.iter().any(|m| raw_jwk.get(m).is_some()) {
            return Err(DpopError::PrivateKey);
        }
        let jwk: Jwk = serde_json::from_value(raw_jwk.clone())
            .map_err(|e| DpopError::Malformed(format!("bad `jwk`: {e}")))?;
        if thumbprint(&jwk)? != bound_thumbprint {
            return Err(DpopError::WrongKey);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopError::WrongKey)?;
        if key.family() != alg.family() {
            return Err(DpopError::Algorithm(alg_name));
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopError::BadSignature,
                other => DpopError::Malformed(format!("{other:?}")),
            })?
            .claims;
        if !claims.htm.eq_ignore_ascii_case(request.method) {
            return Err(DpopError::Method(claims.htm));
        }
        if normalise_url(&claims.htu) != normalise_url(request.url) {
            return Err(DpopError::Url);
        }
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        // A little future skew is tolerated; the past is bounded by `max_age`.
        if claims.iat > request.now.saturating_add(5)
            || request.now.saturating_sub(claims.iat) > max_age
        {
            return Err(DpopError::Time);
        }
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, request.credential.as_bytes());
        if claims.ath.as_deref() != Some(URL_SAFE_NO_PAD.encode(digest.as_ref()).as_str()) {
            return Err(DpopError::CredentialHash);
        }
        self.replays.remember(
            bound_thumbprint,
            &claims.jti,
            claims.iat.saturating_add(max_age),
            request.now,
        )
    }
}

/// The holder's side: signs a proof for each request with a P-256 key (a PoP key, or an SVID's).
pub struct ProofSigner {
    key: rcgen::KeyPair,
}

impl ProofSigner {
    /// A fresh key, for a caller binding a new grant to it.
    pub fn generate() -> Result<Self, DpopError> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(|key| Self { key })
            .map_err(|e| DpopError::Malformed(e.to_string()))
    }

    /// A PKCS#8 PEM P-256 key, such as an SVID's private key.
    pub fn from_pem(pem: &str) -> Result<Self, DpopError> {
        let key = rcgen::KeyPair::from_pem(pem).map_err(|e| DpopError::Malformed(e.to_string()))?;
        if key.public_key_raw().len() != 65 {
            return Err(DpopError::Algorithm("only P-256 keys sign proofs".into()));
        }
        Ok(Self { key })
    }

    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The RFC 7638 thumbprint a grant is bound to.
    pub fn thumbprint(&self) -> String {
        crate::ca::p256_thumbprint(self.key.public_key_raw()).unwrap_or_default()
    }

    /// A proof for one request presenting `credential`.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        credential: &str,
        now: i64,
    ) -> Result<String, DpopError> {
        let point = self.key.public_key_raw();
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }))
        .map_err(|e| DpopError::Malformed(e.to_string()))?;
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(jwk);
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti)
            .map_err(|_| DpopError::Malformed("no randomness".into()))?;
        let ath = URL_SAFE_NO_PAD.encode(
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, credential.as_bytes()).as_ref(),
        );
        let claims = serde_json::json!({
            "jti": URL_SAFE_NO_PAD.encode(jti), "htm": method, "htu": url, "iat": now, "ath": ath,
        });
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.key.serialize_der()),
        )
        .map_err(|e| DpopError::Malformed(e.to_string()))
    }
}
