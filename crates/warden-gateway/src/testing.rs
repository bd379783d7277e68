//! What the gateway's unit tests share: a pipeline over a real policy bundle and the real
//! scanners, and a caller to decide for (no network, no control plane).

use std::sync::Arc;

use warden_model::{AgentIdentity, Labels, SpiffeId};

use crate::identify::{Authority, Caller};
use crate::metrics::Metrics;
use crate::pipeline::{LogRecorder, Pipeline};

/// The agent allowed every tool of MCP server `tools` but for what inspection objects to, and
/// `secret_*` tools not at all.
pub const POLICY: &str = r#"apiVersion: warden.dev/v1alpha1
kind: AgentPolicy
metadata: {name: unit, namespace: t}
spec:
  selector: {matchLabels: {app: unit}}
  mcp:
    - {server: tools, tools: [echo, get_issue, delete_records], prompts: [greet], resources: ["file:///docs/*"]}
  deny:
    - mcp: {server: tools, tools: ["*"], when: 'context.findings.secret_count > 0'}
    - mcp: {server: tools, tools: ["*"], when: 'context.findings.injection_score > 70'}
"#;

pub struct Fixture {
    pub pipeline: Pipeline,
    pub caller: Caller,
    _policies: tempfile::TempDir,
}

pub fn fixture() -> Fixture {
    let policies = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(policies.path().join("unit.yaml"), POLICY).expect("the policy is written");
    let policy = crate::load_policies(policies.path()).expect("the unit policy loads");
    let inspector = Arc::new(crate::inspect::ContentInspector::new(
        warden_inspect::Scanner::default(),
        Vec::new(),
        Vec::new(),
    ));
    let pipeline = Pipeline::new(
        policy,
        inspector,
        Arc::new(LogRecorder),
        Arc::new(Metrics::default()),
        "unit".into(),
    );
    let mut labels = Labels::new();
    labels.insert(
        warden_model::LabelKey::new("app").expect("a label key"),
        warden_model::LabelValue::new("unit").expect("a label value"),
    );
    let identity = AgentIdentity::new(
        SpiffeId::new("spiffe://td/tenant/t/agent/a/i-1").expect("a SPIFFE ID"),
        labels,
        None,
    )
    .expect("an agent identity");
    // A compensating call's authority: bounded by policy alone, which is what these tests decide.
    let caller = Caller {
        identity,
        authority: Authority::Undo {
            by: "unit".into(),
            of: "d".into(),
        },
        source: None,
        process: None,
        answer_after: crate::gate::AnswerGate::default(),
    };
    Fixture {
        pipeline,
        caller,
        _policies: policies,
    }
}

/// A gateway's state over the fixture's pipeline (no upstreams, no control plane), trusting the
/// grants `issuer` mints, and an agent to mint them for.
pub struct Gateway {
    pub state: Arc<crate::plumbing::State>,
    pub issuer: warden_authority::GrantIssuer,
    pub agent: SpiffeId,
    _policies: tempfile::TempDir,
}

impl Gateway {
    /// A grant for `agent`, held by its SVID, to any MCP server.
    pub fn grant(&self) -> String {
        let request = warden_authority::GrantRequest {
            agent: self.agent.clone(),
            labels: Labels::new(),
            task: warden_model::Name::new("task-1").expect("a task id"),
            purpose: "unit".into(),
            rights: vec![warden_authority::Right::new("mcp.*", "*").expect("a right")],
            ttl: None,
            holder: warden_authority::Holder::Spiffe(self.agent.clone()),
        };
        self.issuer
            .mint(request, time::OffsetDateTime::now_utc())
            .expect("a grant")
            .token
    }
}

pub fn gateway(max_body_bytes: usize) -> Gateway {
    let Fixture {
        pipeline,
        _policies,
        ..
    } = fixture();
    let issuer = warden_authority::GrantIssuer::new(warden_authority::GrantKey::generate(1), 3);
    let roots = warden_authority::GrantRoots::new([(1, issuer.key().public())]);
    let grants = Arc::new(warden_authority::GrantVerifier::new(roots, 3));
    let mut config = crate::config::GatewayConfig::default();
    config.limits.max_body_bytes = max_body_bytes;
    let public_url = "https://gateway.test".to_owned();
    let state = crate::plumbing::State {
        metrics_token: None,
        identifier: crate::identify::Identifier::new(grants, public_url.clone()),
        pipeline,
        upstreams: Vec::new(),
        sessions: crate::owners::Owners::new(config.limits.max_sessions),
        legacy_sessions: crate::legacy::LegacySessions::default(),
        tasks: Arc::new(crate::owners::Owners::new(config.limits.max_tasks)),
        public_url,
        client: warden_http::HttpClient::new(std::time::Duration::from_secs(5))
            .expect("an HTTP client"),
        metrics: Arc::new(Metrics::default()),
        permits: tokio::sync::Semaphore::new(config.limits.max_concurrent_requests),
        config,
    };
    Gateway {
        state: Arc::new(state),
        issuer,
        agent: SpiffeId::new("spiffe://td/tenant/t/agent/a/i-1").expect("a SPIFFE ID"),
        _policies,
    }
}
