//! The X.509-SVID certificate authority.
//!
//! An SVID (SPIFFE Verifiable Identity Document) here is a leaf certificate with exactly one URI
//! SAN — the agent's SPIFFE ID — signed by the trust domain's CA, valid for minutes. Rotation
//! keeps the previous root trusted until the last SVID it signed has expired, so no live SVID is
//! stranded.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use warden_model::{SpiffeId, TrustDomain};

/// Lifetime of an SVID when the caller does not ask for another.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(15 * 60);
/// The longest lifetime an SVID may have.
pub const MAX_SVID_TTL: Duration = Duration::from_secs(60 * 60);
/// How far back an SVID's validity starts, for clocks slightly behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum AuthorityError {
    #[error(
        "SPIFFE ID {id} is not in trust domain {trust_domain}; this authority issues only for its own"
    )]
    ForeignTrustDomain { id: String, trust_domain: String },
    #[error("SVID lifetime must be between 1 second and {} minutes, not {requested:?}", MAX_SVID_TTL.as_secs() / 60)]
    Lifetime { requested: Duration },
    #[error(
        "the CA certificate expires before the SVID would; rotate the CA (`warden authority rotate`)"
    )]
    CaExpiring,
    #[error("CA lifetime must be at least twice the longest SVID lifetime ({} minutes)", 2 * MAX_SVID_TTL.as_secs() / 60)]
    CaLifetime,
    #[error("cryptographic operation failed: {0}")]
    Crypto(String),
    #[error("the SVID is not valid: {0}")]
    InvalidSvid(String),
}

impl From<rcgen::Error> for AuthorityError {
    fn from(e: rcgen::Error) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// An issued SVID: the leaf certificate and its private key.
pub struct Svid {
    pub spiffe_id: SpiffeId,
    pub certificate_der: Vec<u8>,
    pub certificate_pem: String,
    /// PKCS#8, PEM. Held only by the agent it was issued to.
    pub private_key_pem: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// One CA key and its self-signed root.
struct CaKey {
    issuer: Issuer<'static, KeyPair>,
    certificate_der: Vec<u8>,
    certificate_pem: String,
    not_after: OffsetDateTime,
    /// Unix time at which the last SVID this key signed expires.
    last_svid_expiry: AtomicI64,
}

/// A previous CA key, still trusted until `trusted_until`.
struct Retired {
    key: CaKey,
    trusted_until: OffsetDateTime,
}

/// The certificate authority of one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    ca_lifetime: Duration,
    active: CaKey,
    retired: Vec<Retired>,
    /// Bumped on every change of the trusted roots, as SPIFFE bundles' `spiffe_sequence`.
    sequence: u64,
}

fn random_serial() -> Result<SerialNumber, AuthorityError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| AuthorityError::Crypto("no randomness".into()))?;
    // Positive and non-zero, as RFC 5280 requires of serial numbers.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

impl CaKey {
    fn generate(
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Warden");
        name.push(DnType::CommonName, format!("Warden CA {trust_domain}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(|e: rcgen::Error| AuthorityError::Crypto(e.to_string()))?,
        )];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let key_pem = key.serialize_pem();
        let root = CertifiedIssuer::self_signed(params, key)?;
        Self::restore(&root.pem(), &key_pem, now.unix_timestamp())
    }

    /// Rebuilds a key from its stored root certificate and private key.
    fn restore(
        certificate_pem: &str,
        key_pem: &str,
        last_svid_expiry: i64,
    ) -> Result<Self, AuthorityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(certificate_pem, key)?;
        let (_, block) = x509_parser::pem::parse_x509_pem(certificate_pem.as_bytes())
            .map_err(|e| AuthorityError::Crypto(format!("stored CA certificate: {e}")))?;
        let certificate_der = block.contents;
        let (_, cert) = x509_parser::parse_x509_certificate(&certificate_der)
            .map_err(|e| AuthorityError::Crypto(format!("stored CA certificate: {e}")))?;
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| AuthorityError::Crypto(e.to_string()))?;
        Ok(Self {
            issuer,
            certificate_pem: certificate_pem.to_owned(),
            certificate_der,
            not_after,
            last_svid_expiry: AtomicI64::new(last_svid_expiry),
        })
    }

    fn export(&self) -> StoredCaKey {
        StoredCaKey {
            certificate_pem: self.certificate_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
            last_svid_expiry: self.last_svid_expiry.load(Ordering::Acquire),
        }
    }

    fn last_svid_expiry(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.last_svid_expiry.load(Ordering::Acquire))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

impl CertificateAuthority {
    /// A new authority with a fresh CA key valid for `ca_lifetime`.
    pub fn new(
        trust_domain: TrustDomain,
        ca_lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, AuthorityError> {
        if ca_lifetime < 2 * MAX_SVID_TTL {
            return Err(AuthorityError::CaLifetime);
        }
        let active = CaKey::generate(&trust_domain, now, ca_lifetime)?;
        Ok(Self {
            trust_domain,
            ca_lifetime,
            active,
            retired: Vec::new(),
            sequence: 1,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Everything needed to restore this authority, private keys included: store it as a secret.
    pub fn export(&self) -> StoredAuthority {
        StoredAuthority {
            trust_domain: self.trust_domain.clone(),
            ca_lifetime_secs: self.ca_lifetime.as_secs(),
            active: self.active.export(),
            retired: self
                .retired
                .iter()
                .map(|r| StoredRetired {
                    key: r.key.export(),
                    trusted_until: r.trusted_until.unix_timestamp(),
                })
                .collect(),
            sequence: self.sequence,
        }
    }

    /// Restores an exported authority. SVIDs issued after the last export are not known to it, so
    /// the active key is taken to have signed SVIDs as long-lived as allowed from `now`: a
    /// rotation right after a restart keeps the old root long enough for any of them.
    pub fn restore(stored: &StoredAuthority, now: OffsetDateTime) -> Result<Self, AuthorityError> {
        let conservative = (now + MAX_SVID_TTL)
            .unix_timestamp()
            .max(stored.active.last_svid_expiry);
        let active = CaKey::restore(
            &stored.active.certificate_pem,
            &stored.active.key_pem,
            conservative,
        )?;
        let retired = stored
            .retired
            .iter()
            .map(|r| {
                Ok(Retired {
                    key: CaKey::restore(
                        &r.key.certificate_pem,
                        &r.key.key_pem,
                        r.key.last_svid_expiry,
                    )?,
                    trusted_until: OffsetDateTime::from_unix_timestamp(r.trusted_until)
                        .map_err(|e| AuthorityError::Crypto(e.to_string()))?,
                })
            })
            .collect::<Result<_, AuthorityError>>()?;
        Ok(Self {
            trust_domain: stored.trust_domain.clone(),
            ca_lifetime: Duration::from_secs(stored.ca_lifetime_secs),
            active,
            retired,
            sequence: stored.sequence,
        })
    }

    /// Issues an SVID for `id`, valid for `ttl` (default 15 minutes, at most an hour).
    pub fn issue_svid(
        &self,
        id: &SpiffeId,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<Svid, AuthorityError> {
        self.issue(id, Vec::new(), ttl, now)
    }

    /// Issues a certificate for a Warden server (a gateway): its SPIFFE ID plus the DNS names
    /// and addresses clients dial, so ordinary TLS clients can verify it too.
    pub fn issue_server_certificate(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        addresses: &[std::net::IpAddr],
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<Svid, AuthorityError> {
        let mut sans = Vec::new();
        for name in dns_names {
            sans.push(SanType::DnsName(name.as_str().try_into().map_err(
                |e: rcgen::Error| AuthorityError::Crypto(e.to_string()),
            )?));
        }
        sans.extend(addresses.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue(id, sans, ttl, now)
    }

    fn issue(
        &self,
        id: &SpiffeId,
        extra_sans: Vec<SanType>,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<Svid, AuthorityError> {
        if id.trust_domain() != self.trust_domain.as_str() {
            return Err(AuthorityError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        let ttl = ttl.unwrap_or(DEFAULT_SVID_TTL);
        if ttl.is_zero() || ttl > MAX_SVID_TTL {
            return Err(AuthorityError::Lifetime { requested: ttl });
        }
        let not_after = now + ttl;
        if not_after > self.active.not_after {
            return Err(AuthorityError::CaExpiring);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // SPIFFE identifies by the URI SAN alone; the subject stays empty.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(id.as_str().try_into().map_err(
                |e: rcgen::Error| AuthorityError::Crypto(e.to_string()),
            )?)];
        params.subject_alt_names.extend(extra_sans);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.active.issuer)?;
        self.active
            .last_svid_expiry
            .fetch_max(not_after.unix_timestamp(), Ordering::AcqRel);
        Ok(Svid {
            spiffe_id: id.clone(),
            certificate_der: cert.der().to_vec(),
            certificate_pem: cert.pem(),
            private_key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Replaces the signing key. The old root stays in the trust bundle until the last SVID it
    /// signed has expired, so every live SVID keeps verifying.
    pub fn rotate(&mut self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        let fresh = CaKey::generate(&self.trust_domain, now, self.ca_lifetime)?;
        let old = std::mem::replace(&mut self.active, fresh);
        let trusted_until = old.last_svid_expiry();
        self.retired.push(Retired {
            key: old,
            trusted_until,
        });
        self.sequence += 1;
        self.prune(now);
        Ok(())
    }

    /// Drops retired roots whose every SVID has expired.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let before = self.retired.len();
        self.retired.retain(|r| r.trusted_until > now);
        if self.retired.len() != before {
            self.sequence += 1;
        }
    }

    /// The roots to trust now: the active one first, then retired ones still covering SVIDs.
    pub fn trust_bundle(&self) -> TrustBundle {
        let keys = std::iter::once(&self.active).chain(self.retired.iter().map(|r| &r.key));
        TrustBundle {
            trust_domain: self.trust_domain.clone(),
            sequence: self.sequence,
            roots: keys
                .map(|k| Root {
                    der: k.certificate_der.clone(),
                    pem: k.certificate_pem.clone(),
                    public_key: k.issuer.key().public_key_raw().to_vec(),
                })
                .collect(),
        }
    }
}

/// A CA key as stored: root certificate and private key, PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCaKey {
    certificate_pem: String,
    key_pem: String,
    last_svid_expiry: i64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct StoredRetired {
    key: StoredCaKey,
    trusted_until: i64,
}

/// An authority as stored (see [`CertificateAuthority::export`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredAuthority {
    trust_domain: TrustDomain,
    ca_lifetime_secs: u64,
    active: StoredCaKey,
    retired: Vec<StoredRetired>,
    sequence: u64,
}

/// RFC 7638 thumbprint of a P-256 public key given as an uncompressed point (0x04 ‖ x ‖ y).
pub fn p256_thumbprint(point: &[u8]) -> Option<String> {
    if point.len() != 65 || point[0] != 4 {
        return None;
    }
    let (x, y) = point[1..].split_at(32);
    // Members in lexicographic order, no whitespace, as RFC 7638 requires.
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(x),
        URL_SAFE_NO_PAD.encode(y)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

struct Root {
    der: Vec<u8>,
    pem: String,
    /// Uncompressed P-256 point: 0x04 ‖ x ‖ y.
    public_key: Vec<u8>,
}

/// The roots a verifier should trust for a trust domain.
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pub sequence: u64,
    roots: Vec<Root>,
}

/// An SVID a peer presented, verified against a trust bundle.
#[derive(Debug, Clone)]
pub struct PresentedSvid {
    pub spiffe_id: SpiffeId,
    /// RFC 7638 thumbprint of the SVID's public key, to match proofs of possession signed with it.
    pub key_thumbprint: String,
}

impl TrustBundle {
    /// Verifies a leaf certificate (DER) as a client SVID of this trust domain at `now`: chain to
    /// one of the roots, validity, client-auth usage, exactly one URI SAN holding a SPIFFE ID of
    /// this trust domain.
    pub fn verify_svid(
        &self,
        leaf_der: &[u8],
        now: OffsetDateTime,
    ) -> Result<PresentedSvid, AuthorityError> {
        let roots: Vec<Vec<u8>> = self.roots.iter().map(|r| r.der.clone()).collect();
        verify_svid(&roots, self.trust_domain.as_str(), leaf_der, now)
    }
}

/// Verifies a leaf certificate (DER) as a client SVID of `trust_domain` against root
/// certificates (DER) at `now`; see [`TrustBundle::verify_svid`].
pub fn verify_svid(
    roots_der: &[Vec<u8>],
    trust_domain: &str,
    leaf_der: &[u8],
    now: OffsetDateTime,
) -> Result<PresentedSvid, AuthorityError> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let invalid = |why: String| AuthorityError::InvalidSvid(why);
    let roots: Vec<CertificateDer<'static>> = roots_der
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect();
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = CertificateDer::from(leaf_der.to_vec());
    let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| invalid(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| invalid(format!("does not chain to this trust domain's roots: {e}")))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf_der).map_err(|e| invalid(e.to_string()))?;
    let uris: Vec<&str> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(invalid(format!(
            "an SVID has exactly one URI SAN, this has {}",
            uris.len()
        )));
    };
    let spiffe_id = SpiffeId::new(*uri).map_err(|e| invalid(e.to_string()))?;
    if spiffe_id.trust_domain() != trust_domain {
        return Err(invalid(format!(
            "{spiffe_id} is not in trust domain {trust_domain}"
        )));
    }
    let point = parsed.public_key().subject_public_key.data.as_ref();
    Ok(PresentedSvid {
        spiffe_id,
        key_thumbprint: p256_thumbprint(point)
            .ok_or_else(|| invalid("the SVID's key is not an uncompressed P-256 point".into()))?,
    })
}

impl TrustBundle {
    /// DER of each root certificate, active first.
    pub fn roots_der(&self) -> impl Iterator<Item = &[u8]> {
        self.roots.iter().map(|r| r.der.as_slice())
    }

    /// The roots as concatenated PEM.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|r| r.pem.as_str()).collect()
    }

    /// The bundle in the SPIFFE Trust Domain and Bundle format: a JWK Set whose keys have
    /// `use: x509-svid` and carry the root certificate in `x5c`.
    pub fn to_spiffe_json(&self, refresh_hint: Duration) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .roots
            .iter()
            .map(|r| {
                let (x, y) = r
                    .public_key
                    .get(1..)
                    .unwrap_or_default()
                    .split_at(r.public_key.len().saturating_sub(1) / 2);
                serde_json::json!({
                    "use": "x509-svid",
                    "kty": "EC",
                    "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(x),
                    "y": URL_SAFE_NO_PAD.encode(y),
                    "x5c": [STANDARD.encode(&r.der)],
                })
            })
            .collect();
        serde_json::json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": refresh_hint.as_secs(),
        })
    }
}
