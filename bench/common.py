"""Shared bench helpers: a real daemon on a temp tree, socket clients, stats, markdown tables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PERL = shutil.which("perl") or "/usr/bin/perl"
LOOPS = ("asyncio", "uvloop")
READY_TIMEOUT = 60.0


# ---------------------------------------------------------------- config of one run


@dataclass(frozen=True, slots=True)
class Config:
    """What the runner passes to every benchmark."""

    quick: bool
    loops: tuple[str, ...] = LOOPS

    def pick(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full


# ---------------------------------------------------------------- a daemon on a temp tree


def make_tree(callbacks: Mapping[str, str], conf: str, qbconf: Mapping[str, Any]) -> Path:
    """A QBDIR under /tmp with callback/, etc/qb.conf and a short socket path."""
    root = Path(tempfile.mkdtemp(prefix="qbb", dir="/tmp"))
    cbdir = root / "callback"
    cbdir.mkdir()
    for name, text in callbacks.items():
        (cbdir / name).write_text(text)
    (cbdir / "callbacks.conf").write_text(conf)
    (root / "etc").mkdir()
    keys = {
        "supervisor_universal_callback_path": "$QBDIR/callback",
        "supervisor_event_socket": f"{root}/s.sock",
        "supervisor_callback_log_level": "warning",
        **qbconf,
    }
    text = "".join(f"{key} = {value}\n" for key, value in keys.items())
    (root / "etc" / "qb.conf").write_text(text)
    return root


class Daemon:
    """`python -m supervisord serve` as a subprocess, ready when it sends READY=1."""

    def __init__(self, root: Path, loop: str = "asyncio") -> None:
        self.root = root
        self.loop = loop
        self.sock = f"{root}/s.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, profile: str | None = None) -> Daemon:
        notify_path = f"{self.root}/n.sock"
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "LISTEN_"))}
        env.update(QBDIR=str(self.root), NOTIFY_SOCKET=notify_path)
        pre = [PYTHON, "-m", "cProfile", "-o", profile] if profile else [PYTHON]
        cmd = [
            *pre,
            "-m",
            "supervisord",
            "serve",
            "--config",
            f"{self.root}/etc/qb.conf",
            "--loop",
            self.loop,
        ]
        with open(self.root / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        try:
            self._wait_ready(notify)
        finally:
            notify.close()
        return self

    def _wait_ready(self, notify: socket.socket) -> None:
        end = time.monotonic() + READY_TIMEOUT
        notify.settimeout(0.5)
        while time.monotonic() < end:
            try:
                if b"READY=1" in notify.recv(65536):
                    return
            except TimeoutError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                break
        raise RuntimeError(f"daemon did not become ready:\n{self.log_tail()}")

    def log_tail(self) -> str:
        path = self.root / "daemon.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_s(self) -> float:
        return proc_cpu_s(f"/proc/{self.pid}/stat")

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU seconds by thread: `loop` (the main thread, which runs the event loop) and
        `threads` (the journal writer, spawn threads, log writer, all the others)."""
        out = {"loop": 0.0, "threads": 0.0}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                cpu = proc_cpu_s(f"/proc/{self.pid}/task/{tid}/stat")
            except OSError:  # the thread ended meanwhile
                continue
            out["loop" if int(tid) == self.pid else "threads"] += cpu
        return out

    def tree_rss_kib(self) -> int:
        """VmRSS of the daemon plus every live descendant (its fork server, when idle)."""
        return sum(rss_kib(pid) for pid in [self.pid, *descendants(self.pid)])

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def proc_cpu_s(stat_path: str) -> float:
    """utime + stime of a process or thread, from its /proc stat file."""
    with open(stat_path) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:  # gone
        return 0
    return 0


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of children ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


class Tree:
    """Context manager: a temp tree and a started daemon, stopped and removed at exit."""

    def __init__(self, loop: str, callbacks: Mapping[str, str], conf: str, **qbconf: Any):
        self.root = make_tree(callbacks, conf, qbconf)
        self.daemon = Daemon(self.root, loop)

    def __enter__(self) -> Daemon:
        try:
            return self.daemon.start()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- clients


class Client:
    """A blocking NDJSON client."""

    def __init__(self, path: str, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        self.sock.sendall(json.dumps(doc).encode() + b"\n")
        line = self.file.readline()
        if not line:
            raise EOFError("daemon closed the connection")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def pipeline(self, payload: bytes, count: int) -> list[bytes]:
        """Send pre-encoded lines from a thread while reading every reply line here."""
        sender = threading.Thread(target=self.sock.sendall, args=(payload,), daemon=True)
        sender.start()
        replies = [self.file.readline() for _ in range(count)]
        sender.join()
        return replies

    def wait_all(self, seq: int, timeout: float = 600.0) -> None:
        reply = self.request({"op": "wait", "seq": seq, "timeout": timeout})
        if not reply.get("done"):
            raise RuntimeError(f"wait for seq {seq} did not finish: {reply}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def event(name: str = "complete", type_: str = "job", job: int = 1, **extra: Any) -> dict[str, Any]:
    return {"op": "event", "name": name, "type": type_, "job": {"id": job}, **extra}


def encode_lines(docs: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(doc).encode() + b"\n" for doc in docs)


def last_seq(replies: list[bytes]) -> int:
    doc = json.loads(replies[-1])
    if not doc.get("ok"):
        raise RuntimeError(f"event refused: {doc}")
    return int(doc["seq"])


# ---------------------------------------------------------------- raw spawn baseline


def raw_spawn_rate(
    argv: list[str], n: int, conc: int, cwd: str, env: dict[str, str] | None = None
) -> float:
    """A raw os.posix_spawn + waitpid loop of the same command: the spawn ceiling."""
    devnull = os.open(os.devnull, os.O_RDWR)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)]
    env = env or {"PATH": "/usr/bin:/bin"}
    started = running = 0
    old = os.getcwd()
    os.chdir(cwd)
    try:
        t0 = time.perf_counter()
        while started < n or running:
            while running < conc and started < n:
                os.posix_spawn(argv[0], argv, env, file_actions=actions)
                started += 1
                running += 1
            os.waitpid(-1, 0)
            running -= 1
        return n / (time.perf_counter() - t0)
    finally:
        os.chdir(old)
        os.close(devnull)


# ---------------------------------------------------------------- stats and tables


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[k]


def fmt_num(v: float) -> str:
    if v != v:
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


def fmt_mmm(values: list[float]) -> str:
    """median [min..max] over reps."""
    clean = [v for v in values if v == v]
    if not clean:
        return "n/a"
    if len(clean) == 1:
        return fmt_num(clean[0])
    return f"{fmt_num(statistics.median(clean))} [{fmt_num(min(clean))}..{fmt_num(max(clean))}]"


def ratios(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=False) if y and x == x and y == y]


@dataclass(slots=True)
class Section:
    """One benchmark's result: a markdown table plus goal verdicts and raw numbers."""

    name: str
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    goals: list[tuple[str, str, bool | None]] = field(default_factory=list)  # what, got, met
    raw: dict[str, Any] = field(default_factory=dict)
    loops: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> loop -> median
    seconds: float = 0.0
    # More tables after the first: (title, headers, rows) — the figures kept from before
    # a workload of issue 16 took the section's first table.
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)

    def goal(self, what: str, got: str, met: bool | None) -> None:
        """``what`` starting with a workload's name and a colon (``P: ...``, ``8 clients:``)
        puts the goal in the workloads table at the top of the results as well."""
        self.goals.append((what, got, met))

    def table(self, title: str, headers: list[str]) -> list[list[str]]:
        """A further table; returns its rows, to append to."""
        rows: list[list[str]] = []
        self.tables.append((title, headers, rows))
        return rows

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        out += _table(self.headers, self.rows)
        for title, headers, rows in self.tables:
            out += ["", f"**{title}**", "", *_table(headers, rows)]
        out += [""] + [f"- {note}" for note in self.notes]
        for what, got, met in self.goals:
            mark = "n/a" if met is None else ("MET" if met else "MISSED")
            out.append(f"- goal {what}: {got} — **{mark}**")
        out.append(f"- took {self.seconds:.0f} s")
        return "\n".join(out) + "\n"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def interleave(
    reps: int, variants: list[str], measure: Callable[[str, int], float]
) -> dict[str, list[float]]:
    """Run variants rep by rep (A B C, B C A, ...) so per-rep ratios share machine noise."""
    results: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(reps):
        k = rep % len(variants)
        for variant in variants[k:] + variants[:k]:
            results[variant].append(measure(variant, rep))
    return results


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


def machine_line() -> str:
    try:
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cpus, "
        f"python {sys.version.split()[0]}, loadavg {load}"
    )
