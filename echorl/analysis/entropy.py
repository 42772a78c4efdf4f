"""Token- and step-entropy profiles of expert vs self-generated solutions (docs/analysis.md).

The evidence EchoRL's rule rests on (docs/method.md, "Steps" and "Step entropy and the clip"):
expert solutions carry higher token entropy under the policy than the policy's own correct
rollouts, and a solution's information sits in its highest-entropy steps. This module measures
both on any model the engine loads:

    rows (task or file) -> solutions: expert (the row's reference solution), self-generated
      (sampled with :func:`echorl.generation.generate_left_padded`, graded by the task's verifier: correct / wrong), or the
      rollouts of an EchoClip dump (``echo_clips.json``)
    -> token entropy: :func:`echorl.logprobs.old_policy_pass`, the engine's old-policy pass
       (no gradient; the only vocabulary-sized temporary is one chunk's ``[c, L, V]`` logits)
    -> steps: :func:`echorl.core.segment_steps`; step entropy :func:`echorl.core.steps.step_aggregates`;
       peak step and height :func:`echorl.select_echo_clips` (the method's own argmax and tie rule)
    -> per-solution profiles, a per-kind summary (JSON) and a figure (PNG).

Shapes: ``N`` solutions, ``L`` response tokens, ``S`` steps. Run: ``echorl analyze entropy --help``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echorl.core.clips import select_echo_clips
from echorl.core.config import EchoConfig
from echorl.core.steps import boundary_ids_tensor, segment_steps, step_aggregates
from echorl.generation import generate_left_padded
from echorl.logprobs import old_policy_pass
from echorl.prompts import encode_prompts, format_prompts
from echorl.rewards.math import compute_score as math_score
from echorl.tasks import compute_score, load_dataset

__all__ = ["KINDS", "Solution", "dump_solutions", "encode_prompts_of", "expert_solutions", "expert_text", "generate", "grade",
           "pad_batch", "paired_differences", "profile_solutions", "rows_with_user_prompts", "self_solutions", "summarize",
           "token_entropies"]

KINDS = ("expert", "correct", "wrong")


@dataclass
class Solution:
    """One (prompt, response) pair to profile.

    ``prompt_ids`` is the chat-formatted prompt as the model sees it; ``response_ids`` the response
    tokens, ending with EOS when the response ended (expert solutions get one appended, as in the
    tiny model's warm start); ``row`` indexes the rows it came from (-1: from a dump).
    """

    kind: str
    prompt_ids: list[int]
    response_ids: list[int]
    row: int
    score: float
    prompt: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- rows and solutions
def _user_text(prompt: Any) -> str:
    """A row's prompt as user text: a string, or the last user message of a chat list (verl's layout)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise ValueError(f"prompt must be a string or a list of chat messages with a user message, got {prompt!r:.120}")


def expert_text(row: dict[str, Any]) -> str | None:
    """The expert solution of a row: ``solution`` (echorl tasks) or ``target`` (verl/LUFFY parquet:
    a string, a message dict or a list of messages, the last assistant ``content``); None if absent."""
    for key in ("solution", "target"):
        v = row.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        elif isinstance(v, (list, tuple)) and v and all(isinstance(m, dict) for m in v):
            msgs = [m.get("content") for m in v if m.get("role", "assistant") == "assistant"]
            v = msgs[-1] if msgs else None
        if isinstance(v, str) and v.strip():
            return v
    return None


def rows_with_user_prompts(source: str, n: int | None, seed: int = 0, levels: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Rows of a registered task (generated) or a ``.jsonl`` / ``.json`` / ``.parquet`` file, with
    ``prompt`` as user text (:func:`echorl.tasks.load_dataset` does the loading and field checks)."""
    kw = {"levels": tuple(levels)} if levels else {}
    rows = load_dataset(source, n=n, seed=seed, **kw)
    return [{**r, "prompt": _user_text(r["prompt"])} for r in rows]


def encode_prompts_of(tokenizer: Any, rows: Sequence[dict[str, Any]], chat_template: str = "auto") -> list[list[int]]:
    """Chat-formatted prompt ids, exactly as the engine builds them (:mod:`echorl.prompts`)."""
    return encode_prompts(tokenizer, format_prompts(tokenizer, [r["prompt"] for r in rows], chat_template))


def grade(row: dict[str, Any], text: str) -> float:
    """The row's verifier on ``text``: the task whose ``data_source`` matches (``echorl.tasks``), else
    the math verifier (``echorl.rewards.math``, last ``\\boxed{}``)."""
    ds = str(row.get("data_source", ""))
    try:
        return float(compute_score(ds, text, row["answer"], row.get("extra_info")))
    except ValueError:
        return float(math_score(ds, text, row["answer"], row.get("extra_info")))


def expert_solutions(tokenizer: Any, rows: Sequence[dict[str, Any]], prompt_ids: Sequence[list[int]]) -> list[Solution]:
    """One ``expert`` solution per row that has one (reference text + EOS), graded by the verifier."""
    eos = tokenizer.eos_token_id
    out = []
    for i, (r, p) in enumerate(zip(rows, prompt_ids)):
        text = expert_text(r)
        if text is None:
            continue
        ids = list(tokenizer.encode(text, add_special_tokens=False)) + [eos]
        out.append(Solution("expert", list(p), ids, i, grade(r, text), str(r["prompt"])))
    return out


def pad_batch(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """verl's layout of ``N`` pairs: prompts left-padded, responses right-padded.

    Returns:
        ``input_ids [N, P+L] long``, ``attention_mask [N, P+L] long``, ``responses [N, L] long``,
        ``response_mask [N, L] long``.
    """
    P = max(len(p) for p in prompt_ids)
    L = max(1, max(len(r) for r in response_ids))
    N = len(prompt_ids)
    ids = torch.full((N, P + L), pad_id, dtype=torch.long)
    att = torch.zeros((N, P + L), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p):P] = torch.tensor(list(p), dtype=torch.long)
        ids[i, P:P + len(r)] = torch.tensor(list(r), dtype=torch.long)
        att[i, P - len(p):P + len(r)] = 1
    return ids.to(device), att.to(device), ids[:, P:].to(device), att[:, P:].to(device)


def generate(model: Any, prompt_ids: Sequence[Sequence[int]], *, eos_ids: Sequence[int], pad_id: int,
             max_new_tokens: int, temperature: float, batch_size: int = 16, seed: int = 0,
             top_p: float = 1.0) -> list[list[int]]:
    """Continue each prompt (:func:`echorl.generation.generate_left_padded`, in batches of
    ``batch_size`` prompts on the model's device).

    ``temperature == 0`` decodes greedily; otherwise samples (seeded by ``seed`` per batch).
    Returns each continuation up to and including its first EOS (or ``max_new_tokens`` tokens).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    eos = sorted(set(int(e) for e in eos_ids))
    out: list[list[int]] = []
    for b, s in enumerate(range(0, len(prompt_ids), batch_size)):
        torch.manual_seed(seed * 100003 + b)
        gen = generate_left_padded(model, prompt_ids[s:s + batch_size], eos_ids=eos, pad_id=pad_id,
                                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        lens = gen.response_mask.sum(-1).tolist()  # up to and including the first EOS
        out.extend(row[:k] for row, k in zip(gen.responses.tolist(), lens))
    return out


def self_solutions(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], prompt_ids: Sequence[list[int]], *,
                   n: int, eos_ids: Sequence[int], pad_id: int, max_new_tokens: int, temperature: float,
                   batch_size: int = 16, seed: int = 0) -> list[Solution]:
    """``n`` sampled responses per row, graded by the row's verifier: kind ``correct`` (score >= 1)
    or ``wrong``."""
    flat = [i for i in range(len(rows)) for _ in range(n)]
    resp = generate(model, [prompt_ids[i] for i in flat], eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_new_tokens,
                    temperature=temperature, batch_size=batch_size, seed=seed)
    texts = tokenizer.batch_decode(resp, skip_special_tokens=True)
    out = []
    for i, r, t in zip(flat, resp, texts):
        s = grade(rows[i], t)
        out.append(Solution("correct" if s >= 1.0 else "wrong", list(prompt_ids[i]), r, i, s, str(rows[i]["prompt"])))
    return out


def dump_solutions(path: str | Path, tokenizer: Any, chat_template: str = "auto") -> list[Solution]:
    """The rollouts of an EchoClip dump (``echo_clips.json`` or a folder holding one), re-encoded for
    this model: kind ``correct`` when the record's score is >= 1, else ``wrong``."""
    p = Path(path)
    p = p / "echo_clips.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"EchoClip dump not found: {p} (an echo_clips.json file or a run folder holding one)")
    records = json.loads(p.read_text())
    prompts = encode_prompts_of(tokenizer, [{"prompt": str(r.get("prompt", ""))} for r in records], chat_template)
    out = []
    for i, (r, pid) in enumerate(zip(records, prompts)):
        if not all(k in r for k in ("tokens", "score")):
            raise ValueError(f"{p}: record {i} lacks 'tokens' or 'score' (has {sorted(r)})")
        ids = list(tokenizer.encode("".join(r["tokens"]), add_special_tokens=False))
        if not ids:
            continue
        s = float(r["score"])
        out.append(Solution("correct" if s >= 1.0 else "wrong", pid, ids, -1, s, str(r.get("prompt", "")),
                            {"source": str(p)}))
    return out


# ---------------------------------------------------------------------------- entropy and profiles
def token_entropies(model: Any, solutions: Sequence[Solution], *, pad_id: int, temperature: float = 1.0,
                    chunk_rows: int = 8) -> list[torch.Tensor]:
    """Token entropy of every response token (``[L_i] float32`` per solution, on CPU).

    Solutions are sorted by length and fed ``chunk_rows`` at a time to the engine's old-policy pass
    (:func:`echorl.logprobs.old_policy_pass`), which projects only the response positions onto
    the vocabulary and holds one chunk's ``[chunk_rows, L, V]`` logits at a time.
    """
    device = next(model.parameters()).device
    order = sorted(range(len(solutions)), key=lambda i: len(solutions[i].prompt_ids) + len(solutions[i].response_ids))
    out: list[torch.Tensor | None] = [None] * len(solutions)
    for s in range(0, len(order), chunk_rows):
        idx = order[s:s + chunk_rows]
        ids, att, resp, rmask = pad_batch([solutions[i].prompt_ids for i in idx],
                                          [solutions[i].response_ids for i in idx], pad_id, device)
        _, ent = old_policy_pass(model, ids, att, resp, temperature, chunk_rows)  # [c, L]
        for j, i in enumerate(idx):
            out[i] = ent[j, :len(solutions[i].response_ids)].float().cpu()
    return out  # type: ignore[return-value]


def profile_solutions(solutions: Sequence[Solution], entropies: Sequence[torch.Tensor], boundary_ids: Sequence[int],
                      step_agg: str = "mean", min_step_tokens: int = 1) -> list[dict[str, Any]]:
    """Per-solution step profile.

    Returns one dict per solution: ``kind``, ``row``, ``score``, ``tokens``, ``token_h`` (mean token
    entropy), ``step_h`` (``[S]`` step aggregates), ``step_len`` (``[S]`` tokens per step),
    ``num_steps``, ``peak_step`` (the method's peak: argmax over steps with >= ``min_step_tokens``
    tokens, ties to the earliest), ``peak_h``, ``peak_pos`` (``peak_step / (S - 1)``: 0 = first step,
    1 = last; NaN when ``S == 1``) and ``peak_excess`` (``peak_h`` minus the mean step aggregate).
    """
    if not solutions:
        return []
    resp = [s.response_ids for s in solutions]
    _, _, responses, mask = pad_batch([[0]] * len(resp), resp, 0)  # [N, L]
    ent = torch.zeros(responses.shape, dtype=torch.float32)
    for i, e in enumerate(entropies):
        ent[i, :len(e)] = e
    valid = mask.bool()
    step_id, num_steps, _ = segment_steps(responses, valid, boundary_ids_tensor(boundary_ids, responses.device))
    S = max(1, int(num_steps.max()))
    h, count = step_aggregates(step_id, ent, S, step_agg)  # [N, S]
    cfg = EchoConfig(boundary_token_ids=tuple(boundary_ids), step_agg=step_agg, min_step_tokens=min_step_tokens,
                     scope="success", per="rollout", selector="peak", success_threshold=1.0)
    sel = select_echo_clips(responses, valid, ent, torch.ones(len(resp)), torch.arange(len(resp)), cfg)
    out = []
    for i, s in enumerate(solutions):
        n = int(num_steps[i])
        k = int(sel.clip_end_step[i])
        hs = h[i, :n].tolist()
        out.append({
            "kind": s.kind, "row": s.row, "score": s.score, "tokens": len(s.response_ids),
            "token_h": float(entropies[i].mean()) if len(entropies[i]) else float("nan"),
            "step_h": hs, "step_len": count[i, :n].tolist(), "num_steps": n, "peak_step": k,
            "peak_h": float(sel.peak_h[i]) if k >= 0 else float("nan"),
            "peak_pos": k / (n - 1) if k >= 0 and n > 1 else float("nan"),
            "peak_excess": float(sel.peak_h[i]) - float(np.mean(hs)) if k >= 0 else float("nan"),
        })
    return out


def _mean_ci(x: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation and a normal 95% interval of the mean (NaNs dropped)."""
    a = np.asarray([v for v in x if v is not None and math.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "mean": float("nan"), "sd": float("nan"), "ci95": [float("nan"), float("nan")]}
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    half = 1.96 * sd / math.sqrt(a.size)
    return {"n": int(a.size), "mean": float(a.mean()), "sd": sd, "ci95": [float(a.mean() - half), float(a.mean() + half)]}


def summarize(profiles: Sequence[dict[str, Any]], num_bins: int = 5) -> dict[str, Any]:
    """Per kind: token entropy (per solution, and pooled over tokens), step entropy, steps per
    solution, peak position / height / excess, the share of peaks on the last step, the mean step
    entropy per relative-position bin (``num_bins`` bins of ``k / (S - 1)``) and, for profiles with a
    ``hard_step`` (the step the task marks as hard), the share whose peak is that step."""
    out: dict[str, Any] = {}
    for kind in KINDS:
        ps = [p for p in profiles if p["kind"] == kind]
        if not ps:
            continue
        steps = [h for p in ps for h in p["step_h"]]
        tok_total = sum(p["tokens"] for p in ps)
        pooled = sum(p["token_h"] * p["tokens"] for p in ps) / max(tok_total, 1)
        multi = [p for p in ps if p["num_steps"] > 1]
        bins = [[] for _ in range(num_bins)]
        for p in multi:
            for k, h in enumerate(p["step_h"]):
                bins[min(num_bins - 1, int(k / (p["num_steps"] - 1) * num_bins))].append(h)
        out[kind] = {
            "solutions": len(ps), "tokens": tok_total, "token_h_pooled": pooled,
            "token_h": _mean_ci([p["token_h"] for p in ps]),
            "step_h": _mean_ci(steps),
            "num_steps": _mean_ci([p["num_steps"] for p in ps]),
            "peak_h": _mean_ci([p["peak_h"] for p in ps]),
            "peak_excess": _mean_ci([p["peak_excess"] for p in ps]),
            "peak_pos": _mean_ci([p["peak_pos"] for p in multi]),
            "peak_on_last_step": float(np.mean([p["peak_step"] == p["num_steps"] - 1 for p in multi])) if multi else float("nan"),
            "step_h_by_position": [float(np.mean(b)) if b else float("nan") for b in bins],
        }
        marked = [p for p in ps if p.get("hard_step") is not None]
        if marked:  # tasks that mark their hard step (the chain testbed's extra_info.hard_step)
            out[kind]["peak_is_hard_step"] = float(np.mean([p["peak_step"] == p["hard_step"] for p in marked]))
    out["paired"] = paired_differences(profiles)
    return out


def paired_differences(profiles: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Same-prompt comparisons, free of the difficulty mix: for every row with an expert solution
    and at least one self-generated correct one, ``expert - mean(correct)`` of the mean token
    entropy, the mean step entropy and the peak height (mean over rows and a 95% interval)."""
    by_row: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for p in profiles:
        if p["row"] >= 0:
            by_row.setdefault(p["row"], {}).setdefault(p["kind"], []).append(p)
    both = [v for v in by_row.values() if "expert" in v and "correct" in v]
    out: dict[str, Any] = {"rows": len(both)}
    for key, f in (("token_h", lambda p: p["token_h"]), ("step_h", lambda p: float(np.mean(p["step_h"])) if p["step_h"] else float("nan")),
                   ("peak_h", lambda p: p["peak_h"])):
        out[f"expert_minus_correct_{key}"] = _mean_ci([f(v["expert"][0]) - float(np.mean([f(c) for c in v["correct"]]))
                                                       for v in both])
    return out
