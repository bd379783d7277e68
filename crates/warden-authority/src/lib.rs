//! Warden's authority: the certificate authority that gives every agent instance its own
//! short-lived X.509-SVID for mTLS, and the trust bundle gateways verify them against.
//!
//! Task grants, delegation, attestation and revocation build on this (issue 3 continues).

mod ca;

pub use ca::{
    AuthorityError, CertificateAuthority, DEFAULT_SVID_TTL, MAX_SVID_TTL, Svid, TrustBundle,
};
