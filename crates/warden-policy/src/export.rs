//! A second layer for Kubernetes: the egress and HTTP rules of a bundle's AgentPolicies as the
//! platform's own network policies — Kubernetes `NetworkPolicy` or `CiliumNetworkPolicy`. They
//! are a coarse backstop under Warden (which still decides every call): never narrower than
//! what Warden allows, so they break nothing Warden lets through, and as narrow as each format
//! can say. What a format cannot say is listed in [`Exported::not_expressed`].
//!
//! The agents' pods are selected by the AgentPolicy's selector as pod labels: agents' pods carry
//! the labels their Warden registration has.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde_json::{Value, json};
use warden_model::{Host, Protocol};

use crate::bundle::{Bundle, LoadLimits, read_dir};
use crate::diagnostic::{Diagnostic, LoadError};
use crate::document::{AgentPolicyDoc, EgressRule, HttpRule, LabelOperator, PortSpec, Selector};
use crate::pattern::{PortRange, SegmentPattern, path_char};

/// Which resource to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkFormat {
    /// `networking.k8s.io/v1` NetworkPolicy: addresses and ports only.
    NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy: names (toFQDNs) and HTTP methods and paths too.
    Cilium,
}

/// What the export needs beyond the bundle.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The URL of each HTTP service the `http` rules name (the gateway's upstreams).
    pub services: BTreeMap<String, String>,
    /// The labels of the Warden gateway's pods, which agents must always reach.
    pub gateway_labels: BTreeMap<String, String>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            gateway_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "warden-gateway".to_owned(),
            )]),
        }
    }
}

/// The resources, and what of the bundle they could not express.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    pub resources: Vec<Value>,
    pub not_expressed: Vec<String>,
}

/// Addresses a name rule may resolve to outside the cluster, for formats without names: the
/// whole internet but the private, loopback, link-local (metadata) and other special ranges.
const PUBLIC_V4_EXCEPT: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "0.0.0.0/8",
];
const PUBLIC_V6_EXCEPT: [&str; 4] = ["fc00::/7", "fe80::/10", "::1/128", "::ffff:0:0/96"];

/// Loads the bundle in `dir` (it must load, as the gateway would) and writes its network rules.
pub fn network_policies(
    dir: &Path,
    format: NetworkFormat,
    options: &ExportOptions,
) -> Result<Exported, LoadError> {
    Bundle::load_dir(dir, LoadLimits::default())?;
    let mut exported = Exported::default();
    for file in read_dir(dir, LoadLimits::default())? {
        if file.path.ends_with(".cedar") {
            exported.not_expressed.push(format!(
                "{}: raw Cedar policies are not exported; write them as AgentPolicy rules",
                file.path
            ));
            continue;
        }
        for document in serde_yaml::Deserializer::from_str(&file.text) {
            let value = serde::Deserialize::deserialize(document).map_err(|e| LoadError {
                diagnostics: vec![Diagnostic::error(
                    &file.path,
                    format!("not valid YAML: {e}"),
                )],
            })?;
            let value: serde_yaml::Value = value;
            if value.get("kind").and_then(|k| k.as_str()) != Some("AgentPolicy") {
                continue;
            }
            let policy: AgentPolicyDoc = serde_yaml::from_value(value).map_err(|e| LoadError {
                diagnostics: vec![Diagnostic::error(&file.path, e.to_string())],
            })?;
            if let Some(resource) = export_policy(&policy, format, options, &mut exported) {
                exported.resources.push(resource);
            }
        }
    }
    Ok(exported)
}

fn export_policy(
    policy: &AgentPolicyDoc,
    format: NetworkFormat,
    options: &ExportOptions,
    exported: &mut Exported,
) -> Option<Value> {
    let name = &policy.metadata.name;
    let namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
    let mut note = |what: String| {
        exported
            .not_expressed
            .push(format!("{namespace}/{name}: {what}"))
    };
    let spec = &policy.spec;
    let Some(selector) = pod_selector(&spec.selector) else {
        note("selects agents by SPIFFE ID only, which pods do not carry: not exported".into());
        return None;
    };
    if !spec.selector.spiffe_ids.is_empty() {
        note("its spiffeIds selector is left out: the labels alone select pods".into());
    }
    let mut egress = vec![to_gateway(format, options), to_dns(format, spec)];
    for (i, rule) in spec.egress.iter().enumerate() {
        if rule.when.is_some() {
            note(format!(
                "egress[{i}] is exported without its `when` condition (Warden still checks it)"
            ));
        }
        egress.extend(egress_rule(rule, format, &mut note, i));
    }
    for (i, rule) in spec.http.iter().enumerate() {
        egress.extend(http_rule(rule, format, options, &mut note, i));
    }
    for target in &spec.deny {
        if target.egress.is_some() {
            note(match format {
                NetworkFormat::NetworkPolicy => {
                    "a deny rule: NetworkPolicy only allows; Warden enforces the denial".into()
                }
                NetworkFormat::Cilium => {
                    "a deny rule: egressDeny cannot name hosts; Warden enforces the denial".into()
                }
            });
        }
    }
    let resource_name = format!("warden-{name}");
    Some(match format {
        NetworkFormat::NetworkPolicy => json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": resource_name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "warden"}},
            "spec": {"podSelector": selector, "policyTypes": ["Egress"], "egress": egress},
        }),
        NetworkFormat::Cilium => json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": resource_name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "warden"}},
            "spec": {"endpointSelector": selector, "egress": egress},
        }),
    })
}

/// The selector as a Kubernetes label selector; `None` when only SPIFFE IDs select.
fn pod_selector(selector: &Selector) -> Option<Value> {
    if selector.all_agents {
        return Some(json!({}));
    }
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        return None;
    }
    let mut out = serde_json::Map::new();
    if !selector.match_labels.is_empty() {
        out.insert("matchLabels".into(), json!(selector.match_labels));
    }
    if !selector.match_expressions.is_empty() {
        let expressions: Vec<Value> = selector
            .match_expressions
            .iter()
            .map(|e| {
                let operator = match e.operator {
                    LabelOperator::In => "In",
                    LabelOperator::NotIn => "NotIn",
                    LabelOperator::Exists => "Exists",
                    LabelOperator::DoesNotExist => "DoesNotExist",
                };
                let mut expression = json!({"key": e.key, "operator": operator});
                if !e.values.is_empty() {
                    expression["values"] = json!(e.values);
                }
                expression
            })
            .collect();
        out.insert("matchExpressions".into(), Value::Array(expressions));
    }
    Some(Value::Object(out))
}

/// Agents always reach the gateway, in whatever namespace it runs.
fn to_gateway(format: NetworkFormat, options: &ExportOptions) -> Value {
    match format {
        NetworkFormat::NetworkPolicy => json!({
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": options.gateway_labels}}],
        }),
        NetworkFormat::Cilium => {
            let mut labels = serde_json::Map::new();
            for (k, v) in &options.gateway_labels {
                labels.insert(k.clone(), json!(v));
            }
            // Cilium's endpoint selectors match every namespace unless one is named.
            json!({"toEndpoints": [{"matchLabels": labels}]})
        }
    }
}

/// Name lookups through the cluster's DNS; with Cilium, only of the names the rules name.
fn to_dns(format: NetworkFormat, spec: &crate::document::AgentPolicySpec) -> Value {
    match format {
        NetworkFormat::NetworkPolicy => json!({
            "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }),
        NetworkFormat::Cilium => {
            let mut names: Vec<Value> = spec
                .egress
                .iter()
                .flat_map(|r| r.hosts.iter())
                .map(|h| fqdn_selector(h))
                .collect();
            names.dedup();
            let mut to_ports = json!({"ports": [{"port": "53", "protocol": "ANY"}]});
            // Lookups only of the names the rules name, as Warden's own responder answers; the
            // DNS proxy this engages is also what lets toFQDNs learn the addresses.
            if !names.is_empty() {
                to_ports["rules"] = json!({"dns": names});
            }
            json!({
                "toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                 "k8s:k8s-app": "kube-dns"}}],
                "toPorts": [to_ports],
            })
        }
    }
}

/// `matchName` for a name, `matchPattern` for a wildcard (`*.` one label; `**.` any number,
/// which needs a Cilium release with multi-level wildcards).
fn fqdn_selector(host: &str) -> Value {
    if host.contains('*') {
        json!({"matchPattern": host})
    } else {
        json!({"matchName": host})
    }
}

/// The ports of a rule in the format's shape; `None` for every port.
fn ports(
    rule_ports: &[PortSpec],
    protocol: Option<Protocol>,
    format: NetworkFormat,
) -> Option<Value> {
    let protocols: Vec<&str> = match protocol {
        Some(Protocol::Tcp) => vec!["TCP"],
        Some(Protocol::Udp) => vec!["UDP"],
        None => vec!["TCP", "UDP"],
    };
    if rule_ports.is_empty() && protocol.is_none() {
        return None;
    }
    let ranges: Vec<Option<PortRange>> = if rule_ports.is_empty() {
        vec![None]
    } else {
        rule_ports
            .iter()
            .filter_map(|p| match p {
                PortSpec::Single(port) => Some(Some(PortRange {
                    low: *port,
                    high: *port,
                })),
                PortSpec::Range(text) => PortRange::parse_range(text).ok().map(Some),
            })
            .collect()
    };
    let mut entries = Vec::new();
    for range in &ranges {
        for protocol in &protocols {
            let mut entry = serde_json::Map::new();
            entry.insert("protocol".into(), json!(protocol));
            if let Some(range) = range {
                match format {
                    NetworkFormat::NetworkPolicy => {
                        entry.insert("port".into(), json!(range.low));
                    }
                    NetworkFormat::Cilium => {
                        entry.insert("port".into(), json!(range.low.to_string()));
                    }
                }
                if range.high != range.low {
                    entry.insert("endPort".into(), json!(range.high));
                }
            }
            entries.push(Value::Object(entry));
        }
    }
    Some(Value::Array(entries))
}

fn egress_rule(
    rule: &EgressRule,
    format: NetworkFormat,
    note: &mut impl FnMut(String),
    index: usize,
) -> Vec<Value> {
    let ports = ports(&rule.ports, rule.protocol, format);
    // A bundle that loads names addresses only under `cidrs`, and hosts only by name.
    let (cidrs, names) = (&rule.cidrs, &rule.hosts);
    let mut out = Vec::new();
    let with_ports = |mut rule: Value, ports: &Option<Value>| {
        if let Some(ports) = ports {
            match format {
                NetworkFormat::NetworkPolicy => rule["ports"] = ports.clone(),
                NetworkFormat::Cilium => rule["toPorts"] = json!([{"ports": ports}]),
            }
        }
        rule
    };
    if !cidrs.is_empty() {
        let rule = match format {
            NetworkFormat::NetworkPolicy => {
                let to: Vec<Value> = cidrs
                    .iter()
                    .map(|c| json!({"ipBlock": {"cidr": c}}))
                    .collect();
                json!({"to": to})
            }
            NetworkFormat::Cilium => json!({"toCIDR": cidrs}),
        };
        out.push(with_ports(rule, &ports));
    }
    if !names.is_empty() {
        let rule = match format {
            NetworkFormat::NetworkPolicy => {
                note(format!(
                    "egress[{index}] names hosts ({}), which NetworkPolicy cannot: exported as any public address on its ports",
                    names
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                json!({"to": [
                    {"ipBlock": {"cidr": "0.0.0.0/0", "except": PUBLIC_V4_EXCEPT}},
                    {"ipBlock": {"cidr": "::/0", "except": PUBLIC_V6_EXCEPT}},
                ]})
            }
            NetworkFormat::Cilium => {
                let fqdns: Vec<Value> = names.iter().map(|h| fqdn_selector(h)).collect();
                json!({"toFQDNs": fqdns})
            }
        };
        out.push(with_ports(rule, &ports));
    }
    out
}

fn http_rule(
    rule: &HttpRule,
    format: NetworkFormat,
    options: &ExportOptions,
    note: &mut impl FnMut(String),
    index: usize,
) -> Vec<Value> {
    let Some(url) = options.services.get(&rule.service) else {
        note(format!(
            "http[{index}] names service {}, whose address was not given (--service {}=URL): not exported",
            rule.service, rule.service
        ));
        return Vec::new();
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        note(format!(
            "http[{index}]: the service URL {url} does not parse"
        ));
        return Vec::new();
    };
    let Some(host) = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    else {
        note(format!("http[{index}]: the service URL {url} has no host"));
        return Vec::new();
    };
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let destination = match (format, host.parse::<IpAddr>()) {
        (NetworkFormat::NetworkPolicy, Ok(ip)) => {
            json!({"to": [{"ipBlock": {"cidr": format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })}}]})
        }
        (NetworkFormat::NetworkPolicy, Err(_)) => {
            note(format!(
                "http[{index}]: service {} is reached by name, which NetworkPolicy cannot say: exported as any public address on port {port}",
                rule.service
            ));
            json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PUBLIC_V4_EXCEPT}}]})
        }
        (NetworkFormat::Cilium, Ok(ip)) => {
            json!({"toCIDR": [format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })]})
        }
        (NetworkFormat::Cilium, Err(_)) => match Host::new(host) {
            Ok(_) => json!({"toFQDNs": [{"matchName": host}]}),
            Err(_) => {
                note(format!("http[{index}]: {host} is not a host name"));
                return Vec::new();
            }
        },
    };
    let mut out = destination;
    match format {
        NetworkFormat::NetworkPolicy => {
            out["ports"] = json!([{"protocol": "TCP", "port": port}]);
            if !rule.methods.is_empty() || !rule.paths.is_empty() {
                note(format!(
                    "http[{index}]: methods and paths are left to Warden (NetworkPolicy sees only ports)"
                ));
            }
        }
        NetworkFormat::Cilium => {
            let mut to_ports = json!({"ports": [{"port": port.to_string(), "protocol": "TCP"}]});
            if https {
                note(format!(
                    "http[{index}]: service {} speaks TLS, so Cilium cannot read its methods and paths: ports only",
                    rule.service
                ));
            } else {
                let methods: Vec<Option<&str>> =
                    if rule.methods.iter().any(|m| m == "*") || rule.methods.is_empty() {
                        vec![None]
                    } else {
                        rule.methods.iter().map(|m| Some(m.as_str())).collect()
                    };
                let paths: Vec<Option<String>> = if rule.paths.is_empty() {
                    vec![None]
                } else {
                    rule.paths
                        .iter()
                        .filter_map(|p| p.strip_prefix('/'))
                        .filter_map(|p| SegmentPattern::parse(p, path_char).ok())
                        .map(|p| Some(p.to_regex()))
                        .collect()
                };
                let mut rules = Vec::new();
                for method in &methods {
                    for path in &paths {
                        let mut entry = serde_json::Map::new();
                        if let Some(method) = method {
                            entry.insert("method".into(), json!(method));
                        }
                        if let Some(path) = path {
                            entry.insert("path".into(), json!(path));
                        }
                        rules.push(Value::Object(entry));
                    }
                }
                to_ports["rules"] = json!({"http": rules});
            }
            if rule.when.is_some() {
                note(format!(
                    "http[{index}] is exported without its `when` condition (Warden still checks it)"
                ));
            }
            out["toPorts"] = json!([to_ports]);
        }
    }
    vec![out]
}
