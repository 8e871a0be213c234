"""Qube-style inline callbacks vs ours: what a 1 s callback costs a second client's intake."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import PERL, PYTHON, Client, Config, Section, Tree, fmt_num, pct

SLOW = "sleep 1;\n"
WINDOW = 1.5  # seconds client B keeps sending after A's event


def inline_server(path: str, cbdir: str) -> None:
    """One thread, one loop: a matching event runs its callback to the end before anything else."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytes] = {}
    seq = 0
    print("READY", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ)
                buffers[conn] = b""
                continue
            data = sock.recv(65536)
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            *lines, buffers[sock] = (buffers[sock] + data).split(b"\n")
            for line in lines:
                doc = json.loads(line)
                seq += 1
                matched = ["slow.pl"] if doc.get("name") == "complete" else []
                if matched:  # Qube's supervisor: the callback runs inside the serving loop
                    subprocess.run([PERL, "slow.pl"], cwd=cbdir, check=False)
                sock.sendall(
                    json.dumps({"ok": True, "seq": seq, "matched": matched}).encode() + b"\n"
                )


def second_client(path: str) -> list[tuple[float, float]]:
    """A sends the slow event; B then sends → acks for WINDOW s: (offset from A, latency)."""
    with Client(path) as a, Client(path) as b:
        t0 = time.perf_counter()
        a.sock.sendall(b'{"op":"event","name":"complete","type":"job","job":{"id":1}}\n')
        a_reader = threading.Thread(target=a.file.readline)
        a_reader.start()
        out: list[tuple[float, float]] = []
        i = 0
        while time.perf_counter() - t0 < WINDOW:
            t = time.perf_counter()
            i += 1
            b.request({"op": "event", "name": "running", "type": "job", "job": {"id": 100 + i}})
            out.append((t - t0, (time.perf_counter() - t) * 1e3))
        a_reader.join()
    return out


def measure_inline() -> list[tuple[float, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="qbi", dir="/tmp"))
    (tmp / "slow.pl").write_text(SLOW)
    path = str(tmp / "s.sock")
    proc = subprocess.Popen([PYTHON, __file__, path, str(tmp)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            raise RuntimeError("inline server did not start")
        return second_client(path)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def measure_ours(loop: str) -> list[tuple[float, float]]:
    with Tree(loop, {"slow.pl": SLOW}, "slow.pl = complete-job-self\n") as daemon:
        return second_client(daemon.sock)


def run(cfg: Config) -> Section:
    section = Section(
        "inline",
        "Blocking cost: client B's intake while client A's event runs a 1 s callback",
        ["server", "B acks in A's first second", "B p50 ms", "B p99 ms", "B max ms"],
    )
    variants = {"Qube-style inline (callback in the serving loop)": measure_inline}
    for loop in cfg.loops:
        variants[f"qbcallbacks, {loop}"] = lambda loop=loop: measure_ours(loop)
    for label, fn in variants.items():
        samples = fn()
        lat = [ms for _, ms in samples]
        first = sum(1 for off, ms in samples if off + ms / 1e3 <= 1.0)
        section.raw[label] = samples
        section.rows.append([label, str(first), *(fmt_num(pct(lat, p)) for p in (50, 99, 100))])
        if label.startswith("qbcallbacks"):
            section.loops.setdefault("B p99 ms", {})[label.split()[-1]] = pct(lat, 99)
    section.notes.append(
        f"B sends one event and waits for its ack, again and again, for {WINDOW} s after A's "
        "event; the inline server keeps no journal (flattering it); ours acks durably"
    )
    return section


if __name__ == "__main__":
    os.chdir(sys.argv[2])
    inline_server(sys.argv[1], sys.argv[2])
