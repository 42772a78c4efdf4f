"""The 1-GPU smoke command of docs/verl.md, extracted from the doc as written and composed with Hydra:
its rollout fits one GPU (verl's tensor-parallel default of 2 would not), and EchoRL's and verl's
start-up checks accept it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from omegaconf import OmegaConf

DOC = Path(__file__).resolve().parents[2] / "docs" / "verl.md"


def smoke_overrides(home: str = "/home/u") -> list[str]:
    """The Hydra overrides of the doc's one-GPU `python -m echorl.main` command, as the shell passes them."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    cmds = [b for b in blocks if "python -m echorl.main" in b and "trainer.n_gpus_per_node=1" in b]
    assert len(cmds) == 1, f"expected one 1-GPU smoke command in {DOC}, found {len(cmds)}"
    argv = shlex.split(cmds[0].replace("\\\n", " "))
    argv = [a.replace("$HOME", home) for a in argv]
    assert argv[:3] == ["python", "-m", "echorl.main"]
    return argv[3:]


def replica_gpus(rollout) -> int:
    return rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size


def test_smoke_command_fits_one_gpu(compose):
    from verl.utils.config import omega_conf_to_dataclass

    overrides = smoke_overrides()
    cfg = compose(overrides)
    gpus = cfg.trainer.n_gpus_per_node * cfg.trainer.nnodes
    assert gpus == 1
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.tensor_model_parallel_size == 1
    assert replica_gpus(rollout) == 1 and gpus % replica_gpus(rollout) == 0
    assert cfg.trainer.logger == ["console"]
    assert os.path.isabs(cfg.trainer.default_local_dir)
    # without the doc's override, verl's default rollout would need two GPUs
    bare = compose([o for o in overrides if not o.startswith("actor_rollout_ref.rollout.tensor_model_parallel_size")])
    assert replica_gpus(omega_conf_to_dataclass(bare.actor_rollout_ref.rollout)) == 2


def test_smoke_command_passes_the_startup_checks(compose):
    from echorl.main import prepare

    cfg = compose(smoke_overrides())
    assert prepare(cfg).coef == 0.01
    assert OmegaConf.select(cfg, "ray_kwargs.ray_init.runtime_env.env_vars") is None  # no wandb: env untouched
