"""ONNX export (with and without KV cache) and CPU int8: onnxruntime parity with the PyTorch model."""

from __future__ import annotations

import importlib.util

import onnxruntime as ort
import pytest
import torch

from thinktune.config import ModelConfig
from thinktune.errors import EnvironmentProblem, UserError
from thinktune.export import ExportOptions, run_export

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="onnx extras not installed")

# torch.export ("dynamo") is the default exporter and is checked once; TorchScript tracing is 20x faster to run.
FAST = ExportOptions(max_new_tokens=6, onnx_exporter="torchscript")


def test_onnx_with_kv_cache_dynamo(export_models, tmp_path):
    model_dir, adapter = export_models["llama"]
    options = FAST.but(onnx_exporter="dynamo", onnx_kv_cache=True)
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "onnx", tmp_path, options, adapter)

    assert record["exporter"] == "dynamo" and record["kv_cache"] is True
    assert record["max_abs_logit_diff"] < 1e-4
    assert record["max_abs_decode_step_diff"] < 1e-4
    assert record["greedy"]["identical"] == 1.0
    inputs = [i.name for i in ort.InferenceSession(str(tmp_path / "model.onnx")).get_inputs()]
    assert inputs[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "config.json").is_file()


@pytest.mark.parametrize(("arch", "kv_cache"), [("qwen3", True), ("qwen2", False)])
def test_onnx_torchscript(export_models, tmp_path, arch, kv_cache):
    model_dir, adapter = export_models[arch]
    record = run_export(
        ModelConfig(name_or_path=str(model_dir)), "onnx", tmp_path, FAST.but(onnx_kv_cache=kv_cache), adapter
    )
    assert record["kv_cache"] is kv_cache
    assert record["max_abs_logit_diff"] < 1e-4
    assert record["greedy"]["identical"] == 1.0


def test_int8_cpu_is_smaller_and_close(export_models, tmp_path):
    model_dir, adapter = export_models["llama"]
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "int8", tmp_path, FAST, adapter)

    assert (tmp_path / "model.int8.onnx").is_file()
    assert record["quantized_matmuls"] == 2 * 7 + 1  # every linear of both layers, and the LM head
    assert record["bytes_after"] < 0.7 * record["bytes_before"]
    assert record["max_abs_logit_diff_fp32_onnx"] < 1e-4
    assert record["max_abs_logit_diff"] < 0.5 and record["top1_agreement"] > 0.8
    for key in ("prompt_latency_s_before", "prompt_latency_s_after", "tokens_per_s_before", "tokens_per_s_after"):
        assert record[key] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_int8_on_gpu_without_cuda_is_one_line(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    with pytest.raises(EnvironmentProblem, match="CUDA") as e:
        run_export(ModelConfig(name_or_path=str(model_dir)), "int8", tmp_path, FAST.but(quant_device="cuda"))
    assert "\n" not in str(e.value)


def test_int8_cpu_refuses_4_bits(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    with pytest.raises(UserError, match="8-bit only"):
        run_export(ModelConfig(name_or_path=str(model_dir)), "int8", tmp_path, FAST.but(quant_bits=4))
