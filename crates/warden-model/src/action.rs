use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ModelError, excerpt};
use crate::name::Name;

/// What kind of thing an agent asks for. The string forms are what policies and audit records use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ActionKind {
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "egress.connect")]
    EgressConnect,
    #[serde(rename = "mcp.tools/call")]
    McpToolsCall,
    #[serde(rename = "mcp.tools/list")]
    McpToolsList,
    #[serde(rename = "mcp.resources/read")]
    McpResourcesRead,
    #[serde(rename = "mcp.prompts/get")]
    McpPromptsGet,
    #[serde(rename = "a2a.message/send")]
    A2aMessageSend,
    #[serde(rename = "a2a.message/stream")]
    A2aMessageStream,
    #[serde(rename = "a2a.tasks/get")]
    A2aTasksGet,
    #[serde(rename = "a2a.tasks/cancel")]
    A2aTasksCancel,
    #[serde(rename = "a2a.tasks/resubscribe")]
    A2aTasksResubscribe,
    #[serde(rename = "a2a.tasks/list")]
    A2aTasksList,
    #[serde(rename = "a2a.tasks/pushNotificationConfig")]
    A2aTasksPushNotificationConfig,
    #[serde(rename = "a2a.agent/card")]
    A2aAgentCard,
    #[serde(rename = "mcp.client/message")]
    McpClientMessage,
}

impl ActionKind {
    pub const ALL: [ActionKind; 15] = [
        Self::Http,
        Self::EgressConnect,
        Self::McpToolsCall,
        Self::McpToolsList,
        Self::McpResourcesRead,
        Self::McpPromptsGet,
        Self::A2aMessageSend,
        Self::A2aMessageStream,
        Self::A2aTasksGet,
        Self::A2aTasksCancel,
        Self::A2aTasksResubscribe,
        Self::A2aTasksList,
        Self::A2aTasksPushNotificationConfig,
        Self::A2aAgentCard,
        Self::McpClientMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::EgressConnect => "egress.connect",
            Self::McpToolsCall => "mcp.tools/call",
            Self::McpToolsList => "mcp.tools/list",
            Self::McpResourcesRead => "mcp.resources/read",
            Self::McpPromptsGet => "mcp.prompts/get",
            Self::A2aMessageSend => "a2a.message/send",
            Self::A2aMessageStream => "a2a.message/stream",
            Self::A2aTasksGet => "a2a.tasks/get",
            Self::A2aTasksCancel => "a2a.tasks/cancel",
            Self::A2aTasksResubscribe => "a2a.tasks/resubscribe",
            Self::A2aTasksList => "a2a.tasks/list",
            Self::A2aTasksPushNotificationConfig => "a2a.tasks/pushNotificationConfig",
            Self::A2aAgentCard => "a2a.agent/card",
            Self::McpClientMessage => "mcp.client/message",
        }
    }
}

impl FromStr for ActionKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                ModelError::Action(format!(
                    "unknown action kind `{}`; known kinds: {}",
                    excerpt(s),
                    Self::ALL.map(Self::as_str).join(", ")
                ))
            })
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A2A JSON-RPC methods Warden distinguishes, by their A2A 0.3 names (A2A 1.0's names map onto
/// them: `SendMessage` is `message/send`, the four push notification config methods are one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum A2aMethod {
    #[serde(rename = "message/send")]
    MessageSend,
    #[serde(rename = "message/stream")]
    MessageStream,
    #[serde(rename = "tasks/get")]
    TasksGet,
    #[serde(rename = "tasks/cancel")]
    TasksCancel,
    #[serde(rename = "tasks/resubscribe")]
    TasksResubscribe,
    #[serde(rename = "tasks/list")]
    TasksList,
    /// Setting, reading, listing or deleting where the peer pushes task updates.
    #[serde(rename = "tasks/pushNotificationConfig")]
    TasksPushNotificationConfig,
    /// The agent card, public or extended.
    #[serde(rename = "agent/card")]
    AgentCard,
}

impl A2aMethod {
    pub const ALL: [A2aMethod; 8] = [
        Self::MessageSend,
        Self::MessageStream,
        Self::TasksGet,
        Self::TasksCancel,
        Self::TasksResubscribe,
        Self::TasksList,
        Self::TasksPushNotificationConfig,
        Self::AgentCard,
    ];

    pub fn kind(self) -> ActionKind {
        match self {
            Self::MessageSend => ActionKind::A2aMessageSend,
            Self::MessageStream => ActionKind::A2aMessageStream,
            Self::TasksGet => ActionKind::A2aTasksGet,
            Self::TasksCancel => ActionKind::A2aTasksCancel,
            Self::TasksResubscribe => ActionKind::A2aTasksResubscribe,
            Self::TasksList => ActionKind::A2aTasksList,
            Self::TasksPushNotificationConfig => ActionKind::A2aTasksPushNotificationConfig,
            Self::AgentCard => ActionKind::A2aAgentCard,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.kind()
            .as_str()
            .strip_prefix("a2a.")
            .unwrap_or_default()
    }
}

impl FromStr for A2aMethod {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                ModelError::Action(format!(
                    "unknown A2A method `{}`; known methods: {}",
                    excerpt(s),
                    Self::ALL.map(Self::as_str).join(", ")
                ))
            })
    }
}

/// Transport of an egress connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// A destination host in canonical form: a lowercase DNS name without a trailing dot (ASCII;
/// internationalised names in their `xn--` form), or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Host {
    Dns(String),
    Ip(IpAddr),
}

impl Host {
    pub fn new(value: &str) -> Result<Self, ModelError> {
        let fail = |reason: &str| ModelError::Host {
            value: excerpt(value),
            reason: reason.to_owned(),
        };
        let bracketless = value
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(value);
        if let Ok(ip) = bracketless.parse::<IpAddr>() {
            // `::ffff:10.0.0.1` is 10.0.0.1: canonical, so IPv4 rules apply to it too.
            return Ok(Self::Ip(ip.to_canonical()));
        }
        let name = value
            .strip_suffix('.')
            .unwrap_or(value)
            .to_ascii_lowercase();
        if name.is_empty() {
            return Err(fail("must not be empty"));
        }
        if name.len() > 253 {
            return Err(fail("a DNS name is at most 253 characters"));
        }
        if !name.is_ascii() {
            return Err(fail(
                "use the ASCII (xn--) form of an internationalised name",
            ));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(fail("each DNS label must have 1–63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(fail("a DNS label must not start or end with `-`"));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(fail(
                    "DNS labels may contain only letters, digits, `-` and `_`",
                ));
            }
        }
        // A name made only of digits and dots would be read as an address by some resolvers.
        if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(fail("looks like a malformed IPv4 address"));
        }
        Ok(Self::Dns(name))
    }

    /// Number of DNS labels (`api.github.com` has 3); 0 for an IP address.
    pub fn label_count(&self) -> usize {
        match self {
            Self::Dns(name) => name.split('.').count(),
            Self::Ip(_) => 0,
        }
    }
}

impl TryFrom<String> for Host {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}
impl From<Host> for String {
    fn from(h: Host) -> Self {
        h.to_string()
    }
}
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An HTTP method token, uppercase (`GET`, `POST`, …).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpMethod(String);

impl HttpMethod {
    pub fn new(value: &str) -> Result<Self, ModelError> {
        if value.is_empty() || value.len() > 32 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ModelError::Method {
                value: excerpt(value),
                reason: "expected an uppercase method name such as GET or POST".into(),
            });
        }
        Ok(Self(value.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for HttpMethod {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}
impl From<HttpMethod> for String {
    fn from(m: HttpMethod) -> Self {
        m.0
    }
}

/// A canonical HTTP path: percent-decoded, no empty, `.` or `..` segments, no query.
///
/// Canonicalisation happens once, here, so that every policy sees the path the upstream will
/// route on. A path that cannot be canonicalised safely — an encoded `/`, `\` or NUL inside a
/// segment, `..` above the root, invalid UTF-8 — is refused rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpPath {
    path: String,
    depth: usize,
}

impl HttpPath {
    pub const MAX_LEN: usize = 8192;

    pub fn new(raw: &str) -> Result<Self, ModelError> {
        let fail = |reason: &str| ModelError::Path {
            value: excerpt(raw),
            reason: reason.to_owned(),
        };
        if raw.len() > Self::MAX_LEN {
            return Err(fail("longer than 8192 bytes"));
        }
        let without_query = raw.split(['?', '#']).next().unwrap_or_default();
        if !without_query.starts_with('/') {
            return Err(fail("must start with `/`"));
        }
        let mut segments: Vec<String> = Vec::new();
        for raw_segment in without_query.split('/') {
            let segment = percent_decode(raw_segment)
                .ok_or_else(|| fail("has an invalid percent-encoding or is not UTF-8"))?;
            if segment.contains(['/', '\\', '\0', '%', '?', '#']) {
                // A decoded `%` would be decoded again by an upstream that decodes twice, and a
                // decoded `?` or `#` ends the path for one that forwards decoded paths: the path
                // decided would not be the path served.
                return Err(fail(
                    "a segment decodes to `/`, `\\`, NUL, `%`, `?` or `#` (encoded twice, or an encoded separator)",
                ));
            }
            if segment.chars().any(char::is_control) {
                return Err(fail("contains control characters"));
            }
            match segment.as_str() {
                "" | "." => {}
                ".." => {
                    if segments.pop().is_none() {
                        return Err(fail("`..` climbs above the root"));
                    }
                }
                _ => segments.push(segment),
            }
        }
        let depth = segments.len();
        Ok(Self {
            path: format!("/{}", segments.join("/")),
            depth,
        })
    }

    /// The canonical path, decoded: what policy sees.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The canonical path percent-encoded again, segment by segment: what is sent upstream, so
    /// an upstream reads exactly the segments that were decided (`/a b` goes out as `/a%20b`).
    pub fn encoded(&self) -> String {
        let mut out = String::with_capacity(self.path.len() + 8);
        for byte in self.path.bytes() {
            if byte == b'/' || byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte)
            {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    /// Number of segments: `/` has 0, `/v1/items` has 2.
    pub fn depth(&self) -> usize {
        self.depth
    }
}

/// An MCP resource URI as policy decides it: the path's segments percent-decoded, the scheme,
/// authority and query as written. Refused — rather than guessed at — when its path holds a dot
/// segment (also encoded), a segment decoding to `/`, `\\`, `%`, `?`, `#` or NUL, a backslash
/// or control characters: a server resolving the URI would read another resource than the one
/// decided. So `file:///docs/../secrets/key` is refused, never read as inside `/docs`.
pub fn canonical_resource_uri(uri: &str) -> Result<String, ModelError> {
    let fail =
        |reason: &str| ModelError::Action(format!("resource URI `{}` {reason}", excerpt(uri)));
    if uri.is_empty() || uri.len() > Action::MAX_URI_LEN {
        return Err(fail("must have 1–8192 characters"));
    }
    if uri.chars().any(|c| c.is_control() || c == '\\') {
        return Err(fail("contains control characters or `\\`"));
    }
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let (head, tail) = uri.split_at(end);
    // Only hierarchical URIs (`scheme://authority/path`) have segments to resolve.
    let Some(authority_at) = head.find("://").map(|i| i + 3) else {
        return Ok(uri.to_owned());
    };
    let path_at = head[authority_at..]
        .find('/')
        .map_or(head.len(), |i| authority_at + i);
    let (origin, path) = head.split_at(path_at);
    let mut out = String::with_capacity(uri.len());
    out.push_str(origin);
    for (i, raw) in path.split('/').enumerate() {
        let segment = percent_decode(raw).ok_or_else(|| fail("has an invalid percent-encoding"))?;
        if matches!(segment.as_str(), "." | "..") {
            return Err(fail("has a `.` or `..` segment"));
        }
        if segment.contains(['/', '\\', '%', '?', '#', '\0'])
            || segment.chars().any(char::is_control)
        {
            return Err(fail(
                "has a segment decoding to `/`, `\\`, `%`, `?`, `#` or a control character",
            ));
        }
        if i > 0 {
            out.push('/');
        }
        out.push_str(&segment);
    }
    out.push_str(tail);
    Ok(out)
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl TryFrom<String> for HttpPath {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}
impl From<HttpPath> for String {
    fn from(p: HttpPath) -> Self {
        p.path
    }
}

/// What an agent asks to do, whatever the protocol. Each variant carries exactly the fields its
/// kind needs, so an MCP call without a tool or an egress connection without a port cannot exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ActionWire", into = "ActionWire")]
pub enum Action {
    Http {
        service: Name,
        method: HttpMethod,
        path: HttpPath,
    },
    EgressConnect {
        host: Host,
        port: u16,
        protocol: Protocol,
        /// The address the gateway resolved `host` to and will connect to, once known.
        ip: Option<IpAddr>,
    },
    McpToolsCall {
        server: Name,
        tool: Name,
        args: Map<String, Value>,
    },
    McpToolsList {
        server: Name,
    },
    McpResourcesRead {
        server: Name,
        uri: String,
    },
    McpPromptsGet {
        server: Name,
        prompt: Name,
        args: Map<String, Value>,
    },
    A2a {
        peer: Name,
        method: A2aMethod,
    },
    /// A message from an MCP client to a server that asks for no tool, resource or prompt but
    /// carries the agent's text out: an answer to the server's own request (sampling,
    /// elicitation, roots) or a notification with free text (cancelled, progress). `message` is
    /// the notification's method, or `response` for an answer.
    McpClientMessage {
        server: Name,
        message: Name,
    },
}

/// What an action touches, as policies index it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Service(Name),
    Host { host: Host, port: u16 },
    McpServer(Name),
    McpTool { server: Name, tool: Name },
    McpResource { server: Name, uri: String },
    McpPrompt { server: Name, prompt: Name },
    A2aPeer(Name),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(name) => write!(f, "service {name}"),
            Self::Host {
                host: Host::Ip(std::net::IpAddr::V6(ip)),
                port,
            } => write!(f, "[{ip}]:{port}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::McpServer(server) => write!(f, "MCP server {server}"),
            Self::McpTool { server, tool } => write!(f, "tool {server}/{tool}"),
            Self::McpResource { server, uri } => write!(f, "resource {server} {uri}"),
            Self::McpPrompt { server, prompt } => write!(f, "prompt {server}/{prompt}"),
            Self::A2aPeer(peer) => write!(f, "agent {peer}"),
        }
    }
}

impl Action {
    pub const MAX_URI_LEN: usize = 8192;

    pub fn kind(&self) -> ActionKind {
        match self {
            Self::Http { .. } => ActionKind::Http,
            Self::EgressConnect { .. } => ActionKind::EgressConnect,
            Self::McpToolsCall { .. } => ActionKind::McpToolsCall,
            Self::McpToolsList { .. } => ActionKind::McpToolsList,
            Self::McpResourcesRead { .. } => ActionKind::McpResourcesRead,
            Self::McpPromptsGet { .. } => ActionKind::McpPromptsGet,
            Self::A2a { method, .. } => method.kind(),
            Self::McpClientMessage { .. } => ActionKind::McpClientMessage,
        }
    }

    pub fn resource(&self) -> Resource {
        match self {
            Self::Http { service, .. } => Resource::Service(service.clone()),
            Self::EgressConnect { host, port, .. } => Resource::Host {
                host: host.clone(),
                port: *port,
            },
            Self::McpToolsCall { server, tool, .. } => Resource::McpTool {
                server: server.clone(),
                tool: tool.clone(),
            },
            Self::McpToolsList { server } | Self::McpClientMessage { server, .. } => {
                Resource::McpServer(server.clone())
            }
            Self::McpResourcesRead { server, uri } => Resource::McpResource {
                server: server.clone(),
                uri: uri.clone(),
            },
            Self::McpPromptsGet { server, prompt, .. } => Resource::McpPrompt {
                server: server.clone(),
                prompt: prompt.clone(),
            },
            Self::A2a { peer, .. } => Resource::A2aPeer(peer.clone()),
        }
    }

    /// Arguments of a tool call or prompt; empty for other kinds.
    pub fn args(&self) -> Option<&Map<String, Value>> {
        match self {
            Self::McpToolsCall { args, .. } | Self::McpPromptsGet { args, .. } => Some(args),
            _ => None,
        }
    }
}

/// The flat wire form of an [`Action`]: `{"kind": "mcp.tools/call", "server": …, "tool": …}`.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionWire {
    kind: Option<ActionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<HttpPath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<Host>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<Name>,
}

impl ActionWire {
    fn field_names(&self) -> Vec<&'static str> {
        let mut present = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                present.push(name)
            }
        };
        add(self.service.is_some(), "service");
        add(self.method.is_some(), "method");
        add(self.path.is_some(), "path");
        add(self.host.is_some(), "host");
        add(self.port.is_some(), "port");
        add(self.protocol.is_some(), "protocol");
        add(self.ip.is_some(), "ip");
        add(self.server.is_some(), "server");
        add(self.tool.is_some(), "tool");
        add(self.uri.is_some(), "uri");
        add(self.prompt.is_some(), "prompt");
        add(self.args.is_some(), "args");
        add(self.peer.is_some(), "peer");
        add(self.message.is_some(), "message");
        present
    }
}

fn require<T>(value: Option<T>, kind: ActionKind, field: &str) -> Result<T, ModelError> {
    value.ok_or_else(|| ModelError::Action(format!("a `{kind}` action needs `{field}`")))
}

impl TryFrom<ActionWire> for Action {
    type Error = ModelError;
    fn try_from(w: ActionWire) -> Result<Self, Self::Error> {
        let kind = w
            .kind
            .ok_or_else(|| ModelError::Action("missing `kind`".into()))?;
        let allowed: &[&str] = match kind {
            ActionKind::Http => &["service", "method", "path"],
            ActionKind::EgressConnect => &["host", "port", "protocol", "ip"],
            ActionKind::McpToolsCall => &["server", "tool", "args"],
            ActionKind::McpToolsList => &["server"],
            ActionKind::McpResourcesRead => &["server", "uri"],
            ActionKind::McpPromptsGet => &["server", "prompt", "args"],
            ActionKind::McpClientMessage => &["server", "message"],
            _ => &["peer"],
        };
        if let Some(extra) = w.field_names().into_iter().find(|f| !allowed.contains(f)) {
            return Err(ModelError::Action(format!(
                "`{extra}` does not apply to a `{kind}` action (it takes: {})",
                allowed.join(", ")
            )));
        }
        Ok(match kind {
            ActionKind::Http => Self::Http {
                service: require(w.service, kind, "service")?,
                method: require(w.method, kind, "method")?,
                path: require(w.path, kind, "path")?,
            },
            ActionKind::EgressConnect => Self::EgressConnect {
                host: require(w.host, kind, "host")?,
                port: require(w.port, kind, "port")?,
                protocol: w.protocol.unwrap_or(Protocol::Tcp),
                ip: w.ip.map(|ip| ip.to_canonical()),
            },
            ActionKind::McpToolsCall => Self::McpToolsCall {
                server: require(w.server, kind, "server")?,
                tool: require(w.tool, kind, "tool")?,
                args: w.args.unwrap_or_default(),
            },
            ActionKind::McpToolsList => Self::McpToolsList {
                server: require(w.server, kind, "server")?,
            },
            ActionKind::McpResourcesRead => {
                let uri = canonical_resource_uri(&require(w.uri, kind, "uri")?)?;
                Self::McpResourcesRead {
                    server: require(w.server, kind, "server")?,
                    uri,
                }
            }
            ActionKind::McpPromptsGet => Self::McpPromptsGet {
                server: require(w.server, kind, "server")?,
                prompt: require(w.prompt, kind, "prompt")?,
                args: w.args.unwrap_or_default(),
            },
            ActionKind::McpClientMessage => Self::McpClientMessage {
                server: require(w.server, kind, "server")?,
                message: require(w.message, kind, "message")?,
            },
            a2a => Self::A2a {
                peer: require(w.peer, kind, "peer")?,
                method: A2aMethod::ALL
                    .into_iter()
                    .find(|m| m.kind() == a2a)
                    .ok_or_else(|| ModelError::Action(format!("`{a2a}` is not an A2A kind")))?,
            },
        })
    }
}

impl From<Action> for ActionWire {
    fn from(a: Action) -> Self {
        let kind = Some(a.kind());
        match a {
            Action::Http {
                service,
                method,
                path,
            } => Self {
                kind,
                service: Some(service),
                method: Some(method),
                path: Some(path),
                ..Self::default()
            },
            Action::EgressConnect {
                host,
                port,
                protocol,
                ip,
            } => Self {
                kind,
                host: Some(host),
                port: Some(port),
                protocol: Some(protocol),
                ip,
                ..Self::default()
            },
            Action::McpToolsCall { server, tool, args } => Self {
                kind,
                server: Some(server),
                tool: Some(tool),
                args: Some(args),
                ..Self::default()
            },
            Action::McpToolsList { server } => Self {
                kind,
                server: Some(server),
                ..Self::default()
            },
            Action::McpResourcesRead { server, uri } => Self {
                kind,
                server: Some(server),
                uri: Some(uri),
                ..Self::default()
            },
            Action::McpPromptsGet {
                server,
                prompt,
                args,
            } => Self {
                kind,
                server: Some(server),
                prompt: Some(prompt),
                args: Some(args),
                ..Self::default()
            },
            Action::A2a { peer, .. } => Self {
                kind,
                peer: Some(peer),
                ..Self::default()
            },
            Action::McpClientMessage { server, message } => Self {
                kind,
                server: Some(server),
                message: Some(message),
                ..Self::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_canonicalised() {
        let cases = [
            ("/", "/", 0),
            ("/v1//items/./x", "/v1/items/x", 3),
            ("/v1/items/../admin", "/v1/admin", 2),
            ("/v1/%61dmin?x=1", "/v1/admin", 2),
            ("/a/", "/a", 1),
        ];
        for (raw, canonical, depth) in cases {
            let p = HttpPath::new(raw).unwrap();
            assert_eq!(p.as_str(), canonical, "{raw}");
            assert_eq!(p.depth(), depth, "{raw}");
        }
    }

    #[test]
    fn canonical_paths_go_upstream_encoded_again() {
        for (raw, encoded) in [
            ("/public/a%20b", "/public/a%20b"),
            ("/public/a b", "/public/a%20b"),
            ("/v1/%61dmin", "/v1/admin"),
            ("/caf%C3%A9/x", "/caf%C3%A9/x"),
            ("/a/./b/../c:d@e", "/a/c:d@e"),
            ("/q\"x", "/q%22x"),
        ] {
            let path = HttpPath::new(raw).unwrap();
            assert_eq!(path.encoded(), encoded, "{raw}");
            // What goes upstream canonicalises to what was decided.
            assert_eq!(HttpPath::new(&path.encoded()).unwrap(), path, "{raw}");
        }
    }

    #[test]
    fn resource_uris_are_decided_decoded_and_never_resolved() {
        for (uri, canonical) in [
            ("file:///docs/readme.md", "file:///docs/readme.md"),
            ("file:///docs/%72eadme.md", "file:///docs/readme.md"),
            ("file:///docs/a%20b?x=../y", "file:///docs/a b?x=../y"),
            ("mem://notes/x", "mem://notes/x"),
            ("urn:isbn:0451450523", "urn:isbn:0451450523"),
            ("db://host", "db://host"),
        ] {
            assert_eq!(canonical_resource_uri(uri).unwrap(), canonical, "{uri}");
        }
        for bad in [
            "file:///docs/../secrets/key",
            "file:///docs/%2e%2e/secrets",
            "file:///docs/./x",
            "file:///docs/a%2Fb",
            "file:///docs/a%5Cb",
            "file:///docs/a%252e",
            "file:///docs\\..\\x",
            "file:///docs/%zz",
            "file:///docs/a%00",
            "",
        ] {
            assert!(canonical_resource_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn smuggling_paths_are_refused() {
        for bad in [
            "v1/x",
            "/..",
            "/a/../../b",
            "/a%2fb",
            "/a%5cb",
            "/a%00",
            "/a%zz",
            "/%ff",
            "/a%0d%0a",
            "/public/%252e%252e/admin",
            "/public/..%3Fx",
            "/public/a%252F..%252F..%252Fadmin",
            "/public/a%23b",
            "/public/a%25b",
        ] {
            assert!(HttpPath::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resources_display_for_people() {
        let tool: Action =
            serde_json::from_str(r#"{"kind":"mcp.tools/call","server":"k8s","tool":"scale"}"#)
                .unwrap();
        assert_eq!(tool.resource().to_string(), "tool k8s/scale");
        let v6: Action =
            serde_json::from_str(r#"{"kind":"egress.connect","host":"[2001:db8::1]","port":443}"#)
                .unwrap();
        assert_eq!(v6.resource().to_string(), "[2001:db8::1]:443");
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert_eq!(
            Host::new("::ffff:169.254.169.254").unwrap().to_string(),
            "169.254.169.254"
        );
        let mapped: Action = serde_json::from_str(
            r#"{"kind":"egress.connect","host":"a.com","port":443,"ip":"::ffff:10.1.0.9"}"#,
        )
        .unwrap();
        assert!(
            matches!(mapped, Action::EgressConnect { ip: Some(ip), .. } if ip.to_string() == "10.1.0.9")
        );
    }

    #[test]
    fn hosts_are_canonicalised() {
        assert_eq!(
            Host::new("API.GitHub.com.").unwrap().to_string(),
            "api.github.com"
        );
        assert_eq!(
            Host::new("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        for bad in [
            "",
            "a..b",
            "-a.com",
            "bücher.de",
            "a b.com",
            "1.2.3",
            &"a.".repeat(130),
        ] {
            assert!(Host::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn actions_round_trip_and_reject_mismatched_fields() {
        let json =
            r#"{"kind":"mcp.tools/call","server":"k8s","tool":"scale","args":{"replicas":3}}"#;
        let action: Action = serde_json::from_str(json).unwrap();
        assert_eq!(action.kind(), ActionKind::McpToolsCall);
        let back = serde_json::to_string(&action).unwrap();
        assert_eq!(serde_json::from_str::<Action>(&back).unwrap(), action);

        for bad in [
            r#"{"kind":"mcp.tools/call","server":"k8s"}"#,
            r#"{"kind":"mcp.tools/call","server":"k8s","tool":"x","path":"/"}"#,
            r#"{"kind":"teleport","server":"k8s"}"#,
            r#"{"server":"k8s"}"#,
            r#"{"kind":"egress.connect","host":"a.com"}"#,
            r#"{"kind":"http","service":"s","method":"get","path":"/"}"#,
        ] {
            assert!(serde_json::from_str::<Action>(bad).is_err(), "{bad}");
        }
        let a2a: Action =
            serde_json::from_str(r#"{"kind":"a2a.tasks/get","peer":"planner"}"#).unwrap();
        assert_eq!(a2a.kind(), ActionKind::A2aTasksGet);
    }
}
