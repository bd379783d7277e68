//! Warden's authority: the certificate authority that gives every agent instance its own
//! short-lived X.509-SVID for mTLS, and the trust bundle gateways verify them against.
//!
//! It verifies attestation evidence — platform-issued JWTs — against the issuer's keys, mints
//! task grants (Biscuit tokens bound to their holder), delegates them online and attenuates them
//! offline, and verifies them against a versioned revocation set.

mod ca;
mod dpop;
mod evidence;
mod grant;
mod revocation;
mod rights;
mod verify;

pub use ca::{
    AuthorityError, CertificateAuthority, DEFAULT_SVID_TTL, MAX_SVID_TTL, PresentedSvid,
    StoredAuthority, Svid, TrustBundle, p256_thumbprint, verify_svid,
};
pub use dpop::{
    DpopError, DpopVerifier, MAX_PROOF_BYTES, MemoryReplayGuard, ProofRequest, ProofSigner,
    ReplayGuard, replay_key, thumbprint,
};
pub use evidence::{
    EvidenceError, EvidenceIssuer, IdentityRule, MAX_TOKEN_BYTES, MappingError, VerifiedEvidence,
    map_identity,
};
pub use grant::{
    Attenuation, DEFAULT_GRANT_TTL, DEFAULT_MAX_DEPTH, DelegationRequest, GrantError, GrantHeader,
    GrantIssuer, GrantKey, GrantRequest, GrantRoots, Holder, IssuedGrant, MAX_GRANT_BYTES,
    MAX_GRANT_TTL, MAX_PURPOSE_BYTES, MAX_RIGHTS, Presenter, attenuate,
};
pub use revocation::{Revocation, RevocationSet};
pub use rights::{MAX_PATTERN_BYTES, Pattern, Right, first_uncovered, target_of};
pub use verify::{GrantVerifier, VerifiedGrant, datalog_authorize};
