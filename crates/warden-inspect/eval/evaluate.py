#!/usr/bin/env python3
"""Reproducible evaluation of Warden's inspection: rules and classifier.

Usage: evaluate.py WARDEN_BINARY [REPO_ROOT]

- Injection: the held-out test split of the corpus `corpus.py` builds from public, licensed
  sources (AgentDojo's banking and Slack suites, half of bastioncorpus, all of
  agent-injection-bench, half of the benign code and documentation). None of it was used to write
  the rules or train the classifier. Reported per source for the rules, the classifier and both,
  beside a public baseline run on the same samples: agent-injection-bench's own
  `InstructionFilter` defense (its regular expressions, read from the pinned wheel).
- Secrets: keys generated in their real formats (valid checksums where the format has one),
  embedded in code, JSON and env files, against every benign sample of the corpus (train and
  test: secrets were never trained on).

Prints a Markdown report.
"""

import base64
import json
import random
import re
import string
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import corpus  # noqa: E402


def baseline_patterns() -> list[re.Pattern]:
    """agent-injection-bench's InstructionFilter patterns, from the pinned wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        z = corpus.fetch(corpus.AIB, Path(tmp))
        source = z.read("aib/defenses/builtin.py").decode()
    block = source.split("_PATTERNS = (", 1)[1].split(")\n", 1)[0]
    return [re.compile(p) for p in re.findall(r'r"([^"]+)"', block)]


def scan(warden: str, samples: list[str], extra: list[str]) -> list[list[dict]]:
    lines = "\n".join(json.dumps(s) for s in samples) + "\n"
    out = subprocess.run(
        [warden, "inspect", "--lines", *extra, "-"], input=lines, capture_output=True, text=True
    )
    if out.returncode not in (0, 1):
        sys.exit(out.stderr)
    return [json.loads(l) for l in out.stdout.splitlines()]


def base62(n: int, width: int) -> str:
    digits = string.digits + string.ascii_uppercase + string.ascii_lowercase
    out = ""
    for _ in range(width):
        out = digits[n % 62] + out
        n //= 62
    return out


def generated_secrets(rng: random.Random, n: int) -> list[tuple[str, str]]:
    alnum = string.ascii_letters + string.digits
    b32 = string.ascii_uppercase + "234567"

    def r(alphabet: str, k: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(k))

    def github() -> str:
        body = r(alnum, 30)
        return f"ghp_{body}{base62(zlib.crc32(body.encode()), 6)}"

    def jwt() -> str:
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
        return f"{enc({'alg': 'RS256', 'typ': 'JWT'})}.{enc({'sub': r(alnum, 10)})}.{r(alnum + '-_', 43)}"

    makers = {
        "aws-access-key-id": lambda: "AKIA" + r(b32, 16),
        "github-token": github,
        "slack-token": lambda: f"xoxb-{r(string.digits, 12)}-{r(string.digits, 13)}-{r(alnum, 24)}",
        "stripe-key": lambda: "sk_live_" + r(alnum, 32),
        "google-api-key": lambda: "AIza" + r(alnum + "-_", 35),
        "private-key": lambda: "-----BEGIN RSA PRIVATE KEY-----\n" + r(alnum, 64) + "\n-----END RSA PRIVATE KEY-----",
        "jwt": jwt,
        "connection-string": lambda: f"postgres://app:{r(alnum, 16)}@db-{r(string.digits, 3)}.internal:5432/shop",
    }
    contexts = [
        lambda k: json.dumps({"config": {"credential": k, "region": "eu-west-1"}}),
        lambda k: f"export TOKEN={k}\nexport REGION=eu-west-1\n",
        lambda k: f'let client = Client::new("{k}");\n',
        lambda k: f"The deploy log printed {k} before failing.",
    ]
    samples = []
    for i in range(n):
        kind = list(makers)[i % len(makers)]
        samples.append((kind, rng.choice(contexts)(makers[kind]())))
    return samples


def pct(n: int, d: int) -> str:
    return f"{n}/{d} ({100 * n / d:.1f}%)" if d else "—"


def main() -> None:
    warden = sys.argv[1]
    root = Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(Path(__file__).parent / "corpus.py"), tmp, str(root)], check=True)
        rows = {split: [json.loads(l) for l in open(Path(tmp) / f"{split}.jsonl")] for split in ("train", "test")}
    test = rows["test"]
    baseline = baseline_patterns()
    found = scan(warden, [r["text"] for r in test], ["--sensitive", "none", "--no-secrets"])
    by_rules = [any(f["kind"] == "injection" and f["rule"] != "injection.classifier" for f in fs) for fs in found]
    by_model = [any(f["rule"] == "injection.classifier" for f in fs) for fs in found]
    by_base = [any(p.search(r["text"]) for p in baseline) for r in test]

    print("## Injection: held-out test split\n")
    positives = sum(r["label"] for r in test)
    print(f"{len(test)} samples: {positives} injected, {len(test) - positives} benign. "
          f"The classifier was trained on the other split ({len(rows['train'])} samples).\n")
    print("| source | samples | rules | classifier | Warden (either) | baseline |")
    print("|---|---|---|---|---|---|")

    def line(name: str, idx: list[int]) -> None:
        n = len(idx)
        cells = [pct(sum(flags[i] for i in idx), n) for flags in (by_rules, by_model)]
        either = pct(sum(by_rules[i] or by_model[i] for i in idx), n)
        print(f"| {name} | {n} | {cells[0]} | {cells[1]} | **{either}** | {pct(sum(by_base[i] for i in idx), n)} |")

    for label, title in ((1, "recall"), (0, "false positives")):
        sources = sorted({r["source"] for r in test if r["label"] == label})
        for source in sources:
            line(f"{source} — {title}", [i for i, r in enumerate(test) if r["label"] == label and r["source"] == source])
        line(f"**all — {title}**", [i for i, r in enumerate(test) if r["label"] == label])
    print()
    injected = [i for i, r in enumerate(test) if r["label"] == 1]
    missed = {}
    for i in injected:
        if not (by_rules[i] or by_model[i]):
            key = f"{test[i]['source']}/{test[i]['group']}"
            missed[key] = missed.get(key, 0) + 1
    print("Missed, by source and group: " + (", ".join(f"{k} ({v})" for k, v in sorted(missed.items())) or "none") + ".\n")

    benign = [r["text"] for split in rows.values() for r in split if r["label"] == 0]
    rng = random.Random(20261122)
    secrets = generated_secrets(rng, 4000)
    found = scan(warden, [t for _, t in secrets] + benign, ["--sensitive", "none", "--no-injection"])
    hits = [any(f["kind"] == "secret" for f in fs) for fs in found[: len(secrets)]]
    false_secrets = [any(f["kind"] == "secret" for f in fs) for fs in found[len(secrets) :]]
    print("## Secrets (generated real-format keys; benign: every benign sample of the corpus)\n")
    print("| format | samples | recall |")
    print("|---|---|---|")
    for kind in sorted({k for k, _ in secrets}):
        idx = [i for i, (k, _) in enumerate(secrets) if k == kind]
        print(f"| {kind} | {len(idx)} | {100 * sum(hits[i] for i in idx) / len(idx):.1f}% |")
    print(f"| **all** | {len(secrets)} | **{100 * sum(hits) / len(secrets):.2f}%** |\n")
    print(f"False positives on benign: {pct(sum(false_secrets), len(benign))}.")
    for text, hit in zip(benign, false_secrets):
        if hit:
            print(f"- `{text[:80]!r}`")


if __name__ == "__main__":
    main()
