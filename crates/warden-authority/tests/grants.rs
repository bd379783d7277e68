#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! Task grants: minting, holder binding, offline attenuation, online delegation, depth, expiry,
//! revocation, and the attacks on each.

use std::collections::HashMap;
use std::time::Duration;

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::{Biscuit, KeyPair};
use time::OffsetDateTime;
use warden_authority::{
    Attenuation, DelegationRequest, GrantError, GrantIssuer, GrantKey, GrantRequest, GrantRoots,
    GrantVerifier, Holder, Presenter, Revocation, RevocationSet, Right, datalog_authorize,
};
use warden_model::{Action, Name, SpiffeId};

const PARENT: &str = "spiffe://acme.test/tenant/shop/agent/planner/i-1";
const CHILD: &str = "spiffe://acme.test/tenant/shop/agent/planner/i-1/agent/coder/c-1";
const GRANDCHILD: &str =
    "spiffe://acme.test/tenant/shop/agent/planner/i-1/agent/coder/c-1/agent/tester/t-1";

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn tool(server: &str, tool: &str) -> Action {
    Action::McpToolsCall {
        server: Name::new(server).unwrap(),
        tool: Name::new(tool).unwrap(),
        args: Default::default(),
    }
}

struct Fixture {
    issuer: GrantIssuer,
    roots: GrantRoots,
    verifier: GrantVerifier,
}

fn fixture() -> Fixture {
    let issuer = GrantIssuer::new(GrantKey::generate(1), 3);
    let roots = GrantRoots::new([(1, issuer.key().public())]);
    let verifier = GrantVerifier::new(roots.clone(), 3);
    Fixture {
        issuer,
        roots,
        verifier,
    }
}

fn rights(list: &[(&str, &str)]) -> Vec<Right> {
    list.iter()
        .map(|(a, t)| Right::new(a, t).unwrap())
        .collect()
}

fn mint(f: &Fixture, holder: Holder, list: &[(&str, &str)], ttl: Duration) -> String {
    f.issuer
        .mint(
            GrantRequest {
                agent: id(PARENT),
                labels: Default::default(),
                task: Name::new("ticket-42").unwrap(),
                purpose: "fix the failing build".into(),
                rights: rights(list),
                ttl: Some(ttl),
                holder,
            },
            now(),
        )
        .unwrap()
        .token
}

fn parent_grant(f: &Fixture) -> String {
    mint(
        f,
        Holder::Spiffe(id(PARENT)),
        &[
            ("mcp.tools/call", "github/*"),
            ("mcp.tools/list", "github/"),
        ],
        Duration::from_secs(600),
    )
}

fn t() -> i64 {
    now().unix_timestamp()
}

#[test]
fn a_minted_grant_allows_its_rights_to_its_holder_only() {
    let f = fixture();
    let token = parent_grant(&f);
    let parent = id(PARENT);
    let grant = f
        .verifier
        .authorize(
            &token,
            Presenter::Svid(&parent),
            &tool("github", "create_issue"),
            t(),
        )
        .unwrap();
    assert_eq!(grant.header().task.as_str(), "ticket-42");
    assert_eq!(grant.agent(), &parent);
    let denied = f.verifier.authorize(
        &token,
        Presenter::Svid(&parent),
        &tool("slack", "post"),
        t(),
    );
    assert!(
        matches!(denied, Err(GrantError::NotPermitted { ref target, .. }) if target == "slack/post")
    );
}

#[test]
fn a_grant_presented_by_another_spiffe_id_is_refused() {
    let f = fixture();
    let token = parent_grant(&f);
    for other in [
        "spiffe://acme.test/tenant/shop/agent/planner/i-2",
        // A sibling whose ID merely starts with the holder's string.
        "spiffe://acme.test/tenant/shop/agent/planner/i-10",
        "spiffe://other.test/tenant/shop/agent/planner/i-1",
    ] {
        let other = id(other);
        let err = f
            .verifier
            .authorize(&token, Presenter::Svid(&other), &tool("github", "x"), t())
            .unwrap_err();
        assert!(
            matches!(err, GrantError::WrongHolder { .. }),
            "{other}: {err}"
        );
    }
    // Presented with a key instead of the SVID it is bound to.
    let err = f
        .verifier
        .authorize(&token, Presenter::Key("abc"), &tool("github", "x"), t())
        .unwrap_err();
    assert!(matches!(err, GrantError::WrongHolder { .. }));
}

#[test]
fn a_key_bound_grant_needs_that_key() {
    let f = fixture();
    let token = mint(
        &f,
        Holder::Key("thumb-A".into()),
        &[("*", "*")],
        Duration::from_secs(60),
    );
    let action = tool("github", "x");
    f.verifier
        .authorize(&token, Presenter::Key("thumb-A"), &action, t())
        .unwrap();
    let parent = id(PARENT);
    for presenter in [Presenter::Key("thumb-B"), Presenter::Svid(&parent)] {
        assert!(matches!(
            f.verifier.authorize(&token, presenter, &action, t()),
            Err(GrantError::WrongHolder { .. })
        ));
    }
}

#[test]
fn an_expired_grant_is_refused_even_from_the_cache() {
    let f = fixture();
    let token = mint(
        &f,
        Holder::Spiffe(id(PARENT)),
        &[("*", "*")],
        Duration::from_secs(30),
    );
    f.verifier.verify(&token, t()).unwrap();
    assert_eq!(f.verifier.cached(), 1);
    let err = f.verifier.verify(&token, t() + 31).unwrap_err();
    assert!(matches!(err, GrantError::Expired(_)));
}

#[test]
fn lifetimes_and_rights_are_bounded_at_issue() {
    let f = fixture();
    let request = |ttl, rights: Vec<Right>, holder| GrantRequest {
        agent: id(PARENT),
        labels: Default::default(),
        task: Name::new("t").unwrap(),
        purpose: "p".into(),
        rights,
        ttl: Some(ttl),
        holder,
    };
    let all = rights(&[("*", "*")]);
    let holder = Holder::Spiffe(id(PARENT));
    let refused = |request: GrantRequest| match f.issuer.mint(request, now()) {
        Err(GrantError::Invalid(why)) => why,
        other => panic!("expected an invalid request, got {other:?}"),
    };
    let too_long = refused(request(
        Duration::from_secs(7200),
        all.clone(),
        holder.clone(),
    ));
    assert!(
        too_long.contains("ttl") || too_long.contains("minutes") || too_long.contains("long"),
        "{too_long}"
    );
    let no_rights = refused(request(Duration::from_secs(60), vec![], holder));
    assert!(no_rights.contains("right"), "{no_rights}");
    // The holder must be the agent or under it.
    let stranger = Holder::Spiffe(id("spiffe://acme.test/tenant/shop/agent/x/1"));
    let wrong_holder = refused(request(Duration::from_secs(60), all, stranger));
    assert!(wrong_holder.contains("holder"), "{wrong_holder}");
}

#[test]
fn offline_attenuation_narrows_and_binds_the_sub_agent() {
    let f = fixture();
    let token = parent_grant(&f);
    let child_token = warden_authority::attenuate(
        &token,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "github/list_*")]),
            expires: Some(now() + Duration::from_secs(60)),
            holder: Some(id(CHILD)),
        },
    )
    .unwrap();
    let child = id(CHILD);
    let grant = f
        .verifier
        .authorize(
            &child_token,
            Presenter::Svid(&child),
            &tool("github", "list_issues"),
            t(),
        )
        .unwrap();
    assert_eq!(grant.depth(), 1);
    assert_eq!(grant.agent(), &child);
    assert!(grant.expires() <= t() + 60);
    // Narrower rights hold.
    assert!(matches!(
        f.verifier.authorize(
            &child_token,
            Presenter::Svid(&child),
            &tool("github", "delete_repo"),
            t()
        ),
        Err(GrantError::NotPermitted { .. })
    ));
    // The parent itself cannot use the child's narrowed grant: the holder moved down.
    let parent = id(PARENT);
    assert!(matches!(
        f.verifier.authorize(
            &child_token,
            Presenter::Svid(&parent),
            &tool("github", "list_issues"),
            t()
        ),
        Err(GrantError::WrongHolder { .. })
    ));
}

#[test]
fn a_child_grant_claiming_more_than_its_parent_is_refused() {
    let f = fixture();
    let token = parent_grant(&f);
    let err = warden_authority::attenuate(
        &token,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "*")]),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, GrantError::Widening(_)), "{err}");

    // Written by hand in Warden's own form, bypassing `attenuate`: it verifies, but the
    // intersection still holds — the widened block adds nothing.
    let widened = append_claims(
        &token,
        &f.roots,
        serde_json::json!({"expires": t() + 600, "rights": [{"action": "*", "target": "*"}]}),
    );
    let parent = id(PARENT);
    let err = f
        .verifier
        .authorize(
            &widened,
            Presenter::Svid(&parent),
            &tool("slack", "post"),
            t(),
        )
        .unwrap_err();
    assert!(matches!(err, GrantError::NotPermitted { .. }), "{err}");

    // A later expiry in an attenuation block does not extend the grant either.
    let later = append_claims(
        &token,
        &f.roots,
        serde_json::json!({"expires": t() + 86_400, "rights": [{"action": "*", "target": "*"}]}),
    );
    assert!(matches!(
        f.verifier.verify(&later, t() + 3600),
        Err(GrantError::Expired(_))
    ));
}

/// Appends a block in Warden's form (Datalog generated from the claims) without `attenuate`'s
/// checks, as an attacker holding the grant could.
fn append_claims(token: &str, roots: &GrantRoots, claims: serde_json::Value) -> String {
    let biscuit = Biscuit::from_base64(token, roots).unwrap();
    let mut code = String::new();
    let mut params = HashMap::new();
    code += "check if time($time), $time <= {exp};\n";
    params.insert(
        "exp".to_owned(),
        Term::Date(claims["expires"].as_i64().unwrap() as u64),
    );
    if let Some(holder) = claims.get("holder").and_then(|h| h.get("spiffe")) {
        let holder = holder.as_str().unwrap();
        code += "check if presenter($p), $p == {h} || $p.starts_with({hs});\n";
        params.insert("h".to_owned(), Term::Str(holder.to_owned()));
        params.insert("hs".to_owned(), Term::Str(format!("{holder}/")));
    }
    code += "check if action($a, $r);\n";
    let block = BlockBuilder::new()
        .code_with_params(code, params, HashMap::new())
        .unwrap()
        .context(claims.to_string());
    biscuit.append(block).unwrap().to_base64().unwrap()
}

#[test]
fn a_block_whose_datalog_differs_from_its_claims_is_refused() {
    let f = fixture();
    let token = parent_grant(&f);
    let biscuit = Biscuit::from_base64(&token, &f.roots).unwrap();
    // Claims say "github only"; the Datalog checks nothing about the action.
    let block = BlockBuilder::new()
        .code("check if time($t);")
        .unwrap()
        .context(
        serde_json::json!({"expires": t() + 60, "rights": [{"action": "*", "target": "github/*"}]})
            .to_string(),
    );
    let forged = biscuit.append(block).unwrap().to_base64().unwrap();
    let err = f.verifier.verify(&forged, t()).unwrap_err();
    assert!(
        matches!(err, GrantError::NotCanonical { block: 1, .. }),
        "{err}"
    );
    // A string holding a quote can make different Datalog print like the claims' Datalog:
    // `$a == "mcp.tools/call\", $r == \"x"` prints as two comparisons. Refused outright.
    let expires = t() + 60;
    let claims = serde_json::json!({"expires": expires,
        "rights": [{"action": "mcp.tools/call", "target": "x"}]});
    let mut params = HashMap::new();
    params.insert("exp".to_owned(), Term::Date(expires as u64));
    params.insert(
        "a".to_owned(),
        Term::Str("mcp.tools/call\", $r == \"x".to_owned()),
    );
    let lookalike = BlockBuilder::new()
        .code_with_params(
            "check if time($time), $time <= {exp};\ncheck if action($a, $r), $a == {a};",
            params,
            HashMap::new(),
        )
        .unwrap()
        .context(claims.to_string());
    let lookalike = biscuit.append(lookalike).unwrap().to_base64().unwrap();
    let err = f.verifier.verify(&lookalike, t()).unwrap_err();
    assert!(
        matches!(err, GrantError::NotCanonical { block: 1, ref reason } if reason.contains("quote")),
        "{err}"
    );
    // A block with no claims at all.
    let bare = biscuit
        .append(BlockBuilder::new().code("check if true;").unwrap())
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        f.verifier.verify(&bare, t()),
        Err(GrantError::NotCanonical { block: 1, .. })
    ));
    // An attenuation block trying to name a grant of its own.
    let header = Biscuit::from_base64(&token, &f.roots).unwrap().context()[0]
        .clone()
        .unwrap();
    let impostor = biscuit
        .append(
            BlockBuilder::new()
                .code("check if true;")
                .unwrap()
                .context(header),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        f.verifier.verify(&impostor, t()),
        Err(GrantError::NotCanonical { block: 1, .. })
    ));
}

#[test]
fn a_holder_cannot_be_rebound_offline_to_someone_outside_its_lineage() {
    let f = fixture();
    let token = parent_grant(&f);
    let err = warden_authority::attenuate(
        &token,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "github/*")]),
            holder: Some(id("spiffe://acme.test/tenant/shop/agent/thief/x")),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, GrantError::Invalid(_)), "{err}");
    // Forced in by hand, the authority block's binding still applies to the thief.
    let rebound = append_claims(
        &token,
        &f.roots,
        serde_json::json!({"expires": t() + 60, "holder": {"spiffe": "spiffe://acme.test/tenant/shop/agent/thief/x"},
            "rights": [{"action": "*", "target": "*"}]}),
    );
    let thief = id("spiffe://acme.test/tenant/shop/agent/thief/x");
    let err = f
        .verifier
        .authorize(&rebound, Presenter::Svid(&thief), &tool("github", "x"), t())
        .unwrap_err();
    assert!(
        matches!(
            err,
            GrantError::NotCanonical { .. } | GrantError::WrongHolder { .. }
        ),
        "{err}"
    );
}

#[test]
fn delegation_beyond_the_depth_limit_is_refused() {
    let f = fixture();
    let mut token = parent_grant(&f);
    let keep = || Attenuation {
        rights: rights(&[("mcp.tools/call", "github/*")]),
        ..Default::default()
    };
    for _ in 0..3 {
        token = warden_authority::attenuate(&token, &f.roots, keep()).unwrap();
    }
    assert_eq!(f.verifier.verify(&token, t()).unwrap().depth(), 3);
    let too_deep = warden_authority::attenuate(&token, &f.roots, keep()).unwrap();
    assert!(matches!(
        f.verifier.verify(&too_deep, t()),
        Err(GrantError::TooDeep { depth: 4, max: 3 })
    ));

    // Online: three steps allowed, the fourth refused.
    let mut grant = f.verifier.verify(&parent_grant(&f), t()).unwrap();
    let mut agent = PARENT.to_owned();
    for step in 1..=4 {
        agent = format!("{agent}/agent/sub/s{step}");
        let result = f.issuer.delegate(
            &grant,
            DelegationRequest {
                agent: id(&agent),
                rights: rights(&[("mcp.tools/call", "github/*")]),
                ttl: None,
                holder: Holder::Spiffe(id(&agent)),
                purpose: None,
            },
            now(),
        );
        if step <= 3 {
            grant = f.verifier.verify(&result.unwrap().token, t()).unwrap();
            assert_eq!(grant.depth(), step);
        } else {
            assert!(matches!(
                result,
                Err(GrantError::TooDeep { depth: 4, max: 3 })
            ));
        }
    }
}

#[test]
fn online_delegation_is_narrower_and_records_the_actor_chain() {
    let f = fixture();
    let parent = f.verifier.verify(&parent_grant(&f), t()).unwrap();
    let request = |rights: Vec<Right>, agent: &str| DelegationRequest {
        agent: id(agent),
        rights,
        ttl: Some(Duration::from_secs(3000)),
        holder: Holder::Key("child-key".into()),
        purpose: Some("run the tests".into()),
    };
    let err = f
        .issuer
        .delegate(&parent, request(rights(&[("*", "*")]), CHILD), now())
        .unwrap_err();
    assert!(matches!(err, GrantError::Widening(_)), "{err}");
    // Not under the parent.
    let err = f
        .issuer
        .delegate(
            &parent,
            request(
                rights(&[("mcp.tools/call", "github/x")]),
                "spiffe://acme.test/tenant/shop/agent/other/1",
            ),
            now(),
        )
        .unwrap_err();
    assert!(matches!(err, GrantError::Invalid(_)), "{err}");

    let issued = f
        .issuer
        .delegate(
            &parent,
            request(rights(&[("mcp.tools/call", "github/x")]), CHILD),
            now(),
        )
        .unwrap();
    let child = f.verifier.verify(&issued.token, t()).unwrap();
    // The parent's 10 minutes cap the child's asked-for 50.
    assert!(child.expires() <= parent.expires());
    assert_eq!(child.header().lineage, vec![parent.id().to_owned()]);
    assert_eq!(child.header().actors, vec![id(PARENT)]);
    assert_eq!(child.header().purpose, "run the tests");
    f.verifier
        .authorize(
            &issued.token,
            Presenter::Key("child-key"),
            &tool("github", "x"),
            t(),
        )
        .unwrap();
}

#[test]
fn revoking_a_parent_revokes_its_live_children_at_once() {
    let f = fixture();
    let token = parent_grant(&f);
    let parent = f.verifier.verify(&token, t()).unwrap();
    let online = f
        .issuer
        .delegate(
            &parent,
            DelegationRequest {
                agent: id(CHILD),
                rights: rights(&[("mcp.tools/call", "github/x")]),
                ttl: None,
                holder: Holder::Spiffe(id(CHILD)),
                purpose: None,
            },
            now(),
        )
        .unwrap()
        .token;
    let offline = warden_authority::attenuate(
        &token,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "github/x")]),
            holder: Some(id(GRANDCHILD)),
            ..Default::default()
        },
    )
    .unwrap();
    for t2 in [&token, &online, &offline] {
        f.verifier.verify(t2, t()).unwrap();
    }
    assert_eq!(f.verifier.cached(), 3);
    f.verifier.set_revocations(RevocationSet::new(
        1,
        [Revocation::Grant(parent.id().to_owned())],
    ));
    assert_eq!(f.verifier.cached(), 0, "revocation evicts at once");
    for t2 in [&token, &online, &offline] {
        let err = f.verifier.verify(t2, t()).unwrap_err();
        assert!(matches!(err, GrantError::Revoked(_)), "{err}");
    }
}

#[test]
fn revocation_by_task_agent_and_revocation_id() {
    let f = fixture();
    let token = parent_grant(&f);
    let child = warden_authority::attenuate(
        &token,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "github/x")]),
            holder: Some(id(CHILD)),
            ..Default::default()
        },
    )
    .unwrap();
    let child_grant = f.verifier.verify(&child, t()).unwrap();
    let child_block_id = child_grant.revocation_ids()[1].clone();

    // Revoking the child's block leaves the parent usable.
    f.verifier.set_revocations(RevocationSet::new(
        1,
        [Revocation::RevocationId(child_block_id)],
    ));
    assert!(matches!(
        f.verifier.verify(&child, t()),
        Err(GrantError::Revoked(_))
    ));
    f.verifier.verify(&token, t()).unwrap();

    // Revoking the parent agent (by name, every instance) reaches the sub-agent's grant.
    f.verifier.set_revocations(RevocationSet::new(
        2,
        [Revocation::Agent(id(
            "spiffe://acme.test/tenant/shop/agent/planner",
        ))],
    ));
    for revoked in [&token, &child] {
        assert!(matches!(
            f.verifier.verify(revoked, t()),
            Err(GrantError::Revoked(why)) if why.contains("agent")
        ));
    }
    // …but not an agent whose name merely starts the same.
    let set = f.verifier.revocations();
    assert!(
        set.agent_revoked("spiffe://acme.test/tenant/shop/agent/planner-2/x")
            .is_none()
    );

    f.verifier.set_revocations(RevocationSet::new(
        3,
        [Revocation::Task(Name::new("ticket-42").unwrap())],
    ));
    assert!(matches!(
        f.verifier.verify(&token, t()),
        Err(GrantError::Revoked(r)) if r.contains("ticket-42")
    ));
    // An older set never replaces a newer one.
    f.verifier.set_revocations(RevocationSet::new(2, []));
    assert_eq!(f.verifier.revocations().version(), 3);
}

#[test]
fn forged_and_foreign_signatures_are_refused() {
    let f = fixture();
    // Another authority's key under the same key id, and a key id nobody has.
    for key_id in [1, 9] {
        let rogue = GrantIssuer::new(GrantKey::generate(key_id), 3);
        let forged = rogue
            .mint(
                GrantRequest {
                    agent: id(PARENT),
                    labels: Default::default(),
                    task: Name::new("t").unwrap(),
                    purpose: "p".into(),
                    rights: rights(&[("*", "*")]),
                    ttl: None,
                    holder: Holder::Spiffe(id(PARENT)),
                },
                now(),
            )
            .unwrap()
            .token;
        assert!(matches!(
            f.verifier.verify(&forged, t()),
            Err(GrantError::BadSignature)
        ));
    }
    // A flipped byte anywhere in a genuine grant.
    let token = parent_grant(&f);
    let bytes = token.as_bytes();
    for position in (0..bytes.len()).step_by(7) {
        let mut tampered = bytes.to_vec();
        tampered[position] = if tampered[position] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let tampered = String::from_utf8(tampered).unwrap();
        if tampered == token {
            continue;
        }
        // Refused as not Warden's: malformed, badly signed or altered — never for a reason
        // that would mean the grant itself was read as genuine.
        let refused = f.verifier.verify(&tampered, t());
        assert!(
            matches!(
                refused,
                Err(GrantError::Malformed(_)
                    | GrantError::BadSignature
                    | GrantError::NotCanonical { .. }
                    | GrantError::TooLarge)
            ),
            "flip at {position}: {refused:?}"
        );
    }
}

#[test]
fn oversized_and_malformed_grants_are_refused_without_panicking() {
    let f = fixture();
    let cases = [
        String::new(),
        "not a token".into(),
        "A".repeat(100),
        "%%%%".into(),
        "A".repeat(warden_authority::MAX_GRANT_BYTES + 1),
        base64_url(&[0xff; 300]),
    ];
    for case in cases {
        let err = f.verifier.verify(&case, t()).unwrap_err();
        assert!(
            matches!(err, GrantError::TooLarge | GrantError::Malformed(_)),
            "{err}"
        );
    }
    // A real Biscuit from the right key but not in Warden's form.
    let plain = Biscuit::builder()
        .code("right(\"everything\");")
        .unwrap()
        .root_key_id(1)
        .build(&keypair_of(&f))
        .unwrap()
        .to_base64()
        .unwrap();
    assert!(matches!(
        f.verifier.verify(&plain, t()),
        Err(GrantError::NotCanonical { block: 0, .. })
    ));
}

fn keypair_of(f: &Fixture) -> KeyPair {
    KeyPair::from(
        &biscuit_auth::PrivateKey::from_bytes(
            &f.issuer.key().private_bytes(),
            biscuit_auth::Algorithm::Ed25519,
        )
        .unwrap(),
    )
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

#[test]
fn the_fast_path_agrees_with_biscuits_own_datalog() {
    let f = fixture();
    let base = mint(
        &f,
        Holder::Spiffe(id(PARENT)),
        &[
            ("mcp.*", "github/*"),
            ("http", "billing/v1/*"),
            ("egress.connect", "api.github.com:443"),
        ],
        Duration::from_secs(600),
    );
    let narrowed = warden_authority::attenuate(
        &base,
        &f.roots,
        Attenuation {
            rights: rights(&[("mcp.tools/call", "github/*"), ("http", "billing/v1/read*")]),
            holder: Some(id(CHILD)),
            expires: Some(now() + Duration::from_secs(120)),
        },
    )
    .unwrap();
    let key_bound = mint(
        &f,
        Holder::Key("k1".into()),
        &[("a2a.*", "*"), ("mcp.tools/list", "github/")],
        Duration::from_secs(600),
    );
    let actions: Vec<Action> = [
        r#"{"kind":"mcp.tools/call","server":"github","tool":"create_issue","args":{}}"#,
        r#"{"kind":"mcp.tools/call","server":"gitlab","tool":"create_issue","args":{}}"#,
        r#"{"kind":"mcp.tools/list","server":"github"}"#,
        r#"{"kind":"mcp.resources/read","server":"github","uri":"repo://x"}"#,
        r#"{"kind":"http","service":"billing","method":"GET","path":"/v1/read/7"}"#,
        r#"{"kind":"http","service":"billing","method":"POST","path":"/v1/pay"}"#,
        r#"{"kind":"egress.connect","host":"api.github.com","port":443,"protocol":"tcp"}"#,
        r#"{"kind":"egress.connect","host":"api.github.com","port":80,"protocol":"tcp"}"#,
        r#"{"kind":"a2a.message/send","peer":"reviewer"}"#,
    ]
    .iter()
    .map(|json| serde_json::from_str(json).unwrap())
    .collect();
    let parent = id(PARENT);
    let child = id(CHILD);
    let grandchild = id(GRANDCHILD);
    let other = id("spiffe://acme.test/tenant/shop/agent/other/1");
    let presenters = [
        Presenter::Svid(&parent),
        Presenter::Svid(&child),
        Presenter::Svid(&grandchild),
        Presenter::Svid(&other),
        Presenter::Key("k1"),
        Presenter::Key("k2"),
    ];
    let mut checked = 0;
    for token in [&base, &narrowed, &key_bound] {
        for action in &actions {
            for presenter in presenters {
                for when in [t(), t() + 300, t() + 3600] {
                    let fast = f.verifier.authorize(token, presenter, action, when).is_ok();
                    let datalog =
                        datalog_authorize(token, &f.roots, presenter, action, when).is_ok();
                    assert_eq!(fast, datalog, "{presenter} {action:?} at +{}s", when - t());
                    checked += usize::from(fast);
                }
            }
        }
    }
    assert!(checked > 10, "the matrix must include allowed cases");
}

/// An agent minting offline attenuations by the thousand fills only its own share of the
/// verified-grant cache (here 16): another agent's grant stays cached and a new one is cached too.
#[test]
fn minted_attenuations_cannot_push_other_grants_out_of_the_cache() {
    let mut f = fixture();
    f.verifier = GrantVerifier::new(f.roots.clone(), 3).with_cache_per_root(16);
    let others = mint(
        &f,
        Holder::Spiffe(id(CHILD)),
        &[("mcp.tools/call", "github/x")],
        Duration::from_secs(600),
    );
    f.verifier.verify(&others, t()).unwrap();
    let token = parent_grant(&f);
    for i in 0..40 {
        let offline = warden_authority::attenuate(
            &token,
            &f.roots,
            Attenuation {
                rights: rights(&[("mcp.tools/call", "github/x")]),
                expires: Some(now() + Duration::from_secs(60 + i)),
                ..Default::default()
            },
        )
        .unwrap();
        // Past its share it is still verified, just not cached.
        f.verifier.verify(&offline, t()).unwrap();
    }
    assert_eq!(
        f.verifier.cached(),
        1 + 16,
        "the flood keeps to its root's share"
    );
    let third = mint(
        &f,
        Holder::Spiffe(id(GRANDCHILD)),
        &[("mcp.tools/call", "github/x")],
        Duration::from_secs(600),
    );
    f.verifier.verify(&third, t()).unwrap();
    assert_eq!(f.verifier.cached(), 1 + 16 + 1);
}
