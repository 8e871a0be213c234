"""Daemon RSS idle, and its growth after many events and runs (VmRSS of the daemon process)."""

from __future__ import annotations

import time

from common import Client, Config, Daemon, Section, Tree, encode_lines, event, last_seq
from loops import auto_loop

GOAL_IDLE_MIB = 40.0
GOAL_GROWTH_MIB = 10.0
CHUNK = 5000
JOBS = 10_000  # a farm's window of live jobs; the registry keeps each one


def feed(client: Client, docs: list[dict[str, object]]) -> int:
    replies = client.pipeline(encode_lines(docs), len(docs))
    return last_seq(replies)


def load(daemon: Daemon, events: int, runs: int, perl_runs: int) -> dict[str, float]:
    """Send `events` non-matching events, `runs` .qcb runs and `perl_runs` Perl runs."""
    marks: dict[str, float] = {"idle": daemon.rss_kib() / 1024}
    t0 = time.perf_counter()
    with Client(daemon.sock) as client:
        for start in range(0, events, CHUNK):
            count = min(CHUNK, events - start)
            feed(client, [event("running", job=1 + (start + i) % JOBS) for i in range(count)])
        marks["after events"] = daemon.rss_kib() / 1024
        seq = 0
        for start in range(0, runs, CHUNK):
            count = min(CHUNK, runs - start)
            seq = feed(
                client, [event("complete", job=1 + (start + i) % JOBS) for i in range(count)]
            )
            client.wait_all(seq)
        seq = feed(client, [event("failed", job=1 + i % JOBS) for i in range(perl_runs)])
        client.wait_all(seq)
        status = client.request({"op": "status"})
    marks["after runs"] = daemon.rss_kib() / 1024
    marks["seconds"] = time.perf_counter() - t0
    marks["events_total"] = status["events_total"]
    return marks


def run(cfg: Config) -> Section:
    full = cfg.pick((20_000, 2_000, 100), (1_000_000, 100_000, 1_000))
    # The full load takes minutes; the loop --loop auto does not pick gets a fifth of it.
    other = cfg.pick(full, (200_000, 20_000, 1_000))
    section = Section(
        "rss",
        "Daemon RSS (MiB): idle, after many events, after many runs",
        ["loop", "events", "runs", "idle", "after events", "after runs", "growth", "load took s"],
    )
    callbacks = {"a.qcb": "unblock-self\n", "b.pl": "exit 0;\n", "c.py": "x = qb.jobid()\n"}
    conf = "a.qcb = complete-job-self\nb.pl = failed-job-self\nc.py = submit-job-self\n"
    for loop in cfg.loops:
        events, runs, perl_runs = full if loop == auto_loop() else other
        with Tree(loop, callbacks, conf) as daemon:
            marks = load(daemon, events, runs, perl_runs)
        growth = marks["after runs"] - marks["idle"]
        section.raw[loop] = marks
        section.rows.append(
            [
                loop,
                f"{events:,}",
                f"{runs + perl_runs:,}",
                f"{marks['idle']:.1f}",
                f"{marks['after events']:.1f}",
                f"{marks['after runs']:.1f}",
                f"{growth:+.1f}",
                f"{marks['seconds']:.0f}",
            ]
        )
        section.loops.setdefault("idle RSS MiB", {})[loop] = marks["idle"]
        section.loops.setdefault("RSS growth MiB", {})[loop] = growth
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    idle, growth = section.loops["idle RSS MiB"][auto], section.loops["RSS growth MiB"][auto]
    section.goal(
        f"idle ≤ {GOAL_IDLE_MIB:.0f} MiB ({auto})", f"{idle:.1f} MiB", idle <= GOAL_IDLE_MIB
    )
    section.goal(
        f"growth ≤ {GOAL_GROWTH_MIB:.0f} MiB ({auto})",
        f"{growth:+.1f} MiB",
        growth <= GOAL_GROWTH_MIB,
    )
    section.notes.append(
        f"events: `running-job` on {JOBS:,} cycling job ids (they stay in the registry), "
        f"pipelined in chunks of {CHUNK:,}; runs: `.qcb unblock-self` (interpreted in the "
        f"daemon, history + action recorded) plus {full[2]:,} Perl runs; the shipped-style "
        "tree also loads a Python callback (the fork server, when enabled, is a child process "
        "and not counted)"
    )
    return section
