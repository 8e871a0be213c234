"""Prometheus text exposition of the daemon's status document."""

from __future__ import annotations

from typing import Any


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(status: dict[str, Any]) -> str:
    """The `status` document as Prometheus text format 0.0.4."""
    lines = []
    gauges = (
        ("qbcallbacks_up", 1, "gauge", "1 while the daemon serves"),
        ("qbcallbacks_uptime_seconds", status["uptime_s"], "gauge", "seconds since start"),
        ("qbcallbacks_callbacks", status["callbacks"], "gauge", "callbacks loaded"),
        ("qbcallbacks_running", status["running"], "gauge", "runs in progress"),
        ("qbcallbacks_queued", status["queued"], "gauge", "runs waiting to start"),
        ("qbcallbacks_events_total", status["events_total"], "counter", "events accepted"),
        ("qbcallbacks_runs_total", status["runs_total"], "counter", "runs finished"),
        ("qbcallbacks_runs_failed_total", status["runs_failed"], "counter", "runs not ok"),
        ("qbcallbacks_timeouts_total", status["timeouts"], "counter", "runs stopped at timeout"),
        ("qbcallbacks_runs_retried_total", status.get("runs_retried_total", 0), "counter",
         "retries scheduled by the delivery policy"),
        ("qbcallbacks_runs_dead_total", status.get("runs_dead_total", 0), "counter",
         "runs dead after their last attempt"),
        ("qbcallbacks_runs_held", status.get("runs_held", 0), "gauge",
         "runs held by open circuit breakers"),
        ("qbcallbacks_background", status.get("background", 0), "gauge",
         "processes callbacks left running, watched"),
    )  # fmt: skip
    for name, value, kind, text in gauges:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    per_cb = status.get("per_callback", {})
    for metric, key, kind, text in (
        ("qbcallbacks_callback_runs_total", "runs", "counter", "runs per callback since start"),
        ("qbcallbacks_callback_failed_total", "failed", "counter", "failed runs per callback"),
        ("qbcallbacks_callback_duration_p50_seconds", "p50_s", "gauge", "median run duration"),
        ("qbcallbacks_callback_duration_p99_seconds", "p99_s", "gauge", "p99 run duration"),
    ):
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{callback="{_label(n)}"}} {v[key]}' for n, v in per_cb.items()]
    metric = "qbcallbacks_breaker_open"
    lines += [f"# HELP {metric} 1 while the callback's breaker is open or half-open"]
    lines += [f"# TYPE {metric} gauge"]
    lines += [
        f'{metric}{{callback="{_label(b["callback"])}"}} 1' for b in status.get("breakers", [])
    ]
    fleet = status.get("fleet", [])
    for metric, key, text in (
        ("qbcallbacks_member_heartbeat_age_seconds", "heartbeat_age_s",
         "seconds since the member's last heartbeat (SPEC §8)"),
        ("qbcallbacks_member_running", "running", "runs the member reported running"),
    ):  # fmt: skip
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
        lines += [
            f'{metric}{{member="{_label(str(m["member"]))}",role="{_label(str(m["role"]))}",'
            f'state="{_label(str(m.get("state", "up")))}"}} {m[key]}'
            for m in fleet
        ]
    return "\n".join(lines) + "\n"
