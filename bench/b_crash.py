"""kill -9 at random points while events pour in: every acknowledged event's callback must run."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import threading
import time
from pathlib import Path

from common import Client, Config, Daemon, Section, make_tree

CALLBACK = (
    "open(my $f, '>>', '{out}') or die; syswrite($f, \"$ENV{{QB_EVENT_ID}} "
    '$ENV{{QB_REDELIVERED}}\\n");\n'
)


def round_acked(daemon: Daemon, ids: list[str], kill_after: float) -> set[str]:
    """Pipeline `ids`; kill -9 the daemon after `kill_after` s; return ids acked before."""
    data = b"".join(
        json.dumps(
            {
                "op": "event",
                "event_id": eid,
                "name": "complete",
                "type": "job",
                "job": {"id": 1 + n},
            }
        ).encode()
        + b"\n"
        for n, eid in enumerate(ids)
    )
    acked: set[str] = set()
    client = Client(daemon.sock, timeout=30)

    def send() -> None:
        with contextlib.suppress(OSError):  # the daemon dying under us is the point
            client.sock.sendall(data)

    threading.Thread(target=send, daemon=True).start()
    killer = threading.Timer(kill_after, daemon.kill9)
    killer.start()
    try:
        for line in client.file:
            doc = json.loads(line)
            if doc.get("ok"):
                acked.add(doc["event_id"])
    except (OSError, ValueError):
        pass
    killer.join()
    client.close()
    return acked


def ran(out: Path) -> tuple[set[str], int, int]:
    """Ids the callback wrote, how many lines in all, how many redelivered runs."""
    lines = out.read_text().split("\n") if out.exists() else []
    pairs = [line.split() for line in lines if line.strip()]
    return {p[0] for p in pairs}, len(pairs), sum(1 for p in pairs if p[1:] == ["1"])


def crash_run(loop: str, kills: int, per_round: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    root = make_tree({}, "", {})
    out = root / "ran.txt"
    (root / "callback" / "cb.pl").write_text(CALLBACK.format(out=out))
    (root / "callback" / "callbacks.conf").write_text("cb.pl = complete-job-self\n")
    daemon = Daemon(root, loop)
    acked: set[str] = set()
    mid_intake = 0
    try:
        for k in range(kills):
            daemon.start()
            ids = [f"k{k}-{i}" for i in range(per_round)]
            got = round_acked(daemon, ids, rng.uniform(0.0, 0.4))
            mid_intake += len(got) < per_round
            acked |= got
        daemon.start()
        with Client(daemon.sock) as client:
            status = client.request({"op": "status"})
            client.wait_all(int(status["last_seq"]), timeout=600)
        daemon.stop()
        wrote, lines, redelivered = ran(out)
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "kills": kills,
        "sent": kills * per_round,
        "acked": len(acked),
        "ran": len(acked & wrote),
        "lost": len(acked - wrote),
        "unacked_ran": len(wrote - acked),
        "runs": lines,
        "redelivered": redelivered,
        "mid_intake": mid_intake,
    }


def run(cfg: Config) -> Section:
    kills, per_round = cfg.pick((3, 300), (8, 1000))
    section = Section(
        "crash",
        f"Crash: {kills} x kill -9 at a random point of a pipelined burst of {per_round} events",
        [
            "loop",
            "kills during intake",
            "sent",
            "acknowledged",
            "ran at least once",
            "lost",
            "unacked but ran",
            "runs in all",
            "runs with QB_REDELIVERED=1",
        ],
    )
    lost = 0
    for n, loop in enumerate(cfg.loops):
        t0 = time.monotonic()
        r = crash_run(loop, kills, per_round, seed=n)
        r["seconds"] = round(time.monotonic() - t0)
        section.raw[loop] = r
        lost += r["lost"]
        section.rows.append(
            [
                loop,
                *(
                    str(r[k])
                    for k in (
                        "mid_intake",
                        "sent",
                        "acked",
                        "ran",
                        "lost",
                        "unacked_ran",
                        "runs",
                        "redelivered",
                    )
                ),
            ]
        )
    section.goal("lost = 0 (all loops)", str(lost), lost == 0)
    section.notes.append(
        "callback `cb.pl` appends `$QB_EVENT_ID $QB_REDELIVERED` to a file with O_APPEND; "
        "after the last kill the daemon restarts, `wait`s for every stored seq, and the "
        "acknowledged ids are compared with the ids written"
    )
    return section
