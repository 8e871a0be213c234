"""Python callbacks per second: the fork server against a fresh interpreter per run."""

from __future__ import annotations

import time
from contextlib import ExitStack

from common import (
    Client,
    Config,
    Daemon,
    Section,
    Tree,
    encode_lines,
    event,
    fmt_mmm,
    interleave,
    last_seq,
    median,
    ratios,
)
from loops import auto_loop

GOAL = 10.0
CALLBACK = "jobid = qb.jobid()\nassert jobid > 0\n"
MODES = ("forkserver", "fresh")


def callbacks_per_s(daemon: Daemon, n: int, base: int) -> float:
    payload = encode_lines(event(job=base + i + 1) for i in range(n))
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(payload, n)
        client.wait_all(last_seq(replies))
        elapsed = time.perf_counter() - t0
        status = client.request({"op": "status"})
    if status.get("runs_failed"):
        logs = sorted(daemon.root.glob("logs/job/*/*/*.cb"))
        output = logs[-1].read_text(errors="replace")[-2000:] if logs else "(no .cb log)"
        raise RuntimeError(f"python callbacks failed: {status}\nlast callback log:\n{output}")
    return n / elapsed


def measure_conc(cfg: Config, section: Section, conc: int) -> None:
    counts = {"forkserver": cfg.pick(60, 300), "fresh": cfg.pick(12, 60 if conc > 1 else 30)}
    reps = cfg.pick(1, 3)
    variants = [f"{mode}/{loop}" for loop in cfg.loops for mode in MODES]
    offset = {v: 0 for v in variants}
    with ExitStack() as stack:
        daemons = {
            v: stack.enter_context(
                Tree(
                    v.split("/")[1],
                    {"cb.py": CALLBACK},
                    "cb.py = complete-job-self\n",
                    supervisor_callback_concurrency=conc,
                    supervisor_callback_python_mode=v.split("/")[0],
                )
            )
            for v in variants
        }

        def measure(variant: str, rep: int) -> float:
            n = counts[variant.split("/")[0]]
            rate = callbacks_per_s(daemons[variant], n, offset[variant])
            offset[variant] += n
            return rate

        res = interleave(reps, variants, measure)
    section.raw[f"conc{conc}"] = res
    for loop in cfg.loops:
        fs, fr = res[f"forkserver/{loop}"], res[f"fresh/{loop}"]
        r = ratios(fs, fr)
        section.rows.append([str(conc), loop, fmt_mmm(fs), fmt_mmm(fr), fmt_mmm(r)])
        section.loops[f"python conc {conc} forkserver callbacks/s"] = {
            **section.loops.get(f"python conc {conc} forkserver callbacks/s", {}),
            loop: median(fs),
        }
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(ratios(res[f"forkserver/{auto}"], res[f"fresh/{auto}"]))
    section.goal(f"conc {conc} forkserver ≥ {GOAL:.0f}x fresh ({auto})", f"{got:.1f}x", got >= GOAL)


def run(cfg: Config) -> Section:
    section = Section(
        "python",
        "Python callbacks/s: fork server vs a fresh interpreter per run",
        ["conc", "loop", "forkserver callbacks/s", "fresh callbacks/s", "ratio (per rep)"],
    )
    for conc in (1, 8):
        measure_conc(cfg, section, conc)
    section.notes.append(
        f"callback: `{CALLBACK.strip().splitlines()[0]}` (uses the injected qb module); "
        "fresh = supervisor_callback_python_mode=fresh on the same daemon build"
    )
    return section
