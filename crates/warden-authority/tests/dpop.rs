//! Proof of possession: a credential copied without its key, and a proof replayed or reused for
//! another request, are refused.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use warden_authority::{DpopError, DpopVerifier, MAX_PROOF_BYTES, ProofRequest, thumbprint};

const NOW: i64 = 1_790_000_000;
const CREDENTIAL: &str = "grant-token-value";
const URL: &str = "https://gateway.example/mcp/github";

struct Holder {
    key: KeyPair,
}

impl Holder {
    fn new() -> Self {
        Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
    fn jwk_value(&self) -> Value {
        let p = self.key.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
    }
    fn thumbprint(&self) -> String {
        thumbprint(&serde_json::from_value::<Jwk>(self.jwk_value()).unwrap()).unwrap()
    }
    fn proof_with(&self, jwk: Value, typ: &str, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some(typ.into());
        header.jwk = Some(serde_json::from_value(jwk).unwrap());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ec_der(&self.key.serialize_der()),
        )
        .unwrap()
    }
    fn proof(&self, claims: Value) -> String {
        self.proof_with(self.jwk_value(), "dpop+jwt", claims)
    }
}

fn ath(credential: &str) -> String {
    URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, credential.as_bytes()).as_ref(),
    )
}

fn claims(jti: &str) -> Value {
    json!({"jti": jti, "htm": "POST", "htu": URL, "iat": NOW, "ath": ath(CREDENTIAL)})
}

fn request() -> ProofRequest<'static> {
    ProofRequest {
        method: "POST",
        url: URL,
        credential: CREDENTIAL,
        now: NOW + 2,
    }
}

fn verifier() -> DpopVerifier {
    DpopVerifier::new(
        vec![Algorithm::ES256, Algorithm::HS256],
        Duration::from_secs(60),
        10_000,
    )
}

#[test]
fn a_fresh_proof_for_this_request_verifies_once() {
    let holder = Holder::new();
    let v = verifier();
    let proof = holder.proof(claims("a1"));
    assert_eq!(v.verify(&proof, &request(), &holder.thumbprint()), Ok(()));
    assert_eq!(
        v.verify(&proof, &request(), &holder.thumbprint()),
        Err(DpopError::Replayed)
    );
    // URL normalisation: case of scheme and host, query and fragment do not matter.
    let other = ProofRequest {
        url: "HTTPS://Gateway.Example/mcp/github?x=1#f",
        ..request()
    };
    assert_eq!(
        v.verify(&holder.proof(claims("a2")), &other, &holder.thumbprint()),
        Ok(())
    );
}

#[test]
fn a_copied_credential_without_the_key_fails() {
    let (holder, thief) = (Holder::new(), Holder::new());
    // The thief signs a proof with its own key: the credential is bound to the holder's.
    assert_eq!(
        verifier().verify(&thief.proof(claims("t1")), &request(), &holder.thumbprint()),
        Err(DpopError::WrongKey)
    );
    // The thief puts the holder's public key in the header but cannot sign with it.
    let forged = thief.proof_with(holder.jwk_value(), "dpop+jwt", claims("t2"));
    assert_eq!(
        verifier().verify(&forged, &request(), &holder.thumbprint()),
        Err(DpopError::BadSignature)
    );
}

#[test]
fn a_proof_for_another_request_fails() {
    let holder = Holder::new();
    let v = verifier();
    let t = holder.thumbprint();
    let get = ProofRequest {
        method: "GET",
        ..request()
    };
    assert_eq!(
        v.verify(&holder.proof(claims("m")), &get, &t),
        Err(DpopError::Method("POST".into()))
    );
    let elsewhere = ProofRequest {
        url: "https://gateway.example/mcp/k8s",
        ..request()
    };
    assert_eq!(
        v.verify(&holder.proof(claims("u")), &elsewhere, &t),
        Err(DpopError::Url)
    );
    let other_credential = ProofRequest {
        credential: "another-grant",
        ..request()
    };
    assert_eq!(
        v.verify(&holder.proof(claims("c")), &other_credential, &t),
        Err(DpopError::CredentialHash)
    );
    let mut no_ath = claims("n");
    no_ath.as_object_mut().unwrap().remove("ath");
    assert_eq!(
        v.verify(&holder.proof(no_ath), &request(), &t),
        Err(DpopError::CredentialHash)
    );
}

#[test]
fn stale_and_future_proofs_fail() {
    let holder = Holder::new();
    let t = holder.thumbprint();
    let mut old = claims("o");
    old["iat"] = json!(NOW - 120);
    assert_eq!(
        verifier().verify(&holder.proof(old), &request(), &t),
        Err(DpopError::Time)
    );
    let mut future = claims("f");
    future["iat"] = json!(NOW + 600);
    assert_eq!(
        verifier().verify(&holder.proof(future), &request(), &t),
        Err(DpopError::Time)
    );
}

#[test]
fn malformed_headers_are_refused() {
    let holder = Holder::new();
    let t = holder.thumbprint();
    let v = verifier();
    assert_eq!(
        v.verify(
            &holder.proof_with(holder.jwk_value(), "JWT", claims("x")),
            &request(),
            &t
        ),
        Err(DpopError::Type)
    );
    let mut private = holder.jwk_value();
    private["d"] = json!("c2VjcmV0");
    let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private});
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims("p").to_string()),
        "sig"
    );
    assert_eq!(v.verify(&token, &request(), &t), Err(DpopError::PrivateKey));
    for alg in ["none", "HS256"] {
        let header = json!({"typ": "dpop+jwt", "alg": alg, "jwk": holder.jwk_value()});
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims("n").to_string())
        );
        assert_eq!(
            v.verify(&token, &request(), &t),
            Err(DpopError::Algorithm(alg.into())),
            "{alg}"
        );
    }
    assert_eq!(
        v.verify(&"a".repeat(MAX_PROOF_BYTES + 1), &request(), &t),
        Err(DpopError::TooLarge)
    );
    for garbage in ["", "a.b", "a.b.c.d", "!!.e30.x", "e30.e30.x"] {
        assert!(v.verify(garbage, &request(), &t).is_err(), "{garbage}");
    }
}

#[test]
fn the_replay_table_is_bounded_and_fails_closed() {
    let holder = Holder::new();
    let t = holder.thumbprint();
    let v = DpopVerifier::new(vec![Algorithm::ES256], Duration::from_secs(60), 2);
    assert!(v.verify(&holder.proof(claims("1")), &request(), &t).is_ok());
    assert!(v.verify(&holder.proof(claims("2")), &request(), &t).is_ok());
    assert_eq!(
        v.verify(&holder.proof(claims("3")), &request(), &t),
        Err(DpopError::Saturated)
    );
    // Once the tracked proofs are too old to be replayed, room frees up.
    let mut later = claims("4");
    later["iat"] = json!(NOW + 100);
    let later_request = ProofRequest {
        now: NOW + 100,
        ..request()
    };
    assert!(v.verify(&holder.proof(later), &later_request, &t).is_ok());
}

/// One key flooding the table with fresh proof ids runs out of its own share; other keys are
/// still served. Ids are kept by digest, so long ids cost no more than short ones.
#[test]
fn one_keys_flood_of_proofs_leaves_other_keys_served() {
    let (flooder, other) = (Holder::new(), Holder::new());
    let (f, o) = (flooder.thumbprint(), other.thumbprint());
    let v = DpopVerifier::new(vec![Algorithm::ES256], Duration::from_secs(60), 10_000);
    let mut refused_at = None;
    for i in 0..1_200 {
        let id = format!("{i:0>4096}");
        if v.verify(&flooder.proof(claims(&id)), &request(), &f) == Err(DpopError::Saturated) {
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(
        refused_at,
        Some(1_000),
        "the flooding key's share is 1,000 live ids"
    );
    assert!(
        v.verify(&other.proof(claims("mine")), &request(), &o)
            .is_ok()
    );
    // The same id under another key is another proof, not a replay.
    assert!(v.verify(&other.proof(claims("0")), &request(), &o).is_ok());
    assert_eq!(
        v.verify(&other.proof(claims("mine")), &request(), &o),
        Err(DpopError::Replayed)
    );
}
