"""Event → callback start latency at a steady 100 events/s, against raw spawn latency."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import (
    PERL,
    PYTHON,
    Client,
    Config,
    Daemon,
    Section,
    Tree,
    fmt_num,
    last_seq,
    median,
    pct,
)
from loops import auto_loop

GOAL_MS = 10.0
RATE = 100.0
WARM = 10  # the first events pay the fork server's cold start; reported apart as well


def scripts(out: Path) -> dict[str, str]:
    """Callbacks that write `<event id> <time.time()>` first thing (O_APPEND, one write)."""
    return {
        "cb.py": (
            "import time\n_t = time.time()\nimport os\n"
            f"fd = os.open({str(out)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
            "os.write(fd, f\"{os.environ['QB_EVENT_ID']} {_t:.6f}\\n\".encode())\n"
        ),
        "cb.pl": (
            "use Time::HiRes; my $t = Time::HiRes::time();\n"
            f"open(my $f, '>>', '{out}') or die; syswrite($f, \"$ENV{{QB_EVENT_ID}} \" . "
            "sprintf('%.6f', $t) . \"\\n\");\n"
        ),
    }


def read_starts(out: Path) -> dict[str, float]:
    if not out.exists():
        return {}
    pairs = (line.split() for line in out.read_text().splitlines() if line.strip())
    return {eid: float(t) for eid, t in pairs}


def paced(n: int, send: Callable[[int], object]) -> dict[str, float]:
    """Call send(i) at RATE per second; return the send time of every id."""
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / RATE - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[f"L{i}"] = time.time()
        send(i)
    return sent


def daemon_latency(daemon: Daemon, lang: str, n: int, out: Path) -> list[float]:
    with Client(daemon.sock) as client:
        acks: list[bytes] = []
        reader = threading.Thread(
            target=lambda: acks.extend(client.file.readline() for _ in range(n))
        )
        reader.start()
        name = "complete" if lang == "pl" else "failed"
        sent = paced(
            n,
            lambda i: client.sock.sendall(
                f'{{"op":"event","event_id":"L{i}","name":"{name}","type":"job",'
                f'"job":{{"id":{i + 1}}}}}\n'.encode()
            ),
        )
        reader.join()
        client.wait_all(last_seq(acks), timeout=300)
    starts = read_starts(out)
    return [(starts[k] - t) * 1e3 for k, t in sent.items() if k in starts]


def raw_latency(argv: list[str], n: int, out: Path, cwd: str) -> list[float]:
    """posix_spawn the same callback at the same pace, reaping as children exit."""
    devnull = os.open(os.devnull, os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        pids = []
        sent = paced(
            n,
            lambda i: pids.append(
                os.posix_spawn(
                    argv[0],
                    argv,
                    {"PATH": "/usr/bin:/bin", "QB_EVENT_ID": f"L{i}"},
                    file_actions=actions,
                )
            ),
        )
        for pid in pids:
            os.waitpid(pid, 0)
    finally:
        os.chdir(old)
        os.close(devnull)
    starts = read_starts(out)
    return [(starts[k] - t) * 1e3 for k, t in sent.items() if k in starts]


def variants(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(label, kind, language, python_mode-or-loop)."""
    out = [("raw posix_spawn perl", "raw", "pl", ""), ("raw posix_spawn python", "raw", "py", "")]
    for loop in cfg.loops:
        out += [
            (f"daemon perl, {loop}", loop, "pl", "forkserver"),
            (f"daemon python forkserver, {loop}", loop, "py", "forkserver"),
            (f"daemon python fresh, {loop}", loop, "py", "fresh"),
        ]
    return out


def measure(kind: str, lang: str, mode: str, n: int) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="qbl", dir="/tmp"))
    out = tmp / "starts.txt"
    try:
        if kind == "raw":
            cbdir = tmp / "cb"
            cbdir.mkdir()
            (cbdir / f"cb.{lang}").write_text(scripts(out)[f"cb.{lang}"])
            interp = PERL if lang == "pl" else PYTHON
            return raw_latency([interp, f"cb.{lang}"], n, out, str(cbdir))
        conf = "cb.pl = complete-job-self\ncb.py = failed-job-self\n"
        with Tree(kind, scripts(out), conf, supervisor_callback_python_mode=mode) as daemon:
            return daemon_latency(daemon, lang, n, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(cfg: Config) -> Section:
    section = Section(
        "latency",
        f"Event → callback start latency at {RATE:.0f} events/s (ms, client send → callback's "
        "first statement)",
        ["variant", "runs", "p50 ms", "p90 ms", "p99 ms", "max ms", f"p99 after {WARM} events ms"],
    )
    n = cfg.pick(150, 600)
    for label, kind, lang, mode in variants(cfg):
        count = n if mode != "fresh" else cfg.pick(60, 200)
        lat = measure(kind, lang, mode, count)
        section.raw[label] = lat
        row = [fmt_num(pct(lat, p)) for p in (50, 90, 99, 100)] + [fmt_num(pct(lat[WARM:], 99))]
        section.rows.append([label, f"{len(lat)}/{count}", *row])
        if kind != "raw" and lang == "py" and mode == "forkserver":
            section.loops.setdefault("python forkserver p99 latency ms", {})[kind] = pct(lat, 99)
        if kind != "raw" and lang == "pl":
            section.loops.setdefault("perl p99 latency ms", {})[kind] = pct(lat, 99)
    auto = auto_loop() if auto_loop() in cfg.loops else cfg.loops[0]
    got = pct(section.raw[f"daemon python forkserver, {auto}"], 99)
    section.goal(
        f"p99 ≤ {GOAL_MS:.0f} ms via the fork server ({auto})", f"{got:.1f} ms", got <= GOAL_MS
    )
    warm = pct(section.raw[f"daemon python forkserver, {auto}"][WARM:], 99)
    section.goal(f"same, after the first {WARM} events (report)", f"{warm:.1f} ms", None)
    section.notes.append(
        "one run per variant (percentiles over its events); each event is its own job, so "
        "per-job ordering never delays a run; fresh runs fewer events: it cannot keep up "
        f"with {RATE:.0f}/s, so its queue grows — median of p50s is "
        f"{fmt_num(median([pct(v, 50) for k, v in section.raw.items() if 'fresh' in k]))} ms"
    )
    return section
