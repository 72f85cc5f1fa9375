"""The GPU paths in one prepared run (bench/gpu_check.sh calls this): every step guarded, one JSON, one table.

    bash bench/gpu_check.sh                     # on a CUDA machine with thinktune installed: under 8 minutes on one GPU
    bash bench/gpu_check.sh --dry-run           # on a CPU: every step's wiring, on a tiny random model
    bash bench/gpu_check.sh --steps sft levers  # a subset; --out FILE (default bench/results/gpu_check.json)

Steps (each in its own subprocess with a time limit, so one failure or hang does not hide the rest):
  env        GPU, driver, torch/CUDA, bf16, and the optional packages (vllm, flash-attn, liger-kernel, bitsandbytes)
  sft        bf16 LoRA SFT on a random Qwen3-0.6B-shaped model: thinktune (fast defaults) vs the HF Trainer + PEFT
             path — tokens/s, MFU against a bf16 matmul, peak memory (bench/train_throughput.py)
  levers     the same run with FlashAttention-2, and with Liger's kernels
  qlora      10 QLoRA steps of `thinktune train` (4-bit base): tokens/s and peak memory
  grpo       3 GRPO steps of `thinktune grpo` on SmolLM2 with grpo.rollout_backend=vllm, and with hf: seconds per step
             and the rollout share of it
  serve      `thinktune serve --backend vllm` answering the `openai` client: one answer, then 16 concurrent requests
  planner    `thinktune plan`'s prediction against torch.cuda.max_memory_allocated of two LoRA steps, same shape

--dry-run runs the same steps on the CPU against a tiny random model: the CPU-capable parts run (the SFT comparison,
GRPO with hf, serving with the transformers backend through the `openai` client, the planner's estimate), and each
CUDA-only command (bf16, QLoRA, flash attention, Liger, vLLM) must stop with its one-line "needs CUDA" refusal —
which proves its arguments and config parse and that only the device is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
CUDA_REFUSAL = re.compile(r"needs (a )?CUDA|needs the vllm package|CUDA GPU|flash_attention_\d? needs|needs liger")
STEPS: dict[str, Callable[[Context], dict[str, Any]]] = {}


class Context:
    def __init__(self, dry_run: bool, work: Path):
        self.dry_run, self.work = dry_run, work
        self._tiny: Path | None = None

    def tiny(self) -> Path:
        """A tiny random Qwen3 with SmolLM2's tokenizer and chat template (dry runs)."""
        if self._tiny is None:
            code = (
                "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
                "from bench.train_throughput import RANDOM_SHAPES, random_model;"
                "RANDOM_SHAPES['tiny'] = dict(model_type='qwen3', hidden_size=64, intermediate_size=128,"
                " num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152,"
                " max_position_embeddings=2048, tie_word_embeddings=True);"
                "print(random_model('tiny', Path(sys.argv[1])))"
            )
            self._tiny = Path(run([PY, "-c", code, str(self.work / "tiny"), str(ROOT)], 300).stdout.strip())
        return self._tiny

    def sft_model(self) -> list[str]:
        """train_throughput's model arguments: the Qwen3-0.6B shape, or the tiny model in a dry run."""
        return ["--model", str(self.tiny())] if self.dry_run else ["--random-shape", "qwen3-0.6b"]

    def small_model(self) -> str:
        """A real small model for GRPO and serving: the bundled SmolLM2, or the tiny one in a dry run."""
        return str(self.tiny()) if self.dry_run else "smollm2-135m-instruct"


def step(fn: Callable[[Context], dict[str, Any]]) -> Callable[[Context], dict[str, Any]]:
    STEPS[fn.__name__] = fn
    return fn


def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def thinktune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run([PY, "-m", "thinktune", *args], timeout, {"COLUMNS": "200"})


def sets(*items: str) -> list[str]:
    return [x for s in items for x in ("--set", s)]


def refused_on_cpu(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """A CUDA-only command in a dry run: it must stop in one line naming the missing device or package."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0 and len(lines) == 1 and CUDA_REFUSAL.search(lines[0]):
        return {"status": "wired", "refusal": lines[0]}
    raise RuntimeError(f"expected a one-line CUDA refusal, got exit {proc.returncode}: {proc.stderr[-800:]}")


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return proc


# ---- steps -----------------------------------------------------------------------------------------------------------


@step
def env(ctx: Context) -> dict[str, Any]:
    code = (
        "import json, importlib.metadata as md, torch\n"
        "def v(p):\n"
        "    try: return md.version(p)\n"
        "    except md.PackageNotFoundError: return None\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': "
        "torch.cuda.get_device_name(0) if cuda else None, 'gpu_memory_gib': "
        "round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None, "
        "'bf16': bool(cuda and torch.cuda.is_bf16_supported()), 'packages': {p: v(p) for p in "
        "('transformers', 'peft', 'accelerate', 'vllm', 'flash-attn', 'liger-kernel', 'bitsandbytes')}}))"
    )
    out = json.loads(checked(run([PY, "-c", code], 120)).stdout)
    if not ctx.dry_run and out["gpu"] is None:
        raise RuntimeError("no CUDA GPU visible to torch (run with --dry-run on a CPU)")
    smi = shutil.which("nvidia-smi")
    if smi:
        q = run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], 30)
        out["driver"] = q.stdout.strip()
    return {"status": "ok", **out, "python": platform.python_version()}


def throughput(ctx: Context, variants: list[str], name: str, samples: int) -> dict[str, Any]:
    out = ctx.work / f"{name}.json"
    cmd = [PY, "bench/train_throughput.py", *ctx.sft_model(), "--samples", str(8 if ctx.dry_run else samples)]
    cmd += ["--max-length", "64" if ctx.dry_run else "512", "--variants", *variants, "--out", str(out)]
    checked(run(cmd, 900))
    rows = json.loads(out.read_text())["variants"]
    keep = ("tokens_per_s", "mfu", "peak_mb", "speedup_vs_hf", "memory_vs_hf", "heldout_loss", "error")
    return {r["name"]: {k: r[k] for k in keep if k in r} for r in rows}


@step
def sft(ctx: Context) -> dict[str, Any]:
    result = throughput(ctx, ["hf_trainer", "thinktune_fast"], "sft", 256)
    errors = {k: v["error"] for k, v in result.items() if "error" in v}
    if errors:
        raise RuntimeError(f"variants failed: {errors}")
    return {"status": "ok", "variants": result}


@step
def levers(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:  # each lever's command, refused on the CPU in one line
        base = sets(f"model.name_or_path={ctx.tiny()}", "data.max_train_samples=8", "train.max_steps=1")
        flash = thinktune("train", *base, *sets("model.attn_implementation=flash_attention_2"))
        liger = thinktune("train", *base, *sets("train.liger_kernels=true"))
        return {"status": "wired", "flash_attention": refused_on_cpu(flash), "liger": refused_on_cpu(liger)}
    return {"status": "ok", "variants": throughput(ctx, ["thinktune_fast", "flash_attention", "liger"], "levers", 256)}


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def peak_memory_mb(run_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r["memory_mb"] for r in rows if r.get("memory_mb") is not None]
    return max(values) if values else None


@step
def qlora(ctx: Context) -> dict[str, Any]:
    model = str(ctx.tiny()) if ctx.dry_run else str(RESULTS / "models" / "qwen3-0.6b")
    if not ctx.dry_run and not (Path(model) / "config.json").is_file():
        raise RuntimeError(f"{model}: missing (the sft step creates it)")
    out = ctx.work / "qlora"
    proc = thinktune(
        "train",
        *sets(f"model.name_or_path={model}", "method.name=qlora", "train.max_steps=10", "train.batch_size=8"),
        *sets("data.max_train_samples=80", "eval.before=false", "eval.after=false", "train.report_to=[]"),
        "-o",
        str(out),
        timeout=600,
    )
    if ctx.dry_run:
        return refused_on_cpu(proc)
    checked(proc)
    s = summary_of(out)
    return {"status": "ok", "tokens_per_s": s["train_tokens_per_second"], "peak_mb": peak_memory_mb(out)}


def grpo_run(ctx: Context, backend: str) -> subprocess.CompletedProcess:
    return thinktune(
        "grpo",
        *sets(f"model.name_or_path={ctx.small_model()}", f"grpo.rollout_backend={backend}", "train.report_to=[]"),
        *sets("train.batch_size=4", "grpo.num_generations=4", "train.max_steps=" + ("2" if ctx.dry_run else "3")),
        *sets("grpo.max_completion_length=" + ("16" if ctx.dry_run else "64")),
        *sets("eval.before=false", "eval.after=false", "data.max_train_samples=12"),
        "-o",
        str(ctx.work / f"grpo-{backend}"),
        timeout=600,
    )


def step_seconds(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rollout = [r["rollout_seconds"] for r in rows if "rollout_seconds" in r]
    s = summary_of(run_dir)
    return {
        "seconds_per_step": s["train_seconds"] / max(s["steps"], 1),
        "rollout_seconds_per_step": sum(rollout) / max(len(rollout), 1),
        "reward_last": s.get("reward_last"),
    }


@step
def grpo(ctx: Context) -> dict[str, Any]:
    checked(grpo_run(ctx, "hf"))
    result = {"hf": step_seconds(ctx.work / "grpo-hf")}
    vllm = grpo_run(ctx, "vllm")
    if ctx.dry_run:
        return {"status": "wired", **result, "vllm": refused_on_cpu(vllm)}
    checked(vllm)
    result["vllm"] = step_seconds(ctx.work / "grpo-vllm")
    result["rollout_speedup"] = result["hf"]["rollout_seconds_per_step"] / max(
        result["vllm"]["rollout_seconds_per_step"], 1e-9
    )
    return {"status": "ok", **result}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, clients: int, max_tokens: int, need_text: bool) -> dict[str, Any]:
    """One answer through the openai client (`need_text`: a non-empty one), then `clients` concurrent requests:
    completion tokens per second."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="gpu-check", timeout=300)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "What is 12 + 7? Answer with the number."}]
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
    text = first.choices[0].message.content or ""
    if need_text and not text.strip():
        raise RuntimeError("the server answered with an empty message")

    def one(i: int) -> int:
        q = [{"role": "user", "content": f"Count from {i} to {i + 20}, separated by commas."}]
        r = client.chat.completions.create(model=model, messages=q, max_tokens=max_tokens, temperature=0)
        return r.usage.completion_tokens

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, range(clients)))
    return {"answer": text[:80], "clients": clients, "tokens_per_s": tokens / (time.perf_counter() - t)}


def serve_with(ctx: Context, backend: str, max_tokens: int) -> dict[str, Any]:
    port = free_port()
    log = (ctx.work / f"serve-{backend}.log").open("w")
    cmd = [PY, "-m", "thinktune", "serve", "--backend", backend, "--port", str(port)]
    cmd += sets(f"model.name_or_path={ctx.small_model()}")
    env = {**os.environ, "THINKTUNE_API_KEY": "gpu-check"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        import httpx

        deadline = time.time() + 420
        while time.time() < deadline:
            if proc.poll() is not None:
                return {"exit": proc.returncode, "log": (ctx.work / f"serve-{backend}.log").read_text()[-800:]}
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return ask(port, 16, max_tokens, need_text=not ctx.dry_run)  # a random tiny model may stop at once
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise RuntimeError(f"{backend} server not ready within 420 s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@step
def serve(ctx: Context) -> dict[str, Any]:
    if ctx.dry_run:  # the openai-client part against the transformers backend; vLLM refused in one line
        answered = serve_with(ctx, "transformers", 8)
        if "exit" in answered:
            raise RuntimeError(f"transformers backend exited: {answered['log']}")
        vllm = thinktune("serve", "--backend", "vllm", *sets(f"model.name_or_path={ctx.small_model()}"))
        return {"status": "wired", "transformers": answered, "vllm": refused_on_cpu(vllm)}
    answered = serve_with(ctx, "vllm", 64)
    if "exit" in answered:
        raise RuntimeError(f"vllm backend exited {answered['exit']}: {answered['log']}")
    return {"status": "ok", "vllm": answered}


PLANNER_CHILD = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
from thinktune.config import MethodConfig, TrainConfig
from thinktune.methods import MethodContext, apply_method, optimizer_parameters
from thinktune.models.memory import TrainSetup, estimate, model_shape
from thinktune.train.engine.optim import build_optimizer
from tests.models.measure_memory import random_batch, step
model_dir, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
method = MethodConfig(name="lora")
cuda = torch.cuda.is_available()
precision = "bf16" if cuda else "fp32"
est = estimate(model_shape(model_dir), TrainSetup(method=method, batch_size=batch, seq_len=seq, precision=precision,
               device="cuda" if cuda else "cpu"))
out = {"predicted_gib": est.total / 2**30, "parts_gib": {k: v / 2**30 for k, v in est.parts().items()}}
if cuda:
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    model = apply_method(model, method, MethodContext(total_steps=10)).train()
    opt = build_optimizer(optimizer_parameters(model, method), TrainConfig(learning_rate=1e-5))
    data = {k: v.cuda() for k, v in random_batch(config.vocab_size, batch, seq).items()}
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step(model, method, data, opt)
    torch.cuda.synchronize()
    out["measured_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["predicted_over_measured"] = out["predicted_gib"] / out["measured_gib"]
print(json.dumps(out))
"""


@step
def planner(ctx: Context) -> dict[str, Any]:
    model = str(ctx.tiny()) if ctx.dry_run else str(RESULTS / "models" / "qwen3-0.6b")
    if not (Path(model) / "config.json").is_file():
        raise RuntimeError(f"{model}: missing (the sft step creates it)")
    batch, seq = (2, 64) if ctx.dry_run else (8, 1024)
    proc = checked(run([PY, "-c", PLANNER_CHILD, model, str(batch), str(seq)], 600))
    return {"status": "ok", "batch": batch, "seq": seq, **json.loads(proc.stdout.strip().splitlines()[-1])}


# ---- report ----------------------------------------------------------------------------------------------------------


def figures(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"][:160]
    if r["status"] == "wired" and "refusal" in r:
        return f"refused on CPU: {r['refusal'][:100]}"
    if name == "levers" and r["status"] == "wired":
        return "refused on CPU: " + "; ".join(r[k]["refusal"][:60] for k in ("flash_attention", "liger"))
    if name == "env":
        return f"{r.get('gpu') or 'no GPU'}, torch {r['torch']}, CUDA {r['cuda']}, bf16 {r['bf16']}"
    if name in ("sft", "levers") and "variants" in r:
        return "; ".join(
            f"{k}: {v.get('tokens_per_s', 0):.0f} tok/s, MFU {v.get('mfu', 0):.0%}, {v.get('peak_mb', 0):.0f} MB"
            if "error" not in v
            else f"{k}: {v['error']}"
            for k, v in r["variants"].items()
        )
    if name == "qlora" and "tokens_per_s" in r:
        return f"{r['tokens_per_s']:.0f} tok/s, peak {r['peak_mb']} MB"
    if name == "grpo" and "hf" in r:
        parts = [f"hf {r['hf']['seconds_per_step']:.1f} s/step (rollout {r['hf']['rollout_seconds_per_step']:.1f})"]
        if "seconds_per_step" in r.get("vllm", {}):
            parts.append(
                f"vllm {r['vllm']['seconds_per_step']:.1f} s/step (rollout {r['vllm']['rollout_seconds_per_step']:.1f})"
            )
        if "refusal" in r.get("vllm", {}):
            parts.append(f"vllm refused on CPU: {r['vllm']['refusal'][:60]}")
        return "; ".join(parts)
    if name == "serve":
        served = r.get("vllm") if "tokens_per_s" in r.get("vllm", {}) else r.get("transformers")
        return f"{served['clients']} clients {served['tokens_per_s']:.0f} tok/s, answer {served['answer']!r}"
    if name == "planner":
        m = (
            f", measured {r['measured_gib']:.2f} GiB (×{r['predicted_over_measured']:.2f})"
            if "measured_gib" in r
            else ""
        )
        return f"batch {r['batch']} × {r['seq']}: predicted {r['predicted_gib']:.2f} GiB{m}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU: check every step's wiring on a tiny model")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        ctx = Context(args.dry_run, Path(tmp))
        for name in args.steps:
            t = time.perf_counter()
            print(f"[{time.perf_counter() - start:5.0f}s] {name} ...", flush=True)
            try:
                results[name] = STEPS[name](ctx)
            except Exception as e:  # noqa: BLE001 — a step's failure is its result; the others still run
                results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}".replace("\n", " ")}
            results[name]["seconds"] = round(time.perf_counter() - t, 1)
    width = max(len(n) for n in results)
    lines = [f"{'step':<{width}}  {'status':<7} {'s':>5}  figures"]
    for name, r in results.items():
        lines.append(f"{name:<{width}}  {r['status']:<7} {r['seconds']:>5.0f}  {figures(name, r)}")
    table = "\n".join(lines)
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "bash bench/gpu_check.sh " + " ".join(sys.argv[1:] if argv is None else argv)}
    meta["seconds"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps({"meta": meta, "table": table, "steps": results}, indent=2))
    print(f"wrote {out} ({meta['seconds']:.0f} s)")
    return 0 if all(r["status"] != "failed" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
