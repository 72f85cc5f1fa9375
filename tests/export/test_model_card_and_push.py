"""Model cards and `--push-to-hub`: a tiny training run's adapter and exports name their base, carry Hub metadata that
`ModelCard.load` reads back, and push exactly their files through huggingface_hub (recorded at its boundary)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, constants
from huggingface_hub.hf_api import CommitInfo, RepoUrl
from rich.console import Console
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import load_config
from thinktune.export.hub import plan_push, push_folder
from thinktune.export.model_card import base_model_reference, build_model_card, dataset_references
from thinktune.train.sft import run_sft

ENV = {"COLUMNS": "200"}


class RecordingHfApi(HfApi):
    """A real HfApi whose three sending methods record their arguments instead of calling the Hub."""

    def __init__(self):
        super().__init__(token="hf_test")
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id, operations, **kwargs):
        contents = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.calls.append(("create_commit", {"repo_id": repo_id, "operations": operations, **kwargs}))
        self.contents = contents
        oid = "0" * 40
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message="", commit_description="",
            oid=oid,
        )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dirs, tmp_path_factory) -> Path:
    """A 3-step LoRA run of the tiny Llama with before/after evaluation: config.yaml, adapter/, summary.json."""
    out = tmp_path_factory.mktemp("card") / "run"
    sets = [
        f"model.name_or_path={tiny_model_dirs['llama']}",
        f"output_dir={out}",
        "data.max_train_samples=8",
        "data.max_length=512",
        "train.max_steps=3",
        "train.batch_size=4",
        "eval.max_samples=4",
        "eval.max_new_tokens=4",
        "eval.batch_size=4",
    ]
    run_sft(load_config(None, sets), Console(quiet=True))
    return out


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


def test_the_run_adapter_names_its_base_and_has_a_card(tiny_run, tiny_model_dirs):
    adapter = tiny_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_model_dirs["llama"]).resolve())
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.tags == ["thinktune", "lora", "reasoning"]
    assert card.data.base_model is None  # a local path is not Hub metadata; the body names it
    assert card.data.datasets is None  # bundled:arithmetic/train is no Hub dataset; the body lists it
    assert str(Path(tiny_model_dirs["llama"]).resolve()) in card.text
    assert "Training data: `bundled:arithmetic/train`." in card.text
    assert "| accuracy |" in card.text and "| format compliance |" in card.text
    config_block = card.text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(config_block) == yaml.safe_load((tiny_run / "config.yaml").read_text())


def test_bundled_and_hub_bases_are_named_by_their_hub_id(tmp_path):
    assert base_model_reference("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_reference("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen3-0.6B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert base_model_reference(str(snapshot)) == "Qwen/Qwen3-0.6B"
    assert base_model_reference(str(tmp_path)) == str(tmp_path.resolve())

    card = build_model_card("gguf", "smollm2-135m-instruct", record={"gguf_type": "q8_0", "top1_agreement": 1.0})
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "gguf" and "gguf" in card.data.tags and "thinktune" in card.data.tags
    assert "dequantised" in card.text and "| top1 agreement | 1 |" in card.text


@pytest.mark.parametrize(
    ("train", "hub", "other"),
    [
        (["hf:open-r1/OpenR1-Math-220k"], ["open-r1/OpenR1-Math-220k"], []),
        (["hf:openai/gsm8k@v1:main[train]", "hf:a/b[test]"], ["openai/gsm8k", "a/b"], []),
        (["data/gsm8k", "data/train.jsonl"], [], ["gsm8k", "train.jsonl"]),
        ([{"path": "hf:a/b", "weight": 0.5}, "bundled:arithmetic/train"], ["a/b"], ["bundled:arithmetic/train"]),
        (["lf-data/dataset_info.json#alpaca_en_demo"], [], ["alpaca_en_demo"]),
    ],
)
def test_dataset_references(train, hub, other):
    assert dataset_references(train) == (hub, other)


def test_gguf_export_card_and_dry_run(tiny_run, no_token):
    args = ["export", "--run-dir", str(tiny_run), "--format", "gguf", "--push-to-hub", "me/x", "--dry-run"]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    out = tiny_run / "export" / "gguf"
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "gguf" and card.data.tags == [
        "thinktune",
        "lora",
        "gguf",
        "quantized",
        "reasoning",
    ]
    assert "## Evaluation" in card.text and "## Training config" in card.text and "## Verification" in card.text

    files = sorted(p.name for p in out.iterdir())
    assert files == ["Modelfile", "README.md", "run-q8_0.gguf", "verify.json"]
    listing = result.output[result.output.index("would push") :].splitlines()
    assert listing[0] == f"would push {out} to https://huggingface.co/me/x (revision main, public):"
    for name, line in zip(files, listing[1:5], strict=True):
        assert line.split() == [f"{(out / name).stat().st_size:,}", "B", name]
    total = sum((out / f).stat().st_size for f in files)
    assert listing[5] == f"4 files, {total:,} bytes; nothing sent (--dry-run)"
    print("\n".join(listing))


def test_adapter_export_pushes_every_file_in_one_commit(tiny_run, tmp_path):
    out = tmp_path / "adapter-export"
    args = ["export", "--run-dir", str(tiny_run), "--format", "adapter", "-o", str(out)]
    result = CliRunner().invoke(app, args, env=ENV)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "verify.json").read_text())
    assert record["max_abs_logit_diff"] == 0.0 and record["top1_agreement"] == 1.0
    assert ModelCard.load(out / "README.md").data.library_name == "peft"
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref: main\n")  # huggingface_hub's default ignore patterns apply

    api = RecordingHfApi()
    plan = plan_push(out, "me/tiny-lora", private=True, revision="v1")
    url = push_folder(plan, api)
    assert url.startswith("https://huggingface.co/me/tiny-lora/commit/")
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][1] == {"repo_id": "me/tiny-lora", "private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][1] == {"repo_id": "me/tiny-lora", "branch": "v1", "exist_ok": True, "repo_type": "model"}
    commit = api.calls[2][1]
    assert commit["revision"] == "v1" and commit["repo_type"] == "model"
    assert all(isinstance(op, CommitOperationAdd) for op in commit["operations"])
    on_disk = sorted(p.name for p in out.iterdir() if p.is_file())
    assert sorted(api.contents) == on_disk == [name for name, _ in plan.files]
    assert "adapter_model.safetensors" in on_disk and "adapter_config.json" in on_disk
    assert all(api.contents[name] == (out / name).read_bytes() for name in on_disk)


def test_push_errors_are_one_line(tiny_run, tiny_model_dirs, no_token, monkeypatch, tmp_path):
    runner = CliRunner()
    base = ["export", "--run-dir", str(tiny_run), "--format", "gguf", "-o", str(tmp_path / "o")]
    cases = [
        (base + ["--push-to-hub", "me/x"], {}, "hf auth login"),
        (base + ["--push-to-hub", "me/x"], {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_x"}, "HF_HUB_OFFLINE"),
        (base + ["--push-to-hub", "me/x/y"], {}, "not a Hub repo id"),
        (base + ["--dry-run"], {}, "--push-to-hub"),
        (["export", "--model", str(tiny_model_dirs["llama"]), "--format", "adapter", "--push-to-hub", "me/x"],
         {"HF_TOKEN": "hf_x"}, "needs an adapter"),
    ]  # fmt: skip
    for args, env, needle in cases:
        result = runner.invoke(app, args, env={**ENV, **env})
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()  # refused before exporting


def test_cli_push_sends_the_exported_gguf_folder(tiny_run, tmp_path, monkeypatch):
    apis: list[RecordingHfApi] = []

    def recording_api():
        apis.append(RecordingHfApi())
        return apis[-1]

    monkeypatch.setattr("thinktune.export.hub.HfApi", recording_api)
    out = tmp_path / "gguf"
    args = ["export", "--run-dir", str(tiny_run), "--format", "gguf", "-o", str(out)]
    args += ["--push-to-hub", "me/x", "--private", "--revision", "q8"]
    result = CliRunner().invoke(app, args, env={**ENV, "HF_TOKEN": "hf_x"})
    assert result.exit_code == 0, result.output
    assert "pushed to me/x (q8): https://huggingface.co/me/x/commit/" in result.output
    (api,) = apis
    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][1]["private"] is True and api.calls[2][1]["revision"] == "q8"
    assert sorted(api.contents) == ["Modelfile", "README.md", "run-q8_0.gguf", "verify.json"]
    assert api.contents["run-q8_0.gguf"] == (out / "run-q8_0.gguf").read_bytes()


def test_a_hub_refusal_is_one_user_error(tmp_path):
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    from thinktune.errors import UserError

    class Forbidden(RecordingHfApi):
        def create_repo(self, repo_id, **kwargs):
            request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
            response = httpx.Response(403, request=request)
            raise HfHubHTTPError("403 Forbidden: you cannot create repos under 'org'.\nmore detail", response=response)

    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(
        UserError, match=r"^push to org/x failed: 403 Forbidden: you cannot create repos under 'org'\.$"
    ):
        push_folder(plan_push(tmp_path, "org/x"), Forbidden())
