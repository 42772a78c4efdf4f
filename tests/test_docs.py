"""The docs say what is true: every command and repository path that README.md, recipes/README.md and
docs/*.md name exists, and no code or doc refers to issue numbers.

Checked: ``make <target>`` (a target of the Makefile), ``echorl <subcommand ...>`` (its ``--help``
exits 0), ``python -m <module>`` (importable; echorl's entry points answer ``--help`` with exit 0)
and repository paths in code spans, code blocks and links (exist relative to the repo root, or to
the doc for links). Placeholders (``<...>``, ``$VARS``, globs) and run outputs (``outputs/``) are not
paths of the repository.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "recipes" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("echorl", "docs", "tests", "scripts", "benchmarks", "recipes", "docker", "results")
TOP_FILES = ("Makefile", "pyproject.toml", "constraints-cpu.txt", "README.md")

# python -m modules that are named but not run with --help, and why.
MODULE_NO_HELP = {
    "echorl.demo": "takes Hydra overrides only: `--help` would start the demo's training run",
    "pytest": "third-party tool; importable is enough",
    "verl.model_merger": "verl's own tool; importable is enough",
    "verl.trainer.main_ppo": "verl's own entry point; importable is enough",
}
# Paths named in the docs that are not files of the repository, and why.
PATH_EXCEPTIONS: dict[str, str] = {}


def _code_text(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks."""
    out, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            out.append(line)
        else:
            out += re.findall(r"`([^`]+)`", line)
    return out


def _collect():
    makes, clis, modules, paths = set(), set(), set(), set()
    for doc in DOCS:
        text = doc.read_text()
        rel = doc.relative_to(ROOT).as_posix()
        for code in _code_text(text):
            makes.update((m, rel) for m in re.findall(r"(?:^|&&|;|\$)\s*make ([a-z][\w-]*)", code.strip()))
            modules.update((m, rel) for m in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", code))
            for m in re.finditer(r"(?:^|&&|;|\$)\s*echorl((?: [a-z][a-z_-]*)+)", code.strip()):
                clis.add((tuple(m.group(1).split()), rel))
            for tok in re.split(r"[\s,;()'\"=]+", code):
                tok = tok.rstrip(".:")
                if re.match(r"(/work/|/tmp/)", tok):  # outside the repository: refused below
                    paths.add((tok, rel, False))
                elif tok.startswith("../"):  # relative to the doc, as a link
                    paths.add((tok, rel, True))
                if tok.split("/")[0] in TOP and "/" in tok or tok in TOP_FILES:
                    paths.add((tok, rel, False))
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if not re.match(r"[a-z]+:|#", link):
                paths.add((link.split("#")[0], rel, True))
    return sorted(makes), sorted(clis), sorted(modules), sorted(paths)


MAKES, CLIS, MODULES, PATHS = _collect()


def test_collects_what_the_docs_name():
    """The scan finds the commands every reader starts with (a broken scan would pass vacuously)."""
    assert {"demo", "test", "verl-smoke"} <= {m for m, _ in MAKES}
    assert {("train",), ("eval",), ("analyze", "entropy")} <= {c for c, _ in CLIS}
    assert {"echorl.main", "echorl.local"} <= {m for m, _ in MODULES}
    assert len(PATHS) > 50


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    missing = [f"{doc}: make {m}" for m, doc in MAKES if m not in targets]
    assert not missing, f"make targets named in the docs but not in the Makefile: {missing}"


def _cli_help(words: tuple[str, ...]) -> int:
    from echorl.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*words, "--help"])
        except SystemExit as e:
            return int(e.code or 0)
    return 0


def test_echorl_subcommands_answer_help():
    bad = {}
    for words, doc in CLIS:
        # the longest prefix of the words that the CLI accepts; the doc may go on with arguments
        if _cli_help(words) != 0 and _cli_help(words[:1]) != 0:
            bad[f"{doc}: echorl {' '.join(words)}"] = _cli_help(words)
    assert not bad, f"echorl subcommands named in the docs whose --help fails: {bad}"


def test_python_m_modules_exist_and_answer_help():
    names = sorted({m for m, _ in MODULES})
    missing = [m for m in names if importlib.util.find_spec(m) is None]
    assert not missing, f"python -m modules named in the docs that do not exist: {missing}"
    runs = [m for m in names if m not in MODULE_NO_HELP]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(m):
        p = subprocess.run([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=540)
        return m, p.returncode, p.stderr[-800:]

    with ThreadPoolExecutor(len(runs)) as ex:
        failed = [r for r in ex.map(run, runs) if r[1] != 0]
    assert not failed, f"python -m <module> --help failed: {failed}"


@pytest.mark.parametrize("path,doc,is_link", PATHS, ids=[f"{d}:{p}" for p, d, _ in PATHS])
def test_named_paths_exist(path, doc, is_link):
    if path in PATH_EXCEPTIONS or re.search(r"[<>$*{}]|\.\.\.", path):
        return
    assert not re.match(r"(/work/|/tmp/)", path), f"{doc} names a path outside the repository: {path}"
    base = (ROOT / doc).parent if is_link else ROOT
    path, _, test_name = path.partition("::")  # tests/x.py::test_name
    target = (base / path).resolve()
    assert target.is_relative_to(ROOT), f"{doc} points outside the repository: {path}"
    assert target.exists(), f"{doc} names {path}, which does not exist"
    if test_name:
        assert f"def {test_name}(" in target.read_text(), f"{doc} names {path}::{test_name}, which does not exist"


def test_architecture_key_table_lists_every_echo_config_field():
    """docs/architecture.md "Where each `echorl.*` key is read": one row per EchoConfig field, and
    every function the row names exists."""
    import dataclasses
    import importlib

    from echorl.core.config import EchoConfig

    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Where each `echorl.*` key is read", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", section, re.M)
    assert [k for k, _ in rows] == [f.name for f in dataclasses.fields(EchoConfig)]
    for key, readers in rows:
        for dotted in re.findall(r"`(echorl\.[\w.]+)`", readers):
            parts = dotted.split(".")
            for i in range(len(parts), 0, -1):  # longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    assert hasattr(obj, attr), f"architecture.md, key {key}: {dotted} does not exist"
                    obj = getattr(obj, attr)
                break
            else:
                raise AssertionError(f"architecture.md, key {key}: {dotted} does not exist")


HISTORY = re.compile(r"\bissue \d|\bissue #|\(issue\b|\bitem \d+\)", re.I)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".toml", ".txt"}


def test_no_issue_numbers_in_code_or_docs():
    """Code and docs speak of the code: no "issue 4, item 3" (the dated log, docs/log.md, may)."""
    hits = []
    for top in ("echorl", "scripts", "benchmarks", "tests", "recipes", "docs", "docker"):
        for f in sorted((ROOT / top).rglob("*")):
            if f.suffix not in TEXT_SUFFIXES or f == ROOT / "docs" / "log.md" or f == Path(__file__):
                continue
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if HISTORY.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    for f in (ROOT / n for n in TOP_FILES if n.endswith((".md", ".toml"))):
        hits += [f"{f.name}:{i}" for i, line in enumerate(f.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not hits, "issue/item references in code or docs:\n" + "\n".join(hits)


def _spec_labels_cited() -> dict[str, list[str]]:
    """Every ``SPEC x.y`` (and ``SPEC x.y-x.z`` range end) cited in the package, with where."""
    cited: dict[str, list[str]] = {}
    for f in sorted((ROOT / "echorl").rglob("*.py")):
        for m in re.finditer(r"SPEC (\d(?:\.\d)?)(?:-(\d(?:\.\d)?))?", f.read_text()):
            for label in filter(None, m.groups()):
                cited.setdefault(label, []).append(str(f.relative_to(ROOT)))
    return cited


def test_spec_labels_cited_in_code_are_defined_in_the_docs():
    """The code cites the method's rules as ``SPEC 2.1`` ...: each label must be a heading label of
    docs/method.md, or one of the two it points elsewhere (SPEC 3: the API, SPEC 4: the scale)."""
    method = (ROOT / "docs" / "method.md").read_text()
    defined = set(re.findall(r"\(SPEC (\d\.\d)\)", method)) | {"3", "4"}
    defined |= {"2"}  # "SPEC 2" is the whole of docs/method.md's rules
    assert {"2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7"} <= defined
    cited = _spec_labels_cited()
    assert len(cited) >= 5, cited  # the scan finds the citations
    missing = {label: where for label, where in cited.items() if label not in defined}
    assert not missing, f"SPEC labels cited in code but defined nowhere in docs/method.md: {missing}"
    for target in ("architecture.md", "benchmarks.md"):
        assert f"]({target})" in method
