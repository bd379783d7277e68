//! Synthetic bundles in a realistic shape — many agents, each with a few tools, routes and hosts,
//! and a deny rule — for benchmarks.

use warden_model::DecisionRequest;

use crate::bundle::SourceFile;

/// Compiled Cedar policies each synthetic agent contributes: tools/call, tools/list, http,
/// egress and one deny rule.
pub const POLICIES_PER_AGENT: usize = 5;

/// A generated bundle and requests against it (three in four are allowed).
pub struct Synthetic {
    pub sources: Vec<SourceFile>,
    pub requests: Vec<DecisionRequest>,
}

/// Deterministic xorshift, so every run benchmarks the same bundle.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// A bundle of about `policies` compiled policies and `requests` requests.
pub fn synthetic(policies: usize, requests: usize, seed: u64) -> Synthetic {
    let agents = (policies / POLICIES_PER_AGENT).max(1);
    let servers = (agents / 4).max(1);
    let tenants = (agents / 100).max(1);
    let mut rng = Rng(seed | 1);
    let mut docs = Vec::with_capacity(agents);
    let mut grants = Vec::with_capacity(agents);
    for i in 0..agents {
        let server = rng.below(servers);
        let (a, b) = (rng.below(20), 20 + rng.below(20));
        let service = rng.below(servers);
        let host = rng.below(agents);
        docs.push(format!(
            "apiVersion: warden.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: agent-{i}, namespace: tenant-{t}}}\nspec:\n  \
             selector: {{matchLabels: {{app: agent-{i}}}}}\n  \
             mcp: [{{server: srv-{server}, tools: [tool-{a}, tool-{b}]}}]\n  \
             http: [{{service: svc-{service}, methods: [GET, POST], paths: [\"/v1/items/*\", \"/v1/orders/**\"]}}]\n  \
             egress: [{{hosts: [api-{host}.example.com, \"*.cdn-{host}.example.net\"], ports: [443]}}]\n  \
             deny: [{{mcp: {{server: srv-{server}, tools: [tool-{b}], when: 'context.findings.injection_score > 80'}}}}]\n",
            t = i % tenants
        ));
        grants.push((i % tenants, server, a, b, service, host));
    }
    let mut out = Vec::with_capacity(requests);
    for n in 0..requests {
        let i = rng.below(agents);
        let (t, server, a, b, service, host) = grants[i];
        let agent = format!(
            r#"{{"spiffeId":"spiffe://bench.example/tenant/tenant-{t}/agent/agent-{i}/i-{n}","labels":{{"app":"agent-{i}","team":"t{}"}}}}"#,
            i % 7
        );
        let action = match n % 8 {
            0 => format!(
                r#"{{"kind":"mcp.tools/call","server":"srv-{server}","tool":"tool-{a}","args":{{"q":"x"}}}}"#
            ),
            1 => {
                format!(r#"{{"kind":"mcp.tools/call","server":"srv-{server}","tool":"tool-{b}"}}"#)
            }
            2 => format!(
                r#"{{"kind":"http","service":"svc-{service}","method":"GET","path":"/v1/items/{n}"}}"#
            ),
            3 => {
                format!(r#"{{"kind":"egress.connect","host":"api-{host}.example.com","port":443}}"#)
            }
            4 => format!(
                r#"{{"kind":"egress.connect","host":"img.cdn-{host}.example.net","port":443}}"#
            ),
            5 => format!(r#"{{"kind":"mcp.tools/list","server":"srv-{server}"}}"#),
            6 => format!(r#"{{"kind":"mcp.tools/call","server":"srv-{server}","tool":"tool-99"}}"#),
            _ => r#"{"kind":"egress.connect","host":"evil.example.org","port":443}"#.to_owned(),
        };
        let request = format!(r#"{{"agent":{agent},"action":{action}}}"#);
        if let Ok(r) = serde_json::from_str(&request) {
            out.push(r);
        }
    }
    // Split into files of at most 2,000 documents, as a real repository would be.
    let sources = docs
        .chunks(2000)
        .enumerate()
        .map(|(n, chunk)| SourceFile {
            path: format!("agents-{n:03}.yaml"),
            text: chunk.join("---\n"),
        })
        .collect();
    Synthetic {
        sources,
        requests: out,
    }
}
