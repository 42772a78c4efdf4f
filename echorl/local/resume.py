"""What ``resume=`` does with a run folder that already holds a run.

* ``resume=disable``: :func:`set_previous_run_aside` moves the previous run's ``checkpoints/``,
  ``metrics.jsonl`` and ``tensorboard/`` to ``previous_runs/<UTC time>/`` (with a printed line), so
  the new run's checkpoints are never mixed with older ones of higher step numbers and nothing of
  the previous run is deleted.
* ``resume=auto``: :func:`check_resume_config` compares the config saved in the checkpoint with the
  current one; a change that alters the algorithm is refused (naming each key, old and new value),
  a harmless one (length of the run, logging, checkpoint and output options, validation) is a
  warning.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

__all__ = ["set_previous_run_aside", "check_resume_config", "config_changes", "EARLIER_BEHAVIOUR", "HARMLESS_KEYS",
           "ResumeWarning"]

RUN_FILES = ("checkpoints", "metrics.jsonl", "tensorboard")
# Keys (or key prefixes, ending in '.') whose change does not alter what the algorithm computes.
HARMLESS_KEYS = (
    "output_dir", "resume", "trainer.total_training_steps", "trainer.save_freq", "trainer.max_ckpt_to_keep",
    "trainer.logger", "trainer.project_name", "trainer.experiment_name", "trainer.num_threads",
    "trainer.time_limit_min", "trainer.make_report", "trainer.report_clips", "trainer.test_freq",
    "trainer.val_before_train", "trainer.device", "reward.num_workers", "reward.timeout_s", "reward.in_process",
    "data.val_files", "data.val_batch_size", "actor_rollout_ref.rollout.val_kwargs.",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
)
# Keys added to the config after checkpoints were written without them, each with the value that
# computes what those checkpoints' runs computed. Absent from a saved config and set to this value
# now, such a key is harmless; set to anything else, resuming is refused like any other change.
EARLIER_BEHAVIOUR = {"echorl.follow_rl_agg": False, "method.luffy.on_policy_clip": True,
                     "method.uft.segments": "lines", "method.uft.score_hint": True}
_ABSENT = "<absent>"


class ResumeWarning(UserWarning):
    """A harmless setting changed between the checkpoint and the resumed run."""


def set_previous_run_aside(out: str | Path) -> Path | None:
    """Move a previous run's files in ``out`` to ``out/previous_runs/<stamp>/``; returns that folder or None."""
    out = Path(out)
    present = [out / f for f in RUN_FILES if (out / f).exists()]
    if not present:
        return None
    dest = out / "previous_runs" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    k = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('+')[0]}+{k}")
        k += 1
    dest.mkdir(parents=True)
    for p in present:
        shutil.move(str(p), str(dest / p.name))
    print(f"resume=disable: moved the previous run's {', '.join(p.name for p in present)} from {out} to {dest} "
          "(nothing deleted)", flush=True)
    return dest


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _harmless(key: str) -> bool:
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HARMLESS_KEYS)


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """``(refused, harmless)``: lists of ``(key, saved value, current value)`` for every differing key."""
    a, b = _flatten(saved), _flatten(current)
    refused, harmless = [], []
    for key in sorted(set(a) | set(b)):
        old, new = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if old != new:
            earlier = old is _ABSENT and key in EARLIER_BEHAVIOUR and new == EARLIER_BEHAVIOUR[key]
            (harmless if earlier or _harmless(key) else refused).append((key, old, new))
    return refused, harmless


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], path: str | Path) -> None:
    """Refuse resuming checkpoint ``path`` under a config that changes the algorithm; warn on harmless changes.

    Raises:
        ValueError: names every changed key with its saved and current value, and the fixes.
    """
    if saved is None:
        return
    refused, harmless = config_changes(saved, current)
    if refused:
        diff = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in refused)
        raise ValueError(f"resume=auto: the checkpoint {path} was trained with other settings that change the "
                         f"algorithm ({diff}); continuing it would mix two runs. Fix: set them back to the saved "
                         "values, or start fresh with resume=disable (the previous run is moved to previous_runs/) "
                         "or another output_dir")
    if harmless:
        diff = "; ".join(f"{k}: {o!r} -> {n!r}" for k, o, n in harmless)
        warnings.warn(ResumeWarning(f"resuming {path} with changed settings that do not alter the algorithm: {diff}"),
                      stacklevel=2)
