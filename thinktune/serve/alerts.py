"""Prometheus alerting rules on what a thinktune server exports at /metrics (serve/metrics.py); written by
`thinktune deploy --run-dir runs/quickstart -o deploy/quickstart` as deploy/quickstart/alerts.yaml.

Each rule is evaluated per scraped server (pod): the expressions keep the scrape's labels (job, instance, pod, ...).

ThinktuneP99LatencyHigh   P99 of thinktune_request_duration_seconds on the /v1 generation routes, per endpoint
ThinktuneMemoryHigh       process_resident_memory_bytes / thinktune_memory_limit_bytes
ThinktuneErrorRateHigh    5xx share of thinktune_requests_total on the /v1 routes
ThinktuneQueueSaturated   thinktune_queue_depth / thinktune_queue_limit (serve.max_queue)

A drop in answer quality is no served metric: `thinktune eval --compare` measures it on held-out tasks.
"""

from __future__ import annotations

from typing import Any

from thinktune.config import AlertsConfig

GENERATION_ROUTES = "/v1/chat/completions|/v1/completions"


def series(metric: str, alerts: AlertsConfig, *matchers: str) -> str:
    """`metric{matchers, alerts.selector}`: the selector narrows every series to the deployment's servers."""
    labels = [*matchers, alerts.selector] if alerts.selector else list(matchers)
    return f"{metric}{{{','.join(labels)}}}" if labels else metric


def number(value: float) -> str:
    return repr(float(value))


def percent(share: float) -> str:
    return f"{share * 100:g} %"


def alert_rules(alerts: AlertsConfig) -> list[dict[str, Any]]:
    """The rules of one group, in Prometheus' rule-file format."""
    window = alerts.window
    buckets = series("thinktune_request_duration_seconds_bucket", alerts, f'endpoint=~"{GENERATION_ROUTES}"')
    answered = series("thinktune_requests_total", alerts, 'endpoint=~"/v1/.+"')
    failed = series("thinktune_requests_total", alerts, 'endpoint=~"/v1/.+"', 'status=~"5.."')
    per_pod = "sum without (endpoint, status)"
    return [
        {
            "alert": "ThinktuneP99LatencyHigh",
            "expr": f"histogram_quantile(0.99, rate({buckets}[{window}])) > {number(alerts.p99_latency_seconds)}",
            "for": alerts.latency_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "P99 latency of {{ $labels.endpoint }} on {{ $labels.instance }} is "
                "{{ $value | humanizeDuration }}",
                "description": f"99 % of requests over the last {window} took less than {{{{ $value | "
                f"humanizeDuration }}}} (threshold {alerts.p99_latency_seconds:g} s, alerts.p99_latency_seconds), "
                "time to the last byte, whole streams included. Requests wait for a batch: add replicas, "
                "lower max_tokens, or raise serve.max_batch_size.",
            },
        },
        {
            "alert": "ThinktuneMemoryHigh",
            "expr": f"{series('process_resident_memory_bytes', alerts)} / "
            f"{series('thinktune_memory_limit_bytes', alerts)} > {number(alerts.memory_share)}",
            "for": alerts.memory_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.instance }} uses {{ $value | humanizePercentage }} of its memory limit",
                "description": "Resident memory of the server process over the container's memory limit (the "
                f"machine's memory when it has none) is above {percent(alerts.memory_share)} (alerts.memory_share); "
                "past 100 % the container is killed. Raise the pod's memory (`thinktune deploy --memory`) or "
                "lower serve.max_batch_size.",
            },
        },
        {
            "alert": "ThinktuneErrorRateHigh",
            "expr": f"{per_pod} (rate({failed}[{window}])) / {per_pod} (rate({answered}[{window}])) "
            f"> {number(alerts.error_rate)}",
            "for": alerts.error_for,
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "{{ $value | humanizePercentage }} of /v1 requests on {{ $labels.instance }} fail with 5xx",
                "description": f"Share of /v1 answers with a 5xx status over the last {window} is above "
                f"{percent(alerts.error_rate)} (alerts.error_rate): 500 (a server error, in the pod's log), 503 "
                "(shutting down) or 504 (past serve.request_timeout).",
            },
        },
        {
            "alert": "ThinktuneQueueSaturated",
            "expr": f"{series('thinktune_queue_depth', alerts)} / {series('thinktune_queue_limit', alerts)} "
            f"> {number(alerts.queue_share)}",
            "for": alerts.queue_for,
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.instance }} queue is {{ $value | humanizePercentage }} full",
                "description": f"Requests waiting for the model are above {percent(alerts.queue_share)} "
                "(alerts.queue_share) of serve.max_queue; when it is full, new requests get 429. Add replicas.",
            },
        },
    ]


def rule_file(group: str, alerts: AlertsConfig) -> dict[str, Any]:
    """A Prometheus rule file (`rule_files:` in prometheus.yml) with one group."""
    return {"groups": [{"name": group, "rules": alert_rules(alerts)}]}


def prometheus_rule(name: str, alerts: AlertsConfig) -> dict[str, Any]:
    """The same group as a Prometheus Operator PrometheusRule object."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": f"{name}-alerts", "labels": {"app": name}},
        "spec": rule_file(name, alerts),
    }
