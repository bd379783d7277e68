//! The rules. Each family is one `RegexSet` — one pass over the text finds which rules might
//! match, whatever their number — and only those are run again to find and check the matches
//! (checksums, Luhn, mod 97, entropy, decoded JWT headers).

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use memchr::memmem;
use regex::{Regex, RegexSet};

use crate::{Finding, Kind, Severity};

/// A rule: id, pattern, severity, score (0–100) and a check the match must pass; and for the
/// prefilter, literals one of which every match contains (ASCII, lowercase; the text is
/// searched lowercased) and how far a match reaches before and after one, in bytes.
struct Rule {
    id: &'static str,
    literals: &'static [&'static str],
    reach: (usize, usize),
    pattern: &'static str,
    severity: Severity,
    score: u8,
    check: fn(&regex::Captures<'_>) -> Option<u8>,
}

/// The literals of rules anchored instead on a run of at least `MIN_DIGITS` digits (card
/// numbers, IBANs, social security numbers).
const DIGIT_RUN: &[&str] = &[];
const MIN_DIGITS: usize = 7;

/// Accepts every match at the rule's score.
fn any(_: &regex::Captures<'_>) -> Option<u8> {
    Some(0)
}

/// Instructions aimed at a model, matched on folded (lowercase, de-obfuscated) text.
const INJECTION: &[Rule] = &[
    Rule {
        id: "injection.instruction-override",
        literals: &[
            "ignore",
            "disregard",
            "forget",
            "override",
            "bypass",
            "skip",
        ],
        reach: (0, 256),
        pattern: r"\b(ignore|disregard|forget|override|bypass|skip)\s+(all\s+|any\s+|the\s+|your\s+|every\s+|of\s+|these\s+|those\s+){0,6}(previous|prior|above|earlier|preceding|initial|original|system|existing)\s+(instructions?|prompts?|rules|directions|guidelines|context|messages|guardrails)",
        severity: Severity::High,
        score: 90,
        check: any,
    },
    Rule {
        id: "injection.new-instructions",
        literals: &["instruction", "system", "directive", "orders"],
        reach: (24, 64),
        pattern: r"\b(new|updated|revised|real|actual|true|secret)\s+(instructions?|system\s+prompt|directives?|orders)\s*[:\-]",
        severity: Severity::High,
        score: 75,
        check: any,
    },
    Rule {
        id: "injection.role-impersonation",
        literals: &["im_start", "system", "developer", "instruction", "inst]"],
        reach: (24, 64),
        pattern: r"(<\|im_start\|>\s*(system|developer)|<\|(system|developer)\|>|\[(system|developer)\s*(message|prompt)?\]|#{2,8}\s*(\(\s*(system|developer)[\s_]*(message|prompt)?\s*\)|(system|developer)[\s_]*(message|prompt)|(system|developer|instructions?)\s*:)|(^|\n)\s*(system|developer)\s*(message|prompt)?\s*:|</?(system|developer)(_prompt)?>|\[/?inst\])",
        severity: Severity::High,
        score: 80,
        check: any,
    },
    Rule {
        id: "injection.persona-switch",
        literals: &["now", "pretend", "restrictions", "rules", "limits"],
        reach: (64, 32),
        pattern: r"\b(you\s+are\s+now\s+(a|an|the|in|no\s+longer)\b|from\s+now\s+on,?\s+(you|act|respond)|pretend\s+(to\s+be|you\s+are)|act\s+as\s+(if|a|an)\s+[0-9a-z_]{1,32}\s+(with\s+no|without)\s+(restrictions|rules|limits))",
        severity: Severity::Medium,
        score: 65,
        check: any,
    },
    Rule {
        id: "injection.exfiltration",
        literals: &[
            "send",
            "post",
            "upload",
            "forward",
            "email",
            "e-mail",
            "transmit",
            "exfiltrate",
            "leak",
            "paste",
            "append",
        ],
        reach: (0, 400),
        // …and where to: documentation says "send the cookie" too, but not to an address.
        pattern: r"\b(send|post|upload|forward|email|e-mail|transmit|exfiltrate|leak|paste|append)\s+(.{0,60}?\s)?(the\s+|all\s+|your\s+|any\s+){0,4}(passwords?|secrets?|tokens?|api\s*keys?|credentials?|private\s+keys?|conversation|chat\s+history|system\s+prompt|environment\s+variables|env\s+vars|\.env|ssh\s+keys?|cookies?|session)\b.{0,80}?\b(to|at|into|via)\s+(https?://|www\.|[0-9a-z_.+-]+@[0-9a-z_-]+\.|(the\s+|this\s+|my\s+|our\s+)?(following\s+)?(url|address|endpoint|webhook|server|site|website|email|inbox|channel|link))",
        severity: Severity::Critical,
        score: 90,
        check: any,
    },
    Rule {
        id: "injection.conceal-from-user",
        literals: &["tell", "mention", "reveal", "inform", "notify", "alert"],
        reach: (24, 64),
        pattern: r"\b(do\s+not|don't|dont|never|without)\s+(tell(ing)?|mention(ing)?|reveal(ing)?|inform(ing)?|notify(ing)?|alert(ing)?)\s+(the\s+)?(user|human|operator|anyone|them)\b",
        severity: Severity::High,
        score: 80,
        check: any,
    },
    Rule {
        id: "injection.tool-bait",
        literals: &["tool", "function", "command"],
        reach: (160, 16),
        pattern: r"\b(you\s+must|immediately|now|first|always)\s+(call|invoke|run|execute|use|trigger)\s+(the\s+)?[0-9a-z_./-]{1,64}\s+(tool|function|command)\b",
        severity: Severity::Medium,
        score: 60,
        check: any,
    },
    Rule {
        id: "injection.hidden-html-comment",
        literals: &["<!--"],
        reach: (0, 900),
        // Words addressed to a model, not tool directives like `<!-- prettier-ignore -->`.
        pattern: r"<!--[^>]*?(\bignore\s+(all|any|previous|prior|the|your|above)\b|\binstructions?\b|\b(ai|assistant|model|llm|agent)\s*[:,]|\byou\s+(are|must|should|will)\b|\bdo\s+not\s+tell\b|\bsystem\s*:)",
        severity: Severity::High,
        score: 75,
        check: any,
    },
    Rule {
        id: "injection.css-hidden-text",
        literals: &["style"],
        reach: (0, 600),
        pattern: r#"style\s*=\s*["'][^"']*(display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(px|pt|em)?\s*[;"']|opacity\s*:\s*0\s*[;"']|color\s*:\s*(white|#fff(fff)?)\s*;\s*background(-color)?\s*:\s*(white|#fff(fff)?))"#,
        severity: Severity::Medium,
        score: 55,
        check: any,
    },
    Rule {
        id: "injection.markdown-exfiltration",
        literals: &["!["],
        reach: (0, 1100),
        // The query must carry a slot for data (`{…}`, `[…]`, `<…>`, `$…`), or name what it
        // carries: badges and avatars (`?style=flat`, `?s=70`) have queries too.
        pattern: r"!\[[^\]]*\]\(\s*https?://[^)\s]+[?&][^)\s]*(=[^)\s]*(\{|\[|<|\$|%7b|%5b|%3c|secret|token|api_?key|passw|credential|conversation|chat|history|memory|data)|\b(data|secret|secrets|token|key|password|conversation|chat|history|memory|exfil|leak|payload|info|content|context|prompt)=)",
        severity: Severity::High,
        score: 85,
        check: any,
    },
];

/// Secrets in their real formats, on exact (case-preserved) text.
const SECRETS: &[Rule] = &[
    Rule {
        id: "secret.aws-access-key-id",
        literals: &["akia", "asia", "abia", "acca"],
        reach: (0, 24),
        pattern: r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b",
        severity: Severity::Critical,
        score: 95,
        check: any,
    },
    Rule {
        id: "secret.aws-secret-access-key",
        literals: &["aws"],
        reach: (0, 128),
        pattern: r#"(?i)aws.{0,24}?(?:secret|private).{0,24}?["'=:\s]([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+]|$)"#,
        severity: Severity::Critical,
        score: 90,
        check: any,
    },
    Rule {
        id: "secret.github-token",
        literals: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        reach: (0, 48),
        pattern: r"\b((?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36})\b",
        severity: Severity::Critical,
        score: 80,
        check: github_checksum,
    },
    Rule {
        id: "secret.github-fine-grained-token",
        literals: &["github_pat_"],
        reach: (0, 100),
        pattern: r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        severity: Severity::Critical,
        score: 95,
        check: any,
    },
    Rule {
        id: "secret.slack-token",
        literals: &["xox"],
        reach: (0, 256),
        pattern: r"\b(xox[baprse]-[A-Za-z0-9]{8,64}-[A-Za-z0-9-]{8,128})\b",
        severity: Severity::Critical,
        score: 90,
        check: any,
    },
    Rule {
        id: "secret.stripe-key",
        literals: &["sk_live_", "rk_live_"],
        reach: (0, 112),
        pattern: r"\b((?:sk|rk)_live_[A-Za-z0-9]{24,99})\b",
        severity: Severity::Critical,
        score: 95,
        check: any,
    },
    Rule {
        id: "secret.google-api-key",
        literals: &["aiza"],
        reach: (0, 48),
        pattern: r"\b(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
        severity: Severity::High,
        score: 90,
        check: any,
    },
    Rule {
        id: "secret.openai-api-key",
        literals: &["t3blbkfj"],
        reach: (200, 160),
        pattern: r"\b(sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,128}T3BlbkFJ[A-Za-z0-9_\-]{20,128})\b",
        severity: Severity::Critical,
        score: 95,
        check: any,
    },
    Rule {
        id: "secret.anthropic-api-key",
        literals: &["sk-ant-"],
        reach: (0, 140),
        pattern: r"\b(sk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{80,120})\b",
        severity: Severity::Critical,
        score: 95,
        check: any,
    },
    Rule {
        id: "secret.private-key",
        literals: &["-----begin"],
        reach: (0, 64),
        pattern: r"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?)-----",
        severity: Severity::Critical,
        score: 99,
        check: any,
    },
    Rule {
        id: "secret.jwt",
        literals: &["eyj"],
        reach: (0, 16384),
        pattern: r"\b(eyJ[A-Za-z0-9_\-]{8,})\.(eyJ[A-Za-z0-9_\-]{8,})\.([A-Za-z0-9_\-]{8,})\b",
        severity: Severity::High,
        score: 85,
        check: jwt_header,
    },
    Rule {
        id: "secret.connection-string",
        literals: &[
            "postgres",
            "mysql",
            "mariadb",
            "mongodb",
            "redis",
            "amqp",
            "mssql",
            "sqlserver",
        ],
        reach: (0, 800),
        pattern: r"\b((?:postgres(?:ql)?|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql|sqlserver)://[^\s:/@]+:([^\s@/]{3,})@[^\s/]+)",
        severity: Severity::Critical,
        score: 90,
        check: connection_password,
    },
    Rule {
        id: "secret.password-assignment",
        literals: &[
            "password",
            "passwd",
            "pwd",
            "secret",
            "api_key",
            "api-key",
            "apikey",
            "access_token",
            "access-token",
            "accesstoken",
            "auth_token",
            "auth-token",
            "authtoken",
            "client_secret",
            "client-secret",
            "clientsecret",
            "private_key",
            "private-key",
            "privatekey",
        ],
        reach: (0, 260),
        pattern: r#"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|private[_-]?key)\b["']?\s{0,8}[:=]\s{0,8}["']?([\x21-\x7E&&[^"',;{}<>()\[\]]]{8,200})(?:[^(\[A-Za-z0-9_]|$)"#,
        severity: Severity::High,
        score: 70,
        check: high_entropy,
    },
];

/// Personal and payment data, on exact text. Digits are ASCII `[0-9]`, as the formats are (`\d`
/// would take any script's digits, and the checks slice by byte).
const SENSITIVE: &[Rule] = &[
    Rule {
        id: "pii.email",
        literals: &["@"],
        reach: (70, 260),
        pattern: r"\b([A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24})\b",
        severity: Severity::Low,
        score: 50,
        check: any,
    },
    Rule {
        id: "pii.payment-card",
        literals: DIGIT_RUN,
        reach: (40, 40),
        pattern: r"(?:^|[^0-9])((?:[0-9][ \-]?){12,18}[0-9])(?:[^0-9]|$)",
        severity: Severity::High,
        score: 90,
        check: payment_card,
    },
    Rule {
        id: "pii.iban",
        literals: DIGIT_RUN,
        reach: (40, 40),
        pattern: r"\b([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30})\b",
        severity: Severity::High,
        score: 85,
        check: iban,
    },
    Rule {
        id: "pii.us-ssn",
        literals: DIGIT_RUN,
        reach: (40, 40),
        pattern: r"(?:^|[^0-9])([0-9]{3})-([0-9]{2})-([0-9]{4})(?:[^0-9]|$)",
        severity: Severity::High,
        score: 75,
        check: ssn,
    },
    Rule {
        id: "pii.phone-number",
        literals: &["+"],
        reach: (4, 48),
        pattern: r"(?:^|[^0-9+])(\+[1-9][0-9]{0,2}[ \-.]?(?:\([0-9]{1,4}\)[ \-.]?)?[0-9]{2,4}(?:[ \-.]?[0-9]{2,4}){2,4})(?:[^0-9]|$)",
        severity: Severity::Low,
        score: 40,
        check: any,
    },
];

/// CRC-32 (IEEE), for GitHub tokens' built-in checksum.
/// Where a match that reaches `n` bytes that are not whitespace back from `from` can start.
fn back(bytes: &[u8], from: usize, n: usize) -> usize {
    let (mut i, mut left) = (from, n);
    while i > 0 && left > 0 {
        i -= 1;
        if !bytes[i].is_ascii_whitespace() {
            left -= 1;
        }
    }
    i
}

/// Where a match that reaches `n` bytes that are not whitespace on from `from` can end.
fn forward(bytes: &[u8], from: usize, n: usize) -> usize {
    let (mut i, mut left) = (from, n);
    while i < bytes.len() && left > 0 {
        if !bytes[i].is_ascii_whitespace() {
            left -= 1;
        }
        i += 1;
    }
    i
}

/// Runs of at least `MIN_DIGITS` digits, single separators (` -./()`) allowed between them.
fn digit_runs(bytes: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            let mut digits = 0;
            let mut end = i;
            while i < bytes.len() {
                if bytes[i].is_ascii_digit() {
                    digits += 1;
                    i += 1;
                    end = i;
                } else if matches!(bytes[i], b' ' | b'-' | b'.' | b'/' | b'(' | b')')
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    i += 1;
                } else {
                    break;
                }
            }
            if digits >= MIN_DIGITS {
                return Some((start, end));
            }
        }
        None
    })
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base62(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// GitHub's classic tokens end in the base62 CRC-32 of their random part: a match that checks
/// is surely a token (score raised), one that does not is still token-shaped.
fn github_checksum(c: &regex::Captures<'_>) -> Option<u8> {
    let token = c.get(1)?.as_str();
    let body = &token[4..];
    let (random, checksum) = body.split_at(30);
    Some(if base62(crc32(random.as_bytes()), 6) == checksum {
        99
    } else {
        0
    })
}

fn jwt_header(c: &regex::Captures<'_>) -> Option<u8> {
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.get(1)?.as_str())
        .ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .map(|_| 0)
}

/// Shannon entropy in bits per character.
pub fn entropy(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in text.bytes() {
        counts[b as usize] += 1;
    }
    let len = text.len() as f64;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f64::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

/// Values that name a placeholder rather than hold a secret.
fn placeholder(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    value.starts_with("${")
        || value.starts_with("{{")
        || value.starts_with('<')
        || value.starts_with('$')
        || value
            .chars()
            .all(|c| c == '*' || c == 'x' || c == 'X' || c == '.')
        || [
            "changeme",
            "password",
            "example",
            "placeholder",
            "your_",
            "redacted",
            "xxxx",
            "dummy",
            "secret",
        ]
        .iter()
        .any(|p| lower.contains(p))
}

fn high_entropy(c: &regex::Captures<'_>) -> Option<u8> {
    let value = c.get(1)?.as_str();
    // A link (a reset page, a proxy URL) is not the password; one with credentials in it is
    // the connection-string rule's.
    (!placeholder(value) && !value.contains("://") && entropy(value) >= 3.0).then_some(0)
}

fn connection_password(c: &regex::Captures<'_>) -> Option<u8> {
    (!placeholder(c.get(2)?.as_str())).then_some(0)
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// 13–19 digits, a known issuer's prefix, and a valid Luhn check digit.
fn payment_card(c: &regex::Captures<'_>) -> Option<u8> {
    let digits: Vec<u8> = c
        .get(1)?
        .as_str()
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    if !(13..=19).contains(&digits.len()) || !luhn(&digits) {
        return None;
    }
    let prefix = |n: usize| {
        digits[..n]
            .iter()
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let issuer = digits[0] == 4
        || (51..=55).contains(&prefix(2))
        || (2221..=2720).contains(&prefix(4))
        || matches!(prefix(2), 34 | 37 | 36 | 38 | 39 | 35 | 62 | 65)
        || prefix(4) == 6011
        || (644..=649).contains(&prefix(3));
    issuer.then_some(0)
}

/// ISO 13616: the country's length, and mod 97 of the rearranged number equals 1.
fn iban(c: &regex::Captures<'_>) -> Option<u8> {
    let compact: String = c.get(1)?.as_str().chars().filter(|c| *c != ' ').collect();
    let expected = match &compact[..2] {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "NL" => 18,
        "AT" | "EE" | "LU" => 20,
        "CH" | "LI" | "LV" | "HR" => 21,
        "DE" | "IE" | "GB" | "BG" => 22,
        "SE" | "ES" | "SK" | "CZ" | "TN" | "RO" => 24,
        "PT" => 25,
        "FR" | "IT" | "MC" | "GR" => 27,
        "PL" | "HU" | "CY" => 28,
        _ => compact.len(),
    };
    if compact.len() != expected {
        return None;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut remainder: u64 = 0;
    for ch in rearranged {
        let value = ch.to_digit(36)? as u64;
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    (remainder == 1).then_some(0)
}

/// US SSNs never start with 000, 666 or 9, nor have group 00 or serial 0000.
fn ssn(c: &regex::Captures<'_>) -> Option<u8> {
    let (area, group, serial) = (c.get(1)?.as_str(), c.get(2)?.as_str(), c.get(3)?.as_str());
    let valid = area != "000"
        && area != "666"
        && !area.starts_with('9')
        && group != "00"
        && serial != "0000";
    valid.then_some(0)
}

/// One family of rules compiled for a single pass.
pub struct Family {
    kind: Kind,
    rules: Vec<&'static Rule>,
    set: RegexSet,
    /// Each rule's own expression (with its patterns), built the first time the set says it
    /// may match: most never do, and building them all costs start-up time and memory.
    each: Vec<(String, OnceLock<Regex>)>,
    /// The rules' literals of four bytes or more, found in one pass (a SIMD search, which
    /// shorter literals would slow to a crawl); the regular expressions then run only on the
    /// windows around what it finds.
    literals: Option<AhoCorasick>,
    /// How far a match reaches around each literal of `literals` (by pattern id).
    reach: Vec<(usize, usize)>,
    /// The shorter literals, each searched on its own (by its rarest byte), with their reach.
    short: Vec<(memmem::Finder<'static>, (usize, usize))>,
    /// How far a match reaches around a run of digits, when a rule is anchored on one.
    digit_reach: Option<(usize, usize)>,
}

impl Family {
    fn new(kind: Kind, rules: Vec<&'static Rule>) -> Self {
        // Word boundaries are ASCII ones: Unicode's make the automata several times larger,
        // slower to build, and the fast (lazy DFA) engine gives up on them in non-ASCII text.
        // The patterns' word characters are spelled as ASCII classes for the same reason, and
        // their long gaps are unbounded (`[^>]*`), not counted (`[^>]{0,800}` is 800 copies of
        // a Unicode class): the windows they run in bound them.
        let patterns: Vec<String> = rules
            .iter()
            .map(|r| r.pattern.replace(r"\b", r"(?-u:\b)"))
            .collect();
        // The patterns are constants of this file, checked by the tests.
        let set = RegexSet::new(&patterns)
            .unwrap_or_else(|e| panic!("a built-in rule does not compile: {e}"));
        let each = patterns
            .iter()
            .map(|p| (p.clone(), OnceLock::new()))
            .collect();
        let (long, short): (Vec<_>, Vec<_>) = rules
            .iter()
            .flat_map(|rule| rule.literals.iter().map(|l| (*l, rule.reach)))
            .partition(|(literal, _)| literal.len() >= 4);
        let (literals, reach): (Vec<&str>, Vec<(usize, usize)>) = long.into_iter().unzip();
        let short = short
            .into_iter()
            .map(|(literal, reach)| (memmem::Finder::new(literal.as_bytes()), reach))
            .collect();
        let digit_reach = rules
            .iter()
            .filter(|r| r.literals.is_empty())
            .map(|r| r.reach)
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1)));
        // None when there are none: an empty automaton would still walk every byte.
        let literals = (!literals.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .unwrap_or_else(|e| panic!("the rules' literals do not build: {e}"))
        });
        Self {
            kind,
            rules,
            set,
            each,
            literals,
            reach,
            short,
            digit_reach,
        }
    }

    /// The windows of `text` a match can be in: around every literal (found in `lowered`, the
    /// text with ASCII letters lowercased) and every long digit run, merged, widened to whole
    /// words and to character boundaries. Reach is counted in bytes that are not whitespace, so
    /// padding a phrase with whitespace cannot carry it out of its window.
    fn windows(&self, text: &str, lowered: &str) -> Vec<std::ops::Range<usize>> {
        let bytes = text.as_bytes();
        // Anchors (where a literal or a digit run is, and the rule's reach around it) are
        // collected up to a budget: text dense with them is searched whole, which costs less
        // than walking every anchor's reach and keeps hostile text from piling them up.
        let budget = 64 + bytes.len() / 256;
        let literal_hits = self.literals.iter().flat_map(|literals| {
            literals
                .find_iter(lowered)
                .map(|m| (m.start(), m.end(), self.reach[m.pattern().as_usize()]))
        });
        let short_hits = self.short.iter().flat_map(|(finder, reach)| {
            finder
                .find_iter(lowered.as_bytes())
                .map(move |at| (at, at + finder.needle().len(), *reach))
        });
        let digit_hits = self
            .digit_reach
            .into_iter()
            .flat_map(|reach| digit_runs(bytes).map(move |(start, end)| (start, end, reach)));
        let mut anchors = Vec::new();
        for anchor in literal_hits.chain(short_hits).chain(digit_hits) {
            if anchors.len() == budget {
                let whole = 0..bytes.len();
                return vec![whole];
            }
            anchors.push(anchor);
        }
        let mut found: Vec<(usize, usize)> = anchors
            .into_iter()
            .map(|(start, end, (before, after))| {
                (back(bytes, start, before), forward(bytes, end, after))
            })
            .collect();
        found.sort_unstable();
        let mut windows: Vec<std::ops::Range<usize>> = Vec::new();
        for (start, end) in found {
            match windows.last_mut() {
                Some(last) if start <= last.end => last.end = last.end.max(end),
                _ => windows.push(start..end),
            }
        }
        for window in &mut windows {
            // Not inside a word (a `\b` at the edge would be a false one), nor a character.
            let mut start = window.start;
            while start > 0
                && (bytes[start - 1].is_ascii_alphanumeric() || !text.is_char_boundary(start))
            {
                start -= 1;
            }
            let mut end = window.end;
            while end < bytes.len()
                && (bytes[end].is_ascii_alphanumeric() || !text.is_char_boundary(end))
            {
                end += 1;
            }
            *window = start..end;
        }
        windows
    }

    pub fn injection() -> Self {
        Self::new(Kind::Injection, INJECTION.iter().collect())
    }

    pub fn secrets() -> Self {
        Self::new(Kind::Secret, SECRETS.iter().collect())
    }

    /// The sensitive-data rules whose ids (without `pii.`) `enabled` names.
    pub fn sensitive(enabled: &[String]) -> Self {
        Self::new(
            Kind::SensitiveData,
            SENSITIVE
                .iter()
                .filter(|r| {
                    enabled
                        .iter()
                        .any(|e| r.id.strip_prefix("pii.") == Some(e.as_str()))
                })
                .collect(),
        )
    }

    pub fn rule_ids(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.rules.iter().map(|r| r.id)
    }

    /// Every match in `text` that passes its rule's check: the rule, the match, and the score
    /// the check raised it to.
    fn accepted<'t>(
        &'t self,
        text: &'t str,
    ) -> impl Iterator<Item = (&'static Rule, regex::Captures<'t>, u8)> + 't {
        self.set.matches(text).into_iter().flat_map(move |i| {
            let rule = self.rules[i];
            let (pattern, regex) = &self.each[i];
            // It compiled in the set already, so it compiles on its own.
            regex
                .get_or_init(|| {
                    Regex::new(pattern).unwrap_or_else(|e| panic!("rule {}: {e}", rule.id))
                })
                .captures_iter(text)
                .filter_map(move |c| (rule.check)(&c).map(|raised| (rule, c, raised)))
        })
    }

    /// Findings in `text`, at `location`: one per rule, at its most certain match. Only the
    /// windows around the rules' literals are searched: text without them costs one
    /// literal-search pass. `lowered` is `text` with ASCII letters lowercased.
    pub fn scan(&self, text: &str, lowered: &str, location: &str, out: &mut Vec<Finding>) {
        let start = out.len();
        let windows = self.windows(text, lowered);
        for (rule, _, raised) in windows.into_iter().flat_map(|w| self.accepted(&text[w])) {
            let score = rule.score.max(raised);
            match out[start..].iter_mut().find(|f| f.rule == rule.id) {
                Some(found) => found.score = found.score.max(score),
                None => out.push(Finding {
                    kind: self.kind,
                    rule: rule.id.to_owned(),
                    location: location.to_owned(),
                    severity: rule.severity,
                    score,
                    via: Vec::new(),
                }),
            }
        }
    }

    /// Where in `text` each accepted match's value is — from its first group's start to its
    /// last group's end (the groups are the value; around them are boundaries), or the whole
    /// match — with the rule's id: what redaction replaces.
    pub fn spans(&self, text: &str) -> Vec<(&'static str, std::ops::Range<usize>)> {
        self.accepted(text)
            .filter_map(|(rule, c, _)| {
                let groups = c.iter().skip(1).flatten();
                let (start, end) = groups.fold((usize::MAX, 0), |(s, e), m| {
                    (s.min(m.start()), e.max(m.end()))
                });
                let range = if start < end {
                    start..end
                } else {
                    c.get(0)?.range()
                };
                Some((rule.id, range))
            })
            .collect()
    }
}

/// Texts up to this long are checked by `Quick` first.
pub const QUICK_MAX: usize = 256;

/// For short texts — most strings of a JSON answer — one walk of one automaton over every
/// family's literals (and a look for a digit run) says whether any rule can match at all. That
/// is cheaper than each family's own searches, whose cost per call exceeds a short text's scan.
pub struct Quick {
    literals: AhoCorasick,
    digits: bool,
}

impl Quick {
    pub fn new(families: &[&Family]) -> Self {
        let literals: Vec<&str> = families
            .iter()
            .flat_map(|f| f.rules.iter().flat_map(|r| r.literals.iter().copied()))
            .collect();
        Self {
            literals: AhoCorasick::builder()
                .kind(Some(AhoCorasickKind::DFA))
                .build(&literals)
                .unwrap_or_else(|e| panic!("the rules' literals do not build: {e}")),
            digits: families.iter().any(|f| f.digit_reach.is_some()),
        }
    }

    /// Whether some rule may match `lowered` (the text with ASCII letters lowercased).
    pub fn may_match(&self, lowered: &str) -> bool {
        self.literals.is_match(lowered)
            || (self.digits && digit_runs(lowered.as_bytes()).next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(family: &Family, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        family.scan(text, &text.to_ascii_lowercase(), "", &mut out);
        out.into_iter().map(|f| f.rule).collect()
    }

    #[test]
    fn every_built_in_rule_compiles() {
        let sets: Vec<String> = crate::SENSITIVE_SETS
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for family in [
            Family::injection(),
            Family::secrets(),
            Family::sensitive(&sets),
        ] {
            assert!(!family.rules.is_empty());
            assert_eq!(family.each.len(), family.rules.len());
            // Each rule's own expression is built lazily in scans: build every one here.
            for ((pattern, _), rule) in family.each.iter().zip(&family.rules) {
                let compiled = Regex::new(pattern);
                assert!(compiled.is_ok(), "rule {}: {compiled:?}", rule.id);
                assert!(
                    !rule.literals.is_empty() || rule.id.starts_with("pii."),
                    "{}",
                    rule.id
                );
            }
        }
    }

    #[test]
    fn github_tokens_are_checked_by_their_checksum() {
        let random = "abcdefghijklmnopqrstuvwxyzABCD";
        let good = format!("ghp_{random}{}", base62(crc32(random.as_bytes()), 6));
        let score = |text: String| {
            let mut out = Vec::new();
            Family::secrets().scan(&text, &text.to_ascii_lowercase(), "", &mut out);
            out[0].score
        };
        assert_eq!(score(format!("token={good}")), 99);
        assert_eq!(score(format!("ghp_{random}zzzzzz")), 80);
    }

    #[test]
    fn cards_ibans_and_ssns_need_their_checks_to_pass() {
        let pii = Family::sensitive(&["payment-card".into(), "iban".into(), "us-ssn".into()]);
        assert_eq!(
            ids(&pii, "card 4111 1111 1111 1111 exp"),
            ["pii.payment-card"]
        );
        assert!(
            ids(&pii, "card 4111 1111 1111 1112 exp").is_empty(),
            "Luhn fails"
        );
        assert!(
            ids(&pii, "order 1234567890123 shipped").is_empty(),
            "no issuer, bad Luhn"
        );
        assert_eq!(ids(&pii, "IBAN GB82 WEST 1234 5698 7654 32."), ["pii.iban"]);
        assert!(ids(&pii, "IBAN GB82 WEST 1234 5698 7654 33.").is_empty());
        assert_eq!(ids(&pii, "ssn 123-45-6789"), ["pii.us-ssn"]);
        assert!(ids(&pii, "ssn 666-45-6789").is_empty());
    }

    #[test]
    fn placeholders_are_not_secrets() {
        let secrets = Family::secrets();
        assert_eq!(
            ids(&secrets, "password = \"k9#Lq2!vZ7@pW\""),
            ["secret.password-assignment"]
        );
        assert!(ids(&secrets, "password = \"${DB_PASSWORD}\"").is_empty());
        assert!(ids(&secrets, "password: changeme123").is_empty());
        assert!(ids(&secrets, "postgres://app:${PW}@db/x").is_empty());
    }
}
