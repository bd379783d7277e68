//! X.509-SVIDs: structure per the SPIFFE spec, chain verification against the trust bundle with
//! webpki (what rustls uses), lifetime limits, and rotation without stranding live SVIDs.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::time::Duration;

use ::time::OffsetDateTime;
use base64::Engine as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use warden_authority::{AuthorityError, CertificateAuthority, MAX_SVID_TTL, TrustBundle};
use warden_model::{SpiffeId, TrustDomain};
use webpki::{EndEntityCert, KeyUsage, anchor_from_trusted_cert};
use x509_parser::prelude::*;

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
}

fn authority() -> CertificateAuthority {
    CertificateAuthority::new(TrustDomain::new("acme.example").unwrap(), 30 * DAY, now()).unwrap()
}

fn agent() -> SpiffeId {
    SpiffeId::new("spiffe://acme.example/tenant/acme/agent/bot/i-1").unwrap()
}

/// Verifies `leaf` for client and server use against every root of `bundle` at `at`.
fn verify(bundle: &TrustBundle, leaf: &[u8], at: OffsetDateTime) -> Result<(), webpki::Error> {
    let roots: Vec<CertificateDer<'static>> = bundle
        .roots_der()
        .map(|d| CertificateDer::from(d.to_vec()))
        .collect();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| anchor_from_trusted_cert(r).unwrap())
        .collect();
    let leaf = CertificateDer::from(leaf.to_vec());
    let cert = EndEntityCert::try_from(&leaf)?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(at.unix_timestamp()).unwrap(),
    ));
    for usage in [KeyUsage::client_auth(), KeyUsage::server_auth()] {
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

#[test]
fn an_svid_has_exactly_one_uri_san_and_is_a_short_lived_leaf() {
    let ca = authority();
    let svid = ca.issue_svid(&agent(), None, now()).unwrap();
    let (_, cert) = X509Certificate::from_der(&svid.certificate_der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("uri:{u}"),
            other => format!("other:{other:?}"),
        })
        .collect();
    assert_eq!(sans, [format!("uri:{}", agent())]);
    assert!(!cert.is_ca());
    let usage = cert.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign() && !usage.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    let lifetime = cert.validity().not_after.timestamp() - now().unix_timestamp();
    assert_eq!(lifetime, 15 * 60);
    assert!(
        svid.private_key_pem
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    verify(&ca.trust_bundle(), &svid.certificate_der, now()).unwrap();
}

#[test]
fn serial_numbers_and_keys_are_unique() {
    let ca = authority();
    let a = ca.issue_svid(&agent(), None, now()).unwrap();
    let b = ca.issue_svid(&agent(), None, now()).unwrap();
    let (_, ca_) = X509Certificate::from_der(&a.certificate_der).unwrap();
    let (_, cb) = X509Certificate::from_der(&b.certificate_der).unwrap();
    assert_ne!(ca_.raw_serial(), cb.raw_serial());
    assert_ne!(a.private_key_pem, b.private_key_pem);
}

#[test]
fn lifetimes_are_bounded() {
    let ca = authority();
    assert!(matches!(
        ca.issue_svid(&agent(), Some(MAX_SVID_TTL + Duration::from_secs(1)), now()),
        Err(AuthorityError::Lifetime { .. })
    ));
    assert!(matches!(
        ca.issue_svid(&agent(), Some(Duration::ZERO), now()),
        Err(AuthorityError::Lifetime { .. })
    ));
    let svid = ca.issue_svid(&agent(), Some(MAX_SVID_TTL), now()).unwrap();
    assert_eq!(svid.not_after, now() + MAX_SVID_TTL);
    // Expired: verification fails after not_after.
    assert!(
        verify(
            &ca.trust_bundle(),
            &svid.certificate_der,
            now() + MAX_SVID_TTL + Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(matches!(
        CertificateAuthority::new(
            TrustDomain::new("acme.example").unwrap(),
            MAX_SVID_TTL,
            now()
        ),
        Err(AuthorityError::CaLifetime)
    ));
    // The CA never signs past its own expiry.
    assert!(matches!(
        ca.issue_svid(&agent(), None, now() + 30 * DAY - Duration::from_secs(60)),
        Err(AuthorityError::CaExpiring)
    ));
}

#[test]
fn only_ids_of_its_own_trust_domain_are_issued() {
    let ca = authority();
    let foreign = SpiffeId::new("spiffe://evil.example/tenant/acme/agent/bot/i-1").unwrap();
    assert!(matches!(
        ca.issue_svid(&foreign, None, now()),
        Err(AuthorityError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn an_svid_from_another_authority_does_not_verify() {
    let ours = authority();
    let theirs = authority();
    let svid = theirs.issue_svid(&agent(), None, now()).unwrap();
    assert!(verify(&ours.trust_bundle(), &svid.certificate_der, now()).is_err());
}

#[test]
fn a_tampered_svid_does_not_verify() {
    let ca = authority();
    let svid = ca.issue_svid(&agent(), None, now()).unwrap();
    let (_, cert) = X509Certificate::from_der(&svid.certificate_der).unwrap();
    // Change one byte of the URI SAN: the signature no longer matches.
    let id = agent().to_string();
    let position = svid
        .certificate_der
        .windows(id.len())
        .position(|w| w == id.as_bytes())
        .unwrap();
    let mut forged = svid.certificate_der.clone();
    forged[position + id.len() - 1] ^= 1;
    assert!(
        cert.validity()
            .is_valid_at(ASN1Time::from_timestamp(now().unix_timestamp()).unwrap())
    );
    assert!(verify(&ca.trust_bundle(), &forged, now()).is_err());
}

#[test]
fn rotation_keeps_live_svids_verifying_until_they_expire() {
    let mut ca = authority();
    let old = ca
        .issue_svid(&agent(), Some(Duration::from_secs(600)), now())
        .unwrap();
    let before = ca.trust_bundle().sequence;
    ca.rotate(now() + Duration::from_secs(60)).unwrap();
    let bundle = ca.trust_bundle();
    assert_eq!(
        bundle.roots_der().count(),
        2,
        "old root kept during the overlap"
    );
    assert!(bundle.sequence > before);
    let fresh = ca
        .issue_svid(&agent(), None, now() + Duration::from_secs(60))
        .unwrap();
    verify(
        &bundle,
        &old.certificate_der,
        now() + Duration::from_secs(120),
    )
    .unwrap();
    verify(
        &bundle,
        &fresh.certificate_der,
        now() + Duration::from_secs(120),
    )
    .unwrap();

    // Once the old root's last SVID has expired, the root leaves the bundle.
    ca.prune(now() + Duration::from_secs(601));
    let bundle = ca.trust_bundle();
    assert_eq!(bundle.roots_der().count(), 1);
    verify(
        &bundle,
        &fresh.certificate_der,
        now() + Duration::from_secs(300),
    )
    .unwrap();
    assert!(
        verify(
            &bundle,
            &old.certificate_der,
            now() + Duration::from_secs(300)
        )
        .is_err()
    );
}

#[test]
fn the_bundle_exports_as_pem_and_spiffe_json() {
    let mut ca = authority();
    ca.issue_svid(&agent(), None, now()).unwrap();
    ca.rotate(now()).unwrap();
    let bundle = ca.trust_bundle();
    let pem = bundle.to_pem();
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
    let json = bundle.to_spiffe_json(Duration::from_secs(300));
    assert_eq!(json["spiffe_refresh_hint"], 300);
    assert_eq!(json["spiffe_sequence"], bundle.sequence);
    let keys = json["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for (key, der) in keys.iter().zip(bundle.roots_der()) {
        assert_eq!(key["use"], "x509-svid");
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        let x5c = base64::engine::general_purpose::STANDARD
            .decode(key["x5c"][0].as_str().unwrap())
            .unwrap();
        assert_eq!(x5c, der);
        // x and y are the root's public key coordinates.
        let (_, root) = X509Certificate::from_der(der).unwrap();
        let point = root.public_key().subject_public_key.data.to_vec();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        assert_eq!(
            b64.decode(key["x"].as_str().unwrap()).unwrap(),
            point[1..33]
        );
        assert_eq!(
            b64.decode(key["y"].as_str().unwrap()).unwrap(),
            point[33..65]
        );
        assert!(root.is_ca());
    }
}

#[test]
fn an_exported_authority_restores_with_its_roots_and_keeps_issuing() {
    let mut ca = authority();
    let before = ca.issue_svid(&agent(), None, now()).unwrap();
    ca.rotate(now()).unwrap();
    let stored = serde_json::to_string(&ca.export()).unwrap();
    let restored =
        CertificateAuthority::restore(&serde_json::from_str(&stored).unwrap(), now()).unwrap();
    let bundle = restored.trust_bundle();
    assert_eq!(bundle.to_pem(), ca.trust_bundle().to_pem());
    assert_eq!(bundle.sequence, ca.trust_bundle().sequence);
    // An SVID from before the rotation and one from the restored authority both verify.
    verify(&bundle, &before.certificate_der, now()).unwrap();
    let after = restored.issue_svid(&agent(), None, now()).unwrap();
    verify(&bundle, &after.certificate_der, now()).unwrap();
}

#[test]
fn a_presented_svid_verifies_with_its_id_and_key_thumbprint() {
    let ca = authority();
    let svid = ca.issue_svid(&agent(), None, now()).unwrap();
    let presented = ca
        .trust_bundle()
        .verify_svid(&svid.certificate_der, now())
        .unwrap();
    assert_eq!(presented.spiffe_id, agent());
    // The thumbprint matches the one computed from the private key's JWK form.
    let point = rcgen::KeyPair::from_pem(&svid.private_key_pem)
        .unwrap()
        .public_key_raw()
        .to_vec();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&point[33..]),
    }))
    .unwrap();
    assert_eq!(
        presented.key_thumbprint,
        warden_authority::thumbprint(&jwk).unwrap()
    );
    // Expired, foreign, or garbage: refused.
    assert!(
        ca.trust_bundle()
            .verify_svid(&svid.certificate_der, now() + DAY)
            .is_err()
    );
    assert!(
        authority()
            .trust_bundle()
            .verify_svid(&svid.certificate_der, now())
            .is_err()
    );
    assert!(ca.trust_bundle().verify_svid(b"garbage", now()).is_err());
}
