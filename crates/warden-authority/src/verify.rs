//! Verifying grants: signatures and form once (cold, tens of microseconds), then a cache keyed by
//! the token itself, so a request pays for expiry, revocation, holder and rights checks only.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use biscuit_auth::builder::{AuthorizerBuilder, Term};
use biscuit_auth::datalog::RunLimits;
use warden_model::{Action, SpiffeId};

use crate::grant::{BlockClaims, GrantError, GrantHeader, GrantRoots, Holder, Presenter, parse};
use crate::revocation::RevocationSet;
use crate::rights::{Right, any_permits, target_of};

/// A grant whose signatures and form were verified.
#[derive(Debug)]
pub struct VerifiedGrant {
    blocks: Vec<BlockClaims>,
    expires: i64,
    depth: usize,
    revocation_ids: Vec<String>,
    /// Every agent the grant derives from or is bound to, for agent revocations.
    agents: Vec<SpiffeId>,
}

impl VerifiedGrant {
    fn new(blocks: Vec<BlockClaims>, revocation_ids: Vec<String>) -> Result<Self, GrantError> {
        let header = blocks
            .first()
            .and_then(|b| b.grant.as_ref())
            .ok_or_else(|| GrantError::Malformed("no authority block".into()))?;
        let mut agents = header.actors.clone();
        agents.push(header.agent.clone());
        agents.extend(blocks.iter().filter_map(|b| match &b.holder {
            Some(Holder::Spiffe(id)) => Some(id.clone()),
            _ => None,
        }));
        agents.dedup();
        Ok(Self {
            expires: blocks.iter().map(|b| b.expires).min().unwrap_or(0),
            depth: header.depth + blocks.len() - 1,
            revocation_ids,
            agents,
            blocks,
        })
    }

    pub fn header(&self) -> &GrantHeader {
        // `new` refuses grants without a header.
        self.blocks[0]
            .grant
            .as_ref()
            .unwrap_or_else(|| unreachable!("checked in VerifiedGrant::new"))
    }

    pub fn id(&self) -> &str {
        &self.header().id
    }

    /// The root grant this one descends from (itself, for a root grant).
    pub fn root(&self) -> &str {
        let header = self.header();
        header.lineage.first().unwrap_or(&header.id)
    }

    /// The agent acting with this grant: the deepest SPIFFE holder, or the agent it was issued to.
    pub fn agent(&self) -> &SpiffeId {
        self.blocks
            .iter()
            .rev()
            .find_map(|b| match &b.holder {
                Some(Holder::Spiffe(id)) => Some(id),
                _ => None,
            })
            .unwrap_or(&self.header().agent)
    }

    /// Unix seconds: the earliest expiry of any block.
    pub fn expires(&self) -> i64 {
        self.expires
    }

    /// Delegation steps from the root grant: online ones plus attenuation blocks.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Each block's rights; an action is allowed only if every block allows it.
    pub fn rights(&self) -> impl Iterator<Item = &[Right]> {
        self.blocks.iter().map(|b| b.rights.as_slice())
    }

    pub(crate) fn blocks(&self) -> &[BlockClaims] {
        &self.blocks
    }

    /// Each block's holder binding, in order.
    pub fn holders(&self) -> impl Iterator<Item = &Holder> {
        self.blocks.iter().filter_map(|b| b.holder.as_ref())
    }

    /// Biscuit revocation ids, one per block, hex.
    pub fn revocation_ids(&self) -> &[String] {
        &self.revocation_ids
    }

    fn check_time(&self, now: i64) -> Result<(), GrantError> {
        if now > self.expires {
            Err(GrantError::Expired(self.expires))
        } else {
            Ok(())
        }
    }

    /// Whether every block's holder binding admits the presenter.
    pub fn check_presenter(&self, presenter: Presenter<'_>) -> Result<(), GrantError> {
        match self.holders().find(|h| !h.admits(&presenter)) {
            None => Ok(()),
            Some(expected) => Err(GrantError::WrongHolder {
                expected: expected.to_string(),
                presented: presenter.to_string(),
            }),
        }
    }

    /// Whether every block permits the action.
    pub fn permits(&self, action: &Action) -> Result<(), GrantError> {
        let kind = action.kind().as_str();
        let target = target_of(action);
        if self
            .rights()
            .all(|rights| any_permits(rights, kind, &target))
        {
            Ok(())
        } else {
            Err(GrantError::NotPermitted {
                action: kind.to_owned(),
                target,
            })
        }
    }

    /// Why the grant is revoked, if it is.
    pub fn revoked_by(&self, set: &RevocationSet) -> Option<String> {
        if set.is_empty() {
            return None;
        }
        let header = self.header();
        if let Some(id) = std::iter::once(&header.id)
            .chain(&header.lineage)
            .find(|id| set.grant_revoked(id))
        {
            return Some(format!("grant {id}"));
        }
        if set.task_revoked(header.task.as_str()) {
            return Some(format!("task {}", header.task));
        }
        if let Some(id) = self
            .revocation_ids
            .iter()
            .find(|id| set.revocation_id_revoked(id))
        {
            return Some(format!("revocation id {id}"));
        }
        self.agents
            .iter()
            .find_map(|a| set.agent_revoked(a.as_str()))
            .map(|agent| format!("agent {agent}"))
    }
}

/// Cached verifications kept at most, and the most token bytes they may hold; past either the
/// cache starts over (cold verifications are still correct, just slower).
const CACHE_CAPACITY: usize = 100_000;
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Cached verifications of grants descending from one root grant, at most: an agent minting
/// offline attenuations by the thousand pays for verifying each, but cannot push everyone
/// else's grants out of the cache.
const CACHE_PER_ROOT: usize = 1024;

struct Cache {
    per_root_limit: usize,
    grants: HashMap<Box<str>, Arc<VerifiedGrant>, foldhash::fast::RandomState>,
    /// Cached grants per root grant id.
    per_root: HashMap<String, usize, foldhash::fast::RandomState>,
    token_bytes: usize,
}

impl Cache {
    fn get(&self, token: &str) -> Option<&Arc<VerifiedGrant>> {
        self.grants.get(token)
    }

    fn new(per_root_limit: usize) -> Self {
        Self {
            per_root_limit,
            grants: HashMap::default(),
            per_root: HashMap::default(),
            token_bytes: 0,
        }
    }

    fn clear(&mut self) {
        *self = Self::new(self.per_root_limit);
    }

    fn retain(&mut self, mut keep: impl FnMut(&VerifiedGrant) -> bool) {
        let (per_root, token_bytes) = (&mut self.per_root, &mut self.token_bytes);
        self.grants.retain(|token, grant| {
            let kept = keep(grant);
            if !kept {
                *token_bytes -= token.len();
                if let Some(n) = per_root.get_mut(grant.root()) {
                    *n -= 1;
                }
            }
            kept
        });
        per_root.retain(|_, n| *n > 0);
    }

    fn insert(&mut self, token: Box<str>, grant: Arc<VerifiedGrant>) {
        if let Some(cached) = self.grants.get_mut(&token) {
            *cached = grant;
            return;
        }
        let cached = self.per_root.entry(grant.root().to_owned()).or_default();
        if *cached >= self.per_root_limit {
            return;
        }
        *cached += 1;
        self.token_bytes += token.len();
        self.grants.insert(token, grant);
    }
}

/// Verifies grants against the authority's root keys and the current revocation set.
pub struct GrantVerifier {
    roots: ArcSwap<GrantRoots>,
    max_depth: usize,
    revocations: ArcSwap<RevocationSet>,
    cache: RwLock<Cache>,
}

impl GrantVerifier {
    pub fn new(roots: GrantRoots, max_depth: usize) -> Self {
        Self {
            roots: ArcSwap::from_pointee(roots),
            max_depth,
            revocations: ArcSwap::from_pointee(RevocationSet::default()),
            cache: RwLock::new(Cache::new(CACHE_PER_ROOT)),
        }
    }

    /// Caches at most `limit` verified grants descending from any one root grant (1,024 unless
    /// set).
    pub fn with_cache_per_root(self, limit: usize) -> Self {
        Self {
            cache: RwLock::new(Cache::new(limit)),
            ..self
        }
    }

    /// Verifies a grant: signatures, form, depth, expiry and revocation. Holder and rights are
    /// checked per request by [`GrantVerifier::authorize`].
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<VerifiedGrant>, GrantError> {
        let grant = self.signed(token)?;
        grant.check_time(now)?;
        if let Some(reason) = grant.revoked_by(&self.revocations.load()) {
            return Err(GrantError::Revoked(reason));
        }
        Ok(grant)
    }

    /// The agent and grant id a token names, when its signatures verify — valid or not (it may
    /// have expired or been revoked): what a refused credential is recorded with. A token whose
    /// signatures fail names nobody; its claims are an attacker's to choose.
    pub fn claims(&self, token: &str) -> Option<(SpiffeId, String)> {
        let grant = self.signed(token).ok()?;
        Some((grant.agent().clone(), grant.id().to_owned()))
    }

    /// The grant a token is, with its signatures, form and depth checked: from the cache, or
    /// verified now and cached.
    fn signed(&self, token: &str) -> Result<Arc<VerifiedGrant>, GrantError> {
        let cached = self
            .cache
            .read()
            .ok()
            .and_then(|cache| cache.get(token).cloned());
        if let Some(grant) = cached {
            return Ok(grant);
        }
        let grant = Arc::new(self.verify_cold(token)?);
        self.remember(token, &grant);
        Ok(grant)
    }

    /// Verifies a grant for one request: who presents it and what it is used for.
    pub fn authorize(
        &self,
        token: &str,
        presenter: Presenter<'_>,
        action: &Action,
        now: i64,
    ) -> Result<Arc<VerifiedGrant>, GrantError> {
        let grant = self.verify(token, now)?;
        grant.check_presenter(presenter)?;
        grant.permits(action)?;
        Ok(grant)
    }

    /// Signatures, form and depth, without the cache.
    pub fn verify_cold(&self, token: &str) -> Result<VerifiedGrant, GrantError> {
        let (biscuit, claims) = parse(token, &self.roots.load())?;
        let revocation_ids = biscuit
            .revocation_identifiers()
            .iter()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let grant = VerifiedGrant::new(claims, revocation_ids)?;
        if grant.depth > self.max_depth {
            return Err(GrantError::TooDeep {
                depth: grant.depth,
                max: self.max_depth,
            });
        }
        Ok(grant)
    }

    fn remember(&self, token: &str, grant: &Arc<VerifiedGrant>) {
        if let Ok(mut cache) = self.cache.write() {
            if cache.grants.len() >= CACHE_CAPACITY || cache.token_bytes >= CACHE_BYTES {
                cache.clear();
            }
            cache.insert(token.into(), Arc::clone(grant));
        }
    }

    /// Replaces the revocation set (a newer version from the control plane) and evicts every
    /// cached grant it revokes.
    pub fn set_revocations(&self, set: RevocationSet) {
        if set.version() < self.revocations.load().version() {
            return;
        }
        if let Ok(mut cache) = self.cache.write() {
            cache.retain(|grant| grant.revoked_by(&set).is_none());
        }
        self.revocations.store(Arc::new(set));
    }

    pub fn revocations(&self) -> Arc<RevocationSet> {
        self.revocations.load_full()
    }

    /// New root keys (after a rotation); cached verifications start over.
    pub fn set_roots(&self, roots: GrantRoots) {
        self.roots.store(Arc::new(roots));
        if let Ok(mut cache) = self.cache.write() {
            cache.clear();
        }
    }

    pub fn cached(&self) -> usize {
        self.cache.read().map_or(0, |c| c.grants.len())
    }
}

/// Authorizes with Biscuit's own Datalog engine — what any standard Biscuit verifier would
/// conclude from the checks the grant carries. Warden's fast path must agree with it (tested).
pub fn datalog_authorize(
    token: &str,
    roots: &GrantRoots,
    presenter: Presenter<'_>,
    action: &Action,
    now: i64,
) -> Result<(), String> {
    let (biscuit, _) = parse(token, roots).map_err(|e| e.to_string())?;
    let predicate = match presenter {
        Presenter::Svid(_) => "presenter",
        Presenter::Key(_) => "presenter_key",
    };
    let code = format!(
        "time({{now}});\naction({{kind}}, {{target}});\n{predicate}({{who}});\nallow if true;"
    );
    let who = match presenter {
        Presenter::Svid(id) => id.to_string(),
        Presenter::Key(jkt) => jkt.to_owned(),
    };
    let params = HashMap::from([
        (
            "now".to_owned(),
            Term::Date(u64::try_from(now).unwrap_or(0)),
        ),
        (
            "kind".to_owned(),
            Term::Str(action.kind().as_str().to_owned()),
        ),
        ("target".to_owned(), Term::Str(target_of(action))),
        ("who".to_owned(), Term::Str(who)),
    ]);
    let mut authorizer = AuthorizerBuilder::new()
        .code_with_params(code, params, HashMap::new())
        .map_err(|e| e.to_string())?
        .set_limits(RunLimits {
            max_facts: 1_000,
            max_iterations: 100,
            // Generous: this path is for explanation and tests, and a loaded machine must
            // not turn a time budget into a false denial.
            max_time: Duration::from_secs(1),
        })
        .build(&biscuit)
        .map_err(|e| e.to_string())?;
    authorizer
        .authorize()
        .map(|_| ())
        .map_err(|e| e.to_string())
}
