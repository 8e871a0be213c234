"""bench/results/latest.png: rates per benchmark and loop, and callback start latency CDFs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import Section

LOOP_COLOURS = {"asyncio": "tab:blue", "uvloop": "tab:orange"}


def rates_panel(ax: plt.Axes, sections: list[Section]) -> None:
    metrics = [
        (metric, per_loop)
        for s in sections
        for metric, per_loop in s.loops.items()
        if "/s" in metric
    ]
    height = 0.8 / max(1, len(LOOP_COLOURS))
    for k, (loop, colour) in enumerate(LOOP_COLOURS.items()):
        ys = [i + k * height for i in range(len(metrics))]
        xs = [per_loop.get(loop, 0.0) for _, per_loop in metrics]
        ax.barh(ys, xs, height=height, color=colour, label=loop)
    ax.set_yticks([i + height / 2 for i in range(len(metrics))], [m for m, _ in metrics])
    ax.set_xscale("log")
    ax.set_xlabel("per second (log scale)")
    ax.set_title("Throughput per benchmark")
    ax.invert_yaxis()
    ax.legend()


def latency_panel(ax: plt.Axes, sections: list[Section]) -> None:
    latency = next((s for s in sections if s.name == "latency" and s.raw), None)
    if latency is None:
        ax.set_axis_off()
        return
    for label, values in latency.raw.items():
        if not values:
            continue
        ordered = sorted(values)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.axvline(10.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("event → callback start, ms (log scale; dashed: 10 ms goal)")
    ax.set_ylabel("fraction of events")
    ax.set_title("Callback start latency CDF at 100 events/s")
    ax.legend(fontsize="small")


def draw(sections: list[Section], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 7))
    rates_panel(left, sections)
    latency_panel(right, sections)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
