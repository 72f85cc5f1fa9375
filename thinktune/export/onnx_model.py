"""ONNX export of the merged model, with the KV cache as graph inputs/outputs, or without it; checked in onnxruntime.

    thinktune export --model runs/x/merged --format onnx -o exports/onnx

Out: `model.onnx` (+ `model.onnx.data`, the weights as external data), tokenizer and config. Graph I/O:
- with past (`export.onnx_kv_cache`, default): inputs `input_ids`, `attention_mask` (batch, past+seq), `position_ids`,
  `past_key_values.N.key|value` (batch, kv_heads, past, head_dim; past may be 0 for the prompt); outputs `logits` and
  `present.N.key|value`. One graph serves both the prompt and each decoding step.
- without past: inputs `input_ids`, `attention_mask`, `position_ids`; output `logits` (recompute per token).
Verified: onnxruntime logits vs the PyTorch model on the test prompts, one cached decoding step, and greedy parity.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from thinktune.errors import EnvironmentProblem, UserError
from thinktune.export.parity import (
    directory_bytes,
    greedy_agreement,
    max_abs_diff,
    top1_agreement,
    torch_greedy,
    torch_logits,
)
from thinktune.export.source import ExportOptions, ExportSource, stop_ids
from thinktune.models.registry import arch_facts

EXPORTERS = ("dynamo", "torchscript")
OPSET = 18  # what onnxruntime >= 1.14 runs; torch.export's translator targets it well
GRAPH = "model.onnx"


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise EnvironmentProblem(f"ONNX export needs {', '.join(missing)}: pip install onnx onnxruntime onnxscript")


def check(model_type: str, options: ExportOptions) -> None:
    facts = arch_facts(model_type)
    if facts is not None and facts.moe:
        # Both exporters fail on transformers' routed-expert dispatch (aten::histc, data-dependent expert batches).
        raise UserError(f"ONNX export does not support mixture-of-experts models yet ({model_type})")
    require_onnx()
    if options.onnx_exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter '{options.onnx_exporter}'; choose one of: {', '.join(EXPORTERS)}")


class LogitsOnly(torch.nn.Module):
    """The model as a function of tensors only: what the exporter traces when there is no cache."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.logits


class WithPast(torch.nn.Module):
    """Past keys/values in as flat tensors, present keys/values out: transformers' DynamicCache stays inside."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


class ExportFailed(UserError):
    """Neither exporter could turn this model into a graph (an architecture the exporters cannot trace)."""


def past_names(layers: int, prefix: str = "past_key_values") -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def kv_shape(model: PreTrainedModel) -> tuple[int, int]:
    """(kv heads, head dim) of the cache tensors."""
    c = model.config
    return c.num_key_value_heads, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def export_graph(model: PreTrainedModel, path: Path, with_past: bool, exporter: str = "dynamo") -> str:
    """Write the ONNX graph; returns the exporter that succeeded (`dynamo`, or `torchscript` as the fallback)."""
    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter '{exporter}'; choose one of: {', '.join(EXPORTERS)}")
    layers = model.config.num_hidden_layers
    batch, seq, past = 2, 4, 3  # sizes >= 2 so torch.export keeps them symbolic
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    if with_past:
        heads, head_dim = kv_shape(model)
        module = WithPast(model)
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        cache = [torch.zeros(batch, heads, past, head_dim) for _ in range(2 * layers)]
        args = (ids, mask, torch.arange(past, past + seq).repeat(batch, 1), *cache)
        inputs = ["input_ids", "attention_mask", "position_ids", *past_names(layers)]
        outputs = ["logits", *past_names(layers, "present")]
    else:
        module = LogitsOnly(model)
        args = (ids, torch.ones_like(ids), torch.arange(seq).repeat(batch, 1))
        inputs, outputs = ["input_ids", "attention_mask", "position_ids"], ["logits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for kind in ["dynamo", "torchscript"] if exporter == "dynamo" else [exporter]:
        for stale in path.parent.glob(path.name + "*"):  # a failed attempt may leave half a graph
            stale.unlink()
        try:
            with warnings.catch_warnings(), quiet_loggers("torch.onnx", "torch.export", "torch._dynamo"):
                warnings.simplefilter("ignore")
                _export(module, args, path, inputs, outputs, kind == "dynamo", with_past, layers)
            return kind
        except Exception as e:  # noqa: BLE001 -- each exporter fails in its own ways; the next one may work
            first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split("\n")[0]
            errors.append(f"{kind}: {type(e).__name__}: {first_line}")
    raise ExportFailed(f"ONNX export of {model.config.model_type} failed: " + " | ".join(errors))


@contextlib.contextmanager
def quiet_loggers(*loggers: str):
    """Exporters and quantizers log progress (and notices such as torchvision's absence); keep the CLI readable."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export(module, args, path, inputs, outputs, dynamo, with_past, layers) -> None:
    kwargs: dict[str, Any] = {"input_names": inputs, "output_names": outputs, "opset_version": OPSET}
    if dynamo:
        b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
        shapes: dict[str, Any] = {"input_ids": {0: b, 1: s}, "position_ids": {0: b, 1: s}}
        if with_past:
            shapes["attention_mask"] = {0: b, 1: torch.export.Dim("total_sequence")}
            shapes["past"] = tuple({0: b, 2: torch.export.Dim("past_sequence")} for _ in range(2 * layers))
        else:
            shapes["attention_mask"] = {0: b, 1: s}
        kwargs.update(dynamo=True, dynamic_shapes=shapes, external_data=True, verbose=False)
    else:
        axes = {"input_ids": {0: "batch", 1: "sequence"}, "position_ids": {0: "batch", 1: "sequence"}}
        axes["logits"] = {0: "batch", 1: "sequence"}
        axes["attention_mask"] = {0: "batch", 1: "total_sequence" if with_past else "sequence"}
        for name in inputs[3:]:
            axes[name] = {0: "batch", 2: "past_sequence"}
        for name in outputs[1:]:
            axes[name] = {0: "batch", 2: "total_sequence"}
        kwargs.update(dynamo=False, dynamic_axes=axes)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(module, args, str(path), **kwargs)


class OnnxRunner:
    """Greedy decoding and logits from an exported graph in onnxruntime (batch 1, no padding)."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        self.cache_shape = tuple(inputs[self.past[0]].shape[1::2]) if self.past else ()  # (kv heads, head dim)

    def _run(self, ids: list[int], past: list[np.ndarray] | None) -> list[np.ndarray]:
        done = past[0].shape[2] if past else 0
        feeds = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, done + len(ids)), dtype=np.int64),
            "position_ids": np.arange(done, done + len(ids), dtype=np.int64)[None],
        }
        if self.past:
            heads, head_dim = self.cache_shape
            empty = np.zeros((1, heads, 0, head_dim), dtype=np.float32)
            feeds.update(zip(self.past, past or [empty] * len(self.past), strict=True))
        return self.session.run(None, feeds)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._run(list(ids), None)[0][0]

    def step_logits(self, ids: list[int]) -> np.ndarray:
        """Logits of the last token computed from the cache of all before it (the decoding path)."""
        if not self.past:
            return self.logits(ids)[-1]
        outs = self._run(list(ids[:-1]), None)
        return self._run([ids[-1]], outs[1:])[0][0, -1]

    def greedy(self, ids: list[int], n: int, stops: list[int] | tuple[int, ...] = ()) -> list[int]:
        seq, past, out = list(ids), None, []
        feed = seq
        for _ in range(n):
            outs = self._run(feed, past)
            token = int(outs[0][0, -1].argmax())
            out.append(token)
            if token in stops:
                break
            if self.past:
                past, feed = outs[1:], [token]
            else:
                seq.append(token)
                feed = seq
        return out


def export_onnx(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    require_onnx()
    model = source.merge()
    path, exporter, kv_note = write_onnx(model, out / GRAPH, options)
    save_side_files(source, out)
    runner = OnnxRunner(path)
    ids = source.chat_ids(options.prompts)
    stops = stop_ids(source.tokenizer, model)
    reference = [torch_logits(model, x) for x in ids]
    logits = [runner.logits(x) for x in ids]
    step = [runner.step_logits(x) for x in ids]
    greedy_ref = [torch_greedy(model, x, options.max_new_tokens, stops) for x in ids]
    greedy = [runner.greedy(x, options.max_new_tokens, stops) for x in ids]
    return {
        "artefact": str(path),
        "exporter": exporter,
        "kv_cache": bool(runner.past),
        **({"kv_cache_note": kv_note} if kv_note else {}),
        "opset": OPSET,
        "compared_with": "merged model (PyTorch, float32)",
        "max_abs_logit_diff": max_abs_diff(reference, logits),
        "max_abs_decode_step_diff": max_abs_diff([r[-1:] for r in reference], [s[None] for s in step]),
        "top1_agreement": top1_agreement(reference, logits),
        "greedy": greedy_agreement(greedy_ref, greedy),
        "bytes": graph_bytes(path),
    }


def write_onnx(model: PreTrainedModel, path: Path, options: ExportOptions) -> tuple[Path, str, str | None]:
    """Export with past when asked, falling back to without; returns (graph path, exporter, fallback note)."""
    note = None
    try:
        exporter = export_graph(model, path, options.onnx_kv_cache, options.onnx_exporter)
    except ExportFailed as e:
        if not options.onnx_kv_cache:
            raise
        note = f"exported without KV cache: the graph with past keys/values failed ({e})"
        exporter = export_graph(model, path, False, options.onnx_exporter)
    return path, exporter, note


def save_side_files(source: ExportSource, out: Path) -> None:
    """Tokenizer, config and generation config beside the graph, as ONNX runtimes for LLMs expect them."""
    source.tokenizer.save_pretrained(out)
    source.model.config.save_pretrained(out)
    source.model.generation_config.save_pretrained(out)


def graph_bytes(path: Path) -> int:
    """The graph plus its external weights."""
    return directory_bytes(*path.parent.glob(path.name + "*"))
