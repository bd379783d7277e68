#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! The control plane over real HTTP on a loopback port: admin roles, registration, credentials,
//! join tokens, JWT attestation against a JWKS endpoint (with key rotation), online delegation
//! with proof of possession, revocation, rotation, and state surviving a restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{Value, json};
use warden_authority::{GrantRoots, Presenter, ProofSigner};
use warden_control::{AttestorConfig, Control, ControlConfig, HttpClient, RuleConfig};
use warden_model::{Action, SpiffeId};

struct Plane {
    url: String,
    control: Arc<Control>,
    admin: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    client: HttpClient,
}

fn config(dir: &Path, attestation: Vec<AttestorConfig>) -> ControlConfig {
    ControlConfig {
        trust_domain: warden_model::TrustDomain::new("acme.test").unwrap(),
        data_dir: dir.to_path_buf(),
        attestation,
        ..ControlConfig::default()
    }
}

async fn start(dir: &Path, attestation: Vec<AttestorConfig>) -> Plane {
    start_at(dir, attestation, "127.0.0.1:0").await
}

async fn start_at(dir: &Path, attestation: Vec<AttestorConfig>, address: &str) -> Plane {
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = config(dir, attestation);
    config.listen = addr;
    let control = Arc::new(Control::open(config).unwrap());
    let admin = control.bootstrap().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(warden_control::serve(
        Arc::clone(&control),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    Plane {
        url: format!("http://{addr}"),
        control,
        admin,
        stop: Some(stop),
        served: Some(tokio::spawn(async move {
            served.await.unwrap().unwrap();
        })),
        client: HttpClient::new(Duration::from_secs(10)).unwrap(),
    }
}

impl Plane {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        let response = self
            .client
            .send(
                method,
                &format!("{}{path}", self.url),
                &headers,
                body.map(|b| b.to_string().into_bytes()),
                1 << 20,
            )
            .await
            .unwrap();
        let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        (response.status, value)
    }

    async fn register(&self, admin: &str) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/agents",
                Some(admin),
                Some(register_body()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn credentials(&self, admin: &str, request: Value) -> Value {
        let (status, creds) = self
            .call(
                Method::POST,
                "/v1/agents/shop/planner/credentials",
                Some(admin),
                Some(request),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{creds}");
        creds
    }

    async fn attest(&self, request: Value) -> (StatusCode, Value) {
        self.call(Method::POST, "/v1/attest", None, Some(request))
            .await
    }

    fn admin(&self) -> Option<&str> {
        self.admin.as_deref()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.served.take().unwrap().await.unwrap();
        // Connection tasks let go of the control plane just after `serve` returns; its store
        // can be opened again only once they all have (redb holds a lock while it is open).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&self.control) > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

fn register_body() -> Value {
    json!({"tenant": "shop", "name": "planner", "labels": {"team": "dev"},
           "rights": [{"action": "mcp.*", "target": "github/*"}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_roles_guard_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    // No token, a wrong token.
    let (status, body) = plane.call(Method::GET, "/v1/agents", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let (status, _) = plane
        .call(Method::GET, "/v1/agents", Some("wdn_nope"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A viewer reads but cannot write.
    let (status, created) = plane
        .call(
            Method::POST,
            "/v1/admins",
            Some(&admin),
            Some(json!({"name": "dash", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let viewer = created["token"].as_str().unwrap();
    let (status, _) = plane
        .call(Method::GET, "/v1/agents", Some(viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/agents",
            Some(viewer),
            Some(register_body()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Public endpoints.
    let (status, doc) = plane
        .call(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    // Every route the router serves is documented.
    let routes = include_str!("../src/api.rs");
    for path in routes
        .split(".route(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
    {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} is not in openapi.json"
        );
    }
    let (status, bundle) = plane.call(Method::GET, "/v1/bundle", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        bundle["x509Pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // Malformed and oversized bodies: clear 400/413, no panic.
    let (status, body) = plane
        .call(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(json!({"tenant": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let huge = json!({"tenant": "x".repeat(100_000)});
    let (status, _) = plane
        .call(Method::POST, "/v1/agents", Some(&admin), Some(huge))
        .await;
    assert!(status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_issued_within_the_registered_rights() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(register_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(register_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let path = "/v1/agents/shop/planner/credentials";
    let (status, body) = plane
        .call(
            Method::POST,
            path,
            Some(&admin),
            Some(json!({"task": "t-1", "purpose": "triage", "rights": [{"action": "*", "target": "*"}]})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "wider than registered: {body}"
    );
    let (status, creds) = plane
        .call(
            Method::POST,
            path,
            Some(&admin),
            Some(json!({"task": "t-1", "purpose": "triage", "instance": "i-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{creds}");
    assert_eq!(
        creds["spiffeId"],
        "spiffe://acme.test/tenant/shop/agent/planner/i-1"
    );
    assert!(
        creds["svid"]["certificatePem"]
            .as_str()
            .unwrap()
            .contains("CERTIFICATE")
    );
    let id = SpiffeId::new(creds["spiffeId"].as_str().unwrap()).unwrap();
    let action: Action = serde_json::from_value(
        json!({"kind": "mcp.tools/call", "server": "github", "tool": "x", "args": {}}),
    )
    .unwrap();
    let grant = plane
        .control
        .verifier()
        .authorize(
            creds["grant"].as_str().unwrap(),
            Presenter::Svid(&id),
            &action,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap();
    // The registered labels travel signed in the grant, for the gateway's policy decisions.
    assert_eq!(
        serde_json::to_value(&grant.header().labels).unwrap(),
        json!({"team": "dev"})
    );
    let (status, agent) = plane
        .call(Method::GET, "/v1/agents/shop/planner", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agent["instances"][0]["grants"][0]["task"], "t-1");
    let (status, _) = plane
        .call(Method::GET, "/v1/agents/shop/nobody", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_work_once_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let (status, join) = plane
        .call(
            Method::POST,
            "/v1/agents/shop/planner/join-tokens",
            Some(&admin),
            Some(json!({"ttlSeconds": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = join["token"].as_str().unwrap();
    let attest = json!({"evidence": {"type": "join-token", "token": token}, "task": "boot"});
    let (status, creds) = plane.attest(attest.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{creds}");
    let (status, body) = plane.attest(attest).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("single-use")
    );
    // Expired.
    let (_, short) = plane
        .call(
            Method::POST,
            "/v1/agents/shop/planner/join-tokens",
            Some(&admin),
            Some(json!({"ttlSeconds": 1})),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = plane
        .attest(
            json!({"evidence": {"type": "join-token", "token": short["token"]}, "task": "boot"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // Unknown and junk tokens.
    for junk in ["wjt_unknown", &"x".repeat(5000)] {
        let (status, _) = plane
            .attest(json!({"evidence": {"type": "join-token", "token": junk}, "task": "boot"}))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    plane.stop().await;
}

struct Signer {
    kid: &'static str,
    key: KeyPair,
}

impl Signer {
    fn new(kid: &'static str) -> Self {
        Self {
            kid,
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
    fn jwk(&self) -> Value {
        let p = self.key.public_key_raw();
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
               "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])})
    }
    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.into());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_der(&self.key.serialize_der()),
        )
        .unwrap()
    }
}

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

fn k8s_claims(namespace: &str, sa: &str, pod: &str, aud: &str) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({"iss": K8S_ISSUER, "aud": [aud], "sub": format!("system:serviceaccount:{namespace}:{sa}"),
           "exp": now + 600, "iat": now, "nbf": now,
           "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa}, "pod": {"name": pod}}})
}

/// A JWKS endpoint whose keys the test can swap, as an issuer rotating keys would.
async fn jwks_server(keys: Arc<RwLock<Value>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/openid/v1/jwks",
        axum::routing::get(move || {
            let keys = Arc::clone(&keys);
            async move { axum::Json(keys.read().unwrap().clone()) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/openid/v1/jwks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_tokens_attest_against_a_fetched_and_rotated_jwks() {
    let first = Signer::new("k1");
    let second = Signer::new("k2");
    let keys = Arc::new(RwLock::new(json!({"keys": [first.jwk()]})));
    let jwks_url = jwks_server(Arc::clone(&keys)).await;
    let attestor = AttestorConfig {
        name: "cluster".into(),
        issuer: K8S_ISSUER.into(),
        jwks_url: Some(jwks_url),
        jwks: None,
        audiences: vec!["warden".into()],
        algorithms: vec!["ES256".into()],
        leeway_seconds: 5,
        rules: vec![RuleConfig {
            when: [("/kubernetes.io/namespace".to_owned(), "shop".to_owned())].into(),
            spiffe_id: "spiffe://acme.test/tenant/{/kubernetes.io/namespace}/agent/{/kubernetes.io/serviceaccount/name}/{/kubernetes.io/pod/name}".into(),
        }],
    };
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![attestor]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let attest = |token: String| json!({"evidence": {"type": "jwt", "token": token}, "task": "t"});

    let (status, creds) = plane
        .attest(attest(
            first.sign(&k8s_claims("shop", "planner", "pod-1", "warden")),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{creds}");
    assert_eq!(
        creds["spiffeId"],
        "spiffe://acme.test/tenant/shop/agent/planner/pod-1"
    );

    // The issuer rotates: a token under the new key triggers a refetch and verifies.
    *keys.write().unwrap() = json!({"keys": [first.jwk(), second.jwk()]});
    let (status, creds) = plane
        .attest(attest(
            second.sign(&k8s_claims("shop", "planner", "pod-2", "warden")),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{creds}");

    // Refused: another audience, an unregistered service account, a namespace no rule maps,
    // an unknown issuer, a key nobody published, `alg: none`.
    let rogue = Signer::new("k9");
    let cases = [
        first.sign(&k8s_claims("shop", "planner", "p", "someone-else")),
        first.sign(&k8s_claims("shop", "intruder", "p", "warden")),
        first.sign(&k8s_claims("other", "planner", "p", "warden")),
        rogue.sign(&k8s_claims("shop", "planner", "p", "warden")),
        {
            let mut c = k8s_claims("shop", "planner", "p", "warden");
            c["iss"] = json!("https://evil.example");
            first.sign(&c)
        },
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(k8s_claims("shop", "planner", "p", "warden").to_string())
        ),
    ];
    for (i, token) in cases.into_iter().enumerate() {
        let (status, body) = plane.attest(attest(token)).await;
        assert!(
            status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN
                || status == StatusCode::NOT_FOUND,
            "case {i}: {status} {body}"
        );
    }
    plane.stop().await;
}

fn proof(signer: &ProofSigner, url: &str, credential: &str) -> String {
    signer
        .proof(
            "POST",
            url,
            credential,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
        .unwrap()
}

async fn exchange(
    plane: &Plane,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    let response = plane
        .client
        .send(
            Method::POST,
            &format!("{}/v1/token", plane.url),
            &all,
            Some(body.into_bytes()),
            1 << 20,
        )
        .await
        .unwrap();
    (
        response.status,
        serde_json::from_slice(&response.body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_delegation_needs_proof_of_possession_and_stays_narrower() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let token_url = format!("{}/v1/token", plane.url);

    // A key-bound parent (serverless).
    let parent_key = ProofSigner::generate().unwrap();
    let creds = plane
        .credentials(
            &admin,
            json!({"task": "t-9", "instance": "fn-1", "keyThumbprint": parent_key.thumbprint()}),
        )
        .await;
    assert!(
        creds["svid"].is_null(),
        "a key-bound grant comes without an SVID"
    );
    let grant = creds["grant"].as_str().unwrap().to_owned();
    let form = |scope: &'static str| {
        vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            (
                "subject_token_type",
                "urn:warden:params:oauth:token-type:grant",
            ),
            ("scope", scope),
            ("sub_agent", "coder"),
        ]
    };
    let with_token = |mut f: Vec<(&'static str, &'static str)>, token: &'static str| {
        f.push(("subject_token", token));
        f
    };
    let grant: &'static str = Box::leak(grant.into_boxed_str());

    // Bearer replay without the key: no proof, or a proof by another key.
    let (status, body) = exchange(
        &plane,
        &with_token(form("mcp.tools/call=github/x"), grant),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let thief = ProofSigner::generate().unwrap();
    let stolen = proof(&thief, &token_url, grant);
    let (_, body) = exchange(
        &plane,
        &with_token(form("mcp.tools/call=github/x"), grant),
        &[("dpop", &stolen)],
    )
    .await;
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // Asking for more than the parent holds.
    let p1 = proof(&parent_key, &token_url, grant);
    let (_, body) = exchange(&plane, &with_token(form("*=*"), grant), &[("dpop", &p1)]).await;
    assert_eq!(body["error"], "invalid_scope", "{body}");

    // A proper exchange.
    let p2 = proof(&parent_key, &token_url, grant);
    let (status, child) = exchange(
        &plane,
        &with_token(form("mcp.tools/call=github/x"), grant),
        &[("dpop", &p2)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{child}");
    assert_eq!(
        child["spiffe_id"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .0,
        "spiffe://acme.test/tenant/shop/agent/planner/fn-1/agent/coder"
    );
    assert_eq!(
        child["act"]["sub"],
        "spiffe://acme.test/tenant/shop/agent/planner/fn-1"
    );
    assert_eq!(
        child["issued_token_type"],
        "urn:warden:params:oauth:token-type:grant"
    );
    // The same proof again: replay.
    let (_, body) = exchange(
        &plane,
        &with_token(form("mcp.tools/call=github/x"), grant),
        &[("dpop", &p2)],
    )
    .await;
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // An SVID-bound child delegates further with its SVID and a proof signed by its key.
    let child_grant: &'static str = Box::leak(
        child["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
            .into_boxed_str(),
    );
    let svid_pem = child["svid"]["certificatePem"].as_str().unwrap();
    let svid_key = ProofSigner::from_pem(child["svid"]["privateKeyPem"].as_str().unwrap()).unwrap();
    let svid_der = STANDARD.encode(
        x509_parser::pem::parse_x509_pem(svid_pem.as_bytes())
            .unwrap()
            .1
            .contents,
    );
    let p3 = proof(&svid_key, &token_url, child_grant);
    let mut f = with_token(form("mcp.tools/call=github/x"), child_grant);
    f[3] = ("sub_agent", "tester");
    let (status, grandchild) =
        exchange(&plane, &f, &[("dpop", &p3), ("warden-svid", &svid_der)]).await;
    assert_eq!(status, StatusCode::OK, "{grandchild}");
    assert_eq!(grandchild["act"]["act"]["sub"], child["act"]["sub"]);
    // Without the SVID attached.
    let p4 = proof(&svid_key, &token_url, child_grant);
    let (_, body) = exchange(&plane, &f, &[("dpop", &p4)]).await;
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // The lineage shows parent → child → grandchild.
    let (_, agent) = plane
        .call(Method::GET, "/v1/agents/shop/planner", Some(&admin), None)
        .await;
    let root = &agent["instances"][0];
    assert_eq!(root["children"][0]["children"][0]["agent"], "tester");

    // Revoking the parent's grant revokes the grandchild's.
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/revocations",
            Some(&admin),
            Some(json!({"grant": creds["grantId"]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let err = plane
        .control
        .verifier()
        .verify(grandchild["access_token"].as_str().unwrap(), now)
        .unwrap_err();
    assert!(matches!(err, warden_authority::GrantError::Revoked(_)));
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_versioned_watchable_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let creds = plane
        .credentials(&admin, json!({"task": "t-1", "instance": "i-1"}))
        .await;
    let (_, bundle_before) = plane.call(Method::GET, "/v1/bundle", None, None).await;

    // A watcher waiting on version 0 wakes when a revocation lands.
    let watcher = {
        let client = plane.client.clone();
        let url = format!("{}/v1/revocations?since=0&wait=30", plane.url);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = client
                .send(Method::GET, &url, &[], None, 1 << 20)
                .await
                .unwrap();
            (
                started.elapsed(),
                serde_json::from_slice::<Value>(&r.body).unwrap(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, revoked) = plane
        .call(
            Method::POST,
            "/v1/agents/shop/planner/revoke",
            Some(&admin),
            Some(json!({"reason": "compromised"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    let (waited, seen) = watcher.await.unwrap();
    assert!(waited < Duration::from_secs(10));
    assert_eq!(seen["version"], 1);
    assert_eq!(
        seen["entries"][0]["revocation"]["agent"],
        "spiffe://acme.test/tenant/shop/agent/planner"
    );
    // No new credentials for a revoked agent.
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/agents/shop/planner/credentials",
            Some(&admin),
            Some(json!({"task": "t-2"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let bad = json!({"agent": "spiffe://acme.test/not/an/agent/path/x/y"});
    let (status, _) = plane
        .call(Method::POST, "/v1/revocations", Some(&admin), Some(bad))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    plane.stop().await;

    // Restart on the same directory: no new bootstrap admin, same roots, same agents, same
    // revocations, and the old admin token still works.
    let plane = start(dir.path(), vec![]).await;
    assert!(
        plane.admin().is_none(),
        "the bootstrap admin is created once"
    );
    let (_, bundle_after) = plane.call(Method::GET, "/v1/bundle", None, None).await;
    assert_eq!(bundle_before["x509Pem"], bundle_after["x509Pem"]);
    assert_eq!(bundle_before["grantRoots"], bundle_after["grantRoots"]);
    let (status, agents) = plane
        .call(Method::GET, "/v1/agents", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(agents[0]["revoked"]["reason"], "compromised");
    assert_eq!(
        agents[0]["instances"][0]["grants"][0]["id"],
        creds["grantId"]
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(matches!(
        plane
            .control
            .verifier()
            .verify(creds["grant"].as_str().unwrap(), now),
        Err(warden_authority::GrantError::Revoked(_))
    ));
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_old_grants_verifying_and_publishes_new_roots() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let before = plane.credentials(&admin, json!({"task": "t-1"})).await;
    let (status, bundle) = plane
        .call(Method::POST, "/v1/authority/rotate", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    assert_eq!(bundle["grantRoots"]["keys"].as_array().unwrap().len(), 2);
    assert_eq!(bundle["spiffe"]["keys"].as_array().unwrap().len(), 2);
    let after = plane.credentials(&admin, json!({"task": "t-2"})).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let roots = GrantRoots::from_json(&bundle["grantRoots"]).unwrap();
    let verifier = warden_authority::GrantVerifier::new(roots, 3);
    for creds in [&before, &after] {
        verifier
            .verify(creds["grant"].as_str().unwrap(), now)
            .unwrap();
    }
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_proof_stays_used_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    plane.register(&admin).await;
    let key = ProofSigner::generate().unwrap();
    let creds = plane
        .credentials(
            &admin,
            json!({"task": "t", "keyThumbprint": key.thumbprint()}),
        )
        .await;
    let grant = creds["grant"].as_str().unwrap();
    let form = [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "subject_token_type",
            "urn:warden:params:oauth:token-type:grant",
        ),
        ("scope", "mcp.tools/call=github/x"),
        ("sub_agent", "coder"),
        ("subject_token", grant),
    ];
    let used = proof(&key, &format!("{}/v1/token", plane.url), grant);
    let (status, body) = exchange(&plane, &form, &[("dpop", &used)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let port = plane.url.rsplit(':').next().unwrap().to_owned();
    plane.stop().await;

    // Same data directory, same address (the proof names the URL), within the proof's minute.
    let plane = start_at(dir.path(), vec![], &format!("127.0.0.1:{port}")).await;
    let (_, body) = exchange(&plane, &form, &[("dpop", &used)]).await;
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used")
    );
    plane.stop().await;
}

/// The YAML blocks of docs/configuration.md, in order.
fn documented_yaml() -> Vec<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    doc.split("```yaml\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_documented_configuration_parses() {
    let blocks = documented_yaml();
    let file: serde_yaml::Value = serde_yaml::from_str(&blocks[0]).unwrap();
    let config: ControlConfig = serde_yaml::from_value(file["control"].clone()).unwrap();
    assert_eq!(config.trust_domain.as_str(), "acme.example");
    assert_eq!(config.attestation[0].rules.len(), 1);
    let clouds: Vec<AttestorConfig> = serde_yaml::from_str(&blocks[1]).unwrap();
    assert_eq!(clouds.len(), 3);
    for attestor in config.attestation.iter().chain(&clouds) {
        warden_control::Attestor::from_config(attestor).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let doc: Value = serde_json::from_str(warden_control::OPENAPI).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{tenant}", "shop")
            .replace("{name}", "nobody")
            .replace("{id}", "apr_none")
            .replace("{server}", "demo")
            .replace("{tool}", "echo");
        for method in item.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            let (status, body) = plane
                .call(method.clone(), &concrete, None, Some(json!({})))
                .await;
            // The router's own 404/405 have no JSON body; handlers always answer with one.
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED
                    && !(status == StatusCode::NOT_FOUND && body.is_null()),
                "{method} {path} is documented but not served ({status})"
            );
            operations += 1;
        }
    }
    assert_eq!(operations, 33);
    plane.stop().await;
}

/// Accepts one HTTP request on a free loopback port and hands over its body.
async fn one_request() -> (String, tokio::sync::oneshot::Receiver<String>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (send, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            bytes.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    socket
                        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = send.send(body.to_owned());
                    return;
                }
            }
        }
    });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_approval_request_is_posted_to_the_webhook_and_survives_a_restart() {
    let (hook, received) = one_request().await;
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(dir.path(), vec![]);
    cfg.listen = listener.local_addr().unwrap();
    cfg.approval_webhook = Some(hook);
    let control = Arc::new(Control::open(cfg.clone()).unwrap());
    let gateway = control
        .create_admin("gw", warden_control::Role::Gateway, Vec::new())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(warden_control::serve(
        Arc::clone(&control),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let plane = Plane {
        url: format!("http://{}", cfg.listen),
        control: Arc::clone(&control),
        admin: None,
        stop: None,
        served: None,
        client: HttpClient::new(Duration::from_secs(10)).unwrap(),
    };
    let request = json!({
        "agent": "spiffe://acme.test/tenant/shop/agent/planner/i-1", "action": "mcp.tools/call",
        "resource": "tool k8s/delete_namespace", "argumentsHash": "sha256:00",
        "requirement": {"id": "r1", "group": "sre", "required": 1, "validForSecs": 600,
                        "policy": {"id": "p", "file": "f.yaml", "document": "shop/ops", "rule": "spec.approval[0]"}},
        "decisionId": "d1", "gateway": "https://gw", "justification": "scale down the test cluster",
    });
    let (status, filed) = plane
        .call(
            Method::POST,
            "/v1/approvals",
            Some(&gateway),
            Some(request.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{filed}");
    let posted: Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(5), received)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(posted["type"], "approval.requested");
    assert_eq!(posted["approval"]["id"], filed["id"]);
    assert_eq!(
        posted["approval"]["justification"],
        "scale down the test cluster"
    );
    // Only gateways file requests.
    let (status, _) = plane
        .call(Method::POST, "/v1/approvals", None, Some(request))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let _ = stop.send(());
    served.await.unwrap().unwrap();
    control.close();
    drop(plane);
    drop(control);
    // What was acknowledged is there after a restart.
    let reopened = Control::open(cfg).unwrap();
    let id = filed["id"].as_str().unwrap();
    assert_eq!(
        reopened.approval(id).unwrap().binding.resource,
        "tool k8s/delete_namespace"
    );
    reopened.close();
}

/// Gateways report detections; nobody below them may, and a report is bounded and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_are_reported_by_gateways_only_and_quarantine_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path(), vec![]).await;
    let admin = plane.admin().unwrap().to_owned();
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/agents",
            Some(&admin),
            Some(register_body()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut tokens = Vec::new();
    for (name, role) in [("dash", "viewer"), ("gw", "gateway")] {
        let (status, created) = plane
            .call(
                Method::POST,
                "/v1/admins",
                Some(&admin),
                Some(json!({"name": name, "role": role})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        tokens.push(created["token"].as_str().unwrap().to_owned());
    }
    let (viewer, gateway) = (tokens[0].clone(), tokens[1].clone());
    let agent = "spiffe://acme.test/tenant/shop/agent/planner/i-1";
    let report = |summary: &str, quarantine: bool| {
        json!({"agent": agent, "detector": "scan.ports", "summary": summary,
               "evidence": ["d1", "d2"], "quarantine": quarantine})
    };
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&viewer),
            Some(report("x", true)),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&gateway),
            Some(report(&"x".repeat(600), true)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&gateway),
            Some(report("alert only", false)),
        )
        .await;
    assert_eq!(
        (status, body["quarantined"].clone()),
        (StatusCode::CREATED, json!(false))
    );
    assert!(plane.control.oversight().unwrap().quarantined.is_empty());
    let (status, body) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&gateway),
            Some(report("15 ports", true)),
        )
        .await;
    assert_eq!(
        (status, body["quarantined"].clone()),
        (StatusCode::CREATED, json!(true))
    );
    let held = plane.control.oversight().unwrap().quarantined;
    assert_eq!(held.len(), 1);
    assert!(held[0].reason.contains("15 ports"), "{}", held[0].reason);
    // Reported again while held: still held, not an error.
    let (status, body) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&gateway),
            Some(report("again", true)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A time-limited hold lifts by itself, recorded as released by `expiry`.
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/quarantine/release",
            Some(&admin),
            Some(json!({"agent": agent, "reason": "next case"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut timed = report("scan", true);
    timed["forSecs"] = json!(1);
    let (status, body) = plane
        .call(Method::POST, "/v1/detections", Some(&gateway), Some(timed))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(plane.control.oversight().unwrap().quarantined.len(), 1);
    let started = std::time::Instant::now();
    while !plane.control.oversight().unwrap().quarantined.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the hold never lifted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut too_long = report("scan", true);
    too_long["forSecs"] = json!(100 * 86_400);
    let (status, _) = plane
        .call(
            Method::POST,
            "/v1/detections",
            Some(&gateway),
            Some(too_long),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    plane.stop().await;
}
