//! Attestation evidence: every attack the issue lists against JWT evidence is refused with a
//! precise reason, and nothing panics.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use warden_authority::{EvidenceError, EvidenceIssuer, MAX_TOKEN_BYTES};

const ISSUER: &str = "https://kubernetes.default.svc";
const AUDIENCE: &str = "warden";

struct Signer {
    kid: &'static str,
    key: KeyPair,
}

impl Signer {
    fn new(kid: &'static str) -> Self {
        Self {
            kid,
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        let point = self.key.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_der(&self.key.serialize_der()),
        )
        .unwrap()
    }
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "system:serviceaccount:shop:agent",
           "iat": now(), "nbf": now() - 5, "exp": now() + 600,
           "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "agent"}}})
}

fn issuer(signers: &[&Signer]) -> EvidenceIssuer {
    let keys: JwkSet = serde_json::from_value(
        json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}),
    )
    .unwrap();
    EvidenceIssuer {
        issuer: ISSUER.into(),
        audiences: vec![AUDIENCE.into()],
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        keys,
        leeway: Duration::from_secs(30),
    }
}

fn with(claims: Value, changes: Value) -> Value {
    let mut c = claims;
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn raw_token(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[test]
fn valid_evidence_verifies() {
    let k1 = Signer::new("k1");
    let verified = issuer(&[&k1]).verify(&k1.sign(&claims())).unwrap();
    assert_eq!(verified.subject, "system:serviceaccount:shop:agent");
    assert_eq!(verified.claims["kubernetes.io"]["namespace"], "shop");
}

#[test]
fn rotated_keys_both_verify_by_kid() {
    let (k1, k2) = (Signer::new("k1"), Signer::new("k2"));
    let trusted = issuer(&[&k1, &k2]);
    assert!(trusted.verify(&k1.sign(&claims())).is_ok());
    assert!(trusted.verify(&k2.sign(&claims())).is_ok());
}

#[test]
fn expired_and_premature_tokens_are_refused() {
    let k1 = Signer::new("k1");
    let trusted = issuer(&[&k1]);
    let expired = with(
        claims(),
        json!({"exp": now() - 3600, "iat": now() - 7200, "nbf": now() - 7200}),
    );
    assert_eq!(
        trusted.verify(&k1.sign(&expired)),
        Err(EvidenceError::Expired)
    );
    let premature = with(claims(), json!({"nbf": now() + 3600}));
    assert_eq!(
        trusted.verify(&k1.sign(&premature)),
        Err(EvidenceError::NotYetValid)
    );
}

#[test]
fn another_issuer_or_audience_is_refused() {
    let k1 = Signer::new("k1");
    let trusted = issuer(&[&k1]);
    let foreign = with(claims(), json!({"iss": "https://evil.example"}));
    assert_eq!(
        trusted.verify(&k1.sign(&foreign)),
        Err(EvidenceError::WrongIssuer)
    );
    let other_audience = with(claims(), json!({"aud": "vault"}));
    assert_eq!(
        trusted.verify(&k1.sign(&other_audience)),
        Err(EvidenceError::WrongAudience)
    );
}

#[test]
fn required_claims_must_be_present() {
    let k1 = Signer::new("k1");
    let trusted = issuer(&[&k1]);
    for claim in ["exp", "sub", "aud", "iss"] {
        let missing = with(claims(), json!({claim: null}));
        assert_eq!(
            trusted.verify(&k1.sign(&missing)),
            Err(EvidenceError::MissingClaim(claim.into())),
            "{claim}"
        );
    }
}

#[test]
fn alg_none_is_refused() {
    let k1 = Signer::new("k1");
    let token = raw_token(json!({"alg": "none", "kid": "k1"}), &claims(), b"");
    assert_eq!(
        issuer(&[&k1]).verify(&token),
        Err(EvidenceError::Algorithm("none".into()))
    );
    let token = raw_token(json!({"alg": "None", "kid": "k1"}), &claims(), b"");
    assert_eq!(
        issuer(&[&k1]).verify(&token),
        Err(EvidenceError::Algorithm("None".into()))
    );
}

#[test]
fn algorithm_confusion_is_refused() {
    // HS256 "signed" with the issuer's public key as the HMAC secret.
    let k1 = Signer::new("k1");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(k1.key.public_key_raw()),
    )
    .unwrap();
    assert_eq!(
        issuer(&[&k1]).verify(&token),
        Err(EvidenceError::Algorithm("HS256".into()))
    );
    // Even an issuer misconfigured to list HS256 never accepts a symmetric algorithm.
    let mut misconfigured = issuer(&[&k1]);
    misconfigured.algorithms.push(Algorithm::HS256);
    assert_eq!(
        misconfigured.verify(&token),
        Err(EvidenceError::Algorithm("HS256".into()))
    );
    // RS256 is accepted from this issuer, but the key named is an EC key.
    let token = raw_token(json!({"alg": "RS256", "kid": "k1"}), &claims(), &[0u8; 256]);
    assert_eq!(
        issuer(&[&k1]).verify(&token),
        Err(EvidenceError::KeyMismatch("k1".into()))
    );
}

#[test]
fn forged_and_tampered_tokens_are_refused() {
    let (k1, impostor) = (Signer::new("k1"), Signer::new("k1"));
    let trusted = issuer(&[&k1]);
    assert_eq!(
        trusted.verify(&impostor.sign(&claims())),
        Err(EvidenceError::BadSignature)
    );
    let token = k1.sign(&claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(
        with(
            claims(),
            json!({"sub": "system:serviceaccount:kube-system:admin"}),
        )
        .to_string(),
    );
    assert_eq!(
        trusted.verify(&parts.join(".")),
        Err(EvidenceError::BadSignature)
    );
}

#[test]
fn keys_must_be_named_and_known() {
    let (k1, k2, k3) = (Signer::new("k1"), Signer::new("k2"), Signer::new("k3"));
    assert_eq!(
        issuer(&[&k1, &k2]).verify(&k3.sign(&claims())),
        Err(EvidenceError::UnknownKey("k3".into()))
    );
    let unnamed = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_der(&k1.key.serialize_der()),
    )
    .unwrap();
    assert_eq!(
        issuer(&[&k1, &k2]).verify(&unnamed),
        Err(EvidenceError::MissingKeyId)
    );
    assert!(
        issuer(&[&k1]).verify(&unnamed).is_ok(),
        "a single key needs no kid"
    );
}

#[test]
fn oversized_and_malformed_tokens_are_refused_without_panicking() {
    let k1 = Signer::new("k1");
    let trusted = issuer(&[&k1]);
    assert_eq!(
        trusted.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)),
        Err(EvidenceError::TooLarge)
    );
    for garbage in [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        "e30.e30.",
        "eyJhbGciOjF9.e30.",
        "bm90IGpzb24.e30.x",
        "..",
    ] {
        let result = trusted.verify(garbage);
        assert!(
            matches!(
                result,
                Err(EvidenceError::Malformed(_) | EvidenceError::Algorithm(_))
            ),
            "{garbage}: {result:?}"
        );
    }
    let token = raw_token(
        json!({"alg": "ES256", "kid": "k1"}),
        &json!("not an object"),
        &[1; 64],
    );
    assert!(trusted.verify(&token).is_err());
}
