"""Every private name of verl that EchoRL's trainer relies on, in one place, checked at start-up.

verl 0.9.1 gives a trainer subclass no public hook between its advantage stage and the actor update,
and none around the replay buffer or the actor update's mini-batches, so EchoRL overrides private
methods of ``PPOTrainerSync`` and reads a few private attributes. This module names each of them
(docs/verl.md "verl internals" says why no public hook serves), is the only place that reads or
swaps one, and :func:`check_trainer_internals` (run by :class:`echorl.verl.trainer.EchoPPOTrainerSync`
before verl builds anything) compares them with the installed verl: a missing or re-shaped internal
raises :class:`VerlInternalsError` naming the verl version and the internal.

The CPU platform's internals (verl's rollout table and registries) are in
:mod:`echorl.verl.cpu.internals`, checked when a CPU run starts.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import Any

logger = logging.getLogger(__name__)

CHECKED_VERL = "0.9.1"
TRAINER_SYNC = ("verl.trainer.ppo.v1.trainer_sync", "PPOTrainerSync")
REPLAY_BUFFER = ("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer")
WORKER = ("verl.single_controller.base.worker", "Worker")  # its methods are bound on the worker group
WORKER_GROUP = ("verl.single_controller.base.worker_group", "WorkerGroup")

# PPOTrainerSync methods EchoPPOTrainerSync overrides -> their parameters in verl 0.9.1
TRAINER_OVERRIDES: dict[str, tuple[str, ...]] = {
    "_setup": ("self",),
    "_build_replay_buffer": ("self",),
    "_balance_batch": ("self", "batch", "metrics", "logging_prefix", "keep_minibatch"),
    "_compute_old_log_prob": ("self", "batch", "metrics"),
    "_compute_advantage": ("self", "batch", "metrics"),
    "_submit_batch_to_rollout": ("self", "batch"),
    "_update_actor": ("self", "batch", "metrics"),
    "_compute_metrics": ("self", "batch", "metrics", "timing_raw", "global_steps", "epoch"),
}
# ReplayBuffer methods KeepFilteredReplayBuffer overrides or calls (echorl.keep_filtered only)
REPLAY_BUFFER_METHODS: dict[str, tuple[str, ...]] = {
    "_terminal_eviction_reasons": ("self", "global_steps", "partition_id"),
    "_sampleable_terminal_keys": ("self", "partition_id", "eviction_reasons"),
    "_evict_terminal_groups": ("self", "global_steps", "partition_id", "eviction_reasons"),
    "_metrics_prefix": ("partition_id",),
    "_clear_groups": ("self", "partition_id", "uids"),
    "_materialize_batch": ("self", "partition_id", "selected_prompt_uids", "partition_snapshot"),
}
DAPO_CACHE = "_dapo_classification_cache"  # ReplayBuffer attribute: partition -> {uid: DAPO drop reason}
TQ_GLOBAL = "tq"  # trainer_base's module global: the transfer_queue module its stages call
DISPATCH_INFO = "_dispatch_info"  # worker group attribute: mesh name -> dp rank of each worker
QUERY_DISPATCH_INFO = "_query_dispatch_info"  # worker method filling it
TIMING_RAW = "timing_raw"  # trainer attribute: this step's {name: seconds}, logged as timing_s/<name>
MINI_BATCH_SIZE = "mini_batch_size"  # KVBatchMeta.extra_info key the actor update splits by


class VerlInternalsError(RuntimeError):
    """A verl internal EchoRL relies on is missing or changed in the installed verl."""


def verl_version() -> str:
    try:
        return metadata.version("verl")
    except metadata.PackageNotFoundError:  # pragma: no cover - echorl depends on verl
        return "not installed"


def moved(internal: str, detail: str, what: str = "EchoRL's verl trainer",
          where: str = "echorl/verl/internals.py") -> VerlInternalsError:
    """The error for an internal that ``detail`` (e.g. "is missing") in the installed verl."""
    return VerlInternalsError(
        f"{what} relies on the verl internal `{internal}`, which {detail} in the installed verl {verl_version()} "
        f"(checked against verl {CHECKED_VERL}): pin verl=={CHECKED_VERL}, or update {where} and docs/verl.md."
    )


def _class(where: tuple[str, str]) -> type:
    return getattr(importlib.import_module(where[0]), where[1])


def _check_methods(cls: type, methods: Mapping[str, tuple[str, ...]], owner: str) -> None:
    for name, params in methods.items():
        fn = inspect.getattr_static(cls, name, None)
        if fn is None:
            raise moved(f"{owner}.{name}", "is missing")
        fn = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        got = tuple(inspect.signature(fn).parameters)
        if got != params:
            raise moved(f"{owner}.{name}", f"takes {got} instead of {params}")


def not_overridden(cls: type) -> list[str]:
    """The :data:`TRAINER_OVERRIDES` methods that ``cls`` (a ``PPOTrainerSync`` subclass) inherits
    unchanged: EchoRL's stage would not run where one of them is listed."""
    base = _class(TRAINER_SYNC)
    return [name for name in TRAINER_OVERRIDES if getattr(cls, name) is getattr(base, name)]


def check_trainer_internals(keep_filtered: bool = False) -> dict[str, str]:
    """Check every internal of this module against the installed verl (the start-up check).

    Args:
        keep_filtered: also check the replay-buffer internals (``echorl.keep_filtered=true``).

    Returns ``{internal: "ok"}`` (``TQ_GLOBAL`` may be ``"missing"``: the stage then fetches every field
    itself, only slower, and a warning says so). Raises :class:`VerlInternalsError`.
    """
    found: dict[str, str] = {}
    sync = _class(TRAINER_SYNC)
    _check_methods(sync, TRAINER_OVERRIDES, TRAINER_SYNC[1])
    found.update({f"{TRAINER_SYNC[1]}.{m}": "ok" for m in TRAINER_OVERRIDES})
    fn = inspect.unwrap(inspect.getattr_static(sync, "_compute_advantage"))
    if not callable(getattr(fn.__globals__.get(TQ_GLOBAL), "kv_batch_get", None)):
        found[f"{fn.__module__}.{TQ_GLOBAL}"] = "missing"
        logger.warning("EchoRL: verl %s's _compute_advantage reaches TransferQueue without a module global `%s`: "
                       "the EchoRL stage fetches every field itself (same result, slower)", verl_version(), TQ_GLOBAL)
    else:
        found[f"{fn.__module__}.{TQ_GLOBAL}"] = "ok"
    worker = _class(WORKER)
    if not callable(getattr(worker, QUERY_DISPATCH_INFO, None)):
        raise moved(f"{WORKER[1]}.{QUERY_DISPATCH_INFO}", "is missing")
    found[f"{WORKER[1]}.{QUERY_DISPATCH_INFO}"] = "ok"
    if DISPATCH_INFO not in inspect.getsource(_class(WORKER_GROUP).__init__):
        raise moved(f"{WORKER_GROUP[1]}.{DISPATCH_INFO}", "is no longer set by WorkerGroup.__init__")
    found[f"{WORKER_GROUP[1]}.{DISPATCH_INFO}"] = "ok"
    if keep_filtered:
        buffer = _class(REPLAY_BUFFER)
        _check_methods(buffer, REPLAY_BUFFER_METHODS, REPLAY_BUFFER[1])
        found.update({f"{REPLAY_BUFFER[1]}.{m}": "ok" for m in REPLAY_BUFFER_METHODS})
        if DAPO_CACHE not in inspect.getsource(buffer.__init__):
            raise moved(f"{REPLAY_BUFFER[1]}.{DAPO_CACHE}", "is no longer set by ReplayBuffer.__init__")
        found[f"{REPLAY_BUFFER[1]}.{DAPO_CACHE}"] = "ok"
    return found


# ------------------------------------------------------------------ the accesses


@contextmanager
def tq_global_replaced(fn: Callable, make: Callable[[Any], Any]) -> Iterator[Any | None]:
    """While the block runs, the module global ``tq`` of verl's function ``fn`` is ``make(tq)``
    (yielded); ``None`` is yielded, and nothing replaced, when ``fn`` has no such global."""
    module_globals = getattr(inspect.unwrap(fn), "__globals__", {})
    real = module_globals.get(TQ_GLOBAL)
    if real is None or not callable(getattr(real, "kv_batch_get", None)):
        yield None
        return
    replacement = make(real)
    module_globals[TQ_GLOBAL] = replacement
    try:
        yield replacement
    finally:
        module_globals[TQ_GLOBAL] = real


def actor_dp_size(wg: Any) -> int:
    """Data-parallel ranks of the actor worker group ``wg`` (verl's dispatch table, filled as verl's
    own dispatch fills it)."""
    info = getattr(wg, DISPATCH_INFO)
    if "actor" not in info:
        info["actor"] = getattr(wg, QUERY_DISPATCH_INFO)("actor")
    return max(info["actor"]) + 1


def step_timing(trainer: Any) -> dict[str, float] | None:
    """The trainer's ``timing_raw`` of this step (``None`` outside verl's step loop)."""
    return getattr(trainer, TIMING_RAW, None)


def set_update_mini_batch_size(meta: Any, size: int) -> None:
    """Make the actor update cut the batch ``meta`` into mini-batches of ``size`` rows."""
    meta.extra_info[MINI_BATCH_SIZE] = size


def dapo_drop_reasons(buffer: Any, partition_id: str) -> dict[str, Any]:
    """The replay buffer's DAPO classification of ``partition_id``'s groups (uid -> reason)."""
    return getattr(buffer, DAPO_CACHE)[partition_id]


def metrics_prefix(buffer: Any, partition_id: str) -> str:
    """The prefix verl's replay buffer gives the metrics of ``partition_id``."""
    return type(buffer)._metrics_prefix(partition_id)
