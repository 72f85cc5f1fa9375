"""Alert rules of `thinktune deploy` (OUT/alerts.yaml): the rule-file format, every series an expression selects
checked against what a real server exports at /metrics, and — where promtool is installed (`make promtool`) —
`promtool check rules` and `promtool test rules` with series that must fire and series that must not."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from thinktune.cli import app
from thinktune.config import to_yaml, validate
from thinktune.errors import ConfigError
from thinktune.serve.adapters import load_served_model
from thinktune.serve.app import create_app
from thinktune.serve.deploy import write_deployment
from thinktune.serve.metrics import memory_limit_bytes
from thinktune.serve.server import BackgroundServer

HELLO = [{"role": "user", "content": "Hello, world!"}]
PROMTOOL = shutil.which("promtool") or next(
    (str(p) for p in [Path(sys.executable).parent / "promtool"] if p.is_file()), None
)
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make promtool)")
ALERTS = ("ThinktuneP99LatencyHigh", "ThinktuneMemoryHigh", "ThinktuneErrorRateHigh", "ThinktuneQueueSaturated")


# -- the rule-file format, as Prometheus documents it (alerting rules only) ---------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertRule(Strict):
    alert: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")
    expr: str = Field(min_length=1)
    for_: str = Field(alias="for", pattern=r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
    labels: dict[str, str]
    annotations: dict[str, str]


class RuleGroup(Strict):
    name: str = Field(min_length=1)
    interval: str | None = None
    rules: list[AlertRule] = Field(min_length=1)


class RuleFile(Strict):
    groups: list[RuleGroup] = Field(min_length=1)


# -- which series an expression selects -----------------------------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "bool", "on", "ignoring", "group_left", "group_right", "offset"}
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, [(label, op, value)]) of every series selector in a PromQL expression."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    found = []
    for m in re.finditer(r"(?<![\w.\"])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", text):
        rest = text[m.end() :].lstrip()
        if m.group(1) in KEYWORDS or (m.group(2) is None and rest.startswith("(")):
            continue  # an operator or a function
        found.append((m.group(1), MATCHER.findall(m.group(2) or "")))
    return found


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    def one(label, op, value):
        got = labels.get(label, "")
        hit = re.fullmatch(value, got) is not None if op in ("=~", "!~") else got == value
        return hit if op in ("=", "=~") else not hit

    return all(one(*m) for m in matchers)


def unmet(expr: str, scraped: dict[str, list[dict[str, str]]]) -> list[str]:
    """Selectors of `expr` that no scraped sample satisfies (an unknown metric, label or label value)."""
    return [
        f"{name}{matchers}"
        for name, matchers in selectors(expr)
        if not any(matches(labels, matchers) for labels in scraped.get(name, []))
    ]


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("rate(a_total[5m]) > 2.0", [("a_total", [])]),
        (
            'sum without (x, y) (rate(b{x=~"/v1/.+",s="5.."}[5m])) / c > 1e-05',
            [("b", [("x", "=~", "/v1/.+"), ("s", "=", "5..")]), ("c", [])],
        ),
        ("histogram_quantile(0.99, rate(h_bucket[1h])) > 2 and on (job) up", [("h_bucket", []), ("up", [])]),
    ],
)
def test_selectors(expr, expected):
    assert selectors(expr) == expected


# -- a real server's /metrics ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped(tiny_model_dirs) -> dict[str, list[dict[str, str]]]:
    """Sample name → label sets, scraped from the tiny Qwen3 served after a 200 and a 503 (draining) answer."""
    cfg = validate({"model": {"name_or_path": str(tiny_model_dirs["qwen3"])}, "serve": {"max_queue": 8}})
    served = load_served_model(cfg.model, {})
    with BackgroundServer(create_app(served, cfg.serve)) as server:
        body = {"model": served.names[0], "messages": HELLO, "max_tokens": 2}
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200
        server.lifecycle.draining = True
        assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 503
        server.lifecycle.draining = False
        text = httpx.get(server.url + "/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels) | {"__value__": str(sample.value)})
    return samples


@pytest.fixture
def deployed(run_dir, tmp_path):
    count = itertools.count()

    def deploy(*overrides: str) -> Path:
        out = tmp_path / f"deploy-{next(count)}"
        write_deployment(run_dir, out, overrides=list(overrides))
        return out

    return deploy


def rules_of(out: Path) -> dict[str, dict]:
    parsed = RuleFile.model_validate(yaml.safe_load((out / "alerts.yaml").read_text()))
    return {r.alert: r.model_dump(by_alias=True) for g in parsed.groups for r in g.rules}


def test_alert_rules_follow_the_rule_file_format(deployed):
    out = deployed()
    rules = rules_of(out)
    assert tuple(rules) == ALERTS
    assert {r["labels"]["severity"] for r in rules.values()} <= {"warning", "critical"}
    assert all({"summary", "description"} <= set(r["annotations"]) for r in rules.values())
    assert rules["ThinktuneP99LatencyHigh"]["expr"].endswith("> 2.0")
    assert rules["ThinktuneMemoryHigh"]["expr"].endswith("> 0.85")
    assert rules["ThinktuneQueueSaturated"]["for"] == "2m"
    operator = yaml.safe_load((out / "prometheus-rule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule" and operator["metadata"]["name"] == "tiny-run-alerts"
    assert operator["spec"] == yaml.safe_load((out / "alerts.yaml").read_text())


def test_every_selected_series_is_exported(deployed, scraped):
    for name, rule in rules_of(deployed()).items():
        assert selectors(rule["expr"]), name
        assert unmet(rule["expr"], scraped) == [], name
    assert unmet("thinktune_gpu_memory_bytes > 1", scraped) == ["thinktune_gpu_memory_bytes[]"]  # the check can fail
    assert unmet('thinktune_requests_total{status="418"} > 1', scraped)


def test_memory_and_queue_gauges(scraped):
    [limit] = scraped["thinktune_memory_limit_bytes"]
    [rss] = scraped["process_resident_memory_bytes"]
    assert 0 < float(rss["__value__"]) < float(limit["__value__"])
    assert float(scraped["thinktune_queue_limit"][0]["__value__"]) == 8  # serve.max_queue
    assert float(scraped["thinktune_queue_depth"][0]["__value__"]) == 0


def test_memory_limit_reads_the_cgroup(tmp_path):
    physical = memory_limit_bytes(())
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # cgroup v1 without a limit
    assert memory_limit_bytes((v2,)) == physical
    assert memory_limit_bytes((tmp_path / "absent", v1)) == physical
    v2.write_text("1073741824\n")
    assert memory_limit_bytes((v2, v1)) == 1073741824


def test_thresholds_are_settings(deployed):
    out = deployed(
        "alerts.p99_latency_seconds=1.5",
        "alerts.memory_share=0.9",
        "alerts.error_rate=0.2",
        "alerts.queue_for=30s",
        'alerts.selector=namespace="prod"',
    )
    rules = rules_of(out)
    assert rules["ThinktuneP99LatencyHigh"]["expr"].endswith("> 1.5")
    assert rules["ThinktuneMemoryHigh"]["expr"].endswith("> 0.9")
    assert rules["ThinktuneErrorRateHigh"]["expr"].endswith("> 0.2")
    assert rules["ThinktuneQueueSaturated"]["for"] == "30s"
    for rule in rules.values():
        assert all(("namespace", "=", "prod") in m for _, m in selectors(rule["expr"]))


@pytest.mark.parametrize(
    "item,message",
    [
        ("alerts.memory_share=1.5", "alerts.memory_share: Input should be less than or equal to 1"),
        ("alerts.latency_for=5 minutes", "alerts.latency_for: Value error, expected a Prometheus duration"),
        ("alerts.window=0m", "the rate window must be longer than 0"),
        ("alerts.selector=namespace=prod", "expected PromQL label matchers"),
        ("alerts.p99_latancy_seconds=3", "did you mean 'alerts.p99_latency_seconds'"),
        ("serve.port=9000", "deploy takes serve.* limits and alerts.* thresholds"),
        ("model.name_or_path=x", "deploy takes serve.* limits and alerts.* thresholds"),
    ],
)
def test_bad_thresholds_are_one_line_errors(run_dir, tmp_path, item, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        write_deployment(run_dir, tmp_path / "out", overrides=[item])
    result = CliRunner().invoke(app, ["deploy", "--run-dir", str(run_dir), "-o", str(tmp_path / "o"), "--set", item])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_deploy_cli_writes_alerts(run_dir, tmp_path):
    out = tmp_path / "cli"
    args = ["deploy", "--run-dir", str(run_dir), "-o", str(out), "--gpus", "0", "--set", "alerts.error_rate=0.1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "alerts.yaml" in result.output
    assert rules_of(out)["ThinktuneErrorRateHigh"]["expr"].endswith("> 0.1")


def test_vllm_backend_gets_no_alert_rules(run_dir, tmp_path, tiny_model_dirs):
    cfg = validate({"name": "tiny-run", "model": {"name_or_path": str(tiny_model_dirs["qwen3"])}})
    (run_dir / "config.yaml").write_text(
        to_yaml(cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"backend": "vllm"})}))
    )
    written = write_deployment(run_dir, tmp_path / "vllm")
    assert not (tmp_path / "vllm" / "alerts.yaml").exists() and tmp_path / "vllm" / "k8s.yaml" in written
    with pytest.raises(ConfigError, match="vllm backend"):
        write_deployment(run_dir, tmp_path / "vllm", overrides=["alerts.memory_share=0.9"])


# -- promtool ---------------------------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules(deployed):
    out = deployed()
    for name in ("alerts.yaml",):
        result = subprocess.run([PROMTOOL, "check", "rules", str(out / name)], capture_output=True, text=True)
        assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stdout + result.stderr


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items() if k != "__value__") + "}"


def input_series(scraped: dict[str, list[dict[str, str]]]) -> list[dict[str, str]]:
    """Three pods for 15 minutes, on the label sets the real server exports:
    pod-a: every request 3 s, 10 % answered 503, 90 % of its memory limit, queue 60 of 64 — every alert fires;
    pod-b: 0.3 s, 1 % 503, 50 % memory, queue 10 of 64 — nothing fires;
    pod-c: every request 1.5 s, under the 2 s threshold (the 2 s bucket bound keeps P99 from reading above it)."""
    n = 15
    pods = {
        "pod-a:8000": dict(seconds=3.0, errors=6, memory=90, queue=60),
        "pod-b:8000": dict(seconds=0.3, errors=1, memory=50, queue=10),
        "pod-c:8000": dict(seconds=1.5, errors=0, memory=10, queue=0),
    }
    chat = {"endpoint": "/v1/chat/completions"}
    buckets = [
        s
        for s in scraped["thinktune_request_duration_seconds_bucket"]
        if matches(s, [("endpoint", "=", chat["endpoint"])])
    ]
    statuses = {s["status"]: s for s in scraped["thinktune_requests_total"] if s["endpoint"] == chat["endpoint"]}
    out = []
    for pod, p in pods.items():
        target = {"job": "thinktune", "instance": pod}
        for b in buckets:  # 60 requests a minute, all in the buckets at or above their duration
            per_minute = 60 if float(b["le"]) >= p["seconds"] else 0
            out.append(
                {
                    "series": series("thinktune_request_duration_seconds_bucket", target | b),
                    "values": f"0+{per_minute}x{n}",
                }
            )
        ok, failed = statuses["200"], statuses["503"]
        out.append({"series": series("thinktune_requests_total", target | ok), "values": f"0+{100 - p['errors']}x{n}"})
        out.append({"series": series("thinktune_requests_total", target | failed), "values": f"0+{p['errors']}x{n}"})
        out.append({"series": series("process_resident_memory_bytes", target), "values": f"{p['memory']}x{n}"})
        out.append({"series": series("thinktune_memory_limit_bytes", target), "values": f"100x{n}"})
        out.append({"series": series("thinktune_queue_depth", target), "values": f"{p['queue']}x{n}"})
        out.append({"series": series("thinktune_queue_limit", target), "values": f"64x{n}"})
    return out


def promtool_test(rules: Path, tests: list[dict], tmp_path: Path) -> None:
    unit = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / f"test-{rules.stem}.yaml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def without_annotations(out: Path) -> Path:
    """promtool compares rendered annotations too; the firing tests check expressions and labels only."""
    rules = yaml.safe_load((out / "alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    path = out / "alerts-bare.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def expected(alertname: str, *alerts: dict[str, str]) -> dict:
    return {"alertname": alertname, "exp_alerts": [{"exp_labels": a} for a in alerts]}


@needs_promtool
def test_promtool_rules_fire_on_pod_a_only(deployed, scraped, tmp_path):
    a = {"job": "thinktune", "instance": "pod-a:8000"}
    at_10m = [
        expected("ThinktuneP99LatencyHigh", a | {"endpoint": "/v1/chat/completions", "severity": "warning"}),
        expected("ThinktuneMemoryHigh", a | {"severity": "warning"}),
        expected("ThinktuneErrorRateHigh", a | {"severity": "critical"}),
        expected("ThinktuneQueueSaturated", a | {"severity": "warning"}),
    ]
    at_3m = [expected(name) for name in ALERTS[:3]] + [at_10m[3]]  # only the queue's `for: 2m` has passed
    test = {
        "interval": "1m",
        "input_series": input_series(scraped),
        "alert_rule_test": [{"eval_time": "10m", **e} for e in at_10m] + [{"eval_time": "3m", **e} for e in at_3m],
    }
    promtool_test(without_annotations(deployed()), [test], tmp_path)


@needs_promtool
def test_promtool_raised_thresholds_fire_nothing(deployed, scraped, tmp_path):
    out = deployed(
        "alerts.p99_latency_seconds=5",
        "alerts.memory_share=0.95",
        "alerts.error_rate=0.2",
        "alerts.queue_share=0.95",
    )
    test = {
        "interval": "1m",
        "input_series": input_series(scraped),
        "alert_rule_test": [{"eval_time": "10m", **expected(name)} for name in ALERTS],
    }
    promtool_test(without_annotations(out), [test], tmp_path)


@needs_promtool
def test_promtool_annotations_render(deployed, scraped, tmp_path):
    out = deployed()
    description = rules_of(out)["ThinktuneQueueSaturated"]["annotations"]["description"]
    alert = {
        "exp_labels": {"job": "thinktune", "instance": "pod-a:8000", "severity": "warning"},
        "exp_annotations": {"summary": "pod-a:8000 queue is 93.75% full", "description": description},
    }
    test = {
        "interval": "1m",
        "input_series": input_series(scraped),
        "alert_rule_test": [{"eval_time": "10m", "alertname": "ThinktuneQueueSaturated", "exp_alerts": [alert]}],
    }
    promtool_test(out / "alerts.yaml", [test], tmp_path)
