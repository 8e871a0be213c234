"""Memory: workload R of issue 16 (daemon + fork server after 200,000 new jobs), and the
daemon's RSS idle and after many events and runs."""

from __future__ import annotations

import time

from common import (
    Client,
    Config,
    Daemon,
    Section,
    Tree,
    descendants,
    encode_lines,
    event,
    last_seq,
)
from loops import auto_loop

GOAL_IDLE_MIB = 40.0
GOAL_GROWTH_MIB = 10.0
CHUNK = 5000
JOBS = 10_000  # a farm's window of live jobs; the registry keeps each one
# Workload R (issue 16): bursts x events, every event a new job id; the goal on the growth.
R_BURSTS = 20
R_BURST = 10_000
R_GOAL_MIB = 10.0
CALLBACKS = {"a.qcb": "unblock-self\n", "b.pl": "exit 0;\n", "c.py": "x = qb.jobid()\n"}
CONF = "a.qcb = complete-job-self\nb.pl = failed-job-self\nc.py = submit-job-self\n"


def workload_r(daemon: Daemon, bursts: int) -> dict[str, float]:
    """Idle (after start and one `status`), then `running` events on new jobs, 10,000 a
    burst pipelined on one connection; MiB of the daemon and its descendants summed."""
    with Client(daemon.sock) as client:
        client.request({"op": "status"})
        marks: dict[str, float] = {"idle": daemon.tree_rss_kib() / 1024}
        marks["idle daemon"] = daemon.rss_kib() / 1024
        t0 = time.perf_counter()
        for burst in range(bursts):
            base = burst * R_BURST
            feed(client, [event("running", job=base + i + 1) for i in range(R_BURST)])
        marks["seconds"] = time.perf_counter() - t0
        marks["after"] = daemon.tree_rss_kib() / 1024
        marks["after daemon"] = daemon.rss_kib() / 1024
    marks["processes"] = 1 + len(descendants(daemon.pid))
    return marks


def measure_r(cfg: Config, section: Section) -> None:
    bursts = cfg.pick(5, R_BURSTS)
    for loop in cfg.loops:
        with Tree(loop, CALLBACKS, CONF) as daemon:
            marks = workload_r(daemon, bursts)
        growth = marks["after"] - marks["idle"]
        section.raw[f"R/{loop}"] = marks
        section.rows.append(
            [
                f"R: daemon + fork server, {loop}",
                f"{bursts * R_BURST:,}",
                f"{marks['idle']:.1f}",
                f"{marks['after']:.1f}",
                f"{growth:+.1f}",
                f"≤ {R_GOAL_MIB:.0f}",
                f"{marks['after daemon'] - marks['idle daemon']:+.1f}",
                f"{marks['seconds']:.1f}",
            ]
        )
        section.loops.setdefault("R growth MiB", {})[loop] = growth
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    growth = section.loops["R growth MiB"][auto]
    section.goal(
        f"R: growth after {bursts * R_BURST:,} new jobs ≤ {R_GOAL_MIB:.0f} MiB ({auto})",
        f"{growth:+.1f} MiB",
        growth <= R_GOAL_MIB,
    )


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
        "R: memory after 200,000 events on new jobs (MiB, daemon + fork server)",
        [
            "workload",
            "events",
            "idle",
            "after",
            "growth",
            "goal",
            "of which daemon",
            "load took s",
        ],
    )
    measure_r(cfg, section)
    rows = section.table(
        "Daemon RSS (MiB, daemon process only): idle, after many events, after many runs",
        ["loop", "events", "runs", "idle", "after events", "after runs", "growth", "load took s"],
    )
    callbacks, conf = CALLBACKS, CONF
    for loop in cfg.loops:
        events, runs, perl_runs = full if loop == auto_loop() else other
        with Tree(loop, callbacks, conf) as daemon:
            marks = load(daemon, events, runs, perl_runs)
        growth = marks["after runs"] - marks["idle"]
        section.raw[loop] = marks
        rows.append(
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
        f"R (issue 16): VmRSS of the daemon and every live descendant (its fork server) "
        "summed, idle after start and one `status`, then after 200,000 `running-job` events "
        f"(quick: 50,000) on new job ids, {R_BURSTS} pipelined bursts of {R_BURST:,} on one "
        "connection, measured after the last ack; the tree is the one below (the events fire "
        "nothing)"
    )
    section.notes.append(
        f"second table: events: `running-job` on {JOBS:,} cycling job ids (they stay in the "
        "registry), "
        f"pipelined in chunks of {CHUNK:,}; runs: `.qcb unblock-self` (interpreted in the "
        f"daemon, history + action recorded) plus {full[2]:,} Perl runs; the shipped-style "
        "tree also loads a Python callback (the fork server, when enabled, is a child process "
        "and not counted)"
    )
    return section
