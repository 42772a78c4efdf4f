"""Log-probs and token entropy of the policy: the old-policy pass and the training forward
(SPEC 2.2 "token entropy from the old-policy pass").

Sequences use verl's left-right padded layout: ``input_ids = [prompts | responses]`` with
``prompts [B, P]`` left-padded and ``responses [B, L]`` right-padded, ``attention_mask [B, P+L]``
and ``position_ids = cumsum(attention_mask) - 1`` (clipped at 0). The log-prob of response token
``j`` is read from the logits at position ``P - 1 + j``. Logits are divided by the sampling
temperature first, as verl's engines do (``logits.div_(temperature)``), so the entropy is the
entropy of the distribution the token was sampled from (before top-p/top-k truncation, as in verl).

Only the last ``L + 1`` positions are projected onto the vocabulary (``logits_to_keep``), and the
old-policy pass runs in row chunks: the largest temporary is one chunk's ``[c, L, V]`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from echorl.models.attention import gqa_attention

__all__ = ["position_ids_from_mask", "response_logits", "token_logprob_entropy", "old_policy_pass",
           "policy_logprobs", "pack_for_verl", "trim_padding", "bucketed_logprobs", "BUCKET_ROWS"]

# Rows per length bucket of a forward (bucketed_logprobs): small enough that short rows skip the
# long rows' padding, large enough to keep the matrix products efficient.
BUCKET_ROWS = 16


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T] long`` position ids of a left/right padded batch: ``cumsum(mask) - 1`` clipped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def trim_padding(attention_mask: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """Columns ``[c0, c1)`` of a (sub-)batch outside which every row is padding.

    Left-padded prompts and right-padded responses leave all-padding columns at both ends of a
    sub-batch whose rows are shorter than the whole batch's longest. Dropping them changes no
    log-prob (position ids come from the mask's cumsum, padded keys are masked out, the model is
    causal); only the work shrinks. ``c0 <= P - 1`` (the last prompt token, which predicts response
    token 0, is valid in every row) and ``c1 >= P + 1``.

    Args:
        attention_mask: ``[b, P+L]``; prompt_len: ``P``.

    Returns:
        ``(c0, c1)``: keep ``input_ids[:, c0:c1]``; the prompt part becomes ``P - c0`` long and the
        response part ``c1 - P``.
    """
    cols = attention_mask.any(0).nonzero()  # [k, 1] columns valid in some row
    c0 = min(int(cols[0]), prompt_len - 1) if len(cols) else prompt_len - 1
    c1 = max(int(cols[-1]) + 1, prompt_len + 1) if len(cols) else prompt_len + 1
    return c0, c1


def response_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    response_len: int, temperature: float) -> torch.Tensor:
    """Temperature-scaled logits predicting the response tokens.

    Args:
        input_ids: ``[b, P+L] long``; attention_mask: ``[b, P+L]``.
        response_len: ``L``.

    Returns:
        ``[b, L, V] float32``: row ``j`` predicts response token ``j`` (model position ``P-1+j``).
    """
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                logits_to_keep=response_len + 1)
    logits = out.logits[:, :-1, :]  # [b, L, V]: drop the prediction after the last token
    return logits.float() / temperature


def token_logprob_entropy(logits: torch.Tensor, tokens: torch.Tensor, with_entropy: bool = True):
    """Log-prob of ``tokens`` and entropy of each row distribution, from one chunk of logits.

    ``entropy = logsumexp(z) - sum_v softmax(z)_v z_v`` (verl's ``entropy_from_logits``).

    Args:
        logits: ``[b, L, V] float`` (already temperature-scaled).
        tokens: ``[b, L] long``.

    Returns:
        ``(log_prob [b, L] float32, entropy [b, L] float32 or None)``.
    """
    lse = torch.logsumexp(logits, dim=-1)  # [b, L]
    log_prob = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse  # [b, L]
    if not with_entropy:
        return log_prob, None
    p = torch.softmax(logits, dim=-1)  # [b, L, V] (one chunk)
    entropy = lse - (p * logits).sum(-1)  # [b, L]
    return log_prob, entropy


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the engine's ``trainer.device``)."""
    return next(model.parameters()).device


@torch.no_grad()
def old_policy_pass(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    responses: torch.Tensor, temperature: float, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The old-policy pass: log-probs and token entropy of every response token, no gradient.

    Runs ``ceil(B / chunk_rows)`` chunks, each in length buckets (:func:`bucketed_logprobs`); the
    vocabulary-sized temporaries are those of one bucket (at most ``[chunk_rows, L, V]``).

    Args:
        input_ids: ``[B, P+L] long``; attention_mask: ``[B, P+L]``; responses: ``[B, L] long``.
        temperature: the rollout temperature.
        chunk_rows: rows per forward (``rollout.log_prob_micro_batch_size_per_gpu``).

    Returns:
        ``(old_log_probs [B, L] float32, entropy [B, L] float32)`` on the CPU (the batch's device,
        whatever the model's); values at padded positions are meaningless (mask them with
        ``response_mask``).
    """
    was_training = model.training
    model.eval()
    lps, ents = [], []
    with gqa_attention(model):
        for s in range(0, input_ids.shape[0], chunk_rows):
            lp, ent = bucketed_logprobs(model, input_ids[s:s + chunk_rows], attention_mask[s:s + chunk_rows],
                                        responses[s:s + chunk_rows], temperature, with_entropy=True)
            lps.append(lp.cpu())
            ents.append(ent.cpu())
    model.train(was_training)
    return torch.cat(lps), torch.cat(ents)


def bucketed_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      responses: torch.Tensor, temperature: float, *, with_entropy: bool,
                      bucket_rows: int | None = None):
    """Log-probs (and entropy) of a (micro-)batch, computed in length buckets.

    Rows are ordered by response length and cut into ``ceil(b / bucket_rows)`` buckets; each runs
    one forward on its own columns (:func:`trim_padding`), so short rows do not pay for the longest
    row of the batch. Results are put back in the input order: the same values as one forward over
    the whole ``[b, P+L]`` batch, up to float summation order. Gradient flows through.

    Args:
        input_ids: ``[b, P+L] long``; attention_mask: ``[b, P+L]``; responses: ``[b, L] long``
            (on any device: each bucket is moved to the model's).
        bucket_rows: rows per bucket (default :data:`BUCKET_ROWS`).

    Returns:
        ``(log_prob [b, L] float32, entropy [b, L] float32 or None)`` on the model's device; 0 past
        a bucket's longest response.
    """
    bucket_rows = BUCKET_ROWS if bucket_rows is None else bucket_rows
    b, L = responses.shape
    P = input_ids.shape[1] - L
    order = torch.argsort(attention_mask[:, P:].sum(-1), stable=True)  # [b] shortest responses first
    k = -(-b // max(1, bucket_rows))
    dev = model_device(model)
    lps, ents = [], []
    for rows in order.tensor_split(k):
        am = attention_mask[rows]
        c0, c1 = trim_padding(am, P)
        lp, ent = policy_logprobs(model, input_ids[rows, c0:c1].to(dev), am[:, c0:c1].to(dev),
                                  responses[rows, :c1 - P].to(dev), temperature, with_entropy=with_entropy)
        lps.append(F.pad(lp, (0, P + L - c1)))
        if ent is not None:
            ents.append(F.pad(ent, (0, P + L - c1)))
    back = torch.argsort(order).to(dev)  # [b] inverse permutation
    lp = torch.cat(lps)[back]
    return lp, (torch.cat(ents)[back] if ents else None)


def policy_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    responses: torch.Tensor, temperature: float, with_entropy: bool = False):
    """Training forward of one micro-batch (with gradient), over exactly the columns it is given.

    Returns:
        ``(log_prob [b, L] float32, entropy [b, L] float32 or None)``.
    """
    logits = response_logits(model, input_ids, attention_mask, responses.shape[1], temperature)
    return token_logprob_entropy(logits, responses, with_entropy=with_entropy)


def pack_for_verl(values: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Put response-aligned values into verl's packed ("no padding") model-output layout.

    verl's engines return ``model_output["log_probs"]`` as one flat tensor over the valid tokens
    of every sequence, where the entry at a token's position holds the log-prob of the *next*
    token; ``verl.workers.utils.padding.no_padding_2_padding`` (called by ``ppo_loss``) reads the
    response slice back. This is the inverse, so ``ppo_loss`` sees exactly what an engine gives it.

    Args:
        values: ``[b, L]`` response-aligned (log-probs or entropy; gradient flows through).
        attention_mask: ``[b, P+L]`` of the micro-batch.
        prompt_len: ``P``.

    Returns:
        ``[total_nnz]`` with ``total_nnz = attention_mask.sum()``.
    """
    b, L = values.shape
    full = values.new_zeros(b, attention_mask.shape[1])
    # the prediction of response token j sits at position P - 1 + j
    full = torch.cat([full[:, :prompt_len - 1], values, full[:, prompt_len - 1 + L:]], dim=1)  # [b, P+L]
    return full[attention_mask.bool()]
