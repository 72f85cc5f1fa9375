"""GRPO recipe: reinforcement learning from verifiable rewards (Shao et al. 2024, DeepSeekMath §4; DeepSeek-R1).

    thinktune grpo --data bundled:arithmetic/train --rewards accuracy --rewards format
    thinktune grpo --config my.yaml --adapter runs/quickstart/adapter -o runs/grpo --set train.max_steps=30

The run skeleton is train/run.py; this recipe is its data (prompts with reference answers, rejected when longer than
data.max_length), its policy (method, or --adapter; train/policy.py) with the reference for the KL term, its
rollouts (train/rollout.py: sampling, scoring, dynamic sampling, μ reuse) and its objective (objectives/grpo.py).
The settings are the `grpo:` section of the run config (`--set grpo.num_generations=8`). plots/reward.png shows
the reward curves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console

from thinktune.config import DataConfig, GRPOConfig, RunConfig
from thinktune.data.cleaning import Cleaner
from thinktune.data.dataset_info import reference as dataset_reference
from thinktune.data.reading import LoadedRecords, Reject, check_bad_fraction, read_records
from thinktune.data.spec import DatasetSpec
from thinktune.errors import DataError
from thinktune.methods import count_parameters
from thinktune.train.engine.loggers import read_metrics
from thinktune.train.objectives.grpo import grpo_objective
from thinktune.train.policy import load_policy, reference_for
from thinktune.train.rewards import resolve_reward, resolve_step_reward, reward_name
from thinktune.train.rollout import PromptPool, RolloutReuse, RolloutState, rollout_batch, task_prompt
from thinktune.train.run import Run, balanced_weights, execute, optimizer_steps, prepare_training, train_loop
from thinktune.train.vllm_rollout import VLLMRollouts, check_vllm_rollouts

__all__ = ["GRPOConfig", "RL", "run_grpo"]


def _name(ref: str | DatasetSpec) -> str:
    return ref if isinstance(ref, str) else ref.path


def load_rl_tasks(cfg: DataConfig, files: list[str | DatasetSpec]) -> tuple[list[dict], list[Reject]]:
    """Prompt + answer records (any task format, or SFT records with an `answer` field), cleaned when data.cleaning
    says so (the rules of `thinktune data clean --kind task`), and the rejects. data.max_length and
    data.max_train_samples need the tokenizer: `fit_prompts` applies them."""
    cleaner = Cleaner(cfg.cleaning) if cfg.cleaning else None  # one cleaner: duplicates across files count too
    tasks, rejects = [], []
    for ref in files:
        loaded = read_records(ref, cfg.format, kind="task")
        check_bad_fraction(loaded, cfg.max_bad_fraction, _name(ref))
        rejects += loaded.rejects
        for item in cleaner.stream(loaded.records) if cleaner else loaded.records:
            (rejects if isinstance(item, Reject) else tasks).append(item)  # cleaned away: a reject, not a data error
    if not tasks:
        raise DataError(f"no usable prompts with answers in {', '.join(map(_name, files))}")
    return tasks, rejects


def fit_prompts(tokenizer, tasks: list[dict], data: DataConfig) -> tuple[list[dict], list[Reject]]:
    """The first data.max_train_samples tasks whose prompt fits data.max_length tokens; longer prompts are rejected,
    not cut, as SFT rejects longer samples (the completion's budget is grpo.max_completion_length)."""
    kept, rejects = [], []
    for task in tasks:
        if data.max_train_samples and len(kept) >= data.max_train_samples:
            break
        n = len(tokenizer(task_prompt(tokenizer, task, data), add_special_tokens=False)["input_ids"])
        if n <= data.max_length:
            kept.append(task)
            continue
        meta = task.get("meta", {})
        reason = f"prompt too long: {n} tokens > data.max_length={data.max_length}"
        rejects.append(Reject(meta.get("source", "?"), meta.get("line", 0), reason))
    check_bad_fraction(LoadedRecords(records=kept, rejects=rejects), data.max_bad_fraction, "training prompts")
    if not kept:
        raise DataError(f"no training prompt fits data.max_length={data.max_length} tokens")
    return kept, rejects


def plot_rewards(metrics_path, out_png, keys: list[str]) -> None:
    """plots/reward.png: the mean total reward and each metrics key in `keys` (each reward function's mean, the
    step reward's mean) per optimizer step (thin), with a trailing mean over 8 steps (thick): one step's few groups
    are noisy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ["reward", *keys]:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            (line,) = ax.plot(xs, ys, lw=0.8, alpha=0.45, marker=".", markersize=3)
            smooth = [sum(ys[max(0, i - 7) : i + 1]) / len(ys[max(0, i - 7) : i + 1]) for i in range(len(ys))]
            ax.plot(xs, smooth, lw=2, color=line.get_color(), label=f"{key} (mean of last 8)")
    ax.set_xlabel("optimizer step")
    ax.set_title("GRPO reward (mean over sampled completions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


class RL:
    """The `thinktune grpo` recipe: `data_files` (default data.train) of prompts with answers, `adapter` to continue."""

    name = "grpo"

    def __init__(self, data_files: list[str] | None = None, adapter: str | None = None) -> None:
        self.data_files, self.adapter = data_files, adapter
        self.tasks: list[dict] = []
        self.rejects: list[Reject] = []
        self.fns: list[Callable] = []
        self.step_fn: Callable | None = None

    def check(self, cfg: RunConfig) -> None:
        """Settings, reward names and the data itself, before the model loads."""
        from thinktune.train.settings import check_settings

        check_settings(cfg, "grpo", self.data_files)  # SFT-only settings: one line before anything loads
        check_vllm_rollouts(cfg)  # rollout_backend=vllm without vllm or CUDA: one line
        self.fns = [resolve_reward(r) for r in cfg.grpo.rewards]
        self.step_fn = resolve_step_reward(cfg.grpo.process_reward) if cfg.grpo.process_reward else None
        files = self.data_files or list(cfg.data.train)
        if self.data_files and cfg.data.dataset_dir:  # --data may name datasets of data.dataset_dir, as data.train may
            files = [dataset_reference(f, cfg.data.dataset_dir) for f in self.data_files]
        self.tasks, self.rejects = load_rl_tasks(cfg.data, files)

    def prepare(self, run: Run) -> str:
        self.tasks, too_long = fit_prompts(run.tokenizer, self.tasks, run.cfg.data)
        run.rejects = self.rejects + too_long + run.rejects
        run.model = load_policy(run, self.adapter, optimizer_steps(run, len(self.tasks)))
        return f"{len(self.tasks)} training prompts"

    def fit(self, run: Run, resume: str | None) -> dict[str, Any]:
        g, tasks, acc = run.cfg.grpo, self.tasks, run.accelerator
        reference = reference_for(run, self.adapter is not None) if g.beta > 0 else None
        trainable, total = count_parameters(run.model)
        run.console.print(
            f"grpo: {trainable:,} trainable of {total:,} parameters; G={g.num_generations}, "
            f"reference: {reference.kind if reference else 'none (beta=0)'}"
            + (f"; process reward: {g.process_reward} ({g.process_credit} credit)" if g.process_reward else "")
        )
        opt = prepare_training(run, len(tasks))
        if reference is not None:
            reference.to(acc.device)
        engine = VLLMRollouts(run, g) if g.rollout_backend == "vllm" else None
        reuse = RolloutReuse(g.num_iterations, run.cfg.train.gradient_accumulation_steps)
        pool, order = None, None
        if g.dynamic_sampling:
            # a different stream on each process, so processes do not refill with the same prompts
            order = PromptPool(len(tasks), run.cfg.train.seed * 1_000 + acc.process_index)
            pool = lambda k: [tasks[i] for i in order.take(k)]  # noqa: E731

        def make_batch(idx: list[int]):
            return reuse.next(
                lambda: rollout_batch(run, [tasks[i] for i in idx], g, self.fns, reference, pool, self.step_fn, engine)
            )

        # A resume restores weights, optimizer, schedule, RNGs and data position, and with μ > 1 or dynamic sampling
        # the kept rollouts and the refill stream: the resumed curve is the uninterrupted one.
        kept = RolloutState(reuse, order if g.dynamic_sampling else None)
        stats = train_loop(
            run,
            opt,
            len(tasks),
            make_batch,
            grpo_objective(g, self.names(g)),
            balanced_weights(run.cfg, tasks),
            resume,
            kept if g.num_iterations > 1 or g.dynamic_sampling else None,
        )
        if reference is not None:
            reference.release(acc.unwrap_model(run.model))
        return stats

    @staticmethod
    def names(g: GRPOConfig) -> list[str]:
        return [reward_name(r) for r in g.rewards]

    def finish(self, run: Run) -> dict[str, Any]:
        g = run.cfg.grpo
        if run.accelerator.is_main_process:
            keys = [f"reward/{n}" for n in self.names(g)]
            if g.process_reward:
                keys.append(f"step_reward/{reward_name(g.process_reward)}")
            plot_rewards(run.dir / "metrics.jsonl", run.dir / "plots" / "reward.png", keys)
        rows = [r for r in read_metrics(run.dir / "metrics.jsonl") if "reward" in r]
        return {
            "grpo": g.model_dump(mode="json"),
            "start_adapter": str(self.adapter) if self.adapter else None,
            "train_prompts": len(self.tasks),
            "reward_first": rows[0]["reward"] if rows else None,
            "reward_last": rows[-1]["reward"] if rows else None,
            "reward_plot": str(run.dir / "plots" / "reward.png"),
        }


def run_grpo(
    cfg: RunConfig,
    data_files: list[str] | None = None,
    adapter: str | None = None,
    console: Console | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    return execute(cfg, RL(data_files, adapter), console, resume)
