"""A transformers-``generate`` rollout for verl on CPU (``actor_rollout_ref.rollout.name=hf_cpu``).

verl's rollouts are servers (vLLM, SGLang) that its agent loop calls token-in/token-out. On CPU
there is none, so this module provides the three pieces verl expects, with the same contracts:

* :class:`HFGenerateServer`: the server, a Ray actor holding a ``transformers`` causal LM.
  ``async generate(prompt_ids, sampling_params, request_id, ...) -> TokenOutput(token_ids,
  log_probs, extra_fields={"global_steps": ...})`` samples with ``model.generate`` (one request
  at a time; the model is tiny) and returns the log-prob of every sampled token at the sampling
  temperature; ``update_weights`` loads a state dict; the lifecycle calls verl makes (``wake_up``,
  ``sleep``, ``clear/release/resume_kv_cache``, ``abort_all_requests``, ``resume_generation``,
  ``wait_for_requests_to_drain``, ``start/stop_profile``) are no-ops: there is no KV cache to
  free and nothing runs between calls.
* :class:`HFReplica`: verl's ``RolloutReplica`` (registered in ``RolloutReplicaRegistry``) that
  starts one server per replica (an unnamed actor, so several runs can share one Ray session) and
  hands its handle to the replica's trainer workers.
* :class:`HFServerAdapter`: the worker-side ``BaseRollout`` (verl's ``_ROLLOUT_REGISTRY``). In
  sync mode verl's "naive" weight sync calls its ``update_weights`` on every trainer rank with
  ``engine.get_per_tensor_param()`` (FSDP2 full-tensor gathers, a collective: every rank consumes
  it); rank 0 of a replica ships the tensors to its server.

Sampling is reproducible when verl's ``rollout.full_determinism=true`` (request ids ``det-<row>``):
each request seeds torch from ``(rollout.seed, global_steps, request_id, prompt, k)``, ``k`` counting
identical requests within one weight version. verl gives the ``n`` rollouts of a prompt the same
request id, so without ``k`` a group would hold ``n`` copies of one sample; with it the group's
samples are fixed, though which row receives which depends on arrival order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import ray
import torch
from verl.utils import normalize_token_ids
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from echorl.generation import generate_left_padded

logger = logging.getLogger(__name__)

# replica rank -> its server's actor handle, in each trainer worker process (set by HFReplica)
_SERVERS: dict[int, Any] = {}


def _attach_server(worker: Any, server: Any, replica_rank: int) -> None:
    """Runs inside a trainer worker (``__ray_call__``): remember the replica's server handle."""
    _SERVERS[replica_rank] = server


def request_seed(base_seed: int, global_steps: int, request_id: str) -> int:
    """A 63-bit torch seed from the rollout seed, the weight version and the request id."""
    digest = hashlib.sha256(f"{base_seed}/{global_steps}/{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class HFGenerateServer:
    """The CPU rollout server (a Ray actor): a transformers causal LM behind verl's generate contract."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config  # verl RolloutConfig
        self.replica_rank = replica_rank
        # verl hands the replica either its HFModelConfig or the raw actor_rollout_ref.model node
        path = getattr(model_config, "local_path", None) if not hasattr(model_config, "_get_node") else None
        path = path or model_config.get("path")
        remote_code = bool(model_config.get("trust_remote_code", False)) if hasattr(model_config, "get") \
            else bool(model_config.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=remote_code
        ).eval()
        gen_eos = self.model.generation_config.eos_token_id
        eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos[0]
        self.max_model_len = int(config.max_model_len or (config.prompt_length + config.response_length))
        self.global_steps: int | None = None
        self._seen: dict[str, int] = {}  # identical requests so far under this weight version
        self._lock = asyncio.Lock()

    async def ready(self) -> bool:
        return True

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> TokenOutput:
        """Sample one response (``[R]`` token ids, at most ``response_length``) for ``prompt_ids``."""
        if image_data or video_data or audio_data:
            raise NotImplementedError("the hf_cpu rollout serves text models only (got multimodal inputs)")
        params = dict(sampling_params)
        prompt_ids = [int(t) for t in normalize_token_ids(prompt_ids)]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room within max_model_len {self.max_model_len}")
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if max_tokens is None:
            max_tokens = min(self.config.response_length,
                             self.config.prompt_length + self.config.response_length - len(prompt_ids))
        max_tokens = max(1, min(int(max_tokens), room))
        temperature = float(params.get("temperature", 1.0))
        top_k = int(params.get("top_k", -1))
        top_p = float(params.get("top_p", 1.0))
        async with self._lock:
            ident = f"{request_id}/{hashlib.sha256(str(prompt_ids).encode()).hexdigest()[:16]}"
            k = self._seen.get(ident, 0)
            self._seen[ident] = k + 1
            seed = request_seed(int(self.config.seed), int(self.global_steps or 0), f"{ident}/{k}")
            token_ids, log_probs = await asyncio.to_thread(
                self._sample, prompt_ids, max_tokens, temperature, top_k, top_p,
                float(params.get("repetition_penalty", 1.0)), seed,
            )
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if params.get("logprobs") else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    @torch.no_grad()
    def _sample(self, prompt_ids, max_tokens, temperature, top_k, top_p, repetition_penalty, seed):
        torch.manual_seed(seed)
        greedy = temperature <= 0
        extra = {"repetition_penalty": repetition_penalty} if repetition_penalty != 1.0 else {}
        gen = generate_left_padded(self.model, [prompt_ids], eos_ids=self.eos_ids, pad_id=self.pad_id,
                                   max_new_tokens=max_tokens, temperature=0.0 if greedy else temperature, top_p=top_p,
                                   top_k=top_k, return_dict_in_generate=True, output_logits=True, **extra)
        out = gen.output
        new = gen.responses[0].tolist()  # [R], ends with EOS unless cut by the budget
        logits = torch.stack(out.logits, dim=1)[0, : len(new)].float()  # [R, V] raw logits
        if not greedy:
            logits = logits / temperature
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(new)[:, None])[:, 0]  # [R]
        return new, log_probs.tolist()

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the trainer's full weights (HF names). Every model tensor must be covered, except the
        output head when it is tied to the input embeddings. Returns the number of tensors loaded."""
        async with self._lock:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            if isinstance(getattr(self.model, "_tied_weights_keys", None), dict):
                tied = set(self.model._tied_weights_keys)
            missing = [k for k in missing if k not in tied]
            if missing or unexpected:
                raise RuntimeError(f"hf_cpu rollout: weight sync does not match the model (missing {missing}, "
                                   f"unexpected {unexpected})")
            if self.model.config.tie_word_embeddings:
                self.model.tie_weights()
            self.global_steps = global_steps
            self._seen.clear()
        return len(state)

    # verl's lifecycle calls: nothing to do on CPU (no KV cache kept between calls, no device memory)
    async def wake_up(self): ...
    async def sleep(self): ...
    async def clear_kv_cache(self): ...
    async def release_kv_cache(self): ...
    async def resume_kv_cache(self): ...
    async def resume_generation(self): ...
    async def wait_for_requests_to_drain(self): ...
    async def start_profile(self, **kwargs): ...
    async def stop_profile(self): ...

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}


class HFReplica(RolloutReplica):
    """verl rollout replica of the CPU rollout: one :class:`HFGenerateServer` (tensor parallel 1)."""

    async def launch_servers(self):
        if self.is_reward_model or self.is_teacher_model:
            raise NotImplementedError("the hf_cpu rollout serves the policy only (no reward or teacher model on CPU)")
        if self.world_size != 1:
            raise ValueError(f"the hf_cpu rollout runs tensor/data/pipeline parallel 1; got a replica world size of "
                             f"{self.world_size}. Fix: actor_rollout_ref.rollout.tensor_model_parallel_size=1")
        server = ray.remote(HFGenerateServer).options(num_cpus=0, max_concurrency=self.max_concurrency).remote(
            config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        await server.ready.remote()
        await asyncio.gather(*[w.__ray_call__.remote(_attach_server, server, self.replica_rank) for w in self.workers])
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf_cpu_replica_{self.replica_rank}{self.name_suffix}"


class HFServerAdapter(BaseRollout):
    """Worker-side rollout of ``hf_cpu``: forwards the trainer's weights to the replica's server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        size = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                * self.config.pipeline_model_parallel_size)
        self.replica_rank = rank // size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % size
        self.is_leader_rank = self.rollout_rank == 0
        self.sleep_level = 1

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        """Consume ``weights`` (``(name, full tensor)`` pairs; a collective on every rank) and, on the
        replica's leader rank, load them into its server."""
        if wire_format != "named_tensors":
            raise ValueError(f"hf_cpu rollout: weight wire format {wire_format!r} is not supported (named_tensors only)")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("hf_cpu rollout: LoRA adapters are not supported; merge them (model.lora.merge=true)")
        state = {}
        for name, tensor in weights:
            if self.is_leader_rank:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader_rank:
            if self.replica_rank not in _SERVERS:
                raise RuntimeError(f"hf_cpu rollout: replica {self.replica_rank} has no server in this worker; its "
                                   "HFReplica did not launch (verl builds the replicas before the first weight sync)")
            await _SERVERS[self.replica_rank].update_weights.remote(state, kwargs.get("global_steps"))
