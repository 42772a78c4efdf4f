"""The package's layers (docs/architecture.md "Layers"): what may import what.

Every ``import`` of every module is read with ``ast`` (function-level imports included), so a lazy
import that goes back up the layers fails here as surely as a module-level one.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import pytest

import echorl

PKG = Path(echorl.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above. In the
# tools and hosts layers each package stands alone: it imports no other package of its layer.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("echorl.core",)),
    ("services", ("echorl", "echorl.config", "echorl.errors", "echorl.extras", "echorl.figures", "echorl.metrics_file",
                  "echorl.metric_names", "echorl.stage", "echorl.filtering", "echorl.estimators", "echorl.tasks",
                  "echorl.rewards", "echorl.models", "echorl.data", "echorl.methods", "echorl.loss", "echorl.generation",
                  "echorl.prompts", "echorl.checkpoints", "echorl.logprobs")),
    ("tools", ("echorl.eval", "echorl.analysis")),
    ("hosts", ("echorl.local", "echorl.verl", "echorl.trl")),
    ("entry", ("echorl.cli", "echorl.main", "echorl.demo", "echorl.study")),
]
# Layers whose packages must not import one another (a host never imports another host).
SIBLINGS_APART = {"tools", "hosts"}
# echorl.core may import these and itself, nothing else (`pip install echorl` gives torch alone).
CORE_ALLOWED = {"torch", "__future__"} | set(sys.stdlib_module_names)


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        mod = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[mod] = f
    return out


MODULES = _modules()


def _imports(mod: str, path: Path) -> set[str]:
    """Absolute names ``mod`` imports: ``from a import b`` gives ``a.b`` when that is a module of
    echorl, else ``a``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            subs = {f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in MODULES}
            names.update(subs)
            if len(subs) < len(node.names):
                names.add(src)
    return names


def layer_of(mod: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int:
    """Index in ``layers`` of ``mod``'s longest matching prefix; ``__main__`` modules
    (``python -m ...``) are entry points."""
    if mod.endswith(".__main__"):
        return len(layers) - 1
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            if (mod == p or (p != "echorl" and mod.startswith(p + "."))) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"module {mod} is in no layer: add its package to LAYERS and docs/architecture.md")
    return best


GRAPH = {mod: {m for m in _imports(mod, path) if m in MODULES and m != mod} for mod, path in MODULES.items()}


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer_of(mod)


def package_of(mod: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> str:
    """The prefix of :data:`LAYERS` that places ``mod`` (its package: ``echorl.local``, ``echorl.loss``...)."""
    if mod.endswith(".__main__"):
        return mod
    return max((p for _, ps in layers for p in ps if mod == p or (p != "echorl" and mod.startswith(p + "."))), key=len)


def layer_violations(graph: dict[str, set[str]], layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> list[str]:
    """Imports that go up a layer, or across packages of a layer in :data:`SIBLINGS_APART`."""
    bad = []
    for mod, deps in sorted(graph.items()):
        lm = layer_of(mod, layers)
        for dep in sorted(deps):
            ld = layer_of(dep, layers)
            if ld > lm:
                bad.append(f"{mod} ({layers[lm][0]}) imports {dep} ({layers[ld][0]}), a higher layer")
            elif ld == lm and layers[lm][0] in SIBLINGS_APART and package_of(mod, layers) != package_of(dep, layers):
                bad.append(f"{mod} imports {dep}: two {layers[lm][0]} ({package_of(mod, layers)}, "
                           f"{package_of(dep, layers)}); move what both need down to the services")
    return bad


def test_no_module_imports_a_higher_layer_or_a_sibling_host_or_tool():
    bad = layer_violations(GRAPH)
    assert not bad, "\n".join(bad)


# A small package that breaks each rule once: the checks above must name exactly these imports.
SYNTHETIC_LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("p.core",)), ("services", ("p.gen",)), ("tools", ("p.eval", "p.plots")),
    ("hosts", ("p.engine", "p.other")), ("entry", ("p.cli",)),
]


def test_the_layer_checks_fail_on_a_bad_import():
    graph = {
        "p.core.a": set(),
        "p.gen": {"p.core.a"},                      # fine: services -> core
        "p.eval.run": {"p.gen", "p.engine.model"},  # a tool importing a host's internals
        "p.plots": {"p.eval.run"},                  # a tool importing another tool
        "p.engine.model": {"p.gen", "p.eval.run", "p.engine.util"},  # fine: host -> tool, own package
        "p.engine.util": set(),
        "p.other": {"p.engine.util"},               # a host importing another host
        "p.cli": {"p.engine.model", "p.other"},     # fine: entry -> anything
        "p.core.b": {"p.gen"},                      # core importing a service
    }
    assert layer_violations(graph, SYNTHETIC_LAYERS) == [
        "p.core.b (core) imports p.gen (services), a higher layer",
        "p.eval.run (tools) imports p.engine.model (hosts), a higher layer",
        "p.other imports p.engine.util: two hosts (p.other, p.engine); move what both need down to the services",
        "p.plots imports p.eval.run: two tools (p.plots, p.eval); move what both need down to the services",
    ]


def test_core_imports_torch_and_stdlib_only():
    bad = []
    for mod, path in MODULES.items():
        if layer_of(mod) != 0:
            continue
        for name in _imports(mod, path):
            top = name.split(".")[0]
            if name.startswith("echorl"):
                if not (name == "echorl.core" or name.startswith("echorl.core.")):
                    bad.append(f"{mod} imports {name}")
            elif top not in CORE_ALLOWED:
                bad.append(f"{mod} imports {name}")
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    assert _cycles(GRAPH) == []


def test_a_function_level_import_makes_a_cycle(tmp_path):
    """An import inside a function counts: two modules that import each other, one lazily, are a cycle."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import os\n\nfrom echorl.generation import left_pad\n")
    b.write_text("def f():\n    from echorl.eval.run import evaluate\n    return evaluate\n")
    graph = {"echorl.generation": _imports("echorl.generation", a) & set(MODULES) | {"echorl.eval.run"},
             "echorl.eval.run": _imports("echorl.eval.run", b)}
    assert graph["echorl.eval.run"] == {"echorl.eval.run"}  # the lazy import was read
    graph["echorl.eval.run"] = {"echorl.generation"}
    assert _cycles(graph) == [["echorl.eval.run", "echorl.generation"]]
    assert layer_violations(graph) == ["echorl.generation (services) imports echorl.eval.run (tools), a higher layer"]


BLOCKED = ("verl", "ray", "transformers", "hydra", "omegaconf", "numpy", "tensordict", "pandas", "pyarrow")

_SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}

    # ModuleNotFoundError (an ImportError): what a missing package raises, and what torch tolerates

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked in this test: {{name}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    import torch
    import echorl
    from echorl import EchoConfig, run_echo_stage, select_echo_clips

    # 2 groups x 2 rollouts; boundary id 9 ends a step. Group "a": both succeed; group "b": mixed.
    resp = torch.tensor([[1, 9, 2, 9, 3], [1, 9, 2, 2, 0], [4, 9, 5, 0, 0], [4, 4, 9, 6, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    ent = torch.tensor([[0.1, 0.1, 2.0, 2.0, 0.5], [0.2, 0.2, 0.1, 0.1, 0.0],
                        [1.0, 1.0, 0.1, 0.0, 0.0], [0.3, 0.3, 0.3, 0.9, 0.0]])
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0])
    cfg = EchoConfig(boundary_token_ids=(9,), preset="paper")
    sel = select_echo_clips(resp, mask, ent, scores, ["a", "a", "b", "b"], cfg)
    print(sel.mask.int().tolist())
    print(sel.clip_end_step.tolist())
    out = run_echo_stage(resp, mask, ent, scores, ["a", "a", "b", "b"], cfg, advantages=torch.zeros(4, 5))
    print(out.metrics["echo/clips"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("leaked", leaked)
    """
)


def test_core_and_public_api_import_without_the_extras():
    script = _SCRIPT.format(blocked=BLOCKED)
    env = {**os.environ, "PYTHONPATH": str(PKG.parent)}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    # group a: row 0's steps [1 9] [2 9] [3] have mean entropies 0.1, 2.0, 0.5 -> peak is step 1
    # (clip = 4 tokens); row 1's peak is 0.2 (step 0); per=group keeps the larger peak: row 0.
    # group b: only row 2 succeeds; steps [4 9] (1.0) [5] (0.1) -> step 0, clip = 2 tokens.
    assert lines[0] == str([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert lines[1] == str([1, -1, 0, -1])
    assert lines[2] == "2.0"
    assert lines[3] == "leaked []"


def test_the_blocker_blocks():
    script = _SCRIPT.format(blocked=BLOCKED).split("import torch")[0] + "import numpy\n"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "blocked in this test: numpy" in res.stderr


@pytest.mark.parametrize("mod", ["echorl.core", "echorl.core.config", "echorl.core.clips"])
def test_layer_of_core_modules(mod):
    assert layer_of(mod) == 0 and layer_of("echorl.stage") == 1 and layer_of("echorl.cli") == 4


@pytest.mark.parametrize(("mod", "layer", "package"), [
    ("echorl.loss", "services", "echorl.loss"), ("echorl.models.loading", "services", "echorl.models"),
    ("echorl.eval.run", "tools", "echorl.eval"), ("echorl.local.trainer", "hosts", "echorl.local"),
    ("echorl.verl.trainer", "hosts", "echorl.verl"), ("echorl.study.runner", "entry", "echorl.study"),
    ("echorl.local.__main__", "entry", "echorl.local.__main__"),
])
def test_layer_and_package_of(mod, layer, package):
    assert LAYERS[layer_of(mod)][0] == layer and package_of(mod) == package


def unexplained_lazy_imports(source: str, name: str = "<source>") -> list[str]:
    """Function-level imports of ``echorl`` modules (or relative ones) with no ``#`` comment on their
    line or the line above: a lazy import says why it waits (an extra, a cycle, a heavy import)."""
    commented = {tok.start[0] for tok in tokenize.generate_tokens(iter(source.splitlines(True)).__next__)
                 if tok.type == tokenize.COMMENT}
    bad = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    ours = any(a.name == "echorl" or a.name.startswith("echorl.") for a in child.names)
                else:
                    mod = child.module or ""
                    ours = bool(child.level) or mod == "echorl" or mod.startswith("echorl.")
                if ours and not commented & {child.lineno, child.lineno - 1}:
                    bad.append(f"{name}:{child.lineno}: {ast.get_source_segment(source, child)}")
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, name), False)
    return bad


def test_every_function_level_import_of_echorl_says_why():
    bad = [b for mod, path in sorted(MODULES.items())
           for b in unexplained_lazy_imports(path.read_text(), str(path.relative_to(PKG.parent)))]
    assert not bad, ("move these imports to module level, or add a one-line comment on or above each saying why "
                     "it waits (docs/architecture.md, Layers):\n" + "\n".join(bad))


def test_the_lazy_import_check_fails_on_an_unexplained_import():
    source = textwrap.dedent(
        """
        from echorl.core import EchoConfig  # module level: never flagged

        def f():
            import json
            from echorl.loss import EchoLoss
            from . import sibling
            # imports verl (seconds)
            from echorl.local.trainer import LocalTrainer
            from echorl.eval.run import evaluate  # imports transformers

            class C:
                def g(self):
                    import echorl.stage
            return EchoLoss, LocalTrainer, evaluate, sibling
        """
    )
    assert unexplained_lazy_imports(source) == [
        "<source>:6: from echorl.loss import EchoLoss",
        "<source>:7: from . import sibling",
        "<source>:14: import echorl.stage",
    ]
