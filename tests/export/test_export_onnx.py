"""ONNX export (with and without KV cache) and CPU int8: onnxruntime parity with the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from thinktune.config import ModelConfig
from thinktune.errors import EnvironmentProblem, UserError
from thinktune.export import ExportOptions, run_export

ort = pytest.importorskip("onnxruntime", reason="ONNX export needs: pip install onnx onnxruntime onnxscript")
pytest.importorskip("onnxscript")

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
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    inputs = [i.name for i in session.get_inputs()]
    assert inputs[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "config.json").is_file()
    assert_left_padded_batch_matches(session, model_dir, adapter)


def assert_left_padded_batch_matches(session, model_dir, adapter):
    """A left-padded batch of two, prompt then one cached step, against the merged PyTorch model."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).merge_and_unload()
    ids = np.array([[0, 0, 0, 10, 11, 12, 13], [20, 21, 22, 23, 24, 25, 26]])
    mask = np.array([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    past = {i.name: np.zeros((2, 2, 0, 16), np.float32) for i in session.get_inputs()[3:]}
    out = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
    step = out[0][:, -1].argmax(-1)[:, None]
    mask2, positions2 = np.concatenate([mask, [[1], [1]]], 1), positions[:, -1:] + 1
    present = dict(zip([i.name for i in session.get_inputs()[3:]], out[1:], strict=True))
    out2 = session.run(None, {"input_ids": step, "attention_mask": mask2, "position_ids": positions2, **present})
    with torch.no_grad():
        full = model(
            input_ids=torch.tensor(np.concatenate([ids, step], 1)),
            attention_mask=torch.tensor(mask2),
            position_ids=torch.tensor(np.concatenate([positions, positions2], 1)),
        ).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(out[0] - full[:, :-1])[real].max() < 1e-4
    assert np.abs(out2[0][:, -1] - full[:, -1]).max() < 1e-4


@pytest.mark.parametrize(("arch", "kv_cache"), [("qwen3", True), ("qwen2", False)])
def test_onnx_torchscript(export_models, tmp_path, arch, kv_cache):
    model_dir, adapter = export_models[arch]
    record = run_export(
        ModelConfig(name_or_path=str(model_dir)), "onnx", tmp_path, FAST.but(onnx_kv_cache=kv_cache), adapter
    )
    assert record["kv_cache"] is kv_cache
    assert record["max_abs_logit_diff"] < 1e-4
    assert record["greedy"]["identical"] == 1.0


def test_int8_per_tensor(export_models, tmp_path):
    model_dir, adapter = export_models["llama"]
    options = FAST.but(int8_scheme="per-tensor")
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "int8", tmp_path, options, adapter)

    assert (tmp_path / "model.int8.onnx").is_file()
    assert record["quantized_matmuls"] == 2 * 7 + 1  # every linear of both layers, and the LM head
    assert record["bytes_after"] < 0.7 * record["bytes_before"]
    assert record["max_abs_logit_diff_fp32_onnx"] < 1e-4
    assert record["max_abs_logit_diff"] < 0.5 and record["top1_agreement"] > 0.8
    for key in ("prompt_latency_s_before", "prompt_latency_s_after", "tokens_per_s_before", "tokens_per_s_after"):
        assert record[key] > 0


def test_int8_blockwise(export_models, tmp_path):
    model_dir, adapter = export_models["qwen3"]
    record = run_export(ModelConfig(name_or_path=str(model_dir)), "int8", tmp_path, FAST, adapter)
    assert record["scheme"] == "blockwise" and record["quantized_matmuls"] == 2 * 7 + 1
    assert record["max_abs_logit_diff_fp32_onnx"] < 1e-4
    assert record["bytes_after"] < 0.8 * record["bytes_before"]  # the embedding stays float32
    assert record["max_abs_logit_diff"] < 0.5 and record["top1_agreement"] > 0.8  # tiny random logits are flat


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
