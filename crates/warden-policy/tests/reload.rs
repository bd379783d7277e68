//! Reloads swap bundles atomically; a bundle that fails to load never replaces a good one.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use warden_model::DecisionRequest;
use warden_policy::{Engine, LoadLimits, ReloadOutcome};

fn policy(host: &str) -> String {
    format!(
        "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: p, namespace: t}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  egress: [{{hosts: [{host}], ports: [443]}}]\n"
    )
}

fn request(host: &str) -> DecisionRequest {
    serde_json::from_str(&format!(
        r#"{{"agent":{{"spiffeId":"spiffe://td/tenant/t/agent/a/1","labels":{{"app":"a"}}}},"action":{{"kind":"egress.connect","host":"{host}","port":443}}}}"#
    ))
    .unwrap()
}

#[test]
fn a_broken_bundle_never_replaces_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    fs::write(&file, policy("a.com")).unwrap();
    let engine = Engine::load(dir.path(), LoadLimits::default()).unwrap();
    let good = engine.current().hash().clone();
    assert!(engine.decide(&request("a.com")).is_allowed());

    for broken in [
        "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: p}\nspec:\n  selector: {}\n",
        ": : not yaml [",
        &policy("a.com").replace("egress", "egres"),
        &policy("a.com").replace("ports: [443]", "ports: [443], when: 'context.nope'"),
    ] {
        fs::write(&file, broken).unwrap();
        let err = engine.reload().unwrap_err();
        assert!(err.errors().count() > 0);
        assert_eq!(
            engine.current().hash(),
            &good,
            "a rejected bundle must not be served"
        );
        assert!(engine.decide(&request("a.com")).is_allowed());
    }

    fs::write(&file, policy("b.com")).unwrap();
    match engine.reload().unwrap() {
        ReloadOutcome::Swapped { old, new } => {
            assert_eq!(old, good);
            assert_ne!(new, good);
        }
        other => panic!("expected a swap, got {other:?}"),
    }
    assert!(!engine.decide(&request("a.com")).is_allowed());
    assert!(engine.decide(&request("b.com")).is_allowed());
    assert!(matches!(
        engine.reload().unwrap(),
        ReloadOutcome::Unchanged(_)
    ));
}

#[test]
fn file_changes_trigger_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    fs::write(&file, policy("a.com")).unwrap();
    let engine = Arc::new(Engine::load(dir.path(), LoadLimits::default()).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let _guard = engine
        .watch(move |r| {
            let _ = tx.send(r.is_ok());
        })
        .unwrap();
    fs::write(&file, policy("b.com")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.decide(&request("b.com")).is_allowed() {
        assert!(Instant::now() < deadline, "the change was not picked up");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    // A broken edit is reported and ignored.
    fs::write(&file, "kind: [").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(false) => break,
            _ => assert!(
                Instant::now() < deadline,
                "the failed reload was not reported"
            ),
        }
    }
    assert!(engine.decide(&request("b.com")).is_allowed());
}

/// Decisions made while bundles swap always come from one whole bundle: the outcome always
/// matches the bundle hash the decision names.
#[test]
fn decisions_during_swaps_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    fs::write(&file, policy("a.com")).unwrap();
    let engine = Arc::new(Engine::load(dir.path(), LoadLimits::default()).unwrap());
    let allows_a = engine.current().hash().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let engine = Arc::clone(&engine);
            let stop = Arc::clone(&stop);
            let allows_a = allows_a.clone();
            std::thread::spawn(move || {
                let req = request("a.com");
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let d = engine.decide(&req);
                    assert_eq!(d.is_allowed(), d.bundle == allows_a);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..40 {
        fs::write(&file, policy(if i % 2 == 0 { "b.com" } else { "a.com" })).unwrap();
        engine.reload().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.join().unwrap() > 0);
    }
}
