"""The job registry in a real daemon: parent and label contexts resolve jobs the bounded
cache no longer holds, and jobs survive a clean stop and a kill -9."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from supervisord.core.registry import HOT_JOBS
from tests.daemon_harness import Daemon, event

CALLBACKS = {"label.pl": "exit 0;\n", "parent.pl": "exit 0;\n"}
CONF = "label.pl = complete-job-render\nparent.pl = failed-job-parent\n"
FAMILY = [
    event("submit", job=1, event_id="f1") | {"job": {"id": 1, "label": "ribgen", "pgrp": 1}},
    event("submit", job=2, event_id="f2")
    | {"job": {"id": 2, "label": "render", "pgrp": 1, "pid": 1}},
    event("submit", job=3, event_id="f3")
    | {"job": {"id": 3, "label": "comp", "pgrp": 1, "pid": 1}},
]


def pipeline(d: Daemon, docs: list[dict[str, object]]) -> list[dict[str, object]]:
    """Send every line from a thread while reading every reply here."""
    data = b"".join(json.dumps(doc).encode() + b"\n" for doc in docs)
    with d.connect() as c:
        sender = threading.Thread(target=c.send_raw, args=(data,))
        sender.start()
        replies = [c.read() for _ in docs]
        sender.join()
    return replies


def owners_seen(d: Daemon) -> tuple[list[object], list[object]]:
    """What a dry run matches: the label callback for each job of job 2's process group,
    the parent callback for each child of job 1."""
    label = d.request({"op": "match", "name": "complete", "type": "job", "job": {"id": 2}})
    parent = d.request({"op": "match", "name": "failed", "type": "job", "job": {"id": 1}})
    return label["matched"], parent["matched"]


def test_contexts_resolve_evicted_jobs_across_restarts(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory(CALLBACKS, CONF)
    expected = (["label.pl"] * 3, ["parent.pl"] * 2)
    assert all(r["ok"] for r in pipeline(d, FAMILY))
    assert owners_seen(d) == expected
    # Twice the cache's two generations of other jobs: the family leaves memory.
    filler = [event("submit", job=100 + i) for i in range(2 * 2 * HOT_JOBS)]
    replies = pipeline(d, filler)
    assert all(r["ok"] for r in replies)
    assert owners_seen(d) == expected
    d.stop()
    d.start()
    assert owners_seen(d) == expected
    moved = event("modified", job=3) | {"job": {"id": 3, "pgrp": 3, "pid": 2}}
    assert d.request(moved)["ok"]
    d.kill9()  # acknowledged, so journalled: the move survives
    d.start()
    assert owners_seen(d) == (["label.pl"] * 2, ["parent.pl"])
    status = d.request({"op": "status"})
    assert status["events_total"] == len(FAMILY) + len(filler) + 1
