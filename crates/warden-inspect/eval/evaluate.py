#!/usr/bin/env python3
"""Reproducible evaluation of Warden's inspection rules.

Usage: evaluate.py WARDEN_BINARY [REPO_ROOT]

- Injection: the attack scenarios of the public `agent-injection-bench` 0.1.0 benchmark (MIT;
  pinned, fetched from PyPI into a temporary directory) — none of them was seen while the rules
  were written, so the whole set is held out — against benign content: the benchmark's own
  controls plus this repository's Rust sources, configuration and documentation (cut into pieces
  of up to 4 KiB; documents that quote attacks on purpose are left out). The baseline is the
  benchmark's own `InstructionFilter` defense, run on the same samples.
- Secrets: keys generated in their real formats (valid checksums where the format has one),
  embedded in code, JSON and env files, against the same benign corpus.

Prints a Markdown report.
"""

import base64
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

BENCH = "agent-injection-bench==0.1.0"
# Documents that quote attacks and secrets on purpose, to explain them.
QUOTING = {"docs/inspection.md", "docs/approvals.md", "docs/audit.md"}


def fetch_bench() -> tuple[list[dict], list[str]]:
    """The benchmark's scenarios and its InstructionFilter patterns, from the pinned wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, BENCH],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            scenarios = [json.loads(l) for l in z.read("aib/data/attacks.jsonl").decode().splitlines() if l.strip()]
            source = z.read("aib/defenses/builtin.py").decode()
    block = source.split("_PATTERNS = (", 1)[1].split(")\n", 1)[0]
    patterns = re.findall(r'r"([^"]+)"', block)
    return scenarios, patterns


def untrusted_text(scenario: dict) -> str:
    """What reaches the agent from outside: the tool's result, or the injected document."""
    for tool in scenario.get("tools", []):
        if "returns" in tool:
            return tool["returns"]
    return scenario.get("injected", "")


def benign_corpus(root: Path) -> list[str]:
    pieces = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if (
            not path.is_file()
            or rel.startswith(("target/", ".git/"))
            or "/tests/" in rel
            or "/eval/" in rel
            or rel in QUOTING
            or path.suffix not in {".rs", ".md", ".yaml", ".yml", ".json", ".toml"}
        ):
            continue
        text = path.read_text(errors="replace")
        # The rule tables themselves are lists of attack phrases.
        if rel.endswith(("warden-inspect/src/rules.rs", "warden/src/inspect.rs")):
            continue
        for start in range(0, len(text), 4096):
            pieces.append(text[start : start + 4096])
    return pieces


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


def main() -> None:
    warden = sys.argv[1]
    root = Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve()
    scenarios, baseline_patterns = fetch_bench()
    baseline = [re.compile(p) for p in baseline_patterns]
    attacks = [s for s in scenarios if s["family"] not in ("control", "baseline")]
    controls = [untrusted_text(s) for s in scenarios if s["family"] == "control"]
    benign = controls + benign_corpus(root)

    attack_texts = [untrusted_text(s) for s in attacks]
    found = scan(warden, attack_texts + benign, ["--sensitive", "none", "--no-secrets"])
    injected = lambda fs: any(f["kind"] == "injection" for f in fs)
    caught = [injected(f) for f in found[: len(attacks)]]
    false_alarms = [injected(f) for f in found[len(attacks) :]]
    base_caught = [any(p.search(t) for p in baseline) for t in attack_texts]
    base_false = [any(p.search(t) for p in baseline) for t in benign]

    print("## Injection (agent-injection-bench 0.1.0 attacks; benign: its controls + this repository)\n")
    print(f"{len(attacks)} attack samples, {len(benign)} benign samples.\n")
    print("| family | samples | Warden recall | baseline recall |")
    print("|---|---|---|---|")
    families = sorted({s["family"] for s in attacks})
    for family in families:
        idx = [i for i, s in enumerate(attacks) if s["family"] == family]
        w = sum(caught[i] for i in idx)
        b = sum(base_caught[i] for i in idx)
        print(f"| {family} | {len(idx)} | {w}/{len(idx)} | {b}/{len(idx)} |")
    tp, fp = sum(caught), sum(false_alarms)
    btp, bfp = sum(base_caught), sum(base_false)
    prec = lambda t, f: t / (t + f) if t + f else 1.0
    print(f"| **all** | {len(attacks)} | **{tp}/{len(attacks)} ({100 * tp / len(attacks):.0f}%)** | {btp}/{len(attacks)} ({100 * btp / len(attacks):.0f}%) |\n")
    print(f"False-positive rate on benign: Warden {fp}/{len(benign)} ({100 * fp / len(benign):.2f}%), baseline {bfp}/{len(benign)} ({100 * bfp / len(benign):.2f}%).")
    print(f"Precision: Warden {prec(tp, fp):.3f}, baseline {prec(btp, bfp):.3f}.\n")
    missed = [s["id"] for s, c in zip(attacks, caught) if not c]
    print(f"Missed by Warden: {', '.join(missed) or 'none'}.\n")

    rng = random.Random(20261122)
    secrets = generated_secrets(rng, 4000)
    found = scan(warden, [t for _, t in secrets] + benign, ["--sensitive", "none", "--no-injection"])
    hits = [any(f["kind"] == "secret" for f in fs) for fs in found[: len(secrets)]]
    false_secrets = [any(f["kind"] == "secret" for f in fs) for fs in found[len(secrets) :]]
    print("## Secrets (generated real-format keys; benign: the same corpus)\n")
    print("| format | samples | recall |")
    print("|---|---|---|")
    for kind in sorted({k for k, _ in secrets}):
        idx = [i for i, (k, _) in enumerate(secrets) if k == kind]
        print(f"| {kind} | {len(idx)} | {100 * sum(hits[i] for i in idx) / len(idx):.1f}% |")
    print(f"| **all** | {len(secrets)} | **{100 * sum(hits) / len(secrets):.2f}%** |\n")
    print(f"False positives on benign: {sum(false_secrets)}/{len(benign)} ({100 * sum(false_secrets) / len(benign):.2f}%).")


if __name__ == "__main__":
    main()
