"""The EchoRL stage's TransferQueue reads, reusing what verl's advantage stage has just read.

verl's ``_compute_advantage`` (v1 ``trainer_base``) fetches ``uid``, ``response_mask`` and
``rm_scores`` with ``tq.kv_batch_get`` and writes ``advantages`` with ``tq.kv_batch_put``; the EchoRL
stage runs right after it and needs those same fields. :func:`recording` puts a
:class:`TQRecorder` in place of the ``tq`` global of the function verl runs, for the duration of the
call: it forwards every call to TransferQueue unchanged and keeps the fields read and written.
:func:`stage_inputs` then fetches only the fields not kept (``responses`` and ``entropy``: two of the six), which
brought the stage from 1.17x to 0.86x the time of verl's own advantage stage at B=1024, L=8192
(``benchmarks/bench_verl_stage.py``, docs/benchmarks.md).

Only fields of the same keys, in the same order, are reused; a field verl wrote wins over the one it
read. If the function does not reach TransferQueue through a module global ``tq`` (another verl
version), nothing is swapped and every field is fetched: the same result, only slower.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tensordict import TensorDict, TensorDictBase

from echorl.verl.internals import tq_global_replaced


class TQRecorder:
    """Forwards to the ``transfer_queue`` module; keeps ``(keys, fields)`` of each batch get and put."""

    def __init__(self, real: Any):
        self._real = real
        self.records: list[tuple[tuple[str, ...], TensorDictBase]] = []  # in call order, reads and writes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def kv_batch_get(self, *args: Any, **kwargs: Any) -> Any:
        out = self._real.kv_batch_get(*args, **kwargs)
        self._keep(kwargs.get("keys"), out)
        return out

    def kv_batch_put(self, *args: Any, **kwargs: Any) -> Any:
        self._keep(kwargs.get("keys"), kwargs.get("fields"))
        return self._real.kv_batch_put(*args, **kwargs)

    def _keep(self, keys: Sequence[str] | None, fields: Any) -> None:
        if keys is not None and isinstance(fields, TensorDictBase):
            self.records.append((tuple(keys), fields))


@contextmanager
def recording(fn: Callable) -> Iterator[TQRecorder | None]:
    """While the block runs, ``fn``'s module global ``tq`` is a :class:`TQRecorder` (``None`` is
    yielded, and nothing swapped, when ``fn`` has no such global;
    :func:`echorl.verl.internals.tq_global_replaced`)."""
    with tq_global_replaced(fn, TQRecorder) as recorder:
        yield recorder


def stage_inputs(recorder: TQRecorder | None, tq: Any, keys: Sequence[str], partition_id: str,
                 fields: Sequence[str]) -> TensorDict:
    """``fields`` of the batch ``keys`` (a TensorDict ``[B]``): those the recorder kept for exactly
    these keys, the rest fetched with one ``tq.kv_batch_get``."""
    keys = tuple(keys)
    known: dict[str, Any] = {}
    for rec_keys, td in (recorder.records if recorder is not None else []):
        if rec_keys == keys:  # later records win: a field verl rewrote replaces the one it read
            known.update({f: td[f] for f in td.keys() if f in fields})
    missing = [f for f in fields if f not in known]
    if missing:
        data = tq.kv_batch_get(keys=list(keys), partition_id=partition_id, select_fields=missing)
    else:
        data = TensorDict({}, batch_size=[len(keys)])
    for f, v in known.items():
        data[f] = v
    return data
