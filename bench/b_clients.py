"""Eight client processes, each sending one event and waiting for its ack before the next."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from contextlib import ExitStack

from common import PYTHON, Config, Daemon, Section, Tree, fmt_mmm, interleave, median, pct
from loops import auto_loop

GOAL = 10_000.0
CLIENTS = 8


def client_main(path: str, count: int, prefix: str) -> None:
    """One client process: connect, wait for `go` on stdin, then send→ack `count` times."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = sock.makefile("rb")
    lines = [
        json.dumps(
            {
                "op": "event",
                "event_id": f"{prefix}-{i}",
                "name": "running",
                "type": "job",
                "job": {"id": 1 + i % 1000},
            }
        ).encode()
        + b"\n"
        for i in range(count)
    ]
    sys.stdin.readline()
    lat = []
    t0 = time.time()
    for line in lines:
        t = time.perf_counter()
        sock.sendall(line)
        if not reader.readline().startswith(b'{"ok":true'):
            raise SystemExit("refused")
        lat.append(time.perf_counter() - t)
    t1 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "p50": pct(lat, 50), "p99": pct(lat, 99)}), flush=True)


def clients_rate(daemon: Daemon, count: int, tag: str) -> tuple[float, float]:
    """Total acked events/s over the 8 clients' common window; median client p99 in ms."""
    procs = [
        subprocess.Popen(
            [PYTHON, __file__, daemon.sock, str(count), f"{tag}-{k}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for k in range(CLIENTS)
    ]
    time.sleep(0.5)  # let every client import and connect before the common start
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    outs = [json.loads(proc.communicate(timeout=300)[0]) for proc in procs]
    if any(proc.returncode for proc in procs):
        raise RuntimeError("a client failed")
    span = max(o["t1"] for o in outs) - min(o["t0"] for o in outs)
    return CLIENTS * count / span, median([o["p99"] * 1e3 for o in outs])


def run(cfg: Config) -> Section:
    section = Section(
        "clients",
        f"{CLIENTS} clients, each send → ack one at a time (events/s, durable)",
        ["workload", "events/s (all clients)", "goal", "per-client p99 ack ms"],
    )
    count = cfg.pick(1000, 5000)
    reps = cfg.pick(1, 3)
    p99: dict[str, list[float]] = {loop: [] for loop in cfg.loops}
    with ExitStack() as stack:
        daemons = {
            loop: stack.enter_context(
                Tree(loop, {"cb.pl": "exit 0;\n"}, "cb.pl = submit-job-self\n")
            )
            for loop in cfg.loops
        }

        def measure(loop: str, rep: int) -> float:
            rate, ms = clients_rate(daemons[loop], count, f"c{rep}")
            p99[loop].append(ms)
            return rate

        res = interleave(reps, list(cfg.loops), measure)
    section.raw.update(rates=res, p99_ms=p99)
    for loop in cfg.loops:
        section.rows.append(
            [f"8 clients, {loop}", fmt_mmm(res[loop]), f"≥ {GOAL:,.0f}", fmt_mmm(p99[loop])]
        )
        section.loops.setdefault("8 clients events/s", {})[loop] = median(res[loop])
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = median(res[auto])
    section.goal(
        f"8 clients: send → durable ack ≥ {GOAL:,.0f} events/s ({auto})",
        f"{got:,.0f}/s",
        got >= GOAL,
    )
    section.notes.append(
        f"{CLIENTS} separate client processes, {count} events each, on the same 2 cores "
        "as the daemon; rate = all events / (last client end - first client start)"
    )
    return section


if __name__ == "__main__":
    client_main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
