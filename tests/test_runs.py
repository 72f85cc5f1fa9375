"""The run directory (thinktune/runs.py): what a run produced, for every layout; and a freeze run and an ESFT run
(which save only the changed tensors, no config.json), beside a full fine-tune, through every command that reads a
run — export, eval, chat, serve, deploy — each giving the trained model, not the base."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import load_config, to_yaml
from thinktune.errors import ModelNotFoundError
from thinktune.runs import (
    ADAPTER,
    CONFIG,
    METHOD_FILE,
    MODEL,
    PEFT_CONFIG,
    TRAINED,
    RunDir,
    find_trained,
    load_trained,
    open_run,
    run_of,
)
from thinktune.train.sft import run_sft

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
IDS = torch.tensor([[1, 5, 9, 2, 7, 11]])


def _write(path: Path, text: str = "{}") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


LAYOUTS = [
    # (files in the run, what it produced: (kind, folder) or None)
    ([CONFIG], None),
    ([CONFIG, f"{ADAPTER}/{PEFT_CONFIG}"], ("adapter", ADAPTER)),
    ([CONFIG, f"{ADAPTER}/tokenizer.json"], None),  # a folder without its config is not an adapter
    ([CONFIG, f"{MODEL}/{TRAINED}", f"{MODEL}/{METHOD_FILE}:tensors"], ("tensors", MODEL)),
    ([CONFIG, f"{MODEL}/model.safetensors", f"{MODEL}/config.json", f"{MODEL}/{METHOD_FILE}:full"], ("full", MODEL)),
    ([CONFIG, f"{MODEL}/model.safetensors", f"{MODEL}/config.json"], ("full", MODEL)),  # a merged export saved there
    ([CONFIG, f"{MODEL}/{TRAINED}"], None),  # tensors without their method file cannot be put back
    ([CONFIG, f"{ADAPTER}/{PEFT_CONFIG}", f"{MODEL}/config.json"], ("adapter", ADAPTER)),
]


@pytest.mark.parametrize(("files", "expected"), LAYOUTS, ids=[str(i) for i in range(len(LAYOUTS))])
def test_produced_over_the_layouts(files, expected, tmp_path):
    for f in files:
        name, _, fmt = f.partition(":")
        _write(tmp_path / name, json.dumps({"format": fmt}) if fmt else "{}")
    run = open_run(tmp_path)
    produced = run.produced()
    if expected is None:
        assert produced is None and find_trained(tmp_path) is None
        return
    kind, folder = expected
    assert (produced.kind, produced.path) == (kind, tmp_path / folder)
    assert find_trained(tmp_path) == produced  # the run directory
    assert find_trained(tmp_path / folder) == produced  # the folder itself
    assert run_of(tmp_path / folder) == run_of(tmp_path) == RunDir(tmp_path)


def test_not_a_run_directory(tiny_model_dirs, tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a run directory"):
        open_run(tmp_path)
    assert run_of(tmp_path) is None
    with pytest.raises(ModelNotFoundError, match="not a trained adapter"):
        load_trained(_base(tiny_model_dirs["llama"]), tmp_path)


# A freeze run and an ESFT run (changed tensors only) and a full run (a complete model), trained once for the module.
RUNS = {
    "freeze": ("qwen3", ["method.name=freeze", "method.top_layers=1"]),
    "esft": ("qwen3_moe", ["method.name=esft", "method.esft_threshold=0.5", "train.weight_decay=0"]),
    "full": ("llama", ["method.name=full"]),
}
TENSOR_RUNS = ["freeze", "esft"]


@pytest.fixture(scope="module")
def trained_runs(tiny_model_dirs, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """method → (run dir, base model dir)."""
    out = {}
    for method, (arch, sets) in RUNS.items():
        run = tmp_path_factory.mktemp("runs") / method
        cfg = load_config(
            None,
            [
                f"name={method}-run",
                f"model.name_or_path={tiny_model_dirs[arch]}",
                f"output_dir={run}",
                "data.max_train_samples=8",
                "data.max_length=512",
                "train.max_steps=2",
                "train.batch_size=4",
                "train.learning_rate=1e-2",
                "eval.before=false",
                "eval.after=false",
                *sets,
            ],
        )
        run_sft(cfg, Console(quiet=True))
        out[method] = (run, tiny_model_dirs[arch])
    return out


def _base(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


def _trained(run: Path, model_dir: Path) -> torch.nn.Module:
    return load_trained(_base(model_dir), run).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", TENSOR_RUNS)
def test_a_run_that_saved_tensors_is_read_as_such(method, trained_runs):
    run, model_dir = trained_runs[method]
    produced = open_run(run).produced()
    assert produced.kind == "tensors" and produced.path == run / MODEL
    assert not (run / MODEL / "config.json").exists()  # nothing here loads on its own: it needs the base
    assert not _same_weights(_trained(run, model_dir), _base(model_dir))


@pytest.mark.parametrize("method", list(RUNS))
def test_export_merged_of_the_run_is_the_trained_model(method, trained_runs, tmp_path):
    run, model_dir = trained_runs[method]
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", "--run-dir", str(run), "--format", "merged", "-o", str(out)], env=ENV)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verify.json").read_text())
    assert record["max_abs_logit_diff"] == 0
    if method in TENSOR_RUNS:  # the base + the tensors (a full run's model is the source itself)
        assert record["source"].endswith(f" + {run / MODEL}")
    exported, trained, base = _base(out), _trained(run, model_dir), _base(model_dir)
    assert _same_weights(exported, trained) and not _same_weights(exported, base)
    assert torch.equal(_logits(exported), _logits(trained))
    assert not torch.allclose(_logits(exported), _logits(base))
    card = (out / "README.md").read_text()
    assert f"of the {method} fine-tune" in card and "adapter merged" not in card


def test_export_adapter_of_a_tensors_run_is_a_one_line_error(trained_runs, tmp_path):
    run, _ = trained_runs["freeze"]
    args = ["export", "--run-dir", str(run), "--format", "adapter", "-o", str(tmp_path / "a")]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "needs a PEFT adapter" in result.output and "--format merged" in result.output


@pytest.mark.parametrize("method", list(RUNS))
def test_eval_and_chat_of_the_run_use_the_trained_model(method, trained_runs, tmp_path, monkeypatch):
    import thinktune.eval.job as job
    import thinktune.serve.chat as chat

    run, model_dir = trained_runs[method]
    seen = {}
    real_evaluate = job.evaluate

    def spy_evaluate(model, *args, **kwargs):
        seen["eval"] = _logits(model)
        return real_evaluate(model, *args, **kwargs)

    class SpySession(chat.ChatSession):
        def __init__(self, model, *args, **kwargs):
            seen["chat"] = _logits(model)
            super().__init__(model, *args, **kwargs)

    monkeypatch.setattr(job, "evaluate", spy_evaluate)
    monkeypatch.setattr(chat, "ChatSession", SpySession)
    out = tmp_path / "eval"
    args = ["eval", "--run-dir", str(run), "--max-samples", "1", "--set", "eval.max_new_tokens=2", "-o", str(out)]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    assert (out / "report.json").is_file()
    result = CliRunner().invoke(app, ["chat", "--run-dir", str(run), "-p", "2+2?", "--max-new-tokens", "2"], env=ENV)
    assert result.exit_code == 0, result.output
    trained, base = _logits(_trained(run, model_dir)), _logits(_base(model_dir))
    for command in ("eval", "chat"):
        assert torch.equal(seen[command], trained) and not torch.allclose(seen[command], base), command


@pytest.mark.parametrize("method", list(RUNS))
def test_serve_of_the_run_serves_the_trained_model_under_its_name(method, trained_runs, monkeypatch):
    """`thinktune serve --run-dir RUN` as the CLI wires it (the model loaded, the API built, asked over HTTP)."""
    import thinktune.serve.server as server

    run, model_dir = trained_runs[method]
    seen = {}

    def serve_once(cfg, served_model_name=None, log_level="info", num_threads=None, trained_tensors=None, gguf=None):
        app_, lifecycle, served = server.build_app(cfg, served_model_name, trained_tensors)
        seen["logits"] = _logits(served.model)
        with server.BackgroundServer(app_, lifecycle) as live:
            seen["models"] = [m["id"] for m in httpx.get(live.url + "/v1/models").json()["data"]]

    monkeypatch.setattr(server, "serve", serve_once)
    result = CliRunner().invoke(app, ["serve", "--run-dir", str(run)], env=ENV)
    assert result.exit_code == 0, result.output
    assert seen["models"] == [f"{method}-run"]
    assert torch.equal(seen["logits"], _logits(_trained(run, model_dir)))
    assert not torch.allclose(seen["logits"], _logits(_base(model_dir)))


def test_vllm_cannot_serve_trained_tensors(trained_runs):
    run, _ = trained_runs["freeze"]
    result = CliRunner().invoke(app, ["serve", "--run-dir", str(run), "--backend", "vllm"], env=ENV)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "thinktune export --run-dir" in result.output


@pytest.mark.parametrize("method", list(RUNS))
def test_deploy_of_the_run_ships_the_trained_model(method, trained_runs, tmp_path):
    from thinktune.serve.deploy import DeploySpec, write_deployment

    run, model_dir = trained_runs[method]
    out = tmp_path / "deploy"
    write_deployment(run, out, DeploySpec(gpus=0))
    assert load_config(out / "serve.yaml").model.name_or_path == "/app/model"
    assert '"--served-model-name", "' + f'{method}-run"]' in (out / "Dockerfile").read_text()
    assert _same_weights(_base(out / "model"), _trained(run, model_dir))


def test_eval_of_an_unfinished_run_names_what_is_missing(trained_runs, tmp_path):
    run, _ = trained_runs["freeze"]
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / CONFIG).write_text(to_yaml(open_run(run).read_config()))
    result = CliRunner().invoke(app, ["eval", "--run-dir", str(unfinished), "--max-samples", "1"], env=ENV)
    assert result.exit_code == 2 and "not a trained adapter" in result.output and "Traceback" not in result.output
