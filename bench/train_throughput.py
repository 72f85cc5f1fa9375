"""Training throughput and memory: HF Trainer + PEFT (LLaMA-Factory's default SFT path) vs thinktune's SFT path,
and each of thinktune's speed levers on its own. Same model, same LoRA, same data, same samples, same schedule.

    python bench/train_throughput.py                                   # all variants, SmolLM2-135M, 256 samples
    python bench/train_throughput.py --samples 64 --variants hf_trainer thinktune_fast
    python bench/train_throughput.py --model /path/to/hf_dir --max-length 1024

Every variant trains in its own subprocess (so peak RSS is per run) on length-skewed synthetic chat data
(log-normal lengths clipped to [--min-length, --max-length] tokens, rendered with the model's chat template, loss on
assistant tokens only). Per variant: effective tokens/s (non-pad tokens / training seconds), peak memory (RSS from
getrusage in the child, or CUDA max allocated), model FLOP/s as a fraction of a large matmul timed in the same child
(fp32 on a CPU; bf16 on a GPU, where both paths train in bf16 autocast; formula in `model_flops`), final training
loss and held-out loss after training.
Writes bench/results/train_throughput.json and .png (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"

# Shared by both paths: LoRA r=16 on every linear layer, batch 8, one epoch, AdamW lr 2e-4, cosine, 5% warmup.
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
BATCH_SIZE = 8
LEARNING_RATE = 2e-4
WARMUP_RATIO = 0.05
SEED = 42
HELDOUT = 32  # held-out samples, scored after training with the same code in every variant

# thinktune variants: TrainConfig overrides (+ environment). `thinktune_plain` is every lever off.
FAST = ["train.packing=true", "train.loss_chunk_size=1024", "train.optimizer=adamw_fused"]
VARIANTS: dict[str, dict[str, Any]] = {
    "hf_trainer": {"path": "hf"},
    "hf_trainer_omp_passive": {"path": "hf", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "thinktune_plain": {"path": "thinktune", "sets": []},
    "packing": {"path": "thinktune", "sets": ["train.packing=true"]},
    "chunked_loss": {"path": "thinktune", "sets": ["train.loss_chunk_size=1024"]},
    "adamw_fused": {"path": "thinktune", "sets": ["train.optimizer=adamw_fused"]},
    "threads_1": {"path": "thinktune", "sets": ["train.num_threads=1"]},
    "omp_passive": {"path": "thinktune", "sets": [], "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "grad_checkpointing": {"path": "thinktune", "sets": ["train.gradient_checkpointing=true"]},
    "torch_compile": {"path": "thinktune", "sets": ["train.torch_compile=true"]},
    "thinktune_fast": {"path": "thinktune", "sets": FAST},
    "thinktune_fast_compile": {"path": "thinktune", "sets": [*FAST, "train.torch_compile=true"]},
    "thinktune_fast_gc": {"path": "thinktune", "sets": [*FAST, "train.gradient_checkpointing=true"]},
    # CUDA only (refused in one line on a CPU): FlashAttention-2 (flash-attn package), Liger's Triton kernels
    "flash_attention": {"path": "thinktune", "sets": [*FAST, "model.attn_implementation=flash_attention_2"]},
    "liger": {"path": "thinktune", "sets": [*FAST, "train.liger_kernels=true"]},
}
DEFAULT_VARIANTS = [
    "hf_trainer",
    "thinktune_plain",
    "packing",
    "chunked_loss",
    "adamw_fused",
    "threads_1",
    "omp_passive",
    "grad_checkpointing",
    "torch_compile",
    "thinktune_fast",
    "thinktune_fast_gc",
]

WORDS = (
    "the a of to and in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their if has will so no would what up can more when who out about then "
    "them into some could time two these may first than any only other new very its like our over also back after "
    "use how where most such even because good each those people through just long many well down should number "
    "think step first compute total answer therefore check value sum product equal minus plus times divide half "
    "apples trains miles hours price cost each left right before after more less sure so"
).split()


# --- data ---------------------------------------------------------------------------------------------------------
def _text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) if rng.random() > 0.15 else str(rng.randint(0, 999)) for _ in range(max(1, n_words))]
    return " ".join(words).capitalize() + "."


def _record(rng: random.Random, scale: float, prompt_share: float) -> dict[str, Any]:
    n = max(3, int(scale))
    q = max(2, int(n * prompt_share))
    r = max(1, int((n - q) * 0.75))
    return {
        "messages": [
            {"role": "user", "content": _text(rng, q)},
            {"role": "assistant", "reasoning_content": _text(rng, r), "content": _text(rng, n - q - r)},
        ]
    }


def synthetic_records(
    tokenizer, n: int, seed: int, min_length: int = 30, max_length: int = 500
) -> tuple[list[dict], list]:
    """`n` chat records whose rendered lengths are log-normal (median ~110 tokens) clipped to [min, max] tokens;
    deterministic for a seed and tokenizer. Returns (records, tokenized samples as thinktune renders them)."""
    from thinktune.data.formats import from_messages
    from thinktune.data.render import tokenize_conversation

    rng = random.Random(seed)
    records, samples = [], []
    while len(records) < n:
        target = min(max_length, max(min_length, int(rng.lognormvariate(math.log(110), 0.8))))
        prompt_share = rng.uniform(0.2, 0.5)
        words = target * 0.7
        for _ in range(6):  # rescale the word count until the token count lands near the target
            rec = _record(random.Random(rng.random()), words, prompt_share)
            sample = tokenize_conversation(tokenizer, from_messages(rec)["messages"])  # as thinktune reads it
            n_tok = len(sample.input_ids)
            if min_length <= n_tok <= max_length and abs(n_tok - target) <= max(3, target // 20):
                break
            words *= target / n_tok
        if min_length <= n_tok <= max_length:
            records.append(rec)
            samples.append(sample)
    return records, samples


# --- measurement --------------------------------------------------------------------------------------------------
def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n×n @ n×n matmuls (2n³ FLOPs each) on this process's threads/device: fp32 on
    a CPU, bf16 (n = 8192) on a GPU that has it, the precision both paths train in there."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    n = 8192 if bf16 else n
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-ups
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops(model, samples) -> dict[str, float]:
    """Useful training FLOPs for one epoch over `samples` with LoRA on frozen weights (pad tokens excluded):

        per sample of L tokens, T of them trained (label after the shift):
          4·N_lin·L            frozen linear weights: forward 2·N·L + input gradient 2·N·L (no weight gradient)
        + 6·N_lora·L           LoRA A/B: forward, input gradient and weight gradient
        + 6·n_layers·d_attn·L·(L+1)   causal attention QKᵀ and AV (forward 2·d·L(L+1), backward twice that)
        + 4·V·d·T             LM head on trained positions (forward + input gradient; tied/frozen weight)

    N_lin counts decoder-layer linear weights (not embeddings, not the head); a weight that trains (full fine-tuning)
    would count 6 instead of 4. HF's path also runs the head on untrained and pad positions: that work is not counted.
    """
    import torch

    from thinktune.train.engine.chunked_loss import unwrap_causal_lm

    lm = unwrap_causal_lm(model)
    cfg = lm.config
    n_lin = n_lora = 0
    for name, module in lm.named_modules():
        if "lora_" in name:
            continue
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            n_lin += module.weight.numel()
    for name, p in lm.named_parameters():
        if "lora_" in name:
            n_lora += p.numel()
    head = lm.get_output_embeddings()
    vocab, d = head.weight.shape
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    total = 0.0
    for s in samples:
        n = len(s.input_ids)
        t = sum(1 for x in s.labels[1:] if x != -100)
        total += 4 * n_lin * n + 6 * n_lora * n + 6 * cfg.num_hidden_layers * d_attn * n * (n + 1) + 4 * vocab * d * t
    return {"flops": total, "n_linear": n_lin, "n_lora": n_lora, "vocab": vocab, "hidden": d}


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads): less sensitive than wall time to other jobs on a
    shared machine (torch.compile's worker processes are not included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def heldout_loss(model, samples, pad_id: int) -> float:
    """Token-mean CE over the held-out samples (padded batches of 8, eval mode), identical code for every variant."""
    import torch

    from thinktune.data.collate import pad_batch
    from thinktune.train.engine.losses import causal_lm_loss

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(samples), BATCH_SIZE):
            batch = {k: v.to(device) for k, v in pad_batch(samples[i : i + BATCH_SIZE], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(causal_lm_loss(logits, batch["labels"])) * n
            count += n
    return total / max(count, 1)


# --- children -----------------------------------------------------------------------------------------------------
def _samples_from(spec: dict) -> tuple[list, list]:
    from thinktune.data.render import TokenizedSample

    data = json.loads(Path(spec["samples"]).read_text())
    return [TokenizedSample(**s) for s in data["train"]], [TokenizedSample(**s) for s in data["heldout"]]


def child_hf(spec: dict) -> dict:
    """LLaMA-Factory's default SFT path: HF Trainer + PEFT LoRA, DataCollatorForSeq2Seq padding (multiple of 8)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    train, heldout = _samples_from(spec)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    peft_cfg = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_cfg)
    steps = math.ceil(len(train) / BATCH_SIZE)
    args = TrainingArguments(
        output_dir=spec["workdir"],
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=math.ceil(WARMUP_RATIO * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=SEED,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # as thinktune's mixed_precision=auto
    )
    dataset = [{"input_ids": s.input_ids, "attention_mask": [1] * len(s.input_ids), "labels": s.labels} for s in train]
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=8, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    rss_before = rss_now_mb()
    peak_flops = matmul_peak()
    load_start, cpu_start = os.getloadavg()[0], cpu_seconds()
    t = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t
    cpu = cpu_seconds() - cpu_start
    peak = peak_memory_mb()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_mb": peak,
        "rss_before_train_mb": rss_before,
        "matmul_peak_flops": peak_flops,
        "step_losses": losses,
        "heldout_loss": heldout_loss(model, heldout, tokenizer.pad_token_id),
        "load_start": load_start,
        "threads": torch.get_num_threads(),
        **model_flops(model, train),
    }


def child_thinktune(spec: dict) -> dict:
    """thinktune's SFT recipe: run.start() + SFT.prepare() + SFT.fit() from a config (run_sft minus the evaluations
    and saving)."""
    import torch
    from rich.console import Console

    from thinktune.config import load_config
    from thinktune.train import sft
    from thinktune.train.run import start

    train_samples, heldout = _samples_from(spec)
    sets = [
        f"model.name_or_path={spec['model']}",
        "model.dtype=float32",
        f"output_dir={spec['workdir']}",
        f"data.train=[{spec['jsonl']}]",
        "data.test=null",
        "data.system_prompt=null",
        "data.max_train_samples=null",
        f"data.max_length={spec['max_length']}",
        "method.name=lora",
        f"method.r={LORA['r']}",
        f"method.alpha={LORA['alpha']}",
        f"method.dropout={LORA['dropout']}",
        "method.target_modules=all-linear",
        "train.epochs=1",
        f"train.batch_size={BATCH_SIZE}",
        f"train.learning_rate={LEARNING_RATE}",
        f"train.warmup_ratio={WARMUP_RATIO}",
        "train.lr_scheduler=cosine",
        "train.weight_decay=0.0",
        "train.max_grad_norm=1.0",
        f"train.seed={SEED}",
        "train.report_to=[]",
        "eval.before=false",
        "eval.after=false",
        *spec["sets"],
    ]
    cfg = load_config(None, sets)
    console = Console(quiet=True)
    recipe = sft.SFT()
    run = start(cfg, console)
    recipe.prepare(run)
    got = [len(s.input_ids) for s in recipe.data.samples]
    want = [len(s.input_ids) for s in train_samples]
    if got != want:
        raise SystemExit(f"thinktune tokenised the data differently ({sum(got)} vs {sum(want)} tokens)")
    rss_before = rss_now_mb()
    peak_flops = matmul_peak()
    load_start, cpu_start = os.getloadavg()[0], cpu_seconds()
    stats = recipe.fit(run, None)
    cpu = cpu_seconds() - cpu_start
    peak = peak_memory_mb()
    from thinktune.train.engine.loggers import read_metrics

    losses = [r["loss"] for r in read_metrics(run.dir / "metrics.jsonl") if "loss" in r]
    model = run.accelerator.unwrap_model(run.model)
    return {
        "seconds": stats["train_seconds"],
        "cpu_seconds": cpu,
        "peak_mb": peak,
        "rss_before_train_mb": rss_before,
        "matmul_peak_flops": peak_flops,
        "step_losses": losses,
        "heldout_loss": heldout_loss(model, heldout, run.tokenizer.pad_token_id),
        "load_start": load_start,
        "threads": torch.get_num_threads(),
        **model_flops(model, train_samples),
    }


def child_main(spec_path: str) -> None:
    try:  # on a shared machine, let the kernel's OOM killer pick this run before anyone else's process
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass
    spec = json.loads(Path(spec_path).read_text())
    result = child_hf(spec) if spec["path"] == "hf" else child_thinktune(spec)
    result["load_end"] = os.getloadavg()[0]
    Path(spec["result"]).write_text(json.dumps(result))


# Shapes of public models, built with random weights for GPU figures (the sizes are the configs' own).
RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    },
}


def random_model(shape: str, out: Path) -> Path:
    """A random-weight model of a known shape, saved once to `out` with the bundled SmolLM2 tokenizer (whose ids all
    fit the larger vocabulary); reused when it exists."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from thinktune.models.loading import load_tokenizer, resolve_model

    fields = dict(RANDOM_SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = load_tokenizer(resolve_model("smollm2-135m-instruct"))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- parent -------------------------------------------------------------------------------------------------------
def prepare_data(model_path: str, n: int, min_length: int, max_length: int, workdir: Path) -> dict:
    from dataclasses import asdict

    from thinktune.models.loading import ModelSource, load_tokenizer

    tokenizer = load_tokenizer(ModelSource(Path(model_path)))
    records, samples = synthetic_records(tokenizer, n + HELDOUT, SEED, min_length, max_length)
    jsonl = workdir / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records[:n]))
    samples_path = workdir / "samples.json"
    samples_path.write_text(
        json.dumps({"train": [asdict(s) for s in samples[:n]], "heldout": [asdict(s) for s in samples[n:]]})
    )
    lengths = [len(s.input_ids) for s in samples[:n]]
    trained = [s.trained_tokens for s in samples[:n]]
    return {
        "jsonl": str(jsonl),
        "samples": str(samples_path),
        "tokens": sum(lengths),
        "trained_tokens": sum(trained),
        "length_min": min(lengths),
        "length_median": sorted(lengths)[len(lengths) // 2],
        "length_max": max(lengths),
    }


def run_variant(
    name: str, model: str, data: dict, max_length: int, workdir: Path, timeout: float, env: dict[str, str]
) -> dict:
    spec_def = VARIANTS[name]
    vdir = workdir / name
    vdir.mkdir(parents=True, exist_ok=True)
    spec = {
        "path": spec_def["path"],
        "sets": spec_def.get("sets", []),
        "model": model,
        "jsonl": data["jsonl"],
        "samples": data["samples"],
        "max_length": max_length,
        "workdir": str(vdir / "run"),
        "result": str(vdir / "result.json"),
    }
    (vdir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, **env, **spec_def.get("env", {}), "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(vdir / "spec.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"name": name, "error": f"exit {proc.returncode}", "log_tail": tail}
    result = json.loads(Path(spec["result"]).read_text())
    result.update(name=name, sets=spec["sets"], env=spec_def.get("env", {}), process_seconds=time.perf_counter() - t)
    tokens = data["tokens"]
    result["tokens_per_s"] = tokens / result["seconds"]
    result["tokens_per_cpu_s"] = tokens / result["cpu_seconds"]
    result["flops_per_s"] = result["flops"] / result["seconds"]
    result["mfu"] = result["flops_per_s"] / result["matmul_peak_flops"]
    losses = result["step_losses"]
    k = max(1, len(losses) // 4)
    result["final_loss"] = losses[-1] if losses else None
    result["final_loss_last_quarter"] = sum(losses[-k:]) / k if losses else None
    return result


METRICS = ("tokens_per_s", "tokens_per_cpu_s", "peak_mb", "mfu", "matmul_peak_flops", "final_loss_last_quarter")


def aggregate(runs: list[dict], baseline: str = "hf_trainer") -> list[dict]:
    """One row per variant: the median of its repeats for every metric, then ratios to the baseline's medians."""
    rows: dict[str, dict] = {}
    for r in runs:
        if "error" in r:
            rows.setdefault(r["name"], {"name": r["name"], "error": r["error"]})
            continue
        row = rows.setdefault(r["name"], {"name": r["name"], "runs": []})
        row.pop("error", None)
        row.setdefault("runs", []).append(r)
    for row in rows.values():
        done = row.get("runs", [])
        if not done:
            continue
        for key in (*METRICS, "heldout_loss", "load_start", "load_end", "threads"):
            row[key] = statistics.median(r[key] for r in done)
        row["tokens_per_s_all"] = [round(r["tokens_per_s"], 1) for r in done]
        row["load_max"] = max(max(r["load_start"], r["load_end"]) for r in done)
    base = rows.get(baseline)
    for row in rows.values():
        if base is not None and "tokens_per_s" in base and "tokens_per_s" in row:
            row["speedup_vs_hf"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["cpu_speedup_vs_hf"] = row["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
            row["memory_vs_hf"] = row["peak_mb"] / base["peak_mb"]
            row["heldout_loss_diff_vs_hf"] = row["heldout_loss"] - base["heldout_loss"]
    return list(rows.values())


def table(rows: list[dict]) -> str:
    nan = float("nan")
    head = (
        "| variant | tok/s (runs) | × HF | tok/CPU-s | × HF | peak MB | × HF | of matmul peak | matmul GFLOP/s "
        "| train loss (last ¼) | held-out loss | load (1-min avg) |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['name']} | error: {r.get('error')} |" + " |" * 10)
            continue
        runs = ", ".join(f"{v:.0f}" for v in r["tokens_per_s_all"])
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:.1f} ({runs}) | {r.get('speedup_vs_hf', nan):.2f} "
            f"| {r['tokens_per_cpu_s']:.1f} | {r.get('cpu_speedup_vs_hf', nan):.2f} "
            f"| {r['peak_mb']:.0f} | {r.get('memory_vs_hf', nan):.2f} | {r['mfu']:.0%} "
            f"| {r['matmul_peak_flops'] / 1e9:.0f} | {r['final_loss_last_quarter']:.3f} | {r['heldout_loss']:.4f} "
            f"| {r['load_start']:.1f}→{r['load_end']:.1f} (max {r['load_max']:.1f}) |"
        )
    return "\n".join(lines)


def wait_for_load(below: float | None, max_wait: float = 1800) -> float:
    """Sleep until the 1-minute load average drops below `below` (or `max_wait` passes); returns the load."""
    start = time.time()
    while below is not None and os.getloadavg()[0] >= below and time.time() - start < max_wait:
        time.sleep(15)
    return os.getloadavg()[0]


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "tokens_per_s" in r]
    names = [r["name"] for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 0.45 * len(ok) + 1.5), sharey=True)
    for ax, key, title in (
        (axes[0], "tokens_per_s", "effective tokens/s"),
        (axes[1], "peak_mb", "peak memory (MB)"),
        (axes[2], "mfu", "fraction of matmul peak"),
    ):
        values = [r[key] for r in ok]
        colors = ["tab:gray" if n == "hf_trainer" else "tab:blue" for n in names]
        ax.barh(names, values, color=colors)
        ax.set_title(title)
        ax.invert_yaxis()
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.0%}" if key == "mfu" else f" {v:.0f}", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF model dir (default: bundled SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--random-shape",
        choices=sorted(RANDOM_SHAPES),
        help="a randomly initialised model of this shape (no download) with SmolLM2's tokenizer, e.g. qwen3-0.6b",
    )
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--min-length", type=int, default=30)
    parser.add_argument("--max-length", type=int, default=400)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--repeat", type=int, default=1, help="rounds over the variants; the table shows medians")
    parser.add_argument("--wait-load", type=float, default=None, help="start each run when the load is below this")
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for every run (OMP_WAIT_POLICY=PASSIVE)")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return []
    model = args.model
    if args.random_shape:
        model = str(random_model(args.random_shape, RESULTS / "models" / args.random_shape))
    if model is None:
        from thinktune.models.loading import resolve_model

        model = str(resolve_model("smollm2-135m-instruct").path)
    env = dict(item.split("=", 1) for item in args.env)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="train_throughput.") as tmp:
        workdir = Path(tmp)
        data = prepare_data(model, args.samples, args.min_length, args.max_length, workdir)
        print(
            f"data: {args.samples} samples, {data['tokens']} tokens ({data['trained_tokens']} trained), lengths "
            f"{data['length_min']}/{data['length_median']}/{data['length_max']} (min/median/max); "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for round_ in range(args.repeat):
            for name in args.variants:
                wait_for_load(args.wait_load)
                r = run_variant(name, model, data, args.max_length, workdir, args.timeout, env)
                r["round"] = round_
                runs.append(r)
                if "error" in r:
                    print(f"{name}: FAILED {r['error']}\n{r['log_tail']}", flush=True)
                else:
                    print(
                        f"[{round_}] {name}: {r['tokens_per_s']:.1f} tok/s, {r['tokens_per_cpu_s']:.1f} tok/CPU-s, "
                        f"peak {r['peak_mb']:.0f} MB, {r['mfu']:.0%} of matmul peak, "
                        f"held-out loss {r['heldout_loss']:.4f}, load {r['load_start']:.1f}→{r['load_end']:.1f}",
                        flush=True,
                    )
    rows = aggregate(runs)
    print(table(rows))
    meta = {
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": model,
        "data": {k: v for k, v in data.items() if k not in ("jsonl", "samples")},
        "samples": args.samples,
        "cpu_count": os.cpu_count(),
        "env": env,
        "flops_formula": model_flops.__doc__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "table": table(rows), "variants": rows}, indent=2))
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
