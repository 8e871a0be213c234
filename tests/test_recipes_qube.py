"""Qube's own Callbacks-page recipes through a live daemon: labels and work names in any
case, per-frame mail through a real SMTP server, and job dependency strings refused."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.daemon_harness import DEADLINE, REPO, Daemon, event

# Appends "<QBJOBID>|<event label as sent>|<QB_WORK>|<QB_EVENT_NAME>" for each run.
RECORD = (
    "import json, os, pathlib, sys\n"
    "doc = json.load(sys.stdin)\n"
    "label = doc['event']['job'].get('label', '-')\n"
    "line = '|'.join([os.environ['QBJOBID'], label, os.environ.get('QB_WORK', '-'),\n"
    "                 os.environ['QB_EVENT_NAME']])\n"
    "with open(pathlib.Path(os.environ['QBDIR']) / 'fired.txt', 'a') as fh:\n"
    "    fh.write(line + '\\n')\n"
)


def settle(d: Daemon, seq: int) -> None:
    assert d.request({"op": "wait", "seq": seq, "timeout": DEADLINE})["done"] is True


def fired(d: Daemon) -> list[list[str]]:
    path = d.root / "fired.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return sorted(line.split("|") for line in lines)


def test_ribgen_label_fires_in_any_case_and_the_callback_sees_it_as_sent(
    daemon_factory: Callable[..., Daemon],
) -> None:
    # Qube's Callbacks page: the job is labelled `ribGen`, the trigger says `ribgen`.
    d = daemon_factory({"rec.py": RECORD}, "rec.py = complete-work-ribgen-1\n")
    assert d.request({**event("submit", job=8600), "job": {"id": 8600, "label": "ribGen"}})["ok"]
    render = {"id": 8601, "label": "render", "pgrp": 8600, "pid": 8600}
    assert d.request({**event("submit", job=8601), "job": render})["ok"]
    frame = {**event("Complete", "work", job=8600), "work": "1"}
    assert d.request({**frame, "op": "match"})["matched"] == ["rec.py", "rec.py"]
    reply = d.request(frame)
    assert reply["matched"] == ["rec.py", "rec.py"]  # every job of ribGen's process group
    settle(d, reply["seq"])
    assert fired(d) == [["8600", "-", "1", "Complete"], ["8601", "-", "1", "Complete"]]
    # The label as the event sends it, in another case: matched, and passed on unchanged.
    (d.root / "fired.txt").unlink()
    reply = d.request({**frame, "job": {"id": 8602, "label": "RIBGEN"}})
    assert reply["matched"] == ["rec.py"]
    settle(d, reply["seq"])
    assert fired(d) == [["8602", "RIBGEN", "1", "Complete"]]


def test_work_names_compare_in_any_case(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"rec.py": RECORD}, "rec.py = complete-work-self-Segment:1-100\n")
    assert d.request({**event("complete", "work", job=5), "work": "segment:1-10"})["matched"] == []
    reply = d.request({**event("complete", "work", job=5), "work": "SEGMENT:1-100"})
    assert reply["matched"] == ["rec.py"]
    settle(d, reply["seq"])
    assert fired(d) == [["5", "-", "SEGMENT:1-100", "complete"]]


DEPENDENCIES = (
    "ok.py = complete-job-self\n"
    "ok.py = link-complete-job-220\n"
    "ok.py = link-complete-job-220,link-done-job-221\n"
    "ok.py = 220\n"
)


def test_check_refuses_job_dependency_strings(short_tmp: Path) -> None:
    (short_tmp / "callback").mkdir()
    (short_tmp / "callback" / "ok.py").write_text("pass\n")
    (short_tmp / "callback" / "callbacks.conf").write_text(DEPENDENCIES)
    conf = short_tmp / "qb.conf"
    conf.write_text(f"supervisor_universal_callback_path = {short_tmp}/callback\n")
    done = subprocess.run(
        [sys.executable, "-m", "supervisord", "check", "--config", str(conf)],
        capture_output=True, text=True, cwd=REPO, timeout=DEADLINE,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if "callbacks.conf:" in line]
    errors = [line for line in errors if "job dependency" in line]
    where = f"{short_tmp}/callback/callbacks.conf"
    assert [line.split(": ")[0] for line in errors] == [f"{where}:2", f"{where}:3", f"{where}:4"]
    assert all("is a Qube job dependency, not a callback trigger" in line for line in errors)
    assert "a callback on that event is written complete-job-220" in errors[0]


def test_reload_refuses_a_job_dependency_and_keeps_serving(
    daemon_factory: Callable[..., Daemon],
) -> None:
    d = daemon_factory({"ok.py": "pass\n"}, "ok.py = complete-job-self\n")
    (d.root / "callback" / "callbacks.conf").write_text(DEPENDENCIES)
    reply = d.request({"op": "reload"})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_config"
    assert [e.split("callbacks.conf:")[1][:2] for e in reply["errors"]] == ["2:", "3:", "4:"]
    assert all("job dependency, not a callback trigger" in e for e in reply["errors"])
    assert d.request(event("complete", job=1))["matched"] == ["ok.py"]


class Inbox:
    """Messages delivered to a real local SMTP server (aiosmtpd)."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.mark.parametrize("template", ["shipped", "built-in"])
def test_mail_status_on_each_frame_names_the_frame_and_its_status(
    daemon_factory: Callable[..., Daemon], smtp: tuple[Inbox, int], template: str
) -> None:
    inbox, port = smtp
    keys = f"mail_host = 127.0.0.1\nmail_port = {port}\nmail_from = qube@farm\n"
    if template == "shipped":
        keys += "mail_job_status_format = job.mail\nmail_work_status_format = work.mail\n"
    d = daemon_factory(
        {"mail-status.qcb": (REPO / "callback" / "mail-status.qcb").read_text()},
        "mail-status.qcb = done-work-self-*\n", qbconf_extra=keys, start=False,
    )  # fmt: skip
    for name in ("job.mail", "work.mail"):
        shutil.copy(REPO / "etc" / name, d.root / "etc" / name)
    d.start()
    job = {"id": 8601, "name": "test job", "user": "alice", "mailaddress": "alice@example.com"}
    assert d.request({**event("running", job=8601), "job": job})["ok"]
    for name, frame in (("complete", "frame0007"), ("failed", "frame0008")):
        reply = d.request({**event(name, "work", job=8601), "work": frame, "host": "node3"})
        assert reply["matched"] == ["mail-status.qcb"]
    settle(d, reply["seq"])
    runs = d.request({"op": "history", "job": 8601})["runs"]
    assert [r["outcome"] for r in runs] == ["ok", "ok"], runs
    got = sorted((m["Subject"], m.get_payload()) for _, m in inbox.messages)
    assert [subject for subject, _ in got] == [
        "[qube] job 8601 test job: work frame0007 complete",
        "[qube] job 8601 test job: work frame0008 failed",
    ]
    for (_, body), (frame, status) in zip(
        got, [("frame0007", "complete"), ("frame0008", "failed")], strict=True
    ):
        assert f"Work item {frame} of Qube! job 8601 (test job)" in body
        assert f"has status: {status}" in body
        assert f"status      {status}" in body and "node3" in body
    assert all(rcpt == ["alice@example.com"] for rcpt, _ in inbox.messages)
