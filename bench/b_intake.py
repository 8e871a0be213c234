"""Pipelined durable intake: workload I of issue 16 against a parse-only server in the same
run; events cycling over known jobs, against the same daemon without fsync."""

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
from rawintake import RawIntake

GOAL = 100_000.0
SYNCS = ("full", "off")
# Workload I (issue 16): its size and its goal, a ratio to the parse-only server.
I_EVENTS = 100_000
I_GOAL = 0.35


def payload_i(n: int, prefix: str, base: int) -> bytes:
    """`complete-job` events, each on a new job and with its own event_id."""
    return encode_lines(
        {
            "op": "event",
            "event_id": f"{prefix}-{i}",
            "name": "complete",
            "type": "job",
            "job": {"id": base + i + 1},
        }
        for i in range(n)
    )


def raw_rate(sock: str, data: bytes, n: int) -> float:
    """The same pipelined client against the parse-only server: events/s to the last ack."""
    with Client(sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(data, n)
        elapsed = time.perf_counter() - t0
    if replies[-1] != b"ok\n":
        raise RuntimeError(f"unexpected reply {replies[-1]!r}")
    return n / elapsed


def workload_i_rate(sock: str, data: bytes, n: int, timeout: float = 120.0) -> float:
    """Workload I's events/s through a daemon's socket: first byte sent to the last durable
    ack read; every reply a new, unmatched event (bench/b_fleet.py uses it too)."""
    with Client(sock, timeout) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(data, n)
        elapsed = time.perf_counter() - t0
    last = json.loads(replies[-1])
    if not last.get("ok") or last.get("matched") or last.get("duplicate"):
        raise RuntimeError(f"unexpected reply {last}")
    return n / elapsed


def workload_i(cfg: Config, section: Section) -> None:
    """I: 100,000 events on one connection, pipelined from a sender thread while the client
    reads the acks, every event a new job with its own event_id, the only callback on
    removed-job-self; against the parse-only protocol server on the same loop, same run."""
    n, reps = I_EVENTS, cfg.pick(1, 3)
    with ExitStack() as stack:
        targets = {
            f"daemon/{loop}": stack.enter_context(
                Tree(loop, {"cb.pl": "exit 0;\n"}, "cb.pl = removed-job-self\n")
            ).sock
            for loop in cfg.loops
        }
        targets |= {
            f"parse-only/{loop}": stack.enter_context(RawIntake(loop)).sock for loop in cfg.loops
        }

        def measure(variant: str, rep: int) -> float:
            data = payload_i(n, f"i{rep}", rep * n)
            if variant.startswith("parse-only"):
                return raw_rate(targets[variant], data, n)
            return workload_i_rate(targets[variant], data, n)

        res = interleave(reps, list(targets), measure)
    section.raw["I"] = res
    for loop in cfg.loops:
        daemon, raw = res[f"daemon/{loop}"], res[f"parse-only/{loop}"]
        section.rows.append(
            [f"I: durable intake, {loop}", fmt_mmm(daemon), fmt_mmm(raw),
             fmt_mmm(ratios(daemon, raw)), f"≥ {I_GOAL}x"]
        )  # fmt: skip
        section.loops.setdefault("I durable intake events/s", {})[loop] = median(daemon)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    daemon, raw = res[f"daemon/{auto}"], res[f"parse-only/{auto}"]
    got = median(ratios(daemon, raw))
    section.goal(
        f"I: durable intake ≥ {I_GOAL}x the parse-only protocol server ({auto})",
        f"{got:.2f}x ({median(daemon):,.0f}/s vs {median(raw):,.0f}/s)",
        got >= I_GOAL,
    )


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
        "I: pipelined durable intake against a parse-only server (events/s)",
        ["workload", "daemon events/s", "parse-only events/s", "ratio (per rep)", "goal"],
    )
    workload_i(cfg, section)
    rows = section.table(
        "Events cycling over 5,000 known jobs, journal_sync full against off (events/s)",
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
        rows.append([loop, fmt_mmm(full), fmt_mmm(off), fmt_mmm(ratios(full, off))])
        section.loops.setdefault("durable intake events/s", {})[loop] = median(full)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(res[f"full/{auto}"])
    ratio = median(ratios(res[f"full/{auto}"], res[f"off/{auto}"]))
    section.goal(f"≥ {GOAL:,.0f} events/s durable ({auto})", f"{got:,.0f}/s", got >= GOAL)
    section.goal("ratio to journal_sync=off (report)", f"{ratio:.2f}x", None)
    depth(cfg, section)
    section.notes += [
        f"I (issue 16): {I_EVENTS:,} `complete-job` events on one connection, each a new job "
        "with its own event_id, pipelined from a sender thread while the client reads the "
        "acks, timed from the first byte sent to the last ack read; the only callback "
        "listens for removed-job-self, so nothing runs; parse-only = an asyncio.Protocol "
        "server on the same loop that json.loads every line and writes one `ok` line per "
        "line, no journal (bench/rawintake.py, our limits' `protocol` server), same client, "
        "same bytes, interleaved rep by rep",
        "second table: one connection pipelines every event (sender thread) while the client "
        "reads replies; a reply is sent only once its event is committed",
    ]
    return section
