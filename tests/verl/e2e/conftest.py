"""One driver process, one Ray session, one data folder for every end-to-end run (tests/verl/e2e).

The driver runs every scenario of :mod:`scenarios` in a subprocess (its own Ray instance with
logical GPUs; the suite's shared ``ray_session`` has none), started in the background as soon as
collection is done, so the rest of the suite runs meanwhile. The session fixture :func:`e2e` waits
for it and hands the tests the results, the per-step metrics of verl's file logger, the EchoRL traces and
the checkpoints. Wall time of the whole set is printed (``-s``) and written to ``<out>/results.json``.
``ECHORL_E2E_REUSE=<out>`` re-checks the tests on a finished set's folder instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import scenarios

HERE = Path(__file__).resolve().parent

E2E_TIMEOUT_S = 3600


@dataclass
class E2E:
    out: Path
    spec: dict
    results: dict
    wall_s: float

    def run(self, name: str) -> dict:
        return next(r for r in self.spec["runs"] if r["name"] == name)

    def ok(self, name: str) -> None:
        res = self.results.get(name)
        assert res is not None, f"run {name} did not run (driver log: {self.out / 'driver.log'})"
        assert res["ok"], f"run {name} failed: {res['error']} (driver log: {self.out / 'driver.log'})"

    def metrics(self, name: str) -> dict[int, dict]:
        """step -> metrics as verl's file logger wrote them."""
        path = self.out / "logs" / scenarios.PROJECT / f"{name}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {r["step"]: r["data"] for r in rows}

    def trace(self, name: str, step: int) -> dict:
        import torch

        return torch.load(self.out / name / "trace" / f"step_{step}.pt", weights_only=False)

    def actor_weights(self, name: str, step: int) -> dict:
        """Every tensor of the actor checkpoint at ``step`` (all shard files, by file and key)."""
        import torch

        folder = self.out / name / "ckpt" / f"global_step_{step}" / "actor"
        files = sorted(folder.glob("model_world_size_*_rank_*.pt"))
        assert files, f"no actor model shards under {folder}: {sorted(p.name for p in folder.iterdir())}"
        out = {}
        for f in files:
            for k, v in torch.load(f, weights_only=False).items():
                out[f"{f.name}:{k}"] = v.full_tensor() if hasattr(v, "full_tensor") else v
        return out

    @staticmethod
    def initial_weights() -> dict:
        """The shipped tiny model's state dict, the weights every run starts from (keys as in the
        checkpoint shards)."""
        from transformers import AutoModelForCausalLM

        from echorl.models.tiny import SHIPPED_DIR

        return AutoModelForCausalLM.from_pretrained(str(SHIPPED_DIR)).state_dict()


@dataclass
class _Driver:
    proc: subprocess.Popen
    out: Path
    spec: dict
    t0: float


_DRIVER: _Driver | None = None


def _start_driver(out: Path) -> _Driver:
    """Write the data and the spec under ``out`` and start the driver in the background."""
    from echorl.verl.cpu.arithmetic import write_arithmetic_parquets

    data = write_arithmetic_parquets(out / "data", n_train=12, n_val=4, levels=(1, 2))
    spec = scenarios.spec(out, data)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "VERL_PLATFORM": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with open(out / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(HERE / "driver.py"), str(spec_path)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    return _Driver(proc=proc, out=out, spec=spec, t0=time.perf_counter())


def pytest_collection_modifyitems(session, config, items):
    """Run the end-to-end tests last (they wait for the driver), so every other test of the suite
    runs while the driver does."""
    items.sort(key=lambda item: HERE in Path(str(item.path)).parents)  # stable: the rest keeps its order


def pytest_collection_finish(session):
    """Start the driver as soon as collection shows an end-to-end test will run: its runs (mostly
    one process importing verl at a time) overlap the rest of the suite, which runs meanwhile."""
    global _DRIVER
    if _DRIVER is None and not os.environ.get("ECHORL_E2E_REUSE") and any(
            HERE in Path(str(item.path)).parents for item in session.items):
        _DRIVER = _start_driver(session.config._tmp_path_factory.mktemp("verl_e2e"))


def pytest_sessionfinish(session):
    if _DRIVER is not None and _DRIVER.proc.poll() is None:  # e.g. the suite stopped early (-x)
        _DRIVER.proc.kill()


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> E2E:
    """The finished set: waits for the driver started at collection."""
    global _DRIVER
    reuse = os.environ.get("ECHORL_E2E_REUSE")  # a finished set's folder: re-check the tests on it
    if reuse:
        out = Path(reuse)
        spec = json.loads((out / "spec.json").read_text())
        results = json.loads((out / "results.json").read_text())
        return E2E(out=out, spec=spec, results=results, wall_s=float("nan"))
    if _DRIVER is None:
        _DRIVER = _start_driver(tmp_path_factory.mktemp("verl_e2e"))
    drv = _DRIVER
    try:
        rc = drv.proc.wait(timeout=max(1.0, E2E_TIMEOUT_S - (time.perf_counter() - drv.t0)))
    except subprocess.TimeoutExpired:
        drv.proc.kill()
        raise AssertionError(f"e2e driver still running after {E2E_TIMEOUT_S} s; log: {drv.out / 'driver.log'}") from None
    wall = time.perf_counter() - drv.t0
    assert rc == 0, f"e2e driver exited with {rc}; log: {drv.out / 'driver.log'}"
    results = json.loads((drv.out / "results.json").read_text())
    print(f"\nverl CPU e2e: {len(results)} runs in {wall:.0f} s (overlapping the rest of the suite): "
          + ", ".join(f"{k} {v['wall_s']:.0f}s" for k, v in results.items()))
    return E2E(out=drv.out, spec=drv.spec, results=results, wall_s=wall)
