"""Tiny Qwen2-architecture model + character tokenizer, warm-started on arithmetic.

The embedded engine's default policy: a real ``transformers.Qwen2ForCausalLM`` (so every code path
is the one a real Qwen model takes) with ~0.69M parameters (hidden 192, 2 layers, 6 heads / 2 KV
heads, MLP 384, tied embeddings), and the character tokenizer of
:mod:`echorl.models.char_tokenizer` whose newline token (id 3) is the step boundary.

A fresh model cannot solve anything, so RL would start from all-fail groups. :func:`warm_start`
runs a seeded supervised pass (plain torch loop on one thread, AdamW, loss on response tokens
only) on :mod:`echorl.tasks.arithmetic` reference solutions, with batches' levels cycled through
``RECIPE["level_cycle"]`` (easy levels weighted up). It leaves the model good on easy levels, so
with 8 rollouts per prompt many level-1 groups are all-success (what EchoRL echoes), and poor on
hard ones, so the reward can still rise.

Shipped model: the build of :data:`RECIPE` lives in the package, ``echorl/assets/tiny-qwen2-char``
(a normal Hugging Face folder, fp32 ``model.safetensors`` of 2.8 MB), built with::

    python scripts/build_tiny_model.py --ship          # 520 s on one core of the shared 2-core box

Its sampled success at temperature 1.0 (one sample per prompt, 500 prompts, 100 per level; stored
in ``echorl_tiny.json``): overall 23.2%, level 1 95%, level 2 14%, level 3 5%, level 4 1%, level 5 1%.

:func:`load_tiny_model` with no ``cache_dir`` loads that folder (read-only, about a second)
when its recipe equals the requested one; otherwise it builds once into the cache folder
``<root>/tiny-qwen2-char`` with ``root = $ECHORL_CACHE`` or ``~/.cache/echorl`` (several minutes on
2 CPU cores). Every folder holds ``echorl_tiny.json`` (the recipe and warm-start report); a folder
built from a different recipe is rebuilt. After changing :data:`RECIPE`, rebuild and re-ship with
the command above (``tests/models/test_tiny_shipped.py`` fails until then).

Build elsewhere by hand: ``python scripts/build_tiny_model.py --out DIR`` (prints per-level success
rates).

The testbed model ``tiny-chain`` (:data:`CHAIN_RECIPE`, shipped in ``echorl/assets/tiny-chain``,
``model.name=tiny-chain``) uses the same machinery on :mod:`echorl.tasks.chain`: a smaller network
(0.33M parameters), a deliberately short warm start at a constant rate, and a fraction of
warm-start solutions with a wrong product (:func:`sft_rows`). Its folder's ``echorl_tiny.json`` also
holds ``regime_T1`` (:func:`echorl.models.regime.rollout_regime` on 128 dev prompts x 8). Rebuild:
``python scripts/build_tiny_model.py --recipe tiny-chain --ship``; docs/engine.md, "Testbed".
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from echorl.generation import generate_left_padded
from echorl.models.char_tokenizer import build_char_tokenizer
from echorl.models.folder import cache_root, save_folder_atomic
from echorl.models.regime import rollout_regime
from echorl.prompts import encode_prompts, format_prompts
from echorl.tasks import arithmetic, chain

__all__ = [
    "CHAIN_RECIPE",
    "RECIPE",
    "RECIPES",
    "SHIPPED_DIR",
    "boundary_ids",
    "build_tiny_model",
    "default_cache_dir",
    "encode_sft_batch",
    "level_schedule",
    "load_tiny_model",
    "sample_success",
    "shipped_dir",
    "tiny_config",
    "warm_start",
]

# Everything that determines the built weights. A cached folder built from a different recipe is
# rebuilt; bump "version" when the code of the build changes.
RECIPE: dict[str, Any] = {
    "version": 2,
    "hidden_size": 192,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "seed": 0,
    "warm_start_steps": 2500,
    # Levels of successive batches, cycled: easy levels weighted up so level 1 is nearly always
    # solved (all-success groups for EchoRL) while levels 4-5 stay mostly unsolved.
    "level_cycle": [1, 1, 1, 2, 2, 2, 3, 3, 4, 5],
    "batch_size": 32,
    "lr": 4e-3,
    "warmup_steps": 100,
    "weight_decay": 0.01,
    "train_rows": 100000,
    # One torch thread: bit-reproducible across machines, and on a shared 2-core box two spinning
    # OpenMP threads were measured 10-25x slower than one (generation 45 s vs 1.7 s per GRPO step).
    "threads": 1,
}
CACHE_NAME = "tiny-qwen2-char"
META_FILE = "echorl_tiny.json"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# The model built from RECIPE, shipped inside the package (read-only; never written at run time).
SHIPPED_DIR = ASSETS / CACHE_NAME

# The EchoRL testbed model (``model.name=tiny-chain``, docs/engine.md "Testbed"): deliberately
# undertrained on the chain task (:mod:`echorl.tasks.chain`), with a fraction ``noise`` of the
# reference solutions given a wrong product (one digit changed, carried through;
# :func:`chain.corrupt_hard_step`), so sampled at T=1.0 it solves part of the prompts and its 8
# rollouts of a prompt differ. Constant rate after warm-up: the k-step build is the first k steps
# of a longer one, so ``scripts/testbed.py tune --snapshots`` measures several step counts in one run.
CHAIN_RECIPE: dict[str, Any] = {
    "version": 1,
    "name": "tiny-chain",
    "task": "chain",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "seed": 0,
    "warm_start_steps": 1300,
    "schedule": "constant",
    "noise": 0.1,
    "batch_size": 32,
    "lr": 4e-3,
    "warmup_steps": 100,
    "weight_decay": 0.01,
    "train_rows": 32000,
    "threads": 1,
}
# model.name -> recipe (a recipe's "name" is its folder under echorl/assets and in the cache).
RECIPES: dict[str, dict[str, Any]] = {"tiny": RECIPE, "tiny-chain": CHAIN_RECIPE}


def _name(recipe: dict[str, Any]) -> str:
    return str(recipe.get("name", CACHE_NAME))


def shipped_dir(recipe: dict[str, Any] = RECIPE) -> Path:
    """``echorl/assets/<recipe name>``: where the build of ``recipe`` is shipped."""
    return ASSETS / _name(recipe)


def default_cache_dir(recipe: dict[str, Any] = RECIPE) -> Path:
    """``cache_root() / <name>`` (``tiny-qwen2-char`` for RECIPE; :func:`echorl.models.folder.cache_root`)."""
    root = cache_root()
    return Path(root) / _name(recipe)


def boundary_ids(tokenizer: Any) -> tuple[int, ...]:
    """Step boundary ids of the character tokenizer: the single newline token."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no single newline token (got {ids})")
    return (int(ids[0]),)


def tiny_config(vocab_size: int, recipe: dict[str, Any] = RECIPE, eos_id: int = 2):
    """The ``Qwen2Config`` of the tiny model (tied embeddings, fp32, eager-free sdpa attention)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        max_position_embeddings=recipe["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        torch_dtype="float32",
    )


def _prompt_text(tokenizer: Any, prompt: str) -> str:
    """The chat-templated text of one user prompt (:func:`echorl.prompts.format_prompts`)."""
    return format_prompts(tokenizer, [prompt], "true")[0]


def encode_sft_batch(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenise ``prompt -> solution<|im_end|>`` pairs for supervised training (right padding).

    Returns:
        input_ids: ``[N, T] long``; attention_mask: ``[N, T] long``;
        labels: ``[N, T] long``, ``-100`` on prompt and padding (loss on response tokens only).
    """
    eos = tokenizer.eos_token_id
    seqs, labs = [], []
    for r in rows:
        p = tokenizer.encode(_prompt_text(tokenizer, r["prompt"]), add_special_tokens=False)
        s = tokenizer.encode(r["solution"], add_special_tokens=False) + [eos]
        seqs.append(p + s)
        labs.append([-100] * len(p) + s)
    T = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), T), eos, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (x, y) in enumerate(zip(seqs, labs)):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, att, labels


def level_schedule(recipe: dict[str, Any] = RECIPE) -> list[int]:
    """The level of each warm-start batch, in cycle order: ``recipe["level_cycle"]`` (e.g.
    ``[1, 1, 1, 2, 2, 2, 3, 3, 4, 5]``, weighting easy levels) or, without it, every level once.
    The chain task has one level, its operation count."""
    if recipe.get("task") == "chain":
        return [chain.TRAIN.num_ops]
    cyc = list(recipe.get("level_cycle") or sorted(arithmetic.LEVELS))
    for lv in cyc:
        if lv not in arithmetic.LEVELS:
            raise ValueError(f"level_cycle: unknown level {lv!r}; valid levels are {sorted(arithmetic.LEVELS)}")
    return cyc


def warm_start(model: Any, tokenizer: Any, recipe: dict[str, Any] = RECIPE, steps: int | None = None,
               log_every: int = 0, on_step: Any = None) -> list[float]:
    """Seeded supervised pass on arithmetic reference solutions (in place). Returns the loss curve.

    Each batch holds one level, step ``s`` taking level ``cycle[s % len(cycle)]`` of
    :func:`level_schedule` (easy levels weighted up), so a batch is padded only to its own level's
    length: easy batches are short and cheap. Each level gets its own pool of rows (``train_rows``
    split in proportion to its share of the cycle, never more than it will consume), reshuffled
    every epoch. AdamW, linear warmup, then cosine decay to 10% or, with ``recipe["schedule"] ==
    "constant"``, a constant rate: then the first ``k`` steps of a longer warm start are exactly the
    warm start of ``k`` steps (same data order), and ``on_step(step + 1, model)``, called after
    every step, can snapshot candidates for :data:`CHAIN_RECIPE`'s ``warm_start_steps`` in one run.
    """
    steps = recipe["warm_start_steps"] if steps is None else steps
    seed, bs = recipe["seed"], recipe["batch_size"]
    cycle = level_schedule(recipe)
    levels = sorted(set(cycle))
    torch.manual_seed(seed)
    uses = {lv: sum(1 for s in range(steps) if cycle[s % len(cycle)] == lv) for lv in levels}
    if recipe.get("schedule", "cosine") == "constant":  # pools independent of `steps`: prefixes are exact
        pool = {lv: bs * max(1, recipe["train_rows"] * cycle.count(lv) // len(cycle) // bs) for lv in levels}
    else:
        pool = {lv: bs * max(1, min(uses[lv], recipe["train_rows"] * cycle.count(lv) // len(cycle) // bs)) for lv in levels}
    data = {}
    for lv in levels:  # [N_lv, T_lv] tensors per level
        data[lv] = encode_sft_batch(tokenizer, sft_rows(recipe, lv, pool[lv]))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"], betas=(0.9, 0.95))
    warm = recipe["warmup_steps"]
    constant = recipe.get("schedule", "cosine") == "constant"
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 1.0 if constant
        else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    gen = torch.Generator().manual_seed(seed)
    order = {lv: torch.randperm(pool[lv], generator=gen) for lv in levels}
    used = {lv: 0 for lv in levels}  # rows of the level consumed so far
    model.train()
    losses = []
    for step in range(steps):
        lv = cycle[step % len(cycle)]
        ids, att, labels = data[lv]
        n = pool[lv]  # a multiple of bs: a batch never straddles two epochs
        start = used[lv] % n
        idx = order[lv][start: start + bs]
        used[lv] += bs
        if used[lv] % n == 0:  # epoch done: reshuffle the level's rows for the next one
            order[lv] = torch.randperm(n, generator=gen)
        T = int(att[idx].sum(1).max())  # trim the batch's padding
        out = model(input_ids=ids[idx, :T], attention_mask=att[idx, :T], labels=labels[idx, :T])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.detach().item())
        if on_step is not None:
            on_step(step + 1, model)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  warm-start step {step:5d}/{steps}  loss(avg last 50) {tail_loss(losses):.4f}  "
                  f"lr {sched.get_last_lr()[0]:.2e}", flush=True)
    model.eval()
    return losses


def sft_rows(recipe: dict[str, Any], level: int, n: int) -> list[dict[str, Any]]:
    """The ``n`` warm-start rows of ``level``: arithmetic reference solutions, or chain ``train``
    rows of which a seeded fraction ``recipe["noise"]`` has its product corrupted."""
    seed = recipe["seed"]
    if recipe.get("task") != "chain":
        return arithmetic.generate(n, seed=10_000 + 100 * seed + level, levels=(level,))
    rows = chain.generate(n, seed=10_000 + seed, split="train")
    rng = random.Random(f"echorl/tiny-chain/noise/{seed}")
    q = float(recipe.get("noise", 0.0))
    return [dict(r, solution=chain.corrupt_hard_step(r, rng)) if rng.random() < q else r for r in rows]


def eval_rows(recipe: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Held-out rows for the build's success report: arithmetic (every level) or chain ``dev``."""
    if recipe.get("task") == "chain":
        return chain.generate(n, split="dev")
    return arithmetic.generate(n, seed=20_000 + recipe["seed"])


def tail_loss(losses: Sequence[float], n: int = 50) -> float:
    """Mean of the last ``n`` losses (one batch is one level: a single loss is noisy)."""
    tail = list(losses[-n:])
    return sum(tail) / len(tail) if tail else float("nan")


@torch.no_grad()
def sample_success(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], temperature: float = 1.0,
                   max_new_tokens: int = 96, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Sampled success rate (one rollout per row, pure sampling at ``temperature``), per level.

    Returns ``{"overall": acc, "level/1": acc, ...}``.
    """
    torch.manual_seed(seed)
    model.eval()
    hits: dict[int, list[float]] = {}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        ids = encode_prompts(tokenizer, format_prompts(tokenizer, [r["prompt"] for r in chunk], "true"))
        gen = generate_left_padded(model, ids, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                                   max_new_tokens=max_new_tokens, temperature=temperature)
        texts = tokenizer.batch_decode(gen.responses, skip_special_tokens=True)
        for r, t in zip(chunk, texts):
            hits.setdefault(int(r.get("level", 0)), []).append(arithmetic.score(t, r["answer"]))
    res = {"overall": sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))}
    res.update({f"level/{k}": sum(v) / len(v) for k, v in sorted(hits.items())})
    return res


def build_tiny_model(out_dir: str | os.PathLike, recipe: dict[str, Any] = RECIPE, eval_rows: int = 500,
                     log_every: int = 0) -> dict[str, Any]:
    """Build, warm-start, evaluate and save the tiny model to ``out_dir`` (a normal HF folder).

    Written to a temporary sibling folder and renamed into place, so concurrent builders never
    see a half-written folder. Returns the metadata written to ``echorl_tiny.json``. Runs on
    ``recipe["threads"]`` torch threads (restored afterwards).
    """
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(int(recipe.get("threads", 1)))
    try:
        return _build(Path(out_dir), recipe, eval_rows, log_every)
    finally:
        torch.set_num_threads(prev_threads)


def _build(out_dir: Path, recipe: dict[str, Any], n_eval: int, log_every: int) -> dict[str, Any]:
    from transformers import Qwen2ForCausalLM

    t0 = time.time()
    torch.manual_seed(recipe["seed"])
    random.seed(recipe["seed"])
    tok = build_char_tokenizer()
    model = Qwen2ForCausalLM(tiny_config(len(tok), recipe, tok.eos_token_id))
    losses = warm_start(model, tok, recipe, log_every=log_every)
    return finish_build(model, tok, out_dir, recipe, n_eval, losses, time.time() - t0)


def finish_build(model: Any, tok: Any, out_dir: str | os.PathLike, recipe: dict[str, Any], n_eval: int,
                 losses: Sequence[float] = (), t_train: float | None = None) -> dict[str, Any]:
    """Evaluate a warm-started ``model`` of ``recipe`` and save it with its metadata to ``out_dir``
    (what :func:`build_tiny_model` does after :func:`warm_start`). Returns the metadata."""
    from transformers import GenerationConfig

    acc = sample_success(model, tok, eval_rows(recipe, n_eval)) if n_eval else {}
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=96,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    meta = {
        "recipe": dict(recipe),
        "num_params": sum(p.numel() for p in model.parameters()),
        "final_loss": tail_loss(losses) if losses else None,  # mean of the last 50 steps
        "warm_start_seconds": None if t_train is None else round(t_train, 1),
        "sampled_success_T1": acc,
        "boundary_ids": list(boundary_ids(tok)),
    }
    if recipe.get("task") == "chain" and n_eval:  # groups of 8 at T=1.0: the regime GRPO/EchoRL start from
        meta["regime_T1"] = rollout_regime(model, tok, chain.generate(min(n_eval, 128), split="dev"), chain.score,
                                           n=8, temperature=1.0, seed=recipe["seed"])
    save_folder_atomic(model, tok, Path(out_dir), META_FILE, meta)
    return meta


def _cached_ok(path: Path, recipe: dict[str, Any]) -> bool:
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("recipe") == dict(recipe)


def load_tiny_model(cache_dir: str | os.PathLike | None = None, build_if_missing: bool = True,
                    recipe: dict[str, Any] = RECIPE):
    """``(model, tokenizer)`` of the warm-started tiny model, built once into ``cache_dir``.

    Args:
        cache_dir: model folder. Default: the model shipped in the package
            (``echorl/assets/tiny-qwen2-char``, loaded read-only) when it was built from ``recipe``,
            else :func:`default_cache_dir`.
        build_if_missing: build (about a minute) when the folder is missing or was built from another
            recipe; with ``False`` that raises ``FileNotFoundError``.
        recipe: the build recipe (default :data:`RECIPE`); tests pass a shorter one.
    """
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    if cache_dir is not None:
        path = Path(cache_dir)
    elif _cached_ok(shipped_dir(recipe), recipe):  # the shipped build of this recipe: nothing to build
        path = shipped_dir(recipe)
    else:
        path = default_cache_dir(recipe)
    if not _cached_ok(path, recipe):
        if not build_if_missing:
            raise FileNotFoundError(
                f"no tiny model built from this recipe (version {recipe['version']}) in {path}; build it with "
                f"`python scripts/build_tiny_model.py --out {path}` or load_tiny_model(build_if_missing=True)"
            )
        build_tiny_model(path, recipe)
    tok = AutoTokenizer.from_pretrained(path)
    model = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tok
