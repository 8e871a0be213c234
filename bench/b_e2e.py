"""End-to-end event → spawn → reap of a trivial Perl callback, against a raw posix_spawn loop."""

from __future__ import annotations

import time
from contextlib import ExitStack

from common import (
    PERL,
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

from supervisord.run.env import RUNTIME_DIR, command, names_qb

GOAL = 0.85
# What SPEC §4 sets for every run (values of the size the daemon sends), besides the qb path.
CONTRACT_ENV = {
    "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "QBDIR": "/var/spool/qube", "HOME": "/root",
    "USER": "root", "LOGNAME": "root", "QBJOBID": "1234", "QB_EVENT_NAME": "complete",
    "QB_EVENT_TYPE": "job", "QB_EVENT_SEQ": "17", "QB_EVENT_ID": "qb-5e0c2a-17",
    "QB_TRIGGER": "complete-job-self", "QB_CALLBACK": "cb.pl", "QB_REDELIVERED": "0",
}  # fmt: skip


def daemon_rate(daemon: Daemon, n: int, base: int) -> tuple[float, float]:
    """Events/s from the first send to the last callback reaped; daemon CPU µs per event."""
    payload = encode_lines(event(job=base + i + 1) for i in range(n))
    cpu0 = daemon.cpu_s()
    with Client(daemon.sock) as client:
        t0 = time.perf_counter()
        replies = client.pipeline(payload, n)
        client.wait_all(last_seq(replies))
        elapsed = time.perf_counter() - t0
    return n / elapsed, (daemon.cpu_s() - cpu0) / n * 1e6


def measure_conc(cfg: Config, section: Section, conc: int) -> None:
    n = cfg.pick(200, 1500)
    reps = cfg.pick(1, 3)
    cpu: dict[str, list[float]] = {loop: [] for loop in cfg.loops}
    with ExitStack() as stack:
        daemons = {
            loop: stack.enter_context(
                Tree(
                    loop,
                    {"cb.pl": "exit 0;\n"},
                    "cb.pl = complete-job-self\n",
                    supervisor_callback_concurrency=conc,
                )
            )
            for loop in cfg.loops
        }
        cbdir = str(next(iter(daemons.values())).root / "callback")
        with open(f"{cbdir}/cb.pl", "rb") as f:
            qb = names_qb(f.read())
        contract_argv = command("perl", PERL, "cb.pl", qb)
        contract_env = {**CONTRACT_ENV, **({"PERL5LIB": RUNTIME_DIR} if qb else {})}

        def measure(variant: str, rep: int) -> float:
            if variant == "raw":
                return raw_spawn_rate([PERL, "cb.pl"], n, conc, cbdir)
            if variant == "raw-contract":
                # The same loop with the command line the daemon gives this callback and
                # the environment variables SPEC §4 gives every callback: what the
                # children alone cost under the contract.
                return raw_spawn_rate(contract_argv, n, conc, cbdir, contract_env)
            rate, us = daemon_rate(daemons[variant], n, rep * n)
            cpu[variant].append(us)
            return rate

        res = interleave(reps, ["raw", "raw-contract", *cfg.loops], measure)
    section.raw[f"conc{conc}"] = {"rates": res, "cpu_us": cpu}
    for variant, rates in res.items():
        r = ratios(rates, res["raw"])
        us = fmt_mmm(cpu[variant]) if variant in cpu else "—"
        section.rows.append([str(conc), variant, fmt_mmm(rates), fmt_mmm(r), us])
    for loop in cfg.loops:
        section.loops.setdefault(f"e2e conc {conc} events/s", {})[loop] = median(res[loop])
    chosen = res.get(auto_loop(), res[cfg.loops[0]])
    got = median(ratios(chosen, res["raw"]))
    fair = median(ratios(chosen, res["raw-contract"]))
    section.goal(
        f"conc {conc} ≥ {GOAL}x raw ({auto_loop()}, the --loop auto choice)",
        f"{got:.2f}x",
        got >= GOAL,
    )
    section.goal(
        f"conc {conc} vs raw with the callback's own command line and env (report)",
        f"{fair:.2f}x",
        None,
    )


def run(cfg: Config) -> Section:
    section = Section(
        "e2e",
        "End-to-end event → spawn → reap, Perl `exit 0;` (events/s)",
        ["conc", "variant", "events/s", "ratio vs raw (per rep)", "daemon CPU µs/event"],
    )
    for conc in (8, 64):
        measure_conc(cfg, section, conc)
    section.notes.append(
        "raw = os.posix_spawn + waitpid loop of the same `perl cb.pl`, same concurrency, "
        "no socket; raw-contract = the same loop with the command line the daemon gives this "
        "callback (`perl cb.pl`: a script that never names qb starts without -Mqb) and the "
        "SPEC §4 environment; daemon = pipelined events on one connection, timed to the "
        "`wait` reply"
    )
    return section
