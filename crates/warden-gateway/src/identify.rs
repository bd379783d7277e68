//! Identify: who is calling, from the mTLS client certificate and the task grant.
//!
//! A grant is always required — it names the task and bounds what it may touch. It comes as
//! `Authorization: Bearer <grant>` over mTLS (bound to the SVID's SPIFFE ID), or as
//! `Authorization: DPoP <grant>` with a `DPoP` proof signed by the key the grant is bound to.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use thiserror::Error;
use warden_authority::{
    DpopVerifier, GrantError, GrantVerifier, Holder, Presenter, ProofRequest, VerifiedGrant,
};
use warden_model::{AgentIdentity, SpiffeId};

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: AgentIdentity,
    pub authority: Authority,
    /// Where the call came from (the TCP peer), for the audit record; `None` over stdio.
    pub source: Option<std::net::SocketAddr>,
    /// The process that made the call, as the kernel reports it (agents under `warden run`).
    pub process: Option<Arc<Process>>,
    /// What the answer to this request waits for (its records on disk).
    pub answer_after: crate::gate::AnswerGate,
}

/// What lets a caller act: the task grant it presented, or — for the compensating call of an
/// undo, made on the agent's behalf — the admin who asked for it (policy still decides).
#[derive(Debug, Clone)]
pub enum Authority {
    Grant(Arc<VerifiedGrant>),
    Undo {
        /// The admin who asked.
        by: String,
        /// The decision being undone.
        of: String,
    },
}

impl Authority {
    /// Whether the grant covers `action` (an undo is bounded by policy alone).
    pub fn permits(&self, action: &warden_model::Action) -> bool {
        match self {
            Self::Grant(grant) => grant.permits(action).is_ok(),
            Self::Undo { .. } => true,
        }
    }

    pub fn grant_id(&self) -> &str {
        match self {
            Self::Grant(grant) => grant.id(),
            Self::Undo { .. } => "",
        }
    }
}

/// A process of a confined agent, as recorded: what the kernel says opened the connection.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub pid: u32,
    /// What `/proc/<pid>/exe` pointed at when the connection arrived (empty if it had exited).
    pub executable: String,
    /// SHA-256 of the command line (its arguments may hold secrets, so they are not recorded).
    pub command_sha256: String,
    /// The agent instance's cgroup (v2) id.
    pub cgroup: u64,
}

/// A caller the gateway identified without a credential on the request: an agent confined by
/// `warden run`, known by the cgroup its connection came from. Only the gateway's transparent
/// listener attaches it to a request; nothing from the network can.
#[derive(Debug, Clone)]
pub struct KernelCaller(pub Caller);

/// Who a request turned out to be from (the agent and those above it), filled in when it is
/// identified, so its response can be cut off if the agent is held.
#[derive(Debug, Clone, Default)]
pub struct CallerSlot(pub Arc<std::sync::OnceLock<Admitted>>);

/// An identified agent, the agents above it, and the quarantine state version it was let in
/// under.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: SpiffeId,
    pub parents: Vec<SpiffeId>,
    pub version: u64,
    /// What the request's answer waits for.
    pub answer_after: crate::gate::AnswerGate,
}

/// The TCP peer of a request, attached by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::SocketAddr);

/// Why a caller could not be identified. Messages say what to send; none leaks more.
#[derive(Debug, Error)]
pub enum Unidentified {
    #[error(
        "no task grant: send `Authorization: Bearer <grant>` over mTLS, or `Authorization: DPoP <grant>` with a DPoP proof"
    )]
    NoGrant,
    #[error("a bearer grant needs the client certificate (SVID) it is bound to")]
    NoClientCertificate,
    #[error("a DPoP grant needs a `DPoP` proof header")]
    NoProof,
    #[error("the grant is refused: {0}")]
    Grant(#[from] GrantError),
    #[error("the proof of possession is refused: {0}")]
    Proof(String),
    #[error("the caller's identity is revoked")]
    Revoked,
    #[error("the caller's SPIFFE ID is not an agent ID: {0}")]
    NotAnAgent(String),
}

pub struct Identifier {
    grants: Arc<GrantVerifier>,
    proofs: DpopVerifier,
    public_url: String,
}

impl Identifier {
    pub fn new(grants: Arc<GrantVerifier>, public_url: String) -> Self {
        Self {
            grants,
            proofs: DpopVerifier::new(
                vec![
                    jsonwebtoken::Algorithm::ES256,
                    jsonwebtoken::Algorithm::EdDSA,
                ],
                Duration::from_secs(60),
                1_000_000,
            ),
            public_url,
        }
    }

    /// Who a refused request's credential names, as far as it can be trusted: the verified
    /// client certificate's SPIFFE ID, else the agent of a grant whose signatures verify (valid
    /// or not); and that grant's id.
    pub fn claimed(
        &self,
        peer: Option<&SpiffeId>,
        headers: &HeaderMap,
        credential: &http::HeaderName,
    ) -> (Option<SpiffeId>, Option<String>) {
        let token = headers
            .get(credential)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("DPoP "))
            })
            .map(str::trim);
        let claims = token.and_then(|t| self.grants.claims(t));
        let agent = peer
            .cloned()
            .or_else(|| claims.as_ref().map(|(a, _)| a.clone()));
        (agent, claims.map(|(_, grant)| grant))
    }

    /// Identifies a request: `peer` is the verified client certificate's SPIFFE ID, if any, and
    /// `credential` the header carrying the grant (`Authorization`, or `Proxy-Authorization` for
    /// egress through the forward proxy).
    pub fn identify(
        &self,
        peer: Option<&SpiffeId>,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        credential: &http::HeaderName,
        now: i64,
    ) -> Result<Caller, Unidentified> {
        let authorization = headers
            .get(credential)
            .and_then(|v| v.to_str().ok())
            .ok_or(Unidentified::NoGrant)?;
        let revocations = self.grants.revocations();
        if let Some(peer) = peer
            && revocations.agent_revoked(peer.as_str()).is_some()
        {
            return Err(Unidentified::Revoked);
        }
        let (grant, presenter_id) = if let Some(token) = authorization.strip_prefix("Bearer ") {
            let peer = peer.ok_or(Unidentified::NoClientCertificate)?;
            let grant = self.grants.verify(token.trim(), now)?;
            grant.check_presenter(Presenter::Svid(peer))?;
            (grant, peer.clone())
        } else if let Some(token) = authorization.strip_prefix("DPoP ") {
            let token = token.trim();
            let grant = self.grants.verify(token, now)?;
            let proof = headers
                .get("dpop")
                .and_then(|v| v.to_str().ok())
                .ok_or(Unidentified::NoProof)?;
            let bound = grant
                .holders()
                .find_map(|h| match h {
                    Holder::Key(jkt) => Some(jkt.clone()),
                    Holder::Spiffe(_) => None,
                })
                .ok_or_else(|| {
                    Unidentified::Proof(
                        "this grant is bound to an SVID; present it over mTLS as a Bearer grant"
                            .into(),
                    )
                })?;
            let url = format!("{}{}", self.public_url, path_and_query);
            self.proofs
                .verify(
                    proof,
                    &ProofRequest {
                        method,
                        url: &url,
                        credential: token,
                        now,
                    },
                    &bound,
                )
                .map_err(|e| Unidentified::Proof(e.to_string()))?;
            grant.check_presenter(Presenter::Key(&bound))?;
            let id = grant.agent().clone();
            (grant, id)
        } else {
            return Err(Unidentified::NoGrant);
        };
        let header = grant.header();
        let identity = AgentIdentity::new(
            presenter_id,
            header.labels.clone(),
            Some(header.task.clone()),
        )
        .map_err(|e| Unidentified::NotAnAgent(e.to_string()))?;
        Ok(Caller {
            identity,
            authority: Authority::Grant(grant),
            source: None,
            process: None,
            answer_after: crate::gate::AnswerGate::default(),
        })
    }

    /// The caller for a confined agent's connection: the grant the gateway holds for its
    /// instance, which must be bound to the instance's own SVID (the kernel vouches for who is
    /// calling, as a verified client certificate would).
    pub fn kernel(
        &self,
        grant: &str,
        process: Option<Process>,
        now: i64,
    ) -> Result<Caller, Unidentified> {
        let grant = self.grants.verify(grant, now)?;
        let id = grant.agent().clone();
        if self
            .grants
            .revocations()
            .agent_revoked(id.as_str())
            .is_some()
        {
            return Err(Unidentified::Revoked);
        }
        grant.check_presenter(Presenter::Svid(&id))?;
        let header = grant.header();
        let identity = AgentIdentity::new(id, header.labels.clone(), Some(header.task.clone()))
            .map_err(|e| Unidentified::NotAnAgent(e.to_string()))?;
        Ok(Caller {
            identity,
            authority: Authority::Grant(grant),
            source: None,
            process: process.map(Arc::new),
            answer_after: crate::gate::AnswerGate::default(),
        })
    }
}
