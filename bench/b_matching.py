"""Intake with 10,000 callbacks loaded against 10: what the matcher costs per event."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

from common import (
    Client,
    Config,
    Daemon,
    Section,
    Tree,
    encode_lines,
    fmt_mmm,
    interleave,
    median,
    ratios,
)
from loops import auto_loop

GOAL = 0.8
SIZES = (10, 10_000)


def conf(size: int) -> str:
    """`size` callbacks on one file, each on its own work name, all on complete-work events."""
    return "".join(f"cb.pl = complete-work-self-frame{i}\n" for i in range(size))


def payload(n: int, prefix: str) -> bytes:
    """complete-work events whose work names no trigger names: every event matches nothing."""
    return encode_lines(
        {
            "op": "event",
            "event_id": f"{prefix}-{i}",
            "name": "complete",
            "type": "work",
            "work": f"other{i}",
            "job": {"id": 1 + i % 5000},
        }
        for i in range(n)
    )


def rate(daemon: Daemon, data: bytes, n: int) -> float:
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(data, n)
        elapsed = time.perf_counter() - t0
    last = json.loads(replies[-1])
    if not last.get("ok") or last.get("matched"):
        raise RuntimeError(f"unexpected reply {last}")
    return n / elapsed


def run(cfg: Config) -> Section:
    section = Section(
        "matching",
        "Matching: intake with 10,000 callbacks vs 10 (events/s, events matching nothing)",
        [
            "loop",
            "10 callbacks events/s",
            "10,000 callbacks events/s",
            "10,000 / 10 (per rep)",
            "start with 10,000 s",
        ],
    )
    # Both sizes get the same n: batch sizes, hence per-batch costs, stay comparable.
    n = cfg.pick(400, 1500)
    reps = cfg.pick(1, 2)
    starts: dict[str, float] = {}
    with ExitStack() as stack:
        daemons: dict[str, Daemon] = {}
        for loop in cfg.loops:
            for size in SIZES:
                t0 = time.perf_counter()
                tree = Tree(loop, {"cb.pl": "exit 0;\n"}, conf(size))
                daemons[f"{size}/{loop}"] = stack.enter_context(tree)
                starts[f"{size}/{loop}"] = time.perf_counter() - t0

        def measure(variant: str, rep: int) -> float:
            return rate(daemons[variant], payload(n, f"m{rep}"), n)

        res = interleave(reps, list(daemons), measure)
    section.raw.update(rates=res, start_s=starts)
    for loop in cfg.loops:
        small, big = res[f"10/{loop}"], res[f"10000/{loop}"]
        section.rows.append(
            [
                loop,
                fmt_mmm(small),
                fmt_mmm(big),
                fmt_mmm(ratios(big, small)),
                f"{starts[f'10000/{loop}']:.1f}",
            ]
        )
        section.loops.setdefault("10,000 callbacks events/s", {})[loop] = median(big)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(ratios(res[f"10000/{auto}"], res[f"10/{auto}"]))
    section.goal(f"10,000 callbacks ≥ {GOAL}x 10 callbacks ({auto})", f"{got:.2f}x", got >= GOAL)
    section.notes.append(
        "triggers `complete-work-self-frameN`, events `complete-work` on other work names: "
        "same name and type as every trigger, so only the extra tells them apart"
    )
    return section
