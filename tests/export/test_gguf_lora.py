"""`--format gguf-lora`: a PEFT LoRA adapter as a llama.cpp LoRA file, judged by llama.cpp applying it to the base GGUF
(llama-cpp-python from the `llama` extra) against the PEFT model in PyTorch."""

from __future__ import annotations

import json

import gguf
import llama_cpp  # noqa: F401  (fail, not skip, where the extra is missing: these tests are the proof)
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.export.conftest import make_adapter
from thinktune.cli import app
from thinktune.config import ModelConfig
from thinktune.errors import UserError
from thinktune.export import ExportOptions, VerificationFailed, gguf_file, run_export
from thinktune.export import llama_cpp_check as lcc
from thinktune.export.gguf_lora import write_gguf_lora
from thinktune.export.source import base_config

OPTIONS = ExportOptions(max_new_tokens=8)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_lora_file_applied_by_llama_cpp_matches_peft(export_models, tmp_path, arch):
    model_dir, adapter = export_models[arch]
    record = run_export(
        ModelConfig(name_or_path=str(model_dir)), "gguf-lora", tmp_path, OPTIONS.but(gguf_type="f32"), adapter
    )
    seen = record["llama_cpp"]
    assert seen["tokenizer_identical"], seen
    assert seen["max_abs_logit_diff"] < 5e-3 and seen["top1_agreement"] == 1.0, seen  # f32 weights, f16 KV cache
    assert seen["greedy"]["identical"] == 1.0, seen
    assert record["verified"] and record["lora_tensors"] == 2 * 7 * 2  # 7 linear layers x 2 blocks, A and B each
    reader = gguf.GGUFReader(record["artefact"])
    fields = {k: gguf_file._field(reader, k) for k in ("general.type", "adapter.type", "adapter.lora.alpha")}
    assert fields == {"general.type": "adapter", "adapter.type": "lora", "adapter.lora.alpha": 8.0}
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names


def test_the_adapter_changes_what_llama_cpp_says(export_models, tmp_path):
    """Base alone and base + LoRA file give different logits in llama.cpp: the file is applied, not ignored."""
    model_dir, adapter = export_models["qwen3"]
    record = run_export(
        ModelConfig(name_or_path=str(model_dir)), "gguf-lora", tmp_path, OPTIONS.but(gguf_type="f16"), adapter
    )
    ids = [1, 5, 9, 13, 7]
    with lcc.load(record["base_gguf"], 32) as llm:
        base = lcc.prompt_logits(llm, ids)
    with lcc.load(record["base_gguf"], 32, record["artefact"]) as llm:
        tuned = lcc.prompt_logits(llm, ids)
    assert np.abs(base - tuned).max() > 0.05
    assert record["adapter_dtype"] == "f16" and record["llama_cpp"]["top1_agreement"] == 1.0


def test_a_wrong_qk_permutation_fails_verification(export_models, tmp_path, monkeypatch):
    """The check can fail: Llama's B rows of q/k left unpermuted make llama.cpp disagree with PEFT."""
    model_dir, adapter = export_models["llama"]
    import thinktune.export.gguf_lora as gl

    permute = gguf_file.permute_qk
    monkeypatch.setattr(gl.gguf_file, "permute_qk", lambda w, n: w if w.shape[1] == 4 else permute(w, n))
    with pytest.raises(VerificationFailed, match="llama_cpp"):
        run_export(
            ModelConfig(name_or_path=str(model_dir)), "gguf-lora", tmp_path, OPTIONS.but(gguf_type="f32"), adapter
        )


def test_dora_and_foreign_adapters_are_refused_in_one_line(export_models, tmp_path):
    model_dir, _ = export_models["qwen3"]
    dora = make_adapter(model_dir, tmp_path / "dora", use_dora=True)
    config = base_config(ModelConfig(name_or_path=str(model_dir)))
    with pytest.raises(UserError, match="use_dora") as e:
        write_gguf_lora(dora, config, tmp_path / "x.gguf")
    assert "\n" not in str(e.value) and "adapter_config.json" in str(e.value)
    (tmp_path / "not-an-adapter").mkdir()
    with pytest.raises(UserError, match="not a PEFT adapter directory"):
        write_gguf_lora(tmp_path / "not-an-adapter", config, tmp_path / "y.gguf")


def test_gguf_lora_from_the_cli(export_models, tmp_path):
    model_dir, adapter = export_models["qwen3"]
    out = tmp_path / "out"
    args = ["export", "--model", str(model_dir), "--adapter", str(adapter), "--format", "gguf-lora", "-o", str(out)]
    result = CliRunner().invoke(app, [*args, "--gguf-type", "q8_0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verify.json").read_text())
    assert record["format"] == "gguf-lora" and record["verified"], record
    assert record["base_gguf"].endswith("-q8_0.gguf") and record["artefact"].endswith("-lora-f16.gguf")
    no_adapter = CliRunner().invoke(
        app, ["export", "--model", str(model_dir), "--format", "gguf-lora", "-o", str(tmp_path / "none")]
    )
    assert no_adapter.exit_code != 0 and "needs an adapter" in no_adapter.output
