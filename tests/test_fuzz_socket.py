"""Hypothesis-generated request lines against a live daemon: every line answered, no crash."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_harness import Daemon, make_tree

NAMES = ["complete", "failed", "submit", "done", "running", "bogus", "", 7, None]
TYPES = ["job", "subjob", "work", "host", "time", "jb", None, 1.5]
# `wait` is left out: without a timeout it may legitimately wait 60 s for a far seq.
OPS = ["event", "ping", "status", "callbacks", "match", "history", "frob", "subscribe", None, 3]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=20),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
jobs = st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.integers(-5, 10**6), st.text(max_size=3))},
                          optional={"pgrp": json_scalars, "label": json_scalars}),
    json_values,
)  # fmt: skip
requests = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(OPS), "name": st.sampled_from(NAMES), "type": st.sampled_from(TYPES),
        "job": jobs, "subid": json_scalars, "work": json_scalars, "host": json_scalars,
        "event_id": json_scalars, "time": json_scalars, "seq": json_scalars,
        "timeout": st.sampled_from([0, 0.01, -1, "x", None]), "limit": json_scalars,
    },
)  # fmt: skip
lines = st.one_of(
    requests.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64).map(lambda b: b.replace(b"\n", b" ")),
)


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[Daemon]:
    d = Daemon(make_tree({"a.py": "pass\n"}, "a.py = complete-job-self || failed-job-3\n"))
    d.start()
    yield d
    d.close()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(lines, min_size=20, max_size=40))  # >= 5,000 lines in all
def test_every_line_gets_one_reply_and_the_daemon_lives(
    fuzz_daemon: Daemon, batch: list[bytes]
) -> None:
    with fuzz_daemon.connect() as c:
        c.send_raw(b"".join(line + b"\n" for line in batch))
        replies = [c.read() for _ in batch]
        assert all(isinstance(r.get("ok"), bool) for r in replies)
        assert all(r["ok"] or r["error"]["code"] != "internal" for r in replies), replies
        assert c.request({"op": "ping"})["ok"] is True
    assert fuzz_daemon.proc is not None and fuzz_daemon.proc.poll() is None
