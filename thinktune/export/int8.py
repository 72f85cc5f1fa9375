"""Int8 export. CPU (default): dynamic int8 quantisation of the ONNX graph's matmuls with onnxruntime, `blockwise`
(default, MatMulNBits) or `per-tensor` (quantize_dynamic). GPU: bitsandbytes 8-bit or 4-bit (NF4), saved as a
transformers checkpoint.

    thinktune export --model runs/x/merged --format int8 -o exports/int8
    thinktune export --model runs/x/merged --format int8 --quant-device cuda --bits 4 -o exports/nf4

CPU out: `model.int8.onnx` (+ tokenizer, config). "Dynamic" means activations are quantised on the fly per call, so
no calibration data is needed. Verified against the float32 ONNX graph it came
from and the PyTorch model: size before/after, prompt latency and greedy tokens/s before/after, logit difference,
teacher-forced top-1 agreement and greedy agreement.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from thinktune.errors import EnvironmentProblem, UserError
from thinktune.export.onnx_model import OnnxRunner, graph_bytes, quiet_loggers, save_side_files, write_onnx
from thinktune.export.onnx_model import check as check_onnx
from thinktune.export.parity import (
    greedy_agreement,
    max_abs_diff,
    median_seconds,
    top1_agreement,
    torch_greedy,
    torch_logits,
)
from thinktune.export.source import ExportOptions, ExportSource, stop_ids

GRAPH = "model.int8.onnx"


def check(model_type: str, options: ExportOptions) -> None:
    """Fail before loading the model: a wrong option or a missing package / GPU."""
    if options.quant_device == "cuda":
        if options.quant_bits not in (4, 8):
            raise UserError(f"--bits {options.quant_bits}: bitsandbytes quantises to 8 or 4 bits")
        if not torch.cuda.is_available():
            raise EnvironmentProblem(
                "GPU 4/8-bit quantisation (bitsandbytes) needs a CUDA GPU and none is visible; "
                "use --quant-device cpu for onnxruntime int8"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise EnvironmentProblem("GPU 4/8-bit quantisation needs bitsandbytes: pip install bitsandbytes")
    elif options.quant_device == "cpu":
        if options.int8_scheme not in SCHEMES:
            raise UserError(f"int8 scheme '{options.int8_scheme}': choose one of {', '.join(SCHEMES)}")
        if options.quant_bits != 8:
            raise UserError("int8 on the CPU is 8-bit only; 4-bit needs --quant-device cuda (bitsandbytes NF4)")
        check_onnx(model_type, options)  # the CPU path quantises the ONNX graph
    else:
        raise UserError(f"int8: unknown quantisation device '{options.quant_device}' (cpu or cuda)")


def export_int8(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    check(source.model.config.model_type, options)
    if options.quant_device == "cuda":
        return export_bitsandbytes(source, out, options)
    model = source.merge()
    ids = source.chat_ids(options.prompts)
    stops = stop_ids(source.tokenizer, model)
    n = options.max_new_tokens
    with tempfile.TemporaryDirectory(prefix="thinktune-onnx-") as tmp:
        fp32_path, exporter, kv_note = write_onnx(model, Path(tmp) / "model.onnx", options)
        method, quantized_op = SCHEMES[options.int8_scheme](fp32_path, out / GRAPH)
        fp32, int8 = OnnxRunner(fp32_path), OnnxRunner(out / GRAPH)
        before = _measure(fp32, ids, n, stops)
        after = _measure(int8, ids, n, stops)
        fp32_bytes = graph_bytes(fp32_path)
        del fp32
    save_side_files(source, out)
    reference = [torch_logits(model, x) for x in ids]
    reference_greedy = [torch_greedy(model, x, n, stops) for x in ids]
    return {
        "artefact": str(out / GRAPH),
        "scheme": options.int8_scheme,
        "method": method,
        "quantized_matmuls": _count_ops(out / GRAPH, quantized_op),
        "exporter": exporter,
        "kv_cache": bool(int8.past),
        **({"kv_cache_note": kv_note} if kv_note else {}),
        "compared_with": "float32 ONNX graph and the merged PyTorch model",
        "bytes_before": fp32_bytes,
        "bytes_after": graph_bytes(out / GRAPH),
        "size_ratio": graph_bytes(out / GRAPH) / fp32_bytes,
        "prompt_latency_s_before": before["latency"],
        "prompt_latency_s_after": after["latency"],
        "latency_speedup": before["latency"] / after["latency"],
        "tokens_per_s_before": before["tokens_per_s"],
        "tokens_per_s_after": after["tokens_per_s"],
        "max_abs_logit_diff": max_abs_diff(reference, after["logits"]),
        "max_abs_logit_diff_fp32_onnx": max_abs_diff(reference, before["logits"]),
        "top1_agreement": top1_agreement(reference, after["logits"]),
        "greedy": greedy_agreement(reference_greedy, after["greedy"]),
    }


def quantize_per_tensor(src: Path, dst: Path) -> tuple[str, str]:
    """`quantize_dynamic`: int8 weights per output channel, activations quantised per tensor on the fly
    (MatMulInteger). One scale per activation tensor is coarse where LLM activations have outlier features
    (LLM.int8, Dettmers et al. 2022, §3): fast, but it can move the next token."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # onnxruntime's recommended preparation: shape inference + graph optimisation
    prepared = src.with_name("prepared.onnx")
    quant_pre_process(src, prepared, save_as_external_data=True)
    quantize_dynamic(
        prepared,
        dst,
        weight_type=QuantType.QInt8,
        per_channel=True,
        # 7-bit weights: onnxruntime's U8S8 integer matmul saturates on x86 without VNNI (AVX2 only), which costs
        # half the top-1 agreement there; reduce_range is the remedy onnxruntime documents, on every CPU alike
        reduce_range=True,
        use_external_data_format=graph_bytes(src) > PROTOBUF_LIMIT,
    )
    return "onnxruntime quantize_dynamic: int8 weights per channel, int8 activations per tensor", "MatMulInteger"


def quantize_blockwise(src: Path, dst: Path) -> tuple[str, str]:
    """MatMulNBits: int8 weights in blocks of 32; activations quantised to int8 on the fly per block inside the
    kernel (accuracy_level 4), so an outlier only coarsens its own block of 32 values."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    with quiet_loggers("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=graph_bytes(src) > PROTOBUF_LIMIT)
    return "onnxruntime MatMulNBits: int8 weights and int8 activations, both in blocks of 32", "MatMulNBits"


PROTOBUF_LIMIT = 2**31 - 2**27  # a graph above ~2 GB must keep its weights as external data
SCHEMES = {"blockwise": quantize_blockwise, "per-tensor": quantize_per_tensor}


def _measure(runner: OnnxRunner, ids: list[list[int]], n: int, stops: list[int]) -> dict[str, Any]:
    """Logits and greedy ids on every prompt; latency of one prompt pass; greedy tokens per second over all prompts
    (always `n` tokens each, ignoring stop tokens, so both graphs do the same work)."""
    logits = [runner.logits(x) for x in ids]  # also warms the session up
    latency = median_seconds(lambda: runner.logits(ids[0]), repeats=5)
    start = time.perf_counter()
    tokens = sum(len(runner.greedy(x, n)) for x in ids)
    return {
        "logits": logits,
        "latency": latency,
        "tokens_per_s": tokens / (time.perf_counter() - start),
        "greedy": [runner.greedy(x, n, stops) for x in ids],
    }


def _count_ops(path: Path, op_type: str) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(node.op_type == op_type for node in graph.node)


def export_bitsandbytes(source: ExportSource, out: Path, options: ExportOptions) -> dict[str, Any]:
    """GPU 8-bit (LLM.int8) or 4-bit (NF4) weights via bitsandbytes, saved with save_pretrained."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from thinktune.export.merged import save_merged
    from thinktune.export.parity import directory_bytes

    ids = source.chat_ids(options.prompts)
    with tempfile.TemporaryDirectory(prefix="thinktune-merged-") as tmp:
        save_merged(source, Path(tmp), dtype="float16")
        reference_model = source.model.to(torch.device("cuda"), torch.float16)
        stops = stop_ids(source.tokenizer, reference_model)
        reference = [torch_logits(reference_model, x) for x in ids]
        reference_greedy = [torch_greedy(reference_model, x, options.max_new_tokens, stops) for x in ids]
        before_bytes = directory_bytes(*Path(tmp).glob("*.safetensors"))
        source.model = reference_model = None  # free the GPU before loading the quantised copy
        quant = BitsAndBytesConfig(
            load_in_8bit=options.quant_bits == 8,
            load_in_4bit=options.quant_bits == 4,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float16,
        )
        model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, device_map="cuda").eval()
    model.save_pretrained(out)
    source.tokenizer.save_pretrained(out)
    logits = [torch_logits(model, x) for x in ids]
    greedy = [torch_greedy(model, x, options.max_new_tokens, stops) for x in ids]
    return {
        "artefact": str(out),
        "method": f"bitsandbytes {'LLM.int8' if options.quant_bits == 8 else 'NF4'}",
        "compared_with": "merged model (PyTorch, float16, same GPU)",
        "bytes_before": before_bytes,
        "bytes_after": directory_bytes(*out.glob("*.safetensors")),
        "max_abs_logit_diff": max_abs_diff(reference, logits),
        "top1_agreement": top1_agreement(reference, logits),
        "greedy": greedy_agreement(reference_greedy, greedy),
    }
