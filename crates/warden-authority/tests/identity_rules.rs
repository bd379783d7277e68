//! Verified evidence → SPIFFE ID: rules select by claim, templates fill from claims, and a hostile
//! claim cannot inject path segments.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use serde_json::{Value, json};
use warden_authority::{IdentityRule, MappingError, VerifiedEvidence, map_identity};

fn evidence(claims: Value) -> VerifiedEvidence {
    VerifiedEvidence {
        issuer: "https://kubernetes.default.svc".into(),
        subject: "system:serviceaccount:shop:agent".into(),
        claims: claims.as_object().unwrap().clone(),
    }
}

fn k8s(namespace: &str, sa: &str, pod: &str) -> VerifiedEvidence {
    evidence(
        json!({"sub": "x", "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}, "pod": {"name": pod}}}),
    )
}

fn rules() -> Vec<IdentityRule> {
    vec![
        IdentityRule {
            when: vec![("/kubernetes.io/namespace".into(), "kube-system".into())],
            spiffe_id: "spiffe://acme.example/tenant/platform/agent/{/kubernetes.io/serviceaccount/name}/{/kubernetes.io/pod/name}".into(),
        },
        IdentityRule {
            when: vec![],
            spiffe_id: "spiffe://acme.example/tenant/{/kubernetes.io/namespace}/agent/{/kubernetes.io/serviceaccount/name}/{/kubernetes.io/pod/name}".into(),
        },
    ]
}

#[test]
fn claims_fill_the_template_of_the_first_matching_rule() {
    let id = map_identity(&rules(), &k8s("shop", "agent", "agent-7f9c")).unwrap();
    assert_eq!(
        id.as_str(),
        "spiffe://acme.example/tenant/shop/agent/agent/agent-7f9c"
    );
    let id = map_identity(&rules(), &k8s("kube-system", "dns", "dns-1")).unwrap();
    assert_eq!(
        id.as_str(),
        "spiffe://acme.example/tenant/platform/agent/dns/dns-1"
    );
}

#[test]
fn hostile_claims_cannot_inject_segments() {
    for (namespace, pod) in [
        ("shop/../platform", "p"),
        ("..", "p"),
        ("shop", "p/agent/admin/x"),
        ("shop", "."),
        ("shop", ""),
        ("shop", "p q"),
    ] {
        let result = map_identity(&rules(), &k8s(namespace, "agent", pod));
        assert!(
            matches!(result, Err(MappingError::UnsafeClaim { .. })),
            "{namespace} {pod}: {result:?}"
        );
    }
}

#[test]
fn missing_or_non_string_claims_are_refused() {
    let no_pod =
        evidence(json!({"kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "a"}}}));
    assert_eq!(
        map_identity(&rules(), &no_pod),
        Err(MappingError::MissingClaim {
            pointer: "/kubernetes.io/pod/name".into()
        })
    );
    let numeric = evidence(
        json!({"kubernetes.io": {"namespace": 7, "serviceaccount": {"name": "a"}, "pod": {"name": "p"}}}),
    );
    assert!(matches!(
        map_identity(&rules(), &numeric),
        Err(MappingError::MissingClaim { .. })
    ));
}

#[test]
fn without_a_matching_rule_there_is_no_identity() {
    let only_platform = vec![rules().remove(0)];
    assert_eq!(
        map_identity(&only_platform, &k8s("shop", "a", "p")),
        Err(MappingError::NoMatchingRule)
    );
    assert_eq!(
        map_identity(&[], &k8s("shop", "a", "p")),
        Err(MappingError::NoMatchingRule)
    );
}

#[test]
fn json_pointer_escapes_reach_claims_with_slashes() {
    let rule = IdentityRule {
        when: vec![("/https:~1~1example.com~1team".into(), "red".into())],
        spiffe_id: "spiffe://acme.example/tenant/t/agent/{/https:~1~1example.com~1team}/1".into(),
    };
    let claims = evidence(json!({"https://example.com/team": "red"}));
    assert_eq!(
        map_identity(&[rule], &claims).unwrap().as_str(),
        "spiffe://acme.example/tenant/t/agent/red/1"
    );
}

#[test]
fn broken_templates_are_reported() {
    let rule = IdentityRule {
        when: vec![],
        spiffe_id: "spiffe://acme.example/tenant/{/a".into(),
    };
    assert!(matches!(
        map_identity(&[rule], &evidence(json!({"a": "x"}))),
        Err(MappingError::Template(_))
    ));
    let rule = IdentityRule {
        when: vec![],
        spiffe_id: "https://not-spiffe/{/a}".into(),
    };
    assert!(matches!(
        map_identity(&[rule], &evidence(json!({"a": "x"}))),
        Err(MappingError::Id(_))
    ));
}
