"""`thinktune export` end to end: a run directory in, a verified artefact and verify.json out; errors on one line."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import load_config, to_yaml


def make_run_dir(tmp_path, model_dir, adapter):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"model.name_or_path={model_dir}", f"output_dir={run}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    shutil.copytree(adapter, run / "adapter")
    return run


def test_export_gguf_from_a_run_dir(export_models, tmp_path):
    model_dir, adapter = export_models["llama"]
    run = make_run_dir(tmp_path, model_dir, adapter)
    result = CliRunner().invoke(
        app, ["export", "--run-dir", str(run), "--format", "gguf", "--gguf-type", "q8_0"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    out = run / "export" / "gguf"  # default: RUN/export/FORMAT
    record = json.loads((out / "verify.json").read_text())
    assert record["format"] == "gguf" and record["source"].endswith(" + " + str(run / "adapter"))
    assert (out / "Modelfile").is_file() and (out / "run-q8_0.gguf").is_file()
    assert "max abs logit diff" in result.output and "greedy identical" in result.output


def test_export_merged_with_model_and_adapter(export_models, tmp_path):
    model_dir, adapter = export_models["qwen3"]
    out = tmp_path / "merged"
    args = ["export", "--model", str(model_dir), "--adapter", str(adapter), "--format", "merged", "-o", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads((out / "verify.json").read_text())["max_abs_logit_diff"] < 1e-4


def test_export_errors_are_one_line(tiny_model_dirs, tmp_path):
    runner = CliRunner()
    cases = [
        (["--model", str(tiny_model_dirs["deepseek_v3"]), "--format", "gguf"], "deepseek_v3"),
        (["--model", str(tiny_model_dirs["deepseek_v3"]), "--format", "onnx"], "mixture-of-experts"),
        (["--model", str(tiny_model_dirs["llama"]), "--format", "tflite"], "export.formats"),
        (["--model", str(tiny_model_dirs["llama"]), "--format", "int8", "--quant-device", "tpu"], "tpu"),
        (["--run-dir", str(tmp_path)], "not a run directory"),
    ]
    for args, needle in cases:
        result = runner.invoke(app, ["export", *args, "-o", str(tmp_path / "out")], env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output, result.output


def test_several_formats_from_the_config_go_to_subdirectories(export_models, tmp_path):
    model_dir, _ = export_models["llama"]
    args = ["export", "--model", str(model_dir), "--set", "export.formats=[merged,gguf]", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "merged" / "verify.json").read_text())["format"] == "merged"
    assert json.loads((tmp_path / "gguf" / "verify.json").read_text())["gguf_type"] == "q8_0"  # export.gguf_type


def test_help_has_an_example():
    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "Example" in result.output and "thinktune export --run-dir" in result.output
