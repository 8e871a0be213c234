"""The delivery policy's costs (issue 15, SPEC §7): fast path, held runs, fair share, kill -9."""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import random
import shutil
import socket
import threading
import time
import traceback
from collections import defaultdict
from typing import Any

import b_e2e
import b_intake
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
    make_tree,
    median,
    pct,
    ratios,
)
from loops import auto_loop

FAST_GOAL, HELD_RSS_GOAL, HELD_RATE_GOAL, FAIR_GOAL_MS = 0.97, 10.0, 0.9, 50.0
# The policy files the fast path is measured with, against none at all; a second daemon
# without one shows the noise between two daemons of the very same code (an A/A test).
NO_POLICY = {"empty": "", "comments": "# no policy yet\n# cb.pl:\n#   retries: 3\n"}
FAST_VARIANTS = {"no file": None, "no file again": None, **NO_POLICY}
BREAKER = "cb.pl:\n  breaker: {failures: 1, cooldown: 3600}\n"
OPENER_JOB = 999_999  # the event whose failing run opens the breaker, in both variants
JOBS = 1000  # held events cycle over this many job ids (the registry keeps each one)
SLEEP = "select(undef, undef, undef, 1);\n"
# Logs its event, attempt, redelivery, daemon (parent pid) and start time; fails twice.
CRASH_CB = """use Time::HiRes ();
open(my $f, '>>', 'OUT') or die;
syswrite($f, join(' ', @ENV{qw(QB_EVENT_ID QB_ATTEMPT QB_REDELIVERED)}, getppid(),
                   Time::HiRes::time()) . "\\n");
select(undef, undef, undef, 0.05 + rand(0.2));
exit($ENV{QB_ATTEMPT} >= 3 ? 0 : 1);
"""
RETRIES = "cb.pl:\n  retries: 3\n  backoff: [0.05, 0.2]\n"
DEADLINE = 120.0
# A retry this many seconds past due while nothing else runs is stranded (a lost attempt,
# until something else wakes the daemon's retry timer up).
STRANDED = 10.0
INTAKE_SLICE = 20_000  # events per pipelined burst of workload I in the fast-path figure


def tree(loop: str, files: dict[str, str], conf: str, policy: str | None, **qb: Any) -> Tree:
    return Tree(loop, files if policy is None else {**files, "policy.yaml": policy}, conf, **qb)


def verdict(section: Section, figure: str, goal: str, got: str, met: bool | None) -> None:
    section.rows.append([figure, goal, got, "n/a" if met is None else ("met" if met else "MISSED")])
    section.goal(f"{figure}: {goal}", got, met)


def send_all(client: Client, data: bytes, n: int) -> list[bytes]:
    """Pipeline n encoded events; every one must be acknowledged."""
    replies = client.pipeline(data, n)
    refused = [r for r in replies if not json.loads(r).get("ok")]
    if refused:
        raise RuntimeError(f"{len(refused)} events refused, first: {refused[0]!r}")
    return replies


class Tail:
    """A `tail` connection read by a thread: (monotonic time, line) of every run line."""

    def __init__(self, daemon: Daemon) -> None:
        self.client = Client(daemon.sock, timeout=3600)
        self.client.request({"op": "tail"})
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed by `close`, or the daemon died
            for raw in self.client.file:
                with self.cond:
                    self.lines.append((time.monotonic(), json.loads(raw)))
                    self.cond.notify_all()

    def until(self, test: Any, timeout: float = DEADLINE) -> tuple[float, dict[str, Any]]:
        """The first line (from the start) that passes ``test``, waited for under a deadline."""
        end, seen = time.monotonic() + timeout, 0
        with self.cond:
            while True:
                for at, line in self.lines[seen:]:
                    if test(line):
                        return at, line
                seen, left = len(self.lines), end - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    raise TimeoutError("no such tail line before the deadline")

    def close(self) -> None:
        self.client.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which holds the file
        self.client.close()


# ---------------------------------------------------------------- 1. an empty policy.yaml


def compare(loop: str, reps: int, trigger: str, n: int, measure: Any) -> dict[str, Any]:
    """``measure(daemon, rep)`` (events/s for n events) against one daemon per policy file,
    interleaved rep by rep; rates and the daemon's CPU µs per event, by variant."""
    files = {"cb.pl": "exit 0;\n"}
    cpu: dict[str, list[float]] = defaultdict(list)
    with contextlib.ExitStack() as stack:
        daemons = {
            v: stack.enter_context(
                tree(loop, files, f"cb.pl = {trigger}\n", text, supervisor_callback_concurrency=8)
            )
            for v, text in FAST_VARIANTS.items()
        }

        def timed(v: str, rep: int) -> float:
            cpu0 = daemons[v].cpu_s()
            rate: float = measure(daemons[v], rep)
            cpu[v].append((daemons[v].cpu_s() - cpu0) / n * 1e6)
            return rate

        return {"rates": interleave(reps, list(daemons), timed), "cpu_us": dict(cpu)}


def fast_path(cfg: Config, section: Section, loop: str) -> None:
    """Workloads E (b_e2e) and I (b_intake) with an empty policy.yaml and none at all.

    I is sent in slices of INTAKE_SLICE events, the variants alternating slice by slice:
    the load other processes put on the host changes by the second, and pairs of 100,000
    events (2-3 s each) compared unlike moments (per-rep ratios 0.4..1.7 between two
    daemons of the very same code)."""
    n_e2e, reps = cfg.pick(300, b_e2e.EVENTS), cfg.pick(5, 9)
    n_in, slices = INTAKE_SLICE, cfg.pick(10, 5 * b_intake.I_EVENTS // INTAKE_SLICE)

    def intake(d: Daemon, rep: int) -> float:
        return b_intake.intake_rate(d, b_intake.payload_i(n_in, f"i{rep}", rep * n_in), n_in)

    res = {
        "e2e, conc 8": compare(loop, reps, "complete-job-self", n_e2e,
                               lambda d, rep: b_e2e.daemon_rate(d, n_e2e, rep * n_e2e)[0]),
        "durable intake": compare(loop, slices, "removed-job-self", n_in, intake),
    }  # fmt: skip
    section.raw["fast_path"] = res
    section.notes.append(
        f"fast path: E = {n_e2e:,} `complete-job` events each on a new job, Perl `exit 0;`, conc "
        f"8, {reps} reps (b_e2e.daemon_rate); I = `complete-job` events each on a new job with "
        f"its own event_id, nothing matching (b_intake.payload_i), {slices} pipelined slices of "
        f"{n_in:,}; variants interleaved rep by rep; ratio = median over reps of the variant "
        "against the geometric mean of the two daemons without a file"
    )
    for what, r in res.items():
        rates, us = r["rates"], r["cpu_us"]
        section.notes.append(
            f"{what}: events/s "
            + ", ".join(f"{v} {fmt_mmm(x)}" for v, x in rates.items())
            + "; daemon CPU µs/event "
            + ", ".join(f"{v} {fmt_mmm(x)}" for v, x in us.items())
        )
        # Each rep against both daemons without a file (their geometric mean): half the
        # baseline's noise; the two against each other show what noise is left (A/A).
        pairs = zip(rates["no file"], rates["no file again"], strict=True)
        base = [(a * b) ** 0.5 for a, b in pairs]
        for v in (*NO_POLICY, "no file again"):
            aa = v == "no file again"
            got = ratios(rates[v], rates["no file"] if aa else base)
            cpu = median(us[v]) / median(us["no file"] + ([] if aa else us["no file again"]))
            measured = f"{median(got):.3f}x (per rep {fmt_mmm(got)}; CPU/event {cpu:.3f}x)"
            if v in NO_POLICY:
                met = median(got) >= FAST_GOAL
                verdict(section, f"{what}, {v} policy.yaml", f"≥ {FAST_GOAL}x no file", measured,
                        met)  # fmt: skip
            else:
                verdict(section, f"{what}, noise: the two daemons without a file", "(report)",
                        measured, None)  # fmt: skip


# ---------------------------------------------------------------- 2. runs held by a breaker


def open_breaker(daemon: Daemon) -> None:
    """One failing run opens the breaker (failures: 1); synchronised on `status` saying so."""
    end = time.monotonic() + DEADLINE
    with Client(daemon.sock) as client:
        client.wait_all(client.request(event(job=OPENER_JOB))["seq"])
        while not client.request({"op": "status"})["breakers"]:
            if time.monotonic() > end:
                raise RuntimeError(f"breaker did not open:\n{daemon.log_tail()}")


def burst(daemon: Daemon, n: int, prefix: str) -> dict[str, float]:
    """Pipeline n `complete-job` events: events/s, RSS growth, daemon CPU µs per event."""
    data = encode_lines(
        {"op": "event", "event_id": f"{prefix}-{i}", "name": "complete", "type": "job",
         "job": {"id": 1 + i % JOBS, "name": "shot010", "user": "alice"}}
        for i in range(n)
    )  # fmt: skip
    rss0, cpu0 = daemon.tree_rss_kib(), daemon.thread_cpu_s()
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        send_all(client, data, n)
        elapsed = time.perf_counter() - t0
        status = client.request({"op": "status"})
    cpu = {k: (v - cpu0[k]) / n * 1e6 for k, v in daemon.thread_cpu_s().items()}
    return {"rate": n / elapsed, "growth": (daemon.tree_rss_kib() - rss0) / 1024,
            "loop_us": cpu["loop"], "threads_us": cpu["threads"],
            "held": status["runs_held"], "queued": status["queued"]}  # fmt: skip


def held_round(loop: str, trigger: str, n: int, rep: int) -> list[dict[str, float]]:
    """Open the breaker; then two bursts of n events (cold, and once warm)."""
    with tree(loop, {"cb.pl": "exit 1;\n"}, f"cb.pl = {trigger}\n", BREAKER) as daemon:
        open_breaker(daemon)
        return [burst(daemon, n, f"h{rep}"), burst(daemon, n, f"w{rep}")]


def held(cfg: Config, section: Section, loop: str) -> None:
    n, reps = cfg.pick(20_000, 100_000), cfg.pick(1, 3)
    variants = {"held": "complete-job-self", "none held": f"complete-job-{OPENER_JOB}"}
    res: dict[str, list[list[dict[str, float]]]] = {v: [] for v in variants}
    for rep in range(reps):
        for v in list(variants)[rep % 2 :] + list(variants)[: rep % 2]:
            res[v].append(held_round(loop, variants[v], n, rep))
    section.raw["held"] = res
    if any(b["held"] != n * (k + 1) or b["queued"] for r in res["held"] for k, b in enumerate(r)):
        raise RuntimeError(f"expected {n:,} more runs held per burst, none queued: {res}")

    def of(v: str, k: int, key: str) -> list[float]:
        return [r[k][key] for r in res[v]]

    for v in variants:
        for k, when in enumerate(("first", "second")):
            section.notes.append(
                f"{when} {n:,} events, {v}: {fmt_mmm(of(v, k, 'rate'))} events/s, RSS growth "
                f"{fmt_mmm(of(v, k, 'growth'))} MiB, daemon CPU µs/event: loop thread "
                f"{fmt_mmm(of(v, k, 'loop_us'))}, other threads {fmt_mmm(of(v, k, 'threads_us'))}"
            )
    section.notes.append(
        "held: `cb.pl` (`exit 1;`) with `breaker: {failures: 1, cooldown: 3600}`, opened by one "
        f"failing run, then {n:,} `complete-job` events on {JOBS:,} jobs pipelined, and as many "
        "again; none held (the fair comparison): the same tree, breaker opened the same way, "
        f"but `cb.pl = complete-job-{OPENER_JOB}`, so the same events go through the same "
        f"matcher and journal and fire nothing; a closed breaker would start {n:,} runs, "
        "and a callback on another event name would take the intake's no-candidate shortcut; "
        "RSS = daemon + descendants (VmRSS)"
    )
    figure = f"{n:,} runs held by an open breaker"
    g = max(of("held", 0, "growth"))
    verdict(section, figure, f"RSS growth ≤ {HELD_RSS_GOAL:.0f} MiB (worst rep)",
            f"{g:+.1f} MiB", g <= HELD_RSS_GOAL)  # fmt: skip
    extra = median(of("held", 0, "growth")) - median(of("none held", 0, "growth"))
    second = max(of("held", 1, "growth"))
    verdict(section, f"{figure}: of which the held runs' own", "(report)", f"{extra:+.1f} MiB "
            f"over none held; {second:+.1f} MiB for {n:,} more held", None)  # fmt: skip
    ratio = median(ratios(of("held", 0, "rate"), of("none held", 0, "rate")))
    verdict(section, figure, f"intake ≥ {HELD_RATE_GOAL}x none held", f"{ratio:.2f}x",
            ratio >= HELD_RATE_GOAL)  # fmt: skip


# ---------------------------------------------------------------- 3. fair share


def probe(client: Client, tail: Tail, i: int) -> dict[str, float]:
    """Send one `failed-job` event for `probe.pl`; time it to the probe's `spawned` line."""
    sent = time.monotonic()
    client.request(event("failed", job=10_000_000 + i, event_id=f"p{i}"))
    acked, queued = time.time(), time.monotonic()  # its run is queued before its ack is sent
    spawned, _ = tail.until(lambda line: line.get("event_id") == f"p{i}" and line["state"] ==
                            "spawned")  # fmt: skip
    with tail.cond:
        exits = [at for at, line in tail.lines if queued <= at <= spawned and
                 line.get("callback") == "sleep.pl" and line["state"] == "exited"]  # fmt: skip
    # When a slot it could take came free: the first `sleep.pl` exit once it was queued, or
    # then, when a slot was free (no exit before the probe started).
    free = exits[0] if exits else queued
    return {"ms": (spawned - sent) * 1e3, "slot_ms": (free - sent) * 1e3,
            "after_slot_ms": (spawned - free) * 1e3, "acked": acked}  # fmt: skip


def slots_ahead(client: Client, acked: list[float]) -> list[int]:
    """Per probe: `sleep.pl` runs started after the probe was queued and before it started
    (the history's `started`, taken as a run is handed its slot). SPEC §7.5 allows one."""
    runs = client.request({"op": "history", "limit": 100_000})["runs"]
    sleeps = [r["started"] for r in runs if r["callback"] == "sleep.pl" and r["started"]]
    started = {r["event_id"]: r["started"] for r in runs if r["callback"] == "probe.pl"}
    return [
        sum(1 for at in sleeps if queued < at < started[f"p{i}"]) for i, queued in enumerate(acked)
    ]


def fair_round(loop: str, policy: str | None, flood: int, probes: int) -> dict[str, list[float]]:
    """Flood `sleep.pl` (1 s), then probe `probe.pl` at random phases of the 1 s runs."""
    files = {"sleep.pl": SLEEP, "probe.pl": "exit 0;\n"}
    conf = "sleep.pl = complete-job-self\nprobe.pl = failed-job-self\n"
    rng = random.Random(flood)
    out: dict[str, list[float]] = defaultdict(list)
    with tree(loop, files, conf, policy, supervisor_callback_concurrency=8) as daemon:
        tail = Tail(daemon)
        with Client(daemon.sock) as client:
            send_all(client, encode_lines(event(job=1 + i) for i in range(flood)), flood)
            tail.until(lambda line: line.get("state") == "exited")  # the slots are full now
            for i in range(probes):
                time.sleep(rng.random())  # a random phase against the 1 s runs, not a wait
                for key, value in probe(client, tail, i).items():
                    out[key].append(value)
            out["ahead"] = [float(n) for n in slots_ahead(client, out["acked"])]
        tail.close()
    return dict(out)


def fair(cfg: Config, section: Section, loop: str) -> None:
    flood, probes = cfg.pick(2000, 10_000), cfg.pick(12, 50)
    variants = {"no policy.yaml": None, "sleep.pl concurrency: 7": "sleep.pl:\n  concurrency: 7\n"}
    res = {v: fair_round(loop, policy, flood, probes) for v, policy in variants.items()}
    section.raw["fair"] = res
    for v, r in res.items():
        section.notes.append(
            f"fair share, {v}: event → probe spawned p50 {pct(r['ms'], 50):.0f} ms, p99 "
            f"{pct(r['ms'], 99):.0f} ms; of which until a slot came free once it was queued p50 "
            f"{pct(r['slot_ms'], 50):.0f} / p99 {pct(r['slot_ms'], 99):.0f} ms, and from that "
            f"slot to the spawn p50 {pct(r['after_slot_ms'], 50):.1f} / p99 "
            f"{pct(r['after_slot_ms'], 99):.1f} ms"
        )
    section.notes.append(
        f"fair share: {flood:,} `complete-job` events for `sleep.pl` (1 s) at "
        f"supervisor_callback_concurrency = 8, then {probes} `failed-job` events for `probe.pl` "
        "(`exit 0;`) at random phases; start = its `spawned` line on a `tail` connection; "
        "`concurrency: 7` on sleep.pl keeps a slot for others (SPEC §7.1)"
    )
    figure = f"fair share: `sleep 1` x {flood:,} queued, conc 8; event → start of another"
    for v, r in res.items():
        got = pct(r["ms"], 99)
        verdict(section, f"{figure} ({v})", f"p99 ≤ {FAIR_GOAL_MS:.0f} ms", f"{got:.0f} ms",
                got <= FAIR_GOAL_MS)  # fmt: skip
    r = res["no policy.yaml"]
    ahead, after = max(r["ahead"]), pct(r["after_slot_ms"], 99)
    verdict(section, f"{figure}: slots `sleep.pl` took while the probe waited (SPEC §7.5: one "
            "turn)", "≤ 1", f"max {ahead:.0f}; the probe started p99 {after:.0f} ms after the "
            "first slot came free", ahead <= 1)  # fmt: skip


# ---------------------------------------------------------------- 4. kill -9 under retries


def crash_round(daemon: Daemon, ids: list[str], job0: int, kill_after: float) -> float:
    """Start, pipeline `ids` (all acknowledged), kill -9 after `kill_after` s; when."""
    daemon.start()
    docs = [{**event(job=job0 + n), "event_id": eid} for n, eid in enumerate(ids)]
    with Client(daemon.sock) as client:
        send_all(client, encode_lines(docs), len(ids))
    time.sleep(kill_after)  # a random moment among the failing runs: the point of the test
    killed = time.time()  # just before: a run orphaned by the kill logs a later time
    daemon.kill9()
    return killed


def settle(client: Client, tail: Tail) -> list[dict[str, Any]]:
    """Wait until no run runs, is queued or held, and no retry is due; the runs waiting for
    a retry more than STRANDED s past due (none when all is done)."""
    seq, end = int(client.request({"op": "status"})["last_seq"]), time.monotonic() + DEADLINE
    done: dict[str, Any] = {}
    while time.monotonic() < end:
        done = client.request({"op": "wait", "seq": seq, "timeout": DEADLINE})
        status = client.request({"op": "status"})  # a retry just come due is queued
        if done["done"] and not done["held"] and not status["running"] + status["queued"]:
            runs = client.request({"op": "history", "limit": 100_000})["runs"]
            late = [r for r in runs if r["state"] == "retrying"]
            if all(r["retry_at"] < time.time() - STRANDED for r in late):
                return late
        seen = len(tail.lines)  # a retry comes due within 0.2 s: wait for its run's line
        with contextlib.suppress(TimeoutError):
            tail.until(lambda _line, n=seen: len(tail.lines) > n, timeout=1.0)
    raise RuntimeError(f"runs did not settle: {done}")


def finish(daemon: Daemon, daemons: list[tuple[int, float]]) -> tuple[list[Any], list[Any]]:
    """Restart and settle: every run's history, and the retries found stranded (past due
    with nothing left to run); a restart, which reloads the due times, then runs them."""
    stranded: list[dict[str, Any]] = []
    while True:
        daemon.start()
        tail = Tail(daemon)
        with Client(daemon.sock) as client:
            late = settle(client, tail)
            runs: list[dict[str, Any]] = client.request({"op": "history", "limit": 100_000})
        tail.close()
        daemon.stop()
        daemons.append((daemon.pid, time.time()))
        stranded += late
        if not late or len(daemons) > 100:
            return runs["runs"], stranded


def audit(lines: list[str], daemons: list[tuple[int, float]], acked: list[str],
          runs: list[dict[str, Any]]) -> dict[str, int]:  # fmt: skip
    """Chains ok/dead/lost, attempts run again after a kill, and attempts run again (or past
    the one that succeeded) with no kill to explain it. ``daemons``: (pid, killed at)."""
    gen = {pid: k for k, (pid, _) in enumerate(daemons)}
    kills = [at for _, at in daemons]
    seen: dict[str, dict[int, list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
    for line in lines:  # what the callback wrote: event, attempt, redelivered, ppid, time
        eid, attempt, redelivered, ppid, at = line.split()
        # A run whose daemon was killed before it asked for its parent: the one just killed.
        k = gen.get(int(ppid), bisect.bisect(kills, float(at)) - 1)
        seen[eid][int(attempt)].append((k, redelivered))
    ended: dict[str, tuple[str, int]] = {}
    rows: dict[tuple[str, int], int] = defaultdict(int)  # history rows per attempt
    for run in runs:
        rows[run["event_id"], run["attempt"]] += 1
        if run["outcome"] == "ok" or run["dead"]:
            ended[run["event_id"]] = ("ok" if run["outcome"] == "ok" else "dead", run["attempt"])
    c = dict.fromkeys(("ok", "dead", "lost", "reruns", "unexplained"), 0)
    for eid in acked:
        attempts = seen.get(eid, {})
        top = max(attempts, default=0)
        how, last = ended.get(eid, ("lost", 0))
        # Lost: no end, an attempt number skipped, or one with no history row of its own.
        gap = sorted(attempts) != list(range(1, top + 1))
        lost = how == "lost" or gap or any(rows[eid, a] != 1 for a in range(1, top + 1))
        c["lost" if lost else how] += 1
        c["unexplained"] += not lost and top > last  # an attempt after the chain ended
        for runs_of in attempts.values():
            runs_of.sort()
            for (g0, _), (g1, again) in itertools.pairwise(runs_of):
                # A re-run is explained by a kill: a later daemon, and told it is one.
                c["reruns"] += 1
                c["unexplained"] += not (g1 > g0 >= 0 and again == "1")
    return c


def crash(cfg: Config, section: Section, loop: str) -> None:
    kills, per_round = cfg.pick((6, 20), (20, 15))
    rng = random.Random(15)
    root = make_tree({"policy.yaml": RETRIES}, "cb.pl = complete-job-self\n",
                     {"supervisor_callback_concurrency": 8})  # fmt: skip
    daemon, out = Daemon(root, loop), root / "ran.txt"
    (root / "callback" / "cb.pl").write_text(CRASH_CB.replace("OUT", str(out)))
    daemons: list[tuple[int, float]] = []
    acked: list[str] = []
    try:
        for k in range(kills):
            ids = [f"c{k}-{i}" for i in range(per_round)]
            killed = crash_round(daemon, ids, 1 + k * per_round, rng.uniform(0.05, 0.6))
            daemons.append((daemon.pid, killed))
            acked += ids
        runs, stranded = finish(daemon, daemons)
        lines = [line for line in out.read_text().splitlines() if line.strip()]
    except Exception as exc:  # what the daemon said goes with it: the tree is removed below
        raise RuntimeError(f"{exc!r}; daemon log:\n{daemon.log_tail()}") from exc
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    c = {"events": len(acked), "kills": kills, **audit(lines, daemons, acked, runs)}
    c["stranded"] = len(stranded)
    section.raw["crash"] = {**c, "runs": len(runs), "lines": len(lines), "stranded": stranded}
    section.notes.append(
        "crash: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f"; {len(runs)} runs in "
        "the history; reruns = attempts run again after a kill, with QB_REDELIVERED=1; "
        f"stranded = retries still waiting {STRANDED:.0f} s past due with nothing else to run, "
        "run only by a restart: "
        + (", ".join(f"run {r['run_id']} ({r['event_id']} attempt {r['attempt']})"
                     for r in stranded) or "none")
    )  # fmt: skip
    bad = c["lost"] + c["unexplained"] + c["stranded"]
    verdict(section, f"crash: kill -9 x {kills} during failing runs, retries: 3, "
            f"{len(acked)} events", "every chain ok or dead; none lost, stranded or run twice "
            "unexplained", f"ok {c['ok']}, dead {c['dead']}, lost {c['lost']}, stranded "
            f"{c['stranded']}, unexplained {c['unexplained']}, reruns after a kill "
            f"{c['reruns']}", bad == 0)  # fmt: skip


def run(cfg: Config) -> Section:
    section = Section(
        "policy",
        "Delivery policy (SPEC §7): what it costs when unused, held runs, fair share, kill -9",
        ["figure", "goal", "measured", "verdict"],
    )
    loop = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    for part in (fast_path, held, fair, crash):
        try:  # one figure failing leaves the others measured
            part(cfg, section, loop)
        except Exception as exc:
            section.rows.append([part.__name__, "—", f"FAILED: {exc!r}"[:500], "**failed**"])
            section.raw.setdefault("errors", []).append(traceback.format_exc())
            section.raw["failed"] = True
    section.notes.append(f"every figure against a daemon on --loop {loop}, started per variant")
    return section
