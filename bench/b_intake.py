"""Pipelined durable intake of events matching nothing, against the same server without fsync."""

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

GOAL = 100_000.0
SYNCS = ("full", "off")


def payload(n: int, prefix: str) -> bytes:
    """`running` job events with unique ids; the only callback listens for `submit`."""
    return encode_lines(
        {
            "op": "event",
            "event_id": f"{prefix}-{i}",
            "name": "running",
            "type": "job",
            "job": {"id": 1 + i % 5000, "name": "shot010", "user": "alice"},
        }
        for i in range(n)
    )


def intake_rate(daemon: Daemon, data: bytes, n: int) -> float:
    """Events/s from the first byte sent to the last durable ack read."""
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(data, n)
        elapsed = time.perf_counter() - t0
    last = json.loads(replies[-1])
    if not last.get("ok") or last.get("matched"):
        raise RuntimeError(f"unexpected reply {last}")
    return n / elapsed


def pipelined(
    cfg: Config,
    name: str,
    callbacks: dict[str, str],
    conf: str,
    variants: dict[str, dict[str, str]],
) -> dict[str, list[float]]:
    """Interleave variants (each its own daemon: loop + qb.conf extras) over reps."""
    n = cfg.pick(10_000, 20_000)
    reps = cfg.pick(1, 3)
    with ExitStack() as stack:
        daemons = {
            v: stack.enter_context(Tree(v.rsplit("/", 1)[-1], callbacks, conf, **extra))
            for v, extra in variants.items()
        }

        def measure(variant: str, rep: int) -> float:
            return intake_rate(daemons[variant], payload(n, f"{name}{rep}"), n)

        return interleave(reps, list(variants), measure)


def depth(cfg: Config, section: Section) -> None:
    """Durable intake rate against how many events one burst pipelines (auto loop)."""
    sizes = cfg.pick((1_000, 5_000), (1_000, 5_000, 20_000))
    conf = {"supervisor_callback_journal_sync": "full"}
    with Tree(auto_loop(), {"cb.pl": "exit 0;\n"}, "cb.pl = submit-job-self\n", **conf) as daemon:
        rates = {n: intake_rate(daemon, payload(n, f"d{n}"), n) for n in sizes}
    section.raw["depth"] = rates
    section.notes.append(
        "rate against burst size (one rep, journal_sync=full): "
        + ", ".join(f"{n:,} events -> {r:,.0f}/s" for n, r in rates.items())
    )


def run(cfg: Config) -> Section:
    section = Section(
        "intake",
        "Pipelined durable intake, events matching nothing (events/s)",
        ["loop", "journal_sync=full events/s", "journal_sync=off events/s", "full / off (per rep)"],
    )
    variants = {
        f"{sync}/{loop}": {"supervisor_callback_journal_sync": sync}
        for loop in cfg.loops
        for sync in SYNCS
    }
    res = pipelined(cfg, "i", {"cb.pl": "exit 0;\n"}, "cb.pl = submit-job-self\n", variants)
    section.raw["rates"] = res
    for loop in cfg.loops:
        full, off = res[f"full/{loop}"], res[f"off/{loop}"]
        section.rows.append([loop, fmt_mmm(full), fmt_mmm(off), fmt_mmm(ratios(full, off))])
        section.loops.setdefault("durable intake events/s", {})[loop] = median(full)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(res[f"full/{auto}"])
    ratio = median(ratios(res[f"full/{auto}"], res[f"off/{auto}"]))
    section.goal(f"≥ {GOAL:,.0f} events/s durable ({auto})", f"{got:,.0f}/s", got >= GOAL)
    section.goal("ratio to journal_sync=off (report)", f"{ratio:.2f}x", None)
    depth(cfg, section)
    section.notes.append(
        "one connection pipelines every event (sender thread) while the client reads replies; "
        "a reply is sent only once its event is committed"
    )
    return section
