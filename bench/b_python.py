"""Python callbacks/s: workload P of issue 16 against a bare interpreter; the fork server
against the daemon's own fresh-interpreter mode."""

from __future__ import annotations

import time
from contextlib import ExitStack

from common import (
    PYTHON,
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
    raw_spawn_rate,
)
from loops import auto_loop

GOAL = 10.0
CALLBACK = "jobid = qb.jobid()\nassert jobid > 0\n"
MODES = ("forkserver", "fresh")
# Workload P (issue 16): the callback, its events, its concurrency, its goal.
P_CALLBACK = "import qb\nqb.jobid()\n"
P_EVENTS = 400
P_CONC = 8
P_GOAL = 12.0
# The bare interpreter: what every Python callback costs at least without a fork server.
P_BARE = [PYTHON, "-c", "import json, os, sys"]


def callbacks_per_s(daemon: Daemon, n: int, base: int) -> float:
    """`complete-job` events on new jobs base+1.., pipelined on one connection; callbacks/s
    from the first send to the `wait` reply for the last seq. Every run must succeed."""
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


def workload_p(cfg: Config, section: Section) -> None:
    """P: `import qb; qb.jobid()` on complete-job-self, concurrency 8, 400 events; against
    a bare posix_spawn loop of the same interpreter, 8 at a time, in the same run."""
    n, reps = cfg.pick(100, P_EVENTS), cfg.pick(1, 3)
    offset = dict.fromkeys(cfg.loops, 0)
    with ExitStack() as stack:
        daemons = {
            loop: stack.enter_context(
                Tree(
                    loop,
                    {"cb.py": P_CALLBACK},
                    "cb.py = complete-job-self\n",
                    supervisor_callback_concurrency=P_CONC,
                )
            )
            for loop in cfg.loops
        }
        cwd = str(next(iter(daemons.values())).root / "callback")

        def measure(variant: str, rep: int) -> float:
            if variant == "bare":
                return raw_spawn_rate(P_BARE, n, P_CONC, cwd)
            rate = callbacks_per_s(daemons[variant], n, offset[variant])
            offset[variant] += n
            return rate

        res = interleave(reps, ["bare", *cfg.loops], measure)
    section.raw["P"] = {"rates": res, "n": n}
    section.rows.append(
        ["P: bare interpreter, posix_spawn loop", fmt_mmm(res["bare"]), "1.00", "—"]
    )
    for loop in cfg.loops:
        r = ratios(res[loop], res["bare"])
        section.rows.append(
            [f"P: daemon, {loop}", fmt_mmm(res[loop]), fmt_mmm(r), f"≥ {P_GOAL:.0f}x"]
        )
        section.loops.setdefault("P python callbacks/s", {})[loop] = median(res[loop])
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(ratios(res[auto], res["bare"]))
    section.goal(
        f"P: Python callbacks/s ≥ {P_GOAL:.0f}x a bare interpreter ({auto})",
        f"{got:.1f}x ({median(res[auto]):,.0f}/s vs {median(res['bare']):,.1f}/s)",
        got >= P_GOAL,
    )
    section.goal(
        "P: median daemon rate vs the fastest bare rep of the run (report)",
        f"{median(res[auto]) / max(res['bare']):.1f}x",
        None,
    )


def measure_conc(cfg: Config, section: Section, rows: list[list[str]], conc: int) -> None:
    counts = {"forkserver": cfg.pick(60, 300), "fresh": cfg.pick(12, 60 if conc > 1 else 30)}
    reps = cfg.pick(1, 3)
    variants = [f"{mode}/{loop}" for loop in cfg.loops for mode in MODES]
    offset = dict.fromkeys(variants, 0)
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
        rows.append([str(conc), loop, fmt_mmm(fs), fmt_mmm(fr), fmt_mmm(r)])
        section.loops[f"python conc {conc} forkserver callbacks/s"] = {
            **section.loops.get(f"python conc {conc} forkserver callbacks/s", {}),
            loop: median(fs),
        }
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(ratios(res[f"forkserver/{auto}"], res[f"fresh/{auto}"]))
    section.goal(
        f"conc {conc} forkserver ≥ {GOAL:.0f}x python_mode=fresh ({auto})",
        f"{got:.1f}x",
        got >= GOAL,
    )


def run(cfg: Config) -> Section:
    section = Section(
        "python",
        "P: Python callbacks/s against a bare interpreter",
        ["workload", "callbacks/s", "ratio vs bare (per rep)", "goal"],
    )
    workload_p(cfg, section)
    rows = section.table(
        "Fork server vs the daemon's own python_mode = fresh (which also loads qb)",
        ["conc", "loop", "forkserver callbacks/s", "fresh callbacks/s", "ratio (per rep)"],
    )
    for conc in (1, 8):
        measure_conc(cfg, section, rows, conc)
    section.notes += [
        f"P (issue 16): `cb.py` = `import qb` / `qb.jobid()` on complete-job-self, "
        f"supervisor_callback_concurrency = {P_CONC}, {P_EVENTS} events (quick: 100), each a "
        "new job, pipelined on one connection, timed to the `wait` reply for the last seq; "
        f"bare = os.posix_spawn of `-c '{P_BARE[2]}'` with the same "
        f"interpreter ({PYTHON}), {P_CONC} at a time, stdin/stdout/stderr on /dev/null",
        f"second table: callback `{CALLBACK.strip().splitlines()[0]}` (the injected qb); "
        "fresh = supervisor_callback_python_mode=fresh on the same daemon build",
    ]
    return section
