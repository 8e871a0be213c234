"""Issue 18's figures: member daemons sharing one PostgreSQL journal on this machine, each
figure against its goal and, where the issue asks for one, a baseline in the same run."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from b_intake import I_EVENTS, payload_i, workload_i_rate
from common import (
    REPO,
    Client,
    Config,
    Section,
    fmt_mmm,
    fmt_num,
    interleave,
    median,
    pct,
    ratios,
)
from loops import auto_loop

# The fleet harness and the PostgreSQL server the tests start live in tests/ (one copy of
# "a fleet on one machine"); bench/ is on sys.path, the checkout's root is not.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fleet_harness import (
    Fleet,
    FleetDB,
    Member,
    hold_script,
    job_event,
    pid_gone,
    record_script,
    records,
    stream,
    wait_records,
)
from tests.pgserver import PgServer, driver_missing, find_bindir, wait_for

QUBE_EPOCH = 946702800  # SPEC §2: Qube time = Unix time - this
QUIET = "supervisor_callback_log_level = warning\n"
EVENT_ID = "os.environ['QB_EVENT_ID']"
REDELIVERED = "os.environ.get('QB_REDELIVERED', '0')"
# Throughput: `sleep 0.2` callbacks, 4 at once per member, 3 members against 1.
NAP_S, CONC, SPREAD_GOAL = 0.2, 4, 2.5
# Event -> start on an idle executor: a pace the executor keeps up with, and the goal.
LATENCY_RATE, LATENCY_GOAL_MS = 20.0, 20.0
TRIGGERS = 3  # globaltime triggers, one second apart: each must fire exactly once
TRIGGER_LEAD_S = 8.0  # room for three members to start before the first trigger


class Figures:
    """The run's shared parts: one PostgreSQL server (fsync on), the loop, a database each."""

    def __init__(self, cfg: Config, server: PgServer, stack: ExitStack) -> None:
        self.cfg = cfg
        self.server = server
        self.stack = stack
        self.loop = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
        self._dbs = 0
        self._jobs = 0

    def fleet(self, callbacks: dict[str, str], conf: str, *, journal: str = "", **kw: Any) -> Fleet:
        """A fleet on a fresh database (or on `journal`, e.g. `sqlite`), closed at the end."""
        if not journal:
            self._dbs += 1
            journal = self.server.create_db(f"bench_fleet_{self._dbs}")
        kw["extra"] = QUIET + kw.get("extra", "")
        return self.stack.enter_context(Fleet(journal, callbacks, conf, loop=self.loop, **kw))

    def jobs(self, n: int) -> range:
        """Job ids never used before in this run: every event its own job, so per-job order
        never serialises runs."""
        first = self._jobs + 1
        self._jobs += n
        return range(first, first + n)


# ---------------------------------------------------------------- callbacks/s, 3 vs 1


def spread(fig: Figures, section: Section) -> None:
    """`sleep 0.2` callbacks at concurrency 4 per member: 1 `all` + 2 `executor` members
    against 1 `all` member on the same database server, same events, interleaved reps."""
    n: int = fig.cfg.pick(120, 240)
    reps: int = fig.cfg.pick(1, 3)
    nap = record_script("naps.txt", EVENT_ID, "time.time()", sleep=NAP_S, at_end=True)
    extra = f"supervisor_callback_concurrency = {CONC}\n"
    fleets: dict[str, tuple[Fleet, list[Member]]] = {}
    for label, roles in (("3 members", ("all", "executor", "executor")), ("1 member", ("all",))):
        fleet = fig.fleet({"nap.py": nap}, "nap.py = complete-job-self\n", extra=extra)
        fleets[label] = (fleet, [fleet.add(role) for role in roles])

    def measure(label: str, rep: int) -> float:
        fleet, members = fleets[label]
        prefix = f"{label[0]}m{rep}-"
        docs = [job_event(f"{prefix}{i}", job) for i, job in enumerate(fig.jobs(n))]
        t0 = time.time()
        stream(members[0].sock, docs)
        ideal = n * NAP_S / (CONC * len(members))
        done = wait_records(
            fleet.path("naps.txt"),
            lambda rs: sum(r[0].startswith(prefix) for r in rs) >= n,
            f"{n} naps on {label}",
            ideal * 4 + 60,
        )
        last = max(float(r[1]) for r in done if r[0].startswith(prefix))
        return n / (last - t0)

    res = interleave(reps, list(fleets), measure)
    section.raw["callbacks_per_s"] = res
    three, one = res["3 members"], res["1 member"]
    got = median(ratios(three, one))
    section.rows.append(
        [f"callbacks/s of `sleep {NAP_S}` callbacks, concurrency {CONC} per member, {n} events",
         f"{fmt_mmm(three)}/s (1 all + 2 executor)", f"{fmt_mmm(one)}/s (1 member)",
         f"{got:.2f}x", f"≥ {SPREAD_GOAL}x"]
    )  # fmt: skip
    section.goal(
        f"3 members vs 1: callbacks/s of sleep {NAP_S} callbacks ≥ {SPREAD_GOAL}x",
        f"{got:.2f}x ({median(three):.1f}/s vs {median(one):.1f}/s)",
        got >= SPREAD_GOAL,
    )


# ---------------------------------------------------------------- kill -9 mid-stream


def crash(fig: Figures, section: Section) -> None:
    """Events pouring into the `all` member; one of two executors kill -9'd once a third is
    acknowledged and it has runs of its own; then every acknowledged event must have run."""
    n = fig.cfg.pick(1_000, 3_000)
    rec = record_script("ran.txt", EVENT_ID, REDELIVERED, "tag")
    fleet = fig.fleet({"rec.py": rec}, "rec.py = complete-job-self\n")
    db = FleetDB(fleet.journal)
    try:
        front, _, victim = fleet.add("all"), fleet.add("executor"), fleet.add("executor")
        out = fleet.path("ran.txt")
        at_kill: dict[str, int] = {}

        def kill(count: int) -> None:
            victim.kill9()  # dead: its rows stay as they are until its lease runs out
            in_hand = db.runs_by_state(
                "member = %s AND state IN ('claimed', 'running')", [victim.name]
            )
            at_kill.update(acked=count, in_hand=sum(in_hand.values()))

        def on_reply(count: int, reply: dict[str, Any]) -> None:
            ready = not at_kill and count >= n // 3 and count % 50 == 0
            if ready and any(r[2] == victim.name for r in records(out)):
                kill(count)

        docs = [job_event(f"c{i}", job) for i, job in enumerate(fig.jobs(n))]
        t0 = time.monotonic()
        replies = stream(front.sock, docs, on_reply, chunk=100, pace=0.05)
        if not at_kill:  # the intake outran the victim's first run: kill it with runs queued
            wait_records(out, lambda rs: any(r[2] == victim.name for r in rs), "a victim run")
            kill(n)
        acked = {r["event_id"] for r in replies if r.get("ok")}
        try:
            wait_records(out, lambda rs: acked <= {r[0] for r in rs}, "every acked run", 600)
            wait_for(lambda: db.unfinished() == 0, "every run finished", 120)
        except AssertionError as exc:
            section.notes.append(f"kill -9 figure: {exc}")
        took = time.monotonic() - t0
        rows = records(out)
        by_event: dict[str, list[str]] = {}
        for event_id, flag, *_ in rows:
            by_event.setdefault(event_id, []).append(flag)
    finally:
        db.close()
    lost = len(acked - set(by_event))
    unflagged = sum(flag != "1" for flags in by_event.values() for flag in flags[1:])
    redelivered = sum(r[1] == "1" for r in rows)
    section.raw["kill9"] = {
        "events": n, "acked": len(acked), "acked_at_kill": at_kill["acked"],
        "in_hand_at_kill": at_kill["in_hand"], "lines": len(rows), "lost": lost,
        "second_runs_unflagged": unflagged, "redelivered_lines": redelivered,
        "run_twice": sum(len(f) > 1 for f in by_event.values()), "seconds": round(took, 1),
    }  # fmt: skip
    section.rows.append(
        [f"{n:,} events, one executor kill -9'd after {at_kill['acked']:,} acks "
         f"({at_kill['in_hand']} runs in its hands)",
         f"{lost} acked without a run; {unflagged} second runs without QB_REDELIVERED=1",
         f"{len(acked):,} acked, {len(rows):,} runs, {redelivered} redelivered", "", "0 and 0"]
    )  # fmt: skip
    section.goal(f"kill -9: acked events without a run ({n:,} events)", str(lost), lost == 0)
    section.goal("kill -9: second runs without QB_REDELIVERED=1", str(unflagged), unflagged == 0)


# ---------------------------------------------------------------- redelivery delay


def redelivery(fig: Figures, section: Section) -> None:
    """An executor holding long runs is kill -9'd with a second executor idle: seconds from
    the kill to each run's start on the second (the callback's own clock)."""
    lease, k = fig.cfg.pick(4.0, 10.0), 3
    hold = hold_script("holds.txt", EVENT_ID, REDELIVERED, "tag", "os.getpid()", "_t0")
    fleet = fig.fleet({"hold.py": hold}, "hold.py = complete-job-self\n", lease=lease)
    out = fleet.path("holds.txt")
    try:
        intake, first = fleet.add("intake"), fleet.add("executor")
        for job in fig.jobs(k):
            reply = intake.request(job_event(f"r{job}", job))
            if not reply.get("ok"):
                raise RuntimeError(f"event refused: {reply}")
        wait_records(out, lambda rs: len(rs) == k, f"{k} runs on the first executor")
        second = fleet.add("executor")
        killed_at = time.time()
        first.kill9()
        rows = wait_records(
            out,
            lambda rs: sum(r[2] == second.name for r in rs) == k,
            "the runs started again on the second executor",
            lease + 60,
        )
    finally:
        fleet.path("release").touch()  # ends the long runs, the dead member's orphans too
    delays = sorted(float(r[4]) - killed_at for r in rows if r[2] == second.name)
    flagged = all(r[1] == "1" for r in rows if r[2] == second.name)
    wait_for(lambda: all(pid_gone(int(r[3])) for r in records(out)), "the long runs ended")
    section.raw["redelivery_s"] = {"lease": lease, "delays": delays, "flagged": flagged}
    section.rows.append(
        [f"a dead executor's {k} runs started elsewhere (lease {lease:g} s)",
         f"{delays[-1]:.2f} s after the kill (first {delays[0]:.2f} s)",
         "", "", f"≤ lease + 2 = {lease + 2:g} s"]
    )  # fmt: skip
    section.goal(
        f"redelivery: a dead member's runs started elsewhere ≤ lease + 2 s (lease {lease:g} s)",
        f"{delays[-1]:.2f} s, all with QB_REDELIVERED=1" if flagged else
        f"{delays[-1]:.2f} s, NOT all with QB_REDELIVERED=1",
        delays[-1] <= lease + 2 and flagged,
    )  # fmt: skip


# ---------------------------------------------------------------- time trigger, 3 members


def time_trigger(fig: Figures, section: Section) -> None:
    """Three `all` members with globaltime triggers a second apart: each fires once in the
    fleet, counted after every member's heartbeat is 2 s past the last trigger."""
    first = int(time.time() + TRIGGER_LEAD_S - QUBE_EPOCH) + 1
    times = [first + i for i in range(TRIGGERS)]
    conf = "".join(f"tick.py = globaltime-{t}\n" for t in times)
    tick = record_script("ticks.txt", "os.environ['QB_TRIGGER']", "tag")
    fleet = fig.fleet({"tick.py": tick}, conf)
    db = FleetDB(fleet.journal)
    try:
        members = [fleet.add("all") for _ in range(3)]
        started_before = time.time() < first + QUBE_EPOCH
        last = times[-1] + QUBE_EPOCH

        def all_past() -> bool:
            beats = {m["member"]: float(m["heartbeat"]) for m in db.members()}
            past = [beats.get(m.name, 0.0) > last + 2 for m in members]
            return db.clock() > last + 2 and all(past)

        wait_for(all_past, "every heartbeat past the last trigger", last - time.time() + 60)
    finally:
        db.close()
    fired = records(fleet.path("ticks.txt"))
    counts = {t: sum(r[0].lower() == f"globaltime-{t}" for r in fired) for t in times}
    by = sorted({r[1] for r in fired})
    section.raw["time_trigger"] = {"counts": counts, "members": by, "ready": started_before}
    once = all(c == 1 for c in counts.values()) and len(fired) == TRIGGERS
    section.rows.append(
        [f"{TRIGGERS} globaltime triggers with 3 `all` members",
         f"fired {', '.join(str(c) for c in counts.values())} time(s), by {', '.join(by)}",
         "", "", "each exactly once"]
    )  # fmt: skip
    section.goal(
        "time trigger with 3 members fires exactly once",
        f"{len(fired)} runs for {TRIGGERS} triggers"
        + ("" if started_before else " (members were not all up before the first)"),
        once if started_before else None,
    )


# ---------------------------------------------------------------- event -> start latency


def paced_latency(sock: str, ids: list[str], jobs: range, out_file: Path) -> list[float]:
    """Send one event every 1/rate s on one connection (acks read by a thread) and return
    each event's send → callback start in ms (the callback's first statement's clock)."""
    client = Client(sock)
    acks: list[bytes] = []
    reader = threading.Thread(target=lambda: acks.extend(client.file.readline() for _ in ids))
    reader.start()
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for i, (event_id, job) in enumerate(zip(ids, jobs, strict=True)):
        delay = t0 + i / LATENCY_RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the load's pace, not a synchronisation
        sent[event_id] = time.time()
        client.sock.sendall(
            f'{{"op":"event","event_id":"{event_id}","name":"complete","type":"job",'
            f'"job":{{"id":{job}}}}}\n'.encode()
        )
    reader.join()
    client.close()
    wanted = set(ids)
    rows = wait_records(out_file, lambda rs: wanted <= {r[0] for r in rs}, "every start")
    starts = {r[0]: float(r[1]) for r in rows if r[0] in wanted}
    return [(starts[e] - t) * 1e3 for e, t in sent.items()]


def latency(fig: Figures, section: Section) -> None:
    """Event → callback start with an `intake` member taking events and one idle `executor`
    running them (woken by NOTIFY), against one daemon on SQLite, same pace and callback."""
    n = fig.cfg.pick(100, 400)
    start = record_script("starts.txt", EVENT_ID, "_t0")
    cb, conf = {"start.py": start}, "start.py = complete-job-self\n"
    fleet = fig.fleet(cb, conf)
    front = fleet.add("intake")
    fleet.add("executor")
    alone = fig.fleet(cb, conf, journal="sqlite")
    single = alone.add("all")
    res: dict[str, list[float]] = {}
    for label, fl, member in (("fleet", fleet, front), ("sqlite", alone, single)):
        ids = [f"{label}-{i}" for i in range(n)]
        res[label] = paced_latency(member.sock, ids, fig.jobs(n), fl.path("starts.txt"))
    section.raw["latency_ms"] = res
    got, base = pct(res["fleet"], 99), pct(res["sqlite"], 99)
    section.rows.append(
        [f"event → start on an idle executor, p99 ({n} events at {LATENCY_RATE:.0f}/s; "
         f"p50 {fmt_num(pct(res['fleet'], 50))} ms)",
         f"{fmt_num(got)} ms", f"{fmt_num(base)} ms (one daemon, SQLite)",
         f"{got / base:.2f}x" if base else "n/a", f"≤ {LATENCY_GOAL_MS:g} ms"]
    )  # fmt: skip
    section.goal(
        f"event → start p99 on an idle executor ≤ {LATENCY_GOAL_MS:g} ms",
        f"{got:.1f} ms (SQLite, one daemon: {base:.1f} ms)",
        got <= LATENCY_GOAL_MS,
    )


# ---------------------------------------------------------------- durable intake


def intake(fig: Figures, section: Section) -> None:
    """Workload I (b_intake): pipelined `complete-job` events, each a new job, nothing
    runs; one `all` member on PostgreSQL (fsync on) against one daemon on SQLite
    (journal_sync=full), interleaved rep by rep."""
    n: int = fig.cfg.pick(20_000, I_EVENTS)
    reps: int = fig.cfg.pick(1, 3)
    cb, conf = {"cb.pl": "exit 0;\n"}, "cb.pl = removed-job-self\n"
    members: dict[str, Member] = {
        "postgresql": fig.fleet(cb, conf).add("all"),
        "sqlite": fig.fleet(
            cb, conf, journal="sqlite", extra="supervisor_callback_journal_sync = full\n"
        ).add("all"),
    }

    def measure(label: str, rep: int) -> float:
        data = payload_i(n, f"{label}{rep}", rep * n)
        return workload_i_rate(members[label].sock, data, n, timeout=600)

    res = interleave(reps, list(members), measure)
    section.raw["intake"] = res
    pg, lite = res["postgresql"], res["sqlite"]
    got = median(ratios(pg, lite))
    section.rows.append(
        [f"durable intake, workload I ({n:,} events)", f"{fmt_mmm(pg)}/s on PostgreSQL",
         f"{fmt_mmm(lite)}/s on SQLite", f"{got:.2f}x", "report"]
    )  # fmt: skip
    section.goal(
        "durable intake on PostgreSQL against SQLite (report)",
        f"{median(pg):,.0f}/s vs {median(lite):,.0f}/s ({got:.2f}x)",
        None,
    )


# ---------------------------------------------------------------- the section

FIGURES: tuple[tuple[str, Callable[[Figures, Section], None]], ...] = (
    ("callbacks/s, 3 members vs 1", spread),
    ("kill -9 mid-stream", crash),
    ("redelivery", redelivery),
    ("time trigger", time_trigger),
    ("event → start latency", latency),
    ("durable intake", intake),
)


def run(cfg: Config) -> Section:
    section = Section(
        "fleet",
        "Fleet on PostgreSQL (issue 18): members on one machine sharing one journal",
        ["figure", "measured", "baseline (same run)", "ratio", "goal"],
    )
    bindir, why = find_bindir()
    why = why or driver_missing()
    if bindir is None or why:
        section.notes.append(f"skipped: {why}")
        section.goal("fleet figures (issue 18)", f"skipped: {why}", None)
        return section
    with ExitStack() as stack:
        server = PgServer(bindir, fsync=True).start()
        stack.callback(server.destroy)
        fig = Figures(cfg, server, stack)
        for name, figure in FIGURES:
            t0 = time.monotonic()
            try:
                figure(fig, section)
            except Exception:
                section.raw["failed"] = True
                section.raw.setdefault("errors", {})[name] = traceback.format_exc()
                section.rows.append([name, "FAILED (see raw.errors)", "", "", ""])
                section.goal(f"{name}: ran", "failed", False)
            section.raw.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
    section.notes += [
        f"members are `qbsupervisor serve` processes on this machine ({fig.loop}), each with "
        "its own qb.conf, state dir and logs, one callback directory; PostgreSQL 15 started "
        "by the bench in a temporary directory with fsync and synchronous_commit on, a "
        "database per figure; member lease 2 s unless stated",
        f"callbacks/s: Python callbacks that sleep {NAP_S} s and then append their end time; "
        "rate = events / (last end - first send); every event a new job",
        "kill -9: the callback appends `event_id QB_REDELIVERED member` with one O_APPEND "
        "write; the executor is killed once a third of the events are acknowledged and it "
        "has started runs; counted once every acknowledged event has a line and no run is "
        "unfinished in the journal",
        "redelivery: an `intake` member and one executor holding 3 long runs; a second "
        "executor starts, the first is kill -9'd; delay = kill → the run's first statement "
        "on the second executor (worst of the 3; their heartbeats are 1 s apart at most, so "
        "a lease runs out between lease - 1 s and lease after the kill)",
        f"latency: {LATENCY_RATE:.0f} events/s on one connection to an `intake` member, the "
        "only executor idle between runs (woken by LISTEN/NOTIFY); send time from the "
        "client, start time from the callback's first statement; the fork server's cold "
        "start is in the first events",
        "durable intake: bench/b_intake.py's workload I payload and pipelined client, one "
        "`all` member on PostgreSQL against one daemon on SQLite (journal_sync=full)",
    ]
    return section
