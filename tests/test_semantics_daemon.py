"""Trigger semantics through a live daemon: parent/label contexts, compound latches, time
triggers, per-job order, and actions streamed to subscribers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from tests.daemon_harness import DEADLINE, Daemon, event, wait_for_file

# Appends "<QBJOBID>|<trigger>|<event job>" so each test reads who owned which firing.
RECORD = (
    "import json, os, pathlib, sys\n"
    "doc = json.load(sys.stdin)\n"
    "line = '%s|%s|%s\\n' % (os.environ.get('QBJOBID', '-'), os.environ['QB_TRIGGER'],\n"
    "                         doc['event'].get('job', {}).get('id', '-'))\n"
    "with open(pathlib.Path(os.environ['QBDIR']) / 'fired.txt', 'a') as fh:\n"
    "    fh.write(line)\n"
)


def fired(root: Path) -> list[tuple[str, ...]]:
    path = root / "fired.txt"
    if not path.exists():
        return []
    return sorted(tuple(line.split("|")) for line in path.read_text().splitlines())


def settle(d: Daemon, seq: int) -> None:
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"] is True


def submit(d: Daemon, job: int, **fields: object) -> int:
    reply = d.request({**event("submit", job=job), "job": {"id": job, **fields}})
    assert reply["ok"], reply
    return int(reply["seq"])


def test_parent_and_label_contexts(daemon_factory: Callable[..., Daemon]) -> None:
    conf = "rec.py = complete-job-parent\nrec.py = done-job-comp\n"
    d = daemon_factory({"rec.py": RECORD}, conf)
    submit(d, 100, pgrp=100, label="main")
    submit(d, 101, pgrp=100, pid=100, label="render")
    submit(d, 102, pgrp=100, pid=100, label="comp")
    seq = submit(d, 200, pgrp=200, label="comp")  # another pgrp: a label there is not ours
    settle(d, seq)
    assert fired(d.root) == []
    # Parent 100 completes: each child owns one firing of complete-job-parent.
    settle(d, d.request(event("complete", job=100))["seq"])
    assert fired(d.root) == [("101", "complete-job-parent", "100"),
                             ("102", "complete-job-parent", "100")]  # fmt: skip
    (d.root / "fired.txt").unlink()
    # The job labelled comp in pgrp 100 fails: every job of that pgrp owns a firing.
    reply = d.request(event("failed", job=102))
    assert reply["matched"] == ["rec.py"] * 3
    settle(d, reply["seq"])
    assert [f[0] for f in fired(d.root)] == ["100", "101", "102"]


def test_compound_trigger_latches_per_job(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"rec.py": RECORD}, "rec.py = complete-job-self && complete-job-parent\n")
    submit(d, 1, pgrp=1)
    submit(d, 2, pgrp=1, pid=1)
    settle(d, submit(d, 3, pgrp=3))
    assert d.request(event("complete", job=2))["matched"] == []  # only one term latched
    assert d.request({**event("complete", job=1), "op": "match"})["matched"] == ["rec.py"]
    assert d.request(event("complete", job=3))["matched"] == []
    reply = d.request(event("complete", job=1))  # job 2's parent completes: 2 fires, once
    assert reply["matched"] == ["rec.py"]
    settle(d, reply["seq"])
    assert fired(d.root) == [("2", "complete-job-self && complete-job-parent", "1")]


def test_latches_survive_a_restart(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"rec.py": RECORD}, "rec.py = complete-job-self && failed-job-9\n")
    settle(d, d.request(event("complete", job=9))["seq"])
    d.kill9()
    d.start()
    reply = d.request(event("failed", job=9))
    assert reply["matched"] == ["rec.py"]
    settle(d, reply["seq"])
    assert fired(d.root) == [("9", "complete-job-self && failed-job-9", "9")]


def test_globaltime_fires_a_second_later_without_a_job(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"rec.py": RECORD}, "")
    # Loaded by a reload once the daemon is up, so a slow start cannot eat the lead time (a
    # time already past when its callback is first loaded never fires).
    when = int(time.time()) + 3 - 946702800  # Qube time, three seconds ahead
    (d.root / "callback" / "callbacks.conf").write_text(f"rec.py = globaltime-{when}\n")
    assert d.request({"op": "reload"}) == {"ok": True, "callbacks": 1}
    line = wait_for_file(d.root / "fired.txt")
    assert line.split("|") == ["-", f"globaltime-{when}", "-\n"]
    # The file is written while the run is still going: its end is recorded after it.
    seq = d.request({"op": "status"})["last_seq"]
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"]
    runs = d.request({"op": "history", "callback": "rec.py"})["runs"]
    assert len(runs) == 1 and runs[0]["job_id"] is None and runs[0]["outcome"] == "ok"


def test_per_job_order_runs_a_jobs_events_one_after_another(
    daemon_factory: Callable[..., Daemon],
) -> None:
    step = (
        "import os, pathlib, time\n"
        "log = pathlib.Path(os.environ['QBDIR']) / 'order.txt'\n"
        "name = os.environ['QB_EVENT_NAME']\n"
        "with open(log, 'a') as fh: fh.write('start ' + name + '\\n')\n"
        "if name == 'submit': time.sleep(0.5)\n"
        "with open(log, 'a') as fh: fh.write('end ' + name + '\\n')\n"
    )
    d = daemon_factory({"step.py": step}, "step.py = submit-job-self || complete-job-self\n")
    d.request(event("submit", job=5))
    seq = d.request(event("complete", job=5))["seq"]
    settle(d, seq)
    order = (d.root / "order.txt").read_text().split("\n")[:4]
    assert order == ["start submit", "end submit", "start complete", "end complete"]


def test_actions_reach_subscribers_and_since_replays_them(
    daemon_factory: Callable[..., Daemon],
) -> None:
    acting = "qb.unblock(qb.jobid())\nqb.workkill('%d:frame5' % qb.jobid())\n"
    d = daemon_factory({"act.py": acting}, "act.py = complete-job-self\n")
    with d.connect() as sub:
        assert sub.request({"op": "subscribe"}) == {"ok": True}
        seq = d.request(event("complete", job=77))["seq"]
        got = [sub.read(), sub.read()]
    assert [(a["action"], a["target"], a["seq"], a["job_id"]) for a in got] == [
        ("unblock", "77", seq, 77), ("kill", "77:frame5", seq, 77),
    ]  # fmt: skip
    settle(d, seq)
    runs = d.request({"op": "history", "job": 77})["runs"]
    assert runs[0]["actions"] == [{"action": "unblock", "target": "77"},
                                  {"action": "kill", "target": "77:frame5"}]  # fmt: skip
    d.stop()
    d.start()
    with d.connect() as sub:
        assert sub.request({"op": "subscribe", "since": seq - 1})["ok"] is True
        replay = [sub.read(), sub.read()]
    assert [a["target"] for a in replay] == ["77", "77:frame5"]
    assert json.dumps(replay)  # plain JSON lines
