"""Matching with 10,000 callbacks against 10: workload M of issue 16 (dry-run `match` on
explicit job-id contexts), and intake of events told apart only by their work names."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
# Workload M: what the 9,999 explicit-id callbacks watch, cycling.
M_NAMES = ("complete", "failed", "running", "submit", "done", "killed", "blocked")
M_TYPES = (("job", ""), ("work", "-*"), ("subjob", "-3"))
M_REQUESTS = 20_000


def conf_m(size: int) -> str:
    """Workload M: `cb.pl = complete-job-self`, then `size - 1` callbacks on explicit job ids
    900000+i (names and types cycling), none of which any request's job is."""
    lines = ["cb.pl = complete-job-self\n"]
    for i in range(size - 1):
        kind, extra = M_TYPES[i % len(M_TYPES)]
        lines.append(f"cb.pl = {M_NAMES[i % len(M_NAMES)]}-{kind}-{900_000 + i}{extra}\n")
    return "".join(lines)


def payload_m(n: int) -> bytes:
    """`match` requests for complete-job on jobs 0..n-1: each must list exactly cb.pl."""
    return encode_lines(
        {"op": "match", "name": "complete", "type": "job", "job": {"id": i}} for i in range(n)
    )


def rate_m(daemon: Daemon, data: bytes, n: int) -> float:
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(data, n)
        elapsed = time.perf_counter() - t0
    wrong = [r for r in replies if json.loads(r).get("matched") != ["cb.pl"]]
    if wrong:
        raise RuntimeError(f"{len(wrong)} replies did not list exactly cb.pl: {wrong[0]!r}")
    return n / elapsed


def conf_extras(size: int) -> str:
    """`size` callbacks on one file, each on its own work name, all on complete-work events."""
    return "".join(f"cb.pl = complete-work-self-frame{i}\n" for i in range(size))


def payload_extras(n: int, prefix: str) -> bytes:
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


def rate_extras(daemon: Daemon, data: bytes, n: int) -> float:
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
        "Matching: 10,000 callbacks vs 10 (M: dry-run `match` requests/s on explicit job ids;"
        " extras: intake events/s told apart by work name)",
        [
            "loop",
            "M 10 callbacks match/s",
            "M 10,000 callbacks match/s",
            "M 10,000 / 10 (per rep)",
            "extras 10 events/s",
            "extras 10,000 events/s",
            "extras 10,000 / 10",
            "start with 10,000 s",
        ],
    )
    reps = cfg.pick(1, 3)
    n_extras = cfg.pick(400, 1500)  # both sizes get the same n: per-batch costs compare
    starts: dict[str, float] = {}
    with ExitStack() as stack:
        daemons: dict[str, Daemon] = {}
        for loop in cfg.loops:
            for workload, conf in (("M", conf_m), ("extras", conf_extras)):
                for size in SIZES:
                    t0 = time.perf_counter()
                    tree = Tree(loop, {"cb.pl": "exit 0;\n"}, conf(size))
                    daemons[f"{workload}/{size}/{loop}"] = stack.enter_context(tree)
                    starts[f"{workload}/{size}/{loop}"] = time.perf_counter() - t0
        m_data = payload_m(M_REQUESTS)
        measures: dict[str, Callable[[str, int], float]] = {
            "M": lambda variant, rep: rate_m(daemons[variant], m_data, M_REQUESTS),
            "extras": lambda variant, rep: rate_extras(
                daemons[variant], payload_extras(n_extras, f"m{rep}"), n_extras
            ),
        }
        res = interleave(reps, list(daemons), lambda v, rep: measures[v.split("/")[0]](v, rep))
    section.raw.update(rates=res, start_s=starts, m_requests=M_REQUESTS, extras_n=n_extras)
    for loop in cfg.loops:
        m_small, m_big = res[f"M/10/{loop}"], res[f"M/10000/{loop}"]
        e_small, e_big = res[f"extras/10/{loop}"], res[f"extras/10000/{loop}"]
        section.rows.append(
            [
                loop,
                fmt_mmm(m_small),
                fmt_mmm(m_big),
                fmt_mmm(ratios(m_big, m_small)),
                fmt_mmm(e_small),
                fmt_mmm(e_big),
                fmt_mmm(ratios(e_big, e_small)),
                f"{starts[f'M/10000/{loop}']:.1f}",
            ]
        )
        section.loops.setdefault("M 10,000 callbacks match/s", {})[loop] = median(m_big)
        section.loops.setdefault("extras 10,000 callbacks events/s", {})[loop] = median(e_big)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(ratios(res[f"M/10000/{auto}"], res[f"M/10/{auto}"]))
    section.goal(f"M: 10,000 callbacks ≥ {GOAL}x 10 callbacks ({auto})", f"{got:.2f}x", got >= GOAL)
    extras = median(ratios(res[f"extras/10000/{auto}"], res[f"extras/10/{auto}"]))
    section.goal(f"extras: 10,000 ≥ {GOAL}x 10 ({auto})", f"{extras:.2f}x", extras >= GOAL)
    section.notes += [
        "M (issue 16): `cb.pl = complete-job-self` plus callbacks on explicit job ids "
        "900000+i (names cycling complete … blocked, types job, work `-*`, subjob `-3`); "
        f"{M_REQUESTS:,} pipelined `match` requests for complete-job on jobs 0…"
        f"{M_REQUESTS - 1:,}, each checked to list exactly cb.pl",
        "extras: triggers `complete-work-self-frameN`, events `complete-work` on other work "
        "names: same name and type as every trigger, so only the extra tells them apart",
    ]
    return section
