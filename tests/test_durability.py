"""Durable delivery with a real daemon process: kill -9, restarts, duplicates, a failing disk."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisord.journal import reads, store
from tests.daemon_harness import DEADLINE, Client, Daemon, event, wait_for_file

# Perl is the cheapest child a callbacks.conf can name; O_APPEND keeps lines whole.
RECORD = (
    'open(my $f, ">>", "$ENV{QBDIR}/ran.txt") or die;\n'
    'print $f "$ENV{QB_EVENT_ID} $ENV{QB_REDELIVERED}\\n";\n'
    "close($f);\n"
)
CONF = "record.pl = complete-job-self\n"


def ran(root: Path) -> list[tuple[str, str]]:
    path = root / "ran.txt"
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()]  # type: ignore[misc]


def send_batch(d: Daemon, ids: list[str], stop_after: int) -> set[str]:
    """Pipeline events; return the ids acknowledged before we stopped reading."""
    acked: set[str] = set()
    c = Client(d.sock)
    try:
        c.send_raw(b"".join(json.dumps(event("complete", job=i, event_id=e)).encode() + b"\n"
                            for i, e in enumerate(ids)))  # fmt: skip
        for _ in range(stop_after):
            reply = c.read()
            assert reply["ok"], reply
            acked.add(reply["event_id"])
    finally:
        c.close()
    return acked


def test_no_acknowledged_event_is_lost_across_20_kill9(
    daemon_factory: Callable[..., Daemon],
) -> None:
    rng = random.Random(1729)
    d = daemon_factory({"record.pl": RECORD}, CONF)
    acked: set[str] = set()
    for kill in range(20):
        ids = [f"k{kill}-{i}" for i in range(40)]
        acked |= send_batch(d, ids, stop_after=rng.randint(0, 40))
        d.kill9()  # at a random point: mid-batch, after acks, while callbacks run
        d.start()
    last = d.request({"op": "status"})["last_seq"]
    assert d.request({"op": "wait", "seq": last, "timeout": DEADLINE})["done"] is True
    seen = {eid for eid, _ in ran(d.root)}
    lost = acked - seen
    assert not lost, f"{len(lost)} acknowledged events never ran: {sorted(lost)[:10]}"
    assert len(acked) > 100, "the kills must leave a meaningful number of acknowledged events"


def test_duplicate_event_id_across_a_restart(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"record.pl": RECORD}, CONF)
    first = d.request(event("complete", job=5, event_id="once"))
    assert d.request({"op": "wait", "seq": first["seq"], "timeout": DEADLINE})["done"]
    d.stop()
    d.start()
    again = d.request(event("complete", job=5, event_id="once"))
    assert again["duplicate"] is True and again["seq"] == first["seq"]
    fresh = d.request(event("complete", job=5))
    assert fresh["seq"] == first["seq"] + 1, "seq keeps increasing across restarts"
    assert d.request({"op": "wait", "seq": fresh["seq"], "timeout": DEADLINE})["done"]
    assert [eid for eid, _ in ran(d.root)].count("once") == 1
    assert d.request({"op": "status"})["events_total"] == 2


def test_run_interrupted_by_a_crash_is_redelivered_with_the_flag(
    daemon_factory: Callable[..., Daemon],
) -> None:
    hold = (
        "import os, pathlib, sys, time\n"
        "root = pathlib.Path(os.environ['QBDIR'])\n"
        "doc = sys.stdin.read()\n"
        "(root / ('seen-' + os.environ['QB_REDELIVERED'])).write_text(doc)\n"
        "if os.environ['QB_REDELIVERED'] == '0':\n"
        "    time.sleep(60)\n"
    )
    d = daemon_factory({"hold.py": hold}, "hold.py = complete-job-self\n")
    seq = d.request(event("complete", job=9))["seq"]
    wait_for_file(d.root / "seen-0")
    d.kill9()
    d.start()
    doc = json.loads(wait_for_file(d.root / "seen-1"))
    assert doc["event"]["seq"] == seq
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    runs = d.request({"op": "history", "job": 9})["runs"]
    # The start record is written without delaying the spawn, so a kill right after the start
    # may leave it uncounted: 1 or 2 attempts, never 0, never a third.
    assert runs[0]["outcome"] == "ok" and runs[0]["attempts"] in (1, 2)


def test_full_disk_refuses_with_unavailable_and_recovers(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"record.pl": RECORD}, CONF)
    assert d.proc is not None
    pid = str(d.proc.pid)
    # RLIMIT_FSIZE=1 makes every write past byte 1 fail with EFBIG, as a full disk would.
    subprocess.run(["prlimit", "--pid", pid, "--fsize=1:unlimited"], check=True)
    with d.connect() as c:
        refused = c.request(event("complete", job=1, event_id="while-full"))
        assert refused["ok"] is False and refused["error"]["code"] == "unavailable"
        assert "journal" in refused["error"]["message"]
        assert c.request({"op": "ping"})["ok"] is True
        subprocess.run(["prlimit", "--pid", pid, "--fsize=unlimited:unlimited"], check=True)
        accepted = c.request(event("complete", job=1, event_id="while-full"))
        assert accepted["ok"] is True and accepted["duplicate"] is False
        assert c.request({"op": "wait", "seq": accepted["seq"], "timeout": DEADLINE})["done"]
    assert [eid for eid, _ in ran(d.root)] == ["while-full"]


def test_reloads_under_load_lose_nothing(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"record.pl": RECORD}, CONF)
    conf = d.root / "callback" / "callbacks.conf"
    acked: list[str] = []
    done = threading.Event()

    def produce() -> None:
        with d.connect() as c:
            for i in range(400):
                reply = c.request(event("complete", job=i % 7, event_id=f"r{i}"))
                assert reply["ok"] and reply["matched"] == ["record.pl"], reply
                acked.append(reply["event_id"])
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    flips = 0
    while not done.is_set() and flips < 40:
        # Replace atomically, as an editor saving the file would: a reload never sees it half
        # written (a truncated file would be a valid, empty table).
        tmp = conf.with_suffix(".tmp")
        tmp.write_text("record.pl = complete-jb-self\n" if flips % 2 else CONF)
        tmp.replace(conf)
        if flips % 3 == 0:
            d.signal(signal.SIGHUP)
        else:
            d.request({"op": "reload"})
        flips += 1
    producer.join(DEADLINE)
    assert len(acked) == 400
    last = d.request({"op": "status"})["last_seq"]
    assert d.request({"op": "wait", "seq": last, "timeout": DEADLINE})["done"]
    assert {eid for eid, _ in ran(d.root)} == set(acked)


def test_counters_are_recounted_from_the_newest_event(journal_db: Any) -> None:
    # A commit of events alone leaves `meta` behind; the events table has the truth, and
    # pruning always keeps the newest event so that it stays there.
    db = journal_db
    store.write_meta(db, {"last_seq": 2, "events_total": 5, "runs_total": 1})
    store.insert_events(db, [(s, f"e{s}", 0.0, "{}") for s in (1, 2, 3, 4)])
    counters = store.read_counters(db)
    assert (counters["last_seq"], counters["events_total"], counters["runs_total"]) == (4, 7, 1)
    assert reads.prune(db, 10.0, 100) == 3
    assert store.read_counters(db)["last_seq"] == 4


def test_seq_continues_after_kill9_of_event_only_commits(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"record.pl": RECORD}, "record.pl = failed-job-self\n")
    seqs = [d.request(event("complete", job=n))["seq"] for n in range(1, 4)]
    d.kill9()
    d.start()
    status = d.request({"op": "status"})
    assert (status["last_seq"], status["events_total"]) == (seqs[-1], 3)
    assert d.request(event("complete", job=9))["seq"] == seqs[-1] + 1
