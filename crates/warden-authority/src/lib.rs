//! Warden's authority: the certificate authority that gives every agent instance its own
//! short-lived X.509-SVID for mTLS, and the trust bundle gateways verify them against.
//!
//! It also verifies attestation evidence — platform-issued JWTs — against the issuer's keys.
//! Task grants, delegation, join tokens and revocation build on this (issue 3 continues).

mod ca;
mod dpop;
mod evidence;

pub use ca::{
    AuthorityError, CertificateAuthority, DEFAULT_SVID_TTL, MAX_SVID_TTL, Svid, TrustBundle,
};
pub use dpop::{DpopError, DpopVerifier, MAX_PROOF_BYTES, ProofRequest, thumbprint};
pub use evidence::{
    EvidenceError, EvidenceIssuer, IdentityRule, MAX_TOKEN_BYTES, MappingError, VerifiedEvidence,
    map_identity,
};
