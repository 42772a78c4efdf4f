"""GPU install path: the `gpu` extras and docker/Dockerfile install verl[vllm], then flash-attn against
the installed torch, never through verl's fsdp/megatron extras (flash-attn is sdist-only on PyPI and
fails under pip's build isolation). Checked against the installed verl 0.9.1's own metadata."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPILED = {"flash-attn", "transformer-engine", "apex"}  # built against torch: never in an extra
TORCH = {"torch", "torchvision", "torchaudio"}  # come with verl[vllm]


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}


def verl_extra(extra: str) -> list[Requirement]:
    """Requirements of ``verl[extra]`` from the installed verl's metadata, its self-extras expanded."""
    out = []
    for line in md.requires("verl"):
        req = Requirement(line)
        if req.marker is None or not req.marker.evaluate({**default_environment(), "extra": extra}):
            continue
        if canonicalize_name(req.name) == "verl":
            for sub in req.extras:
                out += verl_extra(sub)
        else:
            req.marker = None
            out.append(req)
    return out


def _names(reqs) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def test_installed_verl_is_the_pinned_release():
    assert md.version("verl") == "0.9.1"
    # the problem the extras avoid is real: verl's fsdp and megatron extras pull flash-attn==2.8.3
    for extra in ("fsdp", "megatron"):
        assert [str(r.specifier) for r in verl_extra(extra) if r.name == "flash-attn"] == ["==2.8.3"]


def test_no_extra_pulls_verls_fsdp_or_megatron_extras_or_a_compiled_package():
    for name, reqs in _extras().items():
        for req in reqs:
            if canonicalize_name(req.name) == "verl" and name.startswith("gpu"):
                assert req.extras == {"vllm"}, (name, str(req))
                assert str(req.specifier) == "==0.9.1", (name, str(req))
            assert canonicalize_name(req.name) not in COMPILED, (name, str(req))


def test_gpu_extra_is_verls_fsdp_extra_minus_flash_attn_on_top_of_vllm():
    gpu = _extras()["gpu"]
    with_vllm = {str(r) for r in verl_extra("vllm")}  # verl-core, torch 2.11, vllm, transformers
    want = {str(r) for r in verl_extra("fsdp") if canonicalize_name(r.name) not in COMPILED} - with_vllm
    assert want  # cupy, liger-kernel, trl, flash-linear-attention
    assert {str(r) for r in gpu} - {"verl[vllm]==0.9.1"} == want
    assert "verl[vllm]==0.9.1" in {str(r) for r in gpu}
    assert {str(r) for r in verl_extra("fsdp") if r.name in TORCH} <= with_vllm  # same torch pins


def test_gpu_megatron_extra_covers_verls_megatron_extra_except_compiled_packages():
    megatron = _extras()["gpu-megatron"]
    assert "echorl[gpu]" in {str(r) for r in megatron}
    covered = _names(megatron) | _names(_extras()["gpu"]) | _names(verl_extra("vllm"))
    missing = _names(verl_extra("megatron")) - COMPILED - covered
    assert not missing, f"verl's megatron extra needs {missing}, not in gpu-megatron"


# ---------------------------------------------------------------------------- Dockerfile
def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))
    return [(m[0].upper(), m[1].strip()) for m in re.findall(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)]


def _args() -> dict[str, str]:
    out = {}
    for ins, arg in _instructions():
        if ins == "ARG" and "=" in arg:
            k, v = arg.split("=", 1)
            out[k] = v.strip('"')
    return out


def _runs() -> list[str]:
    return [arg for ins, arg in _instructions() if ins == "RUN"]


def _first(pattern: str) -> int:
    hits = [i for i, run in enumerate(_runs()) if re.search(pattern, run)]
    assert hits, pattern
    return hits[0]


def test_dockerfile_installs_in_the_working_order():
    runs = _runs()
    verl, flash, echorl = _first(r'pip install "verl\[vllm\]==0\.9\.1"'), _first("flash-attn=="), _first(r'-e "\.\[all,gpu\]"')
    assert verl < flash < echorl
    for run in runs:  # nothing installs verl's fsdp/megatron extras, in any spelling
        assert not re.search(r"verl\[[^\]]*(fsdp|megatron|flash-attn)", run), run
    # every source build of a compiled package goes without build isolation, after torch is there
    for pkg in ("flash-attn==", "transformer-engine"):
        i = _first(re.escape(pkg))
        assert i > verl
        for cmd in re.split(r"&&|;|\bthen\b|\belse\b", runs[i]):
            if "pip install" in cmd and pkg in cmd:
                assert "--no-build-isolation" in cmd, cmd
    assert "import torch" in runs[flash].split("pip install")[0]  # torch is importable before flash-attn


def test_flash_attn_pin_and_wheel_match_verls_pins():
    args = _args()
    pin = [str(r.specifier) for r in verl_extra("fsdp") if r.name == "flash-attn"][0]
    assert f"=={args['FLASH_ATTN_VERSION']}" == pin
    torch_pin = [r for r in verl_extra("vllm") if r.name == "torch"][0].specifier
    major, minor = next(iter(torch_pin)).version.split(".")[:2]
    wheel = args["FLASH_ATTN_WHEEL"].rsplit("/", 1)[1]
    # CUDA 13.0 (the base image and verl's cupy-cuda13x), torch 2.11, CPython 3.12 (Ubuntu 24.04's python3)
    assert wheel == f"flash_attn-{args['FLASH_ATTN_VERSION']}+cu130torch{major}.{minor}-cp312-cp312-linux_x86_64.whl"
    assert "cuda:13.0" in args["BASE_IMAGE"] and "ubuntu24.04" in args["BASE_IMAGE"] and "devel" in args["BASE_IMAGE"]
    assert any(r.name == "cupy-cuda13x" for r in verl_extra("fsdp"))


def _run_flash_step(tmp_path, wheel_ok: bool, wheel: str) -> list[str]:
    """The flash-attn RUN step in bash with logging stand-ins for pip and python (no CUDA here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "pip.log"
    log.write_text("")
    (bin_dir / "pip").write_text(
        f'#!/bin/bash\necho "$*" >> {log}\n'
        f'[[ "$*" == *.whl* ]] && exit {0 if wheel_ok else 1}\nexit 0\n')
    (bin_dir / "python").write_text("#!/bin/bash\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    args = _args()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FLASH_ATTN_WHEEL": wheel,
           "FLASH_ATTN_VERSION": args["FLASH_ATTN_VERSION"], "FLASH_ATTN_CUDA_ARCHS": args["FLASH_ATTN_CUDA_ARCHS"],
           "MAX_JOBS": args["MAX_JOBS"]}
    r = subprocess.run(["bash", "-ec", _runs()[_first("flash-attn==")]], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines()


@pytest.mark.parametrize("case", ["wheel", "wheel_fails", "no_wheel"])
def test_flash_attn_step_uses_the_wheel_or_falls_back_to_a_source_build(tmp_path, case):
    wheel = _args()["FLASH_ATTN_WHEEL"] if case != "no_wheel" else ""
    calls = _run_flash_step(tmp_path, wheel_ok=case == "wheel", wheel=wheel)
    source = "install --no-build-isolation --no-deps flash-attn==2.8.3"
    if case == "wheel":
        assert calls == [f"install --no-deps {wheel}"]
    else:
        assert calls[-1] == source and calls[-2].startswith("install ninja")
        assert calls[:-2] == ([f"install --no-deps {wheel}"] if case == "wheel_fails" else [])
