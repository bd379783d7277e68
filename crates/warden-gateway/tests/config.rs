#![allow(clippy::unwrap_used)] // Tests fail loudly by design.
//! The gateway section of the documented configuration parses, and its defaults are the
//! documented ones.

use warden_gateway::{GatewayConfig, UpstreamKind};

#[test]
fn the_documented_gateway_configuration_parses() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let block = doc
        .split("```yaml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(block).unwrap();
    let config: GatewayConfig = serde_yaml::from_value(file["gateway"].clone()).unwrap();
    assert_eq!(config.upstreams.len(), 3);
    assert_eq!(config.upstreams[0].kind, UpstreamKind::Mcp);
    assert_eq!(config.upstreams[1].kind, UpstreamKind::Http);
    assert_eq!(config.upstreams[2].kind, UpstreamKind::A2a);
    let defaults = GatewayConfig::default();
    assert_eq!(config.limits.max_body_bytes, defaults.limits.max_body_bytes);
    assert_eq!(config.limits.max_sessions, defaults.limits.max_sessions);
    assert_eq!(config.limits.max_tasks, defaults.limits.max_tasks);
    assert_eq!(config.audit.export.len(), 4);
    assert_eq!(config.audit.export[1].name(), "splunk");
    assert_eq!(config.listen, defaults.listen);
}

#[test]
fn an_a2a_card_defaults_to_the_well_known_path_at_the_origin() {
    let upstream: warden_gateway::UpstreamConfig = serde_yaml::from_str(
        "{name: researcher, kind: a2a, url: 'http://10.0.0.7:9200/agents/rpc'}",
    )
    .unwrap();
    assert_eq!(
        upstream.card_url(),
        "http://10.0.0.7:9200/.well-known/agent-card.json"
    );
}
