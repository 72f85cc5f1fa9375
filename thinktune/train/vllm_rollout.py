"""`grpo.rollout_backend: vllm`: GRPO's completions sampled by vLLM in the training process (TRL's colocate mode).

    check_vllm_rollouts(cfg)                    # RL.check: one line without the vllm package or a CUDA GPU
    engine = VLLMRollouts(run, cfg.grpo)        # one engine per process, sharing the GPU with training
    ids = engine.sample(prompt_ids, G, max_new_tokens, temperature, stops)   # → completion token ids per sample

Each process holds its own engine (`distributed_executor_backend="external_launcher"`, tensor parallel 1, seeded
by train.seed and the process index) on a slice of the GPU's memory (`grpo.vllm_gpu_memory_utilization`) and samples
its own prompts, as TRL's colocate mode does. Before sampling, when the policy has stepped since the last sync, the
policy's weights go into the engine: a PEFT adapter merged into the base for the copy and unmerged after, names put
back in the layout of the model's checkpoint (`revert_weight_conversion`: fused experts split again), loaded with
vLLM's `load_weights`; the prefix cache is reset. What the recipe trains on is built from the token ids exactly as
for the Hugging Face backend (rollout.py), so the objective, log-probs and rewards do not know which backend
sampled. A resumed run samples with a fresh engine seed: the exact-resume guarantee is the `hf` backend's.
"""

from __future__ import annotations

import os
import socket

import torch

from thinktune.config import GRPOConfig, RunConfig
from thinktune.models.loading import resolve_model, vllm_model_path
from thinktune.train.run import Run


def check_vllm_rollouts(cfg: RunConfig) -> None:
    """Before anything loads: vLLM rollouts need the vllm package and a CUDA GPU."""
    if cfg.grpo.rollout_backend == "vllm":
        from thinktune.serve.vllm_backend import require_vllm

        require_vllm("grpo.rollout_backend=vllm", "use grpo.rollout_backend=hf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_named(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under its checkpoint's names (what vLLM's load_weights reads): PEFT's wrapping and its
    adapter tensors left out (call with the adapter merged), transformers' load-time conversions reverted."""
    from transformers.core_model_loading import revert_weight_conversion

    peft = hasattr(model, "peft_config")
    base = model.get_base_model() if peft else model
    prefix = getattr(model, "prefix", "lora_")
    tensors = {}
    for name, t in base.state_dict().items():
        if peft and (prefix in name or "original_module" in name):
            continue
        tensors[name.replace(".base_layer", "").replace("modules_to_save.default.", "")] = t
    return revert_weight_conversion(base, tensors)


class VLLMRollouts:
    """One colocated vLLM engine for this process; `sample` syncs the policy first when it changed."""

    def __init__(self, run: Run, g: GRPOConfig):
        from vllm import LLM

        acc, cfg = run.accelerator, run.cfg
        # vLLM's external launcher joins the process group torchrun / Accelerate already formed (or a group of one)
        os.environ.setdefault("RANK", str(acc.process_index))
        os.environ.setdefault("LOCAL_RANK", str(acc.local_process_index))
        os.environ.setdefault("WORLD_SIZE", str(acc.num_processes))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        source = resolve_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.revision)
        self.llm = LLM(
            model=vllm_model_path(source),
            dtype=cfg.model.dtype,
            gpu_memory_utilization=g.vllm_gpu_memory_utilization,
            max_model_len=cfg.data.max_length + g.max_completion_length,
            distributed_executor_backend="external_launcher",
            tensor_parallel_size=1,
            seed=cfg.train.seed + acc.process_index,
            skip_tokenizer_init=True,  # prompts go in as token ids, completions come back as token ids
            trust_remote_code=cfg.model.trust_remote_code,
            max_num_batched_tokens=4096,  # as TRL: the V1 memory profiler misjudges the default
        )
        acc.wait_for_everyone()
        self.policy = run.model
        self.synced_version: int | None = None

    def _version(self, model: torch.nn.Module) -> int:
        """Changes whenever a trainable tensor is written in place (an optimizer step, a resume, a rollback)."""
        return sum(p._version for p in model.parameters() if p.requires_grad)

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        version = self._version(model)
        if version == self.synced_version:
            return
        peft = hasattr(model, "peft_config")
        if peft:
            model.merge_adapter()
        try:
            weights = checkpoint_named(model)
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.model.load_weights(weights=list(weights.items()))
        finally:
            if peft:
                model.unmerge_adapter()
        self.llm.reset_prefix_cache()
        self.synced_version = self._version(model)

    def sample(
        self,
        model: torch.nn.Module,
        prompt_ids: list[list[int]],
        num_generations: int,
        max_new_tokens: int,
        temperature: float,
        stops: list[int],
    ) -> list[list[int]]:
        """`num_generations` completions per prompt (prompt-major, as repeat_interleave orders them), each ending
        with its stop token unless it ran out of tokens."""
        from vllm import SamplingParams

        self.sync(model)
        params = SamplingParams(
            n=num_generations,
            temperature=temperature,
            top_p=1.0,
            top_k=0,  # the policy itself, not a truncated version of it (as the hf backend samples)
            max_tokens=max_new_tokens,
            stop_token_ids=stops,
            detokenize=False,
        )
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        rows = []
        for request in outputs:
            for out in request.outputs:
                ids = list(out.token_ids)
                if out.finish_reason == "stop" and (not ids or ids[-1] not in stops):
                    ids.append(out.stop_reason if isinstance(out.stop_reason, int) else stops[0])
                rows.append(ids)
        return rows
