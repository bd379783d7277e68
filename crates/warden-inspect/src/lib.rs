//! Content inspection for Warden: prompt injection aimed at a model, secrets and sensitive data
//! leaving, in JSON (every string value, located by JSON pointer) or plain text. Text is
//! de-obfuscated before matching — invisible characters stripped, Unicode tags decoded,
//! look-alikes folded, base64 / URL / HTML / `\u` encodings peeled — and the rules run as one
//! pass per family whatever their number. Scanners report findings (kind, rule, where, severity,
//! score); they never decide: policy says what a finding means.

pub mod classifier;
mod rules;
mod text;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use rules::entropy;
pub use text::Encoding;

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Injection,
    Secret,
    SensitiveData,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One thing a scanner noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub kind: Kind,
    /// The rule that matched, e.g. `secret.github-token`.
    pub rule: String,
    /// A JSON pointer (RFC 6901) to the string it was in; empty for plain text.
    pub location: String,
    pub severity: Severity,
    /// 0–100: how sure the rule is.
    pub score: u8,
    /// The encodings peeled to find it (outermost first), when it was hidden in one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Encoding>,
}

/// Which scanners run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    pub injection: bool,
    /// The statistical injection classifier (with `injection`), for paraphrases rules miss.
    pub classifier: bool,
    /// The classifier's least probability (0–100) that is reported as a finding.
    pub classifier_min_score: u8,
    pub secrets: bool,
    /// Sensitive-data sets: `email`, `payment-card`, `iban`, `us-ssn`, `phone-number`.
    pub sensitive: Vec<String>,
}

/// Every sensitive-data set there is.
pub const SENSITIVE_SETS: &[&str] = &["email", "payment-card", "iban", "us-ssn", "phone-number"];

impl Default for Config {
    fn default() -> Self {
        Self {
            injection: true,
            classifier: true,
            classifier_min_score: 50,
            secrets: true,
            sensitive: SENSITIVE_SETS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Object keys whose string values are secrets whatever they look like.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "client_secret",
    "clientsecret",
    "api_key",
    "apikey",
    "access_token",
    "accesstoken",
    "refresh_token",
    "private_key",
    "privatekey",
];
const NAMED_SECRET: &str = "secret.named-field";
/// How a redacted value starts: `[REDACTED:<rule>]`.
const REDACTED: &str = "[REDACTED:";
/// Nesting beyond this is not walked (it is reported instead).
const MAX_DEPTH: usize = 64;
/// The rule of a finding for JSON nested deeper than the scanners walk.
const TOO_DEEP: &str = "inspect.too-deep";

/// JSON nested deeper than [`MAX_DEPTH`] at `pointer`: reported, and redacted whole where
/// redaction runs, since nothing below it was looked at.
fn too_deep_at(pointer: &str) -> Finding {
    Finding {
        kind: Kind::Injection,
        rule: TOO_DEEP.into(),
        location: pointer.to_owned(),
        severity: Severity::Medium,
        score: 50,
        via: Vec::new(),
    }
}

/// The compiled scanners.
pub struct Scanner {
    injection: Option<rules::Family>,
    classifier: Option<(classifier::Model, u8)>,
    secrets: Option<rules::Family>,
    sensitive: Option<rules::Family>,
    quick: rules::Quick,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new(&Config::default())
    }
}

impl Scanner {
    /// Compiles the scanners `config` enables; unknown sensitive-data sets are an error.
    pub fn try_new(config: &Config) -> Result<Self, String> {
        if let Some(unknown) = config
            .sensitive
            .iter()
            .find(|s| !SENSITIVE_SETS.contains(&s.as_str()))
        {
            return Err(format!(
                "unknown sensitive-data set `{unknown}`; use {}",
                SENSITIVE_SETS.join(", ")
            ));
        }
        if config.classifier_min_score > 100 {
            return Err("classifierMinScore is a probability in percent: 0 to 100".into());
        }
        Ok(Self::new(config))
    }

    fn new(config: &Config) -> Self {
        let injection = config.injection.then(rules::Family::injection);
        let secrets = config.secrets.then(rules::Family::secrets);
        let sensitive =
            (!config.sensitive.is_empty()).then(|| rules::Family::sensitive(&config.sensitive));
        let families: Vec<&rules::Family> = [&injection, &secrets, &sensitive]
            .into_iter()
            .flatten()
            .collect();
        let quick = rules::Quick::new(&families);
        Self {
            injection,
            classifier: (config.injection && config.classifier).then(|| {
                let model = classifier::Model::parse(classifier::SHIPPED)
                    .expect("the shipped model parses (a unit test reads it)");
                (model, config.classifier_min_score)
            }),
            secrets,
            sensitive,
            quick,
        }
    }

    /// Every rule that can fire, for documentation and `warden inspect --rules`.
    pub fn rule_ids(&self) -> Vec<&'static str> {
        [&self.injection, &self.secrets, &self.sensitive]
            .into_iter()
            .flatten()
            .flat_map(rules::Family::rule_ids)
            .collect()
    }

    /// Scans a body: JSON (every string, and the keys that name secrets) when it parses,
    /// otherwise text.
    pub fn scan_body(&self, body: &[u8]) -> Vec<Finding> {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => self.scan_json(&value),
            // Validating is faster than the lossy conversion, which only bad bytes need.
            Err(_) => match std::str::from_utf8(body) {
                Ok(text) => self.scan_text(text, ""),
                Err(_) => self.scan_text(&String::from_utf8_lossy(body), ""),
            },
        }
    }

    pub fn scan_json(&self, value: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut pointer = String::new();
        self.walk(value, &mut pointer, None, 0, &mut out);
        dedupe(out)
    }

    fn walk(
        &self,
        value: &Value,
        pointer: &mut String,
        key: Option<&str>,
        depth: usize,
        out: &mut Vec<Finding>,
    ) {
        if depth > MAX_DEPTH {
            out.push(too_deep_at(pointer));
            return;
        }
        match value {
            Value::String(text) => {
                if self.named_secret(key, text) {
                    out.push(named_secret_at(pointer));
                }
                self.scan_into(text, pointer, out);
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    self.walk(item, pointer, None, depth + 1, out);
                    pointer.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let len = pointer.len();
                    pointer.push('/');
                    push_token(pointer, k);
                    // A key is text the upstream reads too: a secret can be sent as one.
                    self.scan_marked(k, pointer, Encoding::ObjectKey, Kind::Secret, out);
                    self.walk(item, pointer, Some(k), depth + 1, out);
                    pointer.truncate(len);
                }
                self.scan_joined(map, pointer, out);
            }
            _ => {}
        }
    }

    /// Scans `text` for what `only` names, marking findings as reached through `how`.
    fn scan_marked(
        &self,
        text: &str,
        location: &str,
        how: Encoding,
        only: Kind,
        out: &mut Vec<Finding>,
    ) {
        if text.len() < 8 {
            return;
        }
        let start = out.len();
        self.scan_into(text, location, out);
        let kept = retain_kind(&mut out[start..], only);
        out.truncate(start + kept);
        for finding in &mut out[start..] {
            finding.via.insert(0, how);
        }
    }

    /// A secret split across an object's string values (`{"a": "AKIAQ3EG", "b": "RJH6…"}`):
    /// each pair of consecutive short strings that could be pieces of a key (4–128 characters,
    /// no whitespace) is scanned joined, for secrets only, located at the object.
    fn scan_joined(
        &self,
        map: &serde_json::Map<String, Value>,
        pointer: &str,
        out: &mut Vec<Finding>,
    ) {
        const MAX_PART: usize = 128;
        const MAX_PAIRS: usize = 32;
        if self.secrets.is_none() {
            return;
        }
        let piece =
            |s: &&str| (4..=MAX_PART).contains(&s.len()) && !s.contains(char::is_whitespace);
        let strings: Vec<Option<&str>> = map.values().map(|v| v.as_str().filter(piece)).collect();
        for pair in strings
            .windows(2)
            .filter_map(|w| Some([w[0]?, w[1]?]))
            .take(MAX_PAIRS)
        {
            let joined = format!("{}{}", pair[0], pair[1]);
            let start = out.len();
            self.scan_marked(&joined, pointer, Encoding::Joined, Kind::Secret, out);
            if out.len() == start {
                continue;
            }
            // Only what neither part holds alone.
            let alone: Vec<String> = pair
                .iter()
                .flat_map(|part| self.scan_text(part, pointer))
                .map(|f| f.rule)
                .collect();
            let kept = retain_by(&mut out[start..], |f| !alone.contains(&f.rule));
            out.truncate(start + kept);
        }
    }

    /// Whether a string is a secret for the key it is under: a high-entropy value of a field
    /// named like one.
    fn named_secret(&self, key: Option<&str>, text: &str) -> bool {
        self.secrets.is_some()
            && key.is_some_and(|k| SECRET_KEYS.contains(&k.to_ascii_lowercase().as_str()))
            && text.len() >= 8
            && !text.starts_with(REDACTED)
            && entropy(text) >= 3.0
    }

    /// Redacts what the scanners find of the `kinds` given, in every string of `value`, and
    /// returns the findings redacted. A secret or a piece of personal data is replaced by
    /// `[REDACTED:<rule>]` where it stands; a string that still carries one after that (hidden
    /// in an encoding, in look-alike characters, or a field named like a secret), or that
    /// carries an injection, is replaced whole: what it says is not for the model.
    pub fn redact_json(&self, value: &mut Value, kinds: &[Kind]) -> Vec<Finding> {
        let mut redacted = Vec::new();
        let mut pointer = String::new();
        self.redact_walk(value, &mut pointer, None, 0, kinds, &mut redacted);
        dedupe(redacted)
    }

    fn redact_walk(
        &self,
        value: &mut Value,
        pointer: &mut String,
        key: Option<&str>,
        depth: usize,
        kinds: &[Kind],
        out: &mut Vec<Finding>,
    ) {
        if depth > MAX_DEPTH {
            // What is too deep to walk cannot be shown clean: it is replaced whole.
            *value = Value::String(format!("{REDACTED}{TOO_DEEP}]"));
            out.push(too_deep_at(pointer));
            return;
        }
        match value {
            Value::String(text) => {
                let named = kinds.contains(&Kind::Secret) && self.named_secret(key, text);
                let found: Vec<Finding> = self
                    .scan_text(text, pointer)
                    .into_iter()
                    .filter(|f| kinds.contains(&f.kind))
                    .collect();
                if found.is_empty() && !named {
                    return;
                }
                let in_place = self.redact_in_place(text, kinds);
                let still = named
                    || self
                        .scan_text(&in_place, pointer)
                        .iter()
                        .any(|f| kinds.contains(&f.kind));
                *text = if still {
                    let rule = if named { NAMED_SECRET } else { &found[0].rule };
                    format!("{REDACTED}{rule}]")
                } else {
                    in_place
                };
                if named {
                    out.push(named_secret_at(pointer));
                }
                out.extend(found);
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    self.redact_walk(item, pointer, None, depth + 1, kinds, out);
                    pointer.truncate(len);
                }
            }
            Value::Object(map) => {
                for (k, item) in map.iter_mut() {
                    let len = pointer.len();
                    pointer.push('/');
                    push_token(pointer, k);
                    self.redact_walk(item, pointer, Some(k), depth + 1, kinds, out);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// `text` with every secret and piece of personal data of `kinds` the rules match in it
    /// replaced where it stands. Offsets are the text's own only when preparing it changed
    /// nothing; otherwise the text is returned as it is (and the caller replaces it whole).
    fn redact_in_place(&self, text: &str, kinds: &[Kind]) -> String {
        if text::prepare(text).exact != text {
            return text.to_owned();
        }
        let mut spans: Vec<(&str, std::ops::Range<usize>)> = [
            (Kind::Secret, &self.secrets),
            (Kind::SensitiveData, &self.sensitive),
        ]
        .into_iter()
        .filter(|(kind, _)| kinds.contains(kind))
        .filter_map(|(_, family)| family.as_ref())
        .flat_map(|family| family.spans(text))
        .collect();
        spans.sort_by_key(|(_, range)| (range.start, std::cmp::Reverse(range.end)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (rule, range) in spans {
            if range.start < at {
                continue; // inside one already replaced
            }
            out.push_str(&text[at..range.start]);
            out.push_str(REDACTED);
            out.push_str(rule);
            out.push(']');
            at = range.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// Scans plain text found at `location`.
    pub fn scan_text(&self, text: &str, location: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        self.scan_into(text, location, &mut out);
        dedupe(out)
    }

    fn scan_into(&self, text: &str, location: &str, out: &mut Vec<Finding>) {
        self.scan_variant(text, location, &[], out);
        for (via, variant) in text::decoded(text) {
            self.scan_variant(&variant, location, &via, out);
        }
    }

    fn scan_variant(&self, text: &str, location: &str, via: &[Encoding], out: &mut Vec<Finding>) {
        let prepared = text::prepare(text);
        let start = out.len();
        // A short ASCII text (folded and lowered are one) without any rule's literal is done
        // with the rules in one pass.
        let rules_may_match = text.len() > rules::QUICK_MAX
            || !text.is_ascii()
            || self.quick.may_match(&prepared.folded);
        if let Some(injection) = self.injection.as_ref().filter(|_| rules_may_match) {
            injection.scan(&prepared.folded, &prepared.folded, location, out);
        }
        if self.injection.is_some() {
            if prepared.tags > 0 {
                out.push(Finding {
                    kind: Kind::Injection,
                    rule: "injection.hidden-unicode-tags".into(),
                    location: location.to_owned(),
                    severity: Severity::High,
                    score: 85,
                    via: Vec::new(),
                });
            }
            if let Some((model, min_score)) = &self.classifier {
                let probability = model.score_folded(&prepared.folded);
                // A probability in percent: 0..=100 fits.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let score = (probability * 100.0).round() as u8;
                if score >= *min_score {
                    out.push(Finding {
                        kind: Kind::Injection,
                        rule: "injection.classifier".into(),
                        location: location.to_owned(),
                        severity: if score >= 90 {
                            Severity::High
                        } else {
                            Severity::Medium
                        },
                        score,
                        via: Vec::new(),
                    });
                }
            }
            if prepared.invisible >= 3 {
                out.push(Finding {
                    kind: Kind::Injection,
                    rule: "injection.invisible-characters".into(),
                    location: location.to_owned(),
                    severity: Severity::Medium,
                    score: 40,
                    via: Vec::new(),
                });
            }
        }
        if rules_may_match && (self.secrets.is_some() || self.sensitive.is_some()) {
            let lowered = prepared.lowered();
            for family in [&self.secrets, &self.sensitive].into_iter().flatten() {
                family.scan(&prepared.exact, &lowered, location, out);
            }
        }
        for finding in &mut out[start..] {
            finding.via = via.to_vec();
        }
    }
}

/// Moves the findings of `kind` to the front of `findings`; how many there are.
fn retain_kind(findings: &mut [Finding], kind: Kind) -> usize {
    retain_by(findings, |f| f.kind == kind)
}

/// Moves the findings `keep` accepts to the front of `findings`, in order; how many there are.
fn retain_by(findings: &mut [Finding], keep: impl Fn(&Finding) -> bool) -> usize {
    let mut kept = 0;
    for i in 0..findings.len() {
        if keep(&findings[i]) {
            findings.swap(kept, i);
            kept += 1;
        }
    }
    kept
}

/// The finding for a field named like a secret holding a high-entropy value.
fn named_secret_at(pointer: &str) -> Finding {
    Finding {
        kind: Kind::Secret,
        rule: NAMED_SECRET.into(),
        location: pointer.to_owned(),
        severity: Severity::High,
        score: 75,
        via: Vec::new(),
    }
}

/// Appends `key` to a JSON pointer as one reference token (RFC 6901: `~` and `/` escaped).
fn push_token(pointer: &mut String, key: &str) {
    if key.contains(['~', '/']) {
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        pointer.push_str(key);
    }
}

/// One finding per rule and place: the most certain, and the least hidden at equal certainty.
fn dedupe(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by(|a, b| {
        (
            &a.location,
            &a.rule,
            std::cmp::Reverse(a.score),
            a.via.len(),
        )
            .cmp(&(
                &b.location,
                &b.rule,
                std::cmp::Reverse(b.score),
                b.via.len(),
            ))
    });
    findings.dedup_by(|later, first| later.location == first.location && later.rule == first.rule);
    findings
}
