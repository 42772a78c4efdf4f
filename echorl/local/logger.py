"""Run outputs a person can read: progress bar, ``metrics.jsonl``, tensorboard and wandb.

* console: a tqdm bar with live reward, accuracy, share of degenerated (zero-variance) groups and
  the EchoRL loss;
* ``<output_dir>/metrics.jsonl``: one JSON dict per step (``step``, ``reward/*``, ``echo/*``,
  ``actor/*``, ``timing_s/*``, ...); on resume, lines past the checkpoint's step are dropped so the
  file has each step once;
* tensorboard and wandb through verl's own ``verl.utils.tracking.Tracking`` (tensorboard writes to
  ``<output_dir>/tensorboard``; wandb honours ``WANDB_MODE=offline``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echorl.metric_names import LOSS
from echorl.metrics_file import read_metrics  # re-exported: the one reader of metrics.jsonl

__all__ = ["RunLogger", "read_metrics"]

BAR_KEYS = (("reward/mean", "rew"), ("reward/accuracy", "acc"), ("echo/groups_zero_var_frac", "deg"),
            (LOSS, "echo"))


class RunLogger:
    """Fan one step's metrics out to the configured backends.

    Args:
        output_dir: run folder.
        backends: subset of ``console``, ``tensorboard``, ``wandb``.
        total_steps: for the progress bar; start_step: steps already done (resume).
        config: plain dict of the run config (stored by wandb; must hold ``trainer``).
    """

    def __init__(self, output_dir: str | os.PathLike, backends: Sequence[str], total_steps: int, start_step: int,
                 config: dict[str, Any], project: str = "echorl", experiment: str = "local"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        kept = [m for m in read_metrics(self.path, missing_ok=True) if m.get("step", 0) <= start_step]
        with open(self.path, "w") as fh:
            fh.writelines(json.dumps(m) + "\n" for m in kept)
        self._fh = open(self.path, "a")
        self.bar = None
        if "console" in backends:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="echorl", unit="step", dynamic_ncols=True)
        self.tracking = None
        remote = [b for b in backends if b in ("tensorboard", "wandb")]
        if remote:
            from verl.utils.tracking import Tracking

            os.environ["TENSORBOARD_DIR"] = str(self.dir / "tensorboard")
            os.environ.setdefault("WANDB_DIR", str(self.dir))
            self.tracking = Tracking(project_name=project, experiment_name=experiment, default_backend=remote,
                                     config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        if self.tracking is not None:
            self.tracking.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                              step=step)
        if self.bar is not None:
            self.bar.set_postfix({short: f"{metrics[k]:.3f}" for k, short in BAR_KEYS if k in metrics}, refresh=False)
            self.bar.update(1)

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        self._fh.close()
        if self.bar is not None:
            self.bar.close()
        if self.tracking is not None:
            try:
                self.tracking.finish()
            except Exception:  # noqa: BLE001 - a logger backend failing to flush must not lose the run
                pass
            self.tracking = None
