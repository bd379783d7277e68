//! Patterns authors write (names, hosts, paths, SPIFFE IDs, ports, CIDRs), checked and turned into
//! Cedar expressions over the canonical attributes Warden puts in every request.
//!
//! Cedar's `like` knows only `*`, which also crosses `/` and `.`. So structured values are matched
//! segment by segment: a path is handed to Cedar as its depth plus one attribute per segment
//! (`s0`, `s1`, …), and a pattern compiles to a depth check and per-segment comparisons. That
//! keeps `*` to exactly one segment and `**` to any number, as documented.

use std::fmt::Write as _;

use warden_model::Host;

/// How many leading segments of a path or SPIFFE ID patterns can address.
pub const MAX_SEGMENTS: usize = 64;

/// Writes `value` as a Cedar string literal.
pub fn cedar_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `value` as a Cedar `like` pattern: `*` stays a wildcard, everything else is literal.
fn cedar_like(value: &str) -> String {
    cedar_str(value)
}

/// A name or a glob over names (`get_*`), for services, MCP servers, tools, prompts and peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Any,
    Exact(String),
    Glob(String),
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        if text.is_empty() || text.len() > 128 {
            return Err("a name pattern must have 1–128 characters".into());
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-./:*".contains(*c)))
        {
            return Err(format!(
                "`{bad}` is not allowed in a name pattern (letters, digits, `_ - . / :`, and `*` as a wildcard)"
            ));
        }
        Ok(if text.contains('*') {
            Self::Glob(text.to_owned())
        } else {
            Self::Exact(text.to_owned())
        })
    }

    /// Cedar condition on `attr` (e.g. `resource.name`), or `None` when it matches everything.
    pub fn condition(&self, attr: &str) -> Option<String> {
        match self {
            Self::Any => None,
            Self::Exact(v) => Some(format!("{attr} == {}", cedar_str(v))),
            Self::Glob(v) => Some(format!("{attr} like {}", cedar_like(v))),
        }
    }

    pub fn exact(&self) -> Option<&str> {
        match self {
            Self::Exact(v) => Some(v),
            _ => None,
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(v) => v == name,
            Self::Glob(g) => glob_match(g, name),
        }
    }
}

/// `*`-only glob matching, as Cedar's `like` does it.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Combines conditions with `&&`; `true` when there are none.
pub fn all_of(conditions: impl IntoIterator<Item = String>) -> String {
    let parts: Vec<String> = conditions.into_iter().collect();
    if parts.is_empty() {
        "true".into()
    } else {
        parts.join(" && ")
    }
}

/// Combines conditions with `||`, each parenthesised; `None` when one of them is unconditional.
pub fn any_of(conditions: Vec<Option<String>>) -> Option<String> {
    let mut parts = Vec::with_capacity(conditions.len());
    for c in conditions {
        parts.push(format!("({})", c?));
    }
    if parts.is_empty() {
        return None;
    }
    Some(if parts.len() == 1 {
        parts.remove(0)
    } else {
        format!("({})", parts.join(" || "))
    })
}

/// A destination host: `api.github.com`, `*.slack.com` (exactly one more label) or
/// `**.slack.com` (one or more labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    OneLabel(String),
    AnyLabels(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (ctor, rest): (fn(String) -> Self, &str) = if let Some(s) = text.strip_prefix("**.") {
            (Self::AnyLabels, s)
        } else if let Some(s) = text.strip_prefix("*.") {
            (Self::OneLabel, s)
        } else {
            (Self::Exact, text)
        };
        if matches!(text, "*" | "**") {
            return Err(
                "this host pattern would allow every host on the internet; name the hosts, or write a \
                 `cidrs` entry such as 0.0.0.0/0 if that is really meant"
                    .into(),
            );
        }
        if rest.contains('*') {
            return Err(
                "`*` is allowed only as the whole first label: `*.example.com` or `**.example.com`"
                    .into(),
            );
        }
        match Host::new(rest) {
            Ok(Host::Dns(name)) => Ok(ctor(name)),
            Ok(Host::Ip(_)) => Err(
                "an IP address is not a host name; put it under `cidrs` (e.g. 10.1.2.3/32)".into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The name or suffix this pattern is indexed under.
    pub fn key(&self) -> (&str, bool) {
        match self {
            Self::Exact(n) => (n, false),
            Self::OneLabel(s) | Self::AnyLabels(s) => (s, true),
        }
    }

    pub fn condition(&self) -> String {
        match self {
            Self::Exact(n) => format!("resource.name == {}", cedar_str(n)),
            Self::OneLabel(s) => format!(
                "resource.label_count == {} && resource.name like {}",
                s.split('.').count() + 1,
                cedar_like(&format!("*.{s}"))
            ),
            Self::AnyLabels(s) => format!(
                "resource.label_count > {} && resource.name like {}",
                s.split('.').count(),
                cedar_like(&format!("*.{s}"))
            ),
        }
    }

    /// Whether `host` matches, exactly as the Cedar condition decides it.
    pub fn matches(&self, host: &Host) -> bool {
        let Host::Dns(name) = host else { return false };
        let labels = name.split('.').count();
        match self {
            Self::Exact(n) => n == name,
            Self::OneLabel(s) => {
                labels == s.split('.').count() + 1 && name.ends_with(&format!(".{s}"))
            }
            Self::AnyLabels(s) => labels > s.split('.').count() && name.ends_with(&format!(".{s}")),
        }
    }

    /// A host this pattern matches.
    pub fn example(&self) -> Host {
        let name = match self {
            Self::Exact(n) => n.clone(),
            Self::OneLabel(s) | Self::AnyLabels(s) => format!("x.{s}"),
        };
        Host::Dns(name)
    }

    /// True when the pattern covers a whole public suffix such as `*.com`.
    pub fn is_very_broad(&self) -> bool {
        matches!(self, Self::OneLabel(s) | Self::AnyLabels(s) if !s.contains('.'))
    }
}

/// One segment of a path or SPIFFE ID pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*` or `{name}`: any one segment.
    Any,
    /// A segment with `*` inside, e.g. `v*` or `*.pdf`.
    Glob(String),
}

/// A pattern over `/`-separated segments: `*` and `{param}` match one segment, `**` (last only)
/// matches any number of remaining segments, including none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPattern {
    segments: Vec<Segment>,
    open_ended: bool,
}

impl SegmentPattern {
    /// Parses the part after the leading `/`. `allowed` says which characters a literal may hold.
    pub fn parse(text: &str, allowed: fn(char) -> bool) -> Result<Self, String> {
        let mut segments = Vec::new();
        let mut open_ended = false;
        let parts: Vec<&str> = if text.is_empty() {
            vec![]
        } else {
            text.split('/').collect()
        };
        for (i, part) in parts.iter().enumerate() {
            if *part == "**" {
                if i + 1 != parts.len() {
                    return Err("`**` may only be the last segment".into());
                }
                open_ended = true;
                continue;
            }
            if part.is_empty() {
                return Err("empty segment (`//` or a trailing `/`)".into());
            }
            if matches!(*part, "." | "..") {
                return Err("`.` and `..` segments never match a canonical path".into());
            }
            let is_param = part.starts_with('{') && part.ends_with('}') && part.len() > 2;
            if *part == "*" || is_param {
                segments.push(Segment::Any);
            } else if let Some(bad) = part.chars().find(|c| *c != '*' && !allowed(*c)) {
                return Err(format!("`{bad}` is not allowed in a pattern segment"));
            } else if part.contains('*') {
                segments.push(Segment::Glob((*part).to_owned()));
            } else {
                segments.push(Segment::Literal((*part).to_owned()));
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "patterns can address at most {MAX_SEGMENTS} segments"
            ));
        }
        Ok(Self {
            segments,
            open_ended,
        })
    }

    /// The same set of paths as an anchored regular expression (POSIX extended syntax, as
    /// Cilium's HTTP rules take it).
    pub fn to_regex(&self) -> String {
        let escape = |text: &str| {
            text.chars()
                .map(|c| {
                    if "\\.+?()[]{}|^$*".contains(c) {
                        format!("\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect::<String>()
        };
        let mut regex = String::from("^");
        for segment in &self.segments {
            regex.push('/');
            match segment {
                Segment::Literal(text) => regex.push_str(&escape(text)),
                Segment::Any => regex.push_str("[^/]+"),
                Segment::Glob(glob) => {
                    let parts: Vec<String> = glob.split('*').map(escape).collect();
                    regex.push_str(&parts.join("[^/]*"));
                }
            }
        }
        if self.open_ended {
            regex.push_str("(/.*)?");
        } else if self.segments.is_empty() {
            regex.push('/');
        }
        regex.push('$');
        regex
    }

    /// Cedar condition given the depth attribute and the segments record.
    pub fn condition(&self, depth_attr: &str, segments_attr: &str) -> String {
        let n = self.segments.len();
        let mut parts = vec![if self.open_ended {
            format!("{depth_attr} >= {n}")
        } else {
            format!("{depth_attr} == {n}")
        }];
        for (i, segment) in self.segments.iter().enumerate() {
            let (op, value) = match segment {
                Segment::Any => continue,
                Segment::Literal(v) => ("==", cedar_str(v)),
                Segment::Glob(v) => ("like", cedar_like(v)),
            };
            parts.push(format!(
                "{segments_attr} has s{i} && {segments_attr}.s{i} {op} {value}"
            ));
        }
        parts.join(" && ")
    }

    /// The literal segments at the start, up to the first wildcard.
    pub fn literal_prefix(&self) -> Vec<&str> {
        self.segments
            .iter()
            .map_while(|s| match s {
                Segment::Literal(v) => Some(v.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn matches_everything(&self) -> bool {
        self.segments.is_empty() && self.open_ended
    }

    /// Whether `segments` match, exactly as the Cedar condition over depth and the first
    /// [`MAX_SEGMENTS`] segments decides it.
    pub fn matches(&self, segments: &[&str]) -> bool {
        let depth_ok = if self.open_ended {
            segments.len() >= self.segments.len()
        } else {
            segments.len() == self.segments.len()
        };
        depth_ok
            && self.segments.iter().zip(segments).all(|(p, s)| match p {
                Segment::Any => true,
                Segment::Literal(v) => v == s,
                Segment::Glob(g) => glob_match(g, s),
            })
    }

    /// A concrete value this pattern matches, for generated sample requests.
    pub fn example(&self) -> Vec<String> {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Any => "x".to_owned(),
                Segment::Literal(v) => v.clone(),
                Segment::Glob(g) => g.replace('*', "x"),
            })
            .collect()
    }
}

/// A resource URI pattern, matched part by part between `/`s: `*` matches within one part, a
/// last part `**` matches any number of remaining parts (including none), and the pattern `*`
/// alone matches every URI. So `file:///docs/*` is what sits directly in `/docs`, and
/// `file:///docs/**` is everything below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriPattern {
    parts: Vec<String>,
    open_ended: bool,
}

impl UriPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts: Vec<String> = text.split('/').map(str::to_owned).collect();
        let open_ended = parts.last().is_some_and(|p| p == "**");
        if open_ended {
            parts.pop();
        }
        if parts.iter().any(|p| p.contains("**")) {
            return Err("`**` may only be the last part of a URI pattern (after a `/`)".into());
        }
        if parts.len() > MAX_SEGMENTS {
            return Err(format!(
                "URI patterns can address at most {MAX_SEGMENTS} `/`-separated parts"
            ));
        }
        Ok(Self { parts, open_ended })
    }

    /// The URI's parts as the entity carries them (`segments`, with `depth` their count).
    pub fn parts_of(uri: &str) -> impl Iterator<Item = &str> {
        uri.split('/')
    }

    /// Cedar condition over the resource's `depth` and `segments`.
    pub fn condition(&self) -> String {
        let n = self.parts.len();
        let mut out = vec![if self.open_ended {
            format!("resource.depth >= {n}")
        } else {
            format!("resource.depth == {n}")
        }];
        for (i, part) in self.parts.iter().enumerate() {
            if part == "*" {
                continue;
            }
            let op = if part.contains('*') { "like" } else { "==" };
            out.push(format!(
                "resource.segments has s{i} && resource.segments.s{i} {op} {}",
                cedar_like(part)
            ));
        }
        out.join(" && ")
    }

    /// Whether `uri` matches, exactly as the Cedar condition decides it.
    pub fn matches(&self, uri: &str) -> bool {
        let parts: Vec<&str> = Self::parts_of(uri).collect();
        let depth_ok = if self.open_ended {
            parts.len() >= self.parts.len()
        } else {
            parts.len() == self.parts.len()
        };
        depth_ok && self.parts.iter().zip(&parts).all(|(p, u)| glob_match(p, u))
    }

    /// A URI this pattern matches, for generated sample requests.
    pub fn example(&self) -> String {
        self.parts
            .iter()
            .map(|p| p.replace('*', "x"))
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Characters allowed in literal path segments of patterns (RFC 3986 pchar, unencoded).
pub fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=:@%".contains(c)
}

/// Characters allowed in SPIFFE ID path segments.
pub fn spiffe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._".contains(c)
}

/// A port or an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn parse_range(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a port or range; write 443 or \"8000-8100\"");
        let (low, high) = match text.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u16>().map_err(|_| bad())?,
                b.trim().parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let p = text.trim().parse::<u16>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if low == 0 || low > high {
            return Err(format!(
                "`{text}`: ports run from 1 to 65535 and a range must be low-high"
            ));
        }
        Ok(Self { low, high })
    }

    pub fn condition(&self) -> String {
        if self.low == self.high {
            format!("context.port == {}", self.low)
        } else {
            format!(
                "(context.port >= {} && context.port <= {})",
                self.low, self.high
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("get_*", "get_issue"));
        assert!(glob_match("*_issue", "get_issue"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxc"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn hosts() {
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("**").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("10.0.0.1").is_err());
        assert_eq!(
            HostPattern::parse("*.Slack.com").unwrap(),
            HostPattern::OneLabel("slack.com".into())
        );
        assert!(HostPattern::parse("*.com").unwrap().is_very_broad());
    }

    #[test]
    fn segment_patterns_match_whole_segments() {
        let p = SegmentPattern::parse("repos/*/issues/**", path_char).unwrap();
        assert_eq!(
            p.condition("d", "s"),
            "d >= 3 && s has s0 && s.s0 == \"repos\" && s has s2 && s.s2 == \"issues\""
        );
        assert_eq!(p.example(), ["repos", "x", "issues"]);
        assert_eq!(p.to_regex(), "^/repos/[^/]+/issues(/.*)?$");
        let q = SegmentPattern::parse("files/*.pdf", path_char).unwrap();
        assert_eq!(q.to_regex(), "^/files/[^/]*\\.pdf$");
        assert_eq!(
            SegmentPattern::parse("", path_char).unwrap().to_regex(),
            "^/$"
        );
        assert_eq!(
            q.condition("d", "s"),
            "d == 2 && s has s0 && s.s0 == \"files\" && s has s1 && s.s1 like \"*.pdf\""
        );
        assert!(SegmentPattern::parse("a/**/b", path_char).is_err());
        assert!(SegmentPattern::parse("a//b", path_char).is_err());
        assert!(
            SegmentPattern::parse("**", path_char)
                .unwrap()
                .matches_everything()
        );
    }

    #[test]
    fn uri_patterns_keep_a_star_within_one_part() {
        let direct = UriPattern::parse("file:///docs/*").unwrap();
        assert!(direct.matches("file:///docs/readme.md"));
        assert!(!direct.matches("file:///docs/a/secret"));
        assert!(!direct.matches("file:///docs"));
        let below = UriPattern::parse("file:///docs/**").unwrap();
        assert!(below.matches("file:///docs/a/b/c"));
        assert!(below.matches("file:///docs"));
        assert!(!below.matches("file:///secrets/key"));
        let glob = UriPattern::parse("mem://*/x*").unwrap();
        assert!(glob.matches("mem://notes/xy"));
        assert!(!glob.matches("mem://a/b/xy"));
        assert!(UriPattern::parse("file:///**/x").is_err());
        assert!(UriPattern::parse("file:///a**").is_err());
    }

    #[test]
    fn cedar_strings_escape() {
        assert_eq!(cedar_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u{a}\"");
    }

    #[test]
    fn ports() {
        assert_eq!(
            PortRange::parse_range("80-90").unwrap(),
            PortRange { low: 80, high: 90 }
        );
        for bad in ["0", "90-80", "x", "70000", "1-2-3"] {
            assert!(PortRange::parse_range(bad).is_err(), "{bad}");
        }
    }
}
