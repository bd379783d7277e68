//! The bundle in service: atomic swaps on reload, the last good bundle kept when a reload fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use warden_model::{BundleHash, Decision, DecisionRequest};

use crate::bundle::{Bundle, LoadLimits};
use crate::diagnostic::LoadError;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The sources hash the same: nothing swapped.
    Unchanged(BundleHash),
    Swapped {
        old: BundleHash,
        new: BundleHash,
    },
}

/// Holds the current bundle of a policy directory.
pub struct Engine {
    dir: PathBuf,
    limits: LoadLimits,
    current: ArcSwap<Bundle>,
    reloading: std::sync::Mutex<()>,
}

/// Keeps a directory watch alive; dropping it stops watching.
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
}

/// How long file events are gathered before one reload, so an editor's burst of writes (or a
/// `git checkout`) produces a single reload of the finished state.
const DEBOUNCE: Duration = Duration::from_millis(250);

impl Engine {
    pub fn load(dir: &Path, limits: LoadLimits) -> Result<Self, LoadError> {
        let bundle = Bundle::load_dir(dir, limits)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            current: ArcSwap::from_pointee(bundle),
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// The bundle serving now. Holders keep it alive across a swap.
    pub fn current(&self) -> Arc<Bundle> {
        self.current.load_full()
    }

    pub fn decide(&self, request: &DecisionRequest) -> Decision {
        self.current.load().decide(request)
    }

    /// What the staged policies would decide, when one of them selects the request's agent.
    pub fn decide_staged(&self, request: &DecisionRequest) -> Option<Decision> {
        let bundle = self.current.load();
        let staged = bundle.staged()?;
        staged
            .governs(&request.agent)
            .then(|| staged.decide(request))
    }

    /// See [`Bundle::could_allow`].
    pub fn could_allow(&self, request: &DecisionRequest) -> bool {
        self.current.load().could_allow(request)
    }

    /// See [`Bundle::could_reach`].
    pub fn could_reach(
        &self,
        agent: &warden_model::AgentIdentity,
        host: &warden_model::Host,
    ) -> bool {
        self.current.load().could_reach(agent, host)
    }

    /// Loads the directory again. On success the new bundle replaces the old one in a single
    /// atomic step; on failure the old one keeps serving and the errors are returned.
    pub fn reload(&self) -> Result<ReloadOutcome, LoadError> {
        let _serialised = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let bundle = Bundle::load_dir(&self.dir, self.limits)?;
        let old = self.current.load().hash().clone();
        if &old == bundle.hash() {
            return Ok(ReloadOutcome::Unchanged(old));
        }
        let new = bundle.hash().clone();
        self.current.store(Arc::new(bundle));
        Ok(ReloadOutcome::Swapped { old, new })
    }

    /// Reloads whenever a file under the directory changes, reporting each attempt.
    pub fn watch(
        self: &Arc<Self>,
        report: impl Fn(Result<ReloadOutcome, LoadError>) + Send + 'static,
    ) -> Result<WatchGuard, notify::Error> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        let engine = Arc::clone(self);
        thread::Builder::new()
            .name("warden-policy-watch".into())
            .spawn(move || {
                // Ends when the watcher (and with it the sender) is dropped.
                while rx.recv().is_ok() {
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    report(engine.reload());
                }
            })
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(WatchGuard { _watcher: watcher })
    }
}
