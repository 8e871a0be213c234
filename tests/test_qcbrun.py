""".qcb runs: every code becomes its action; mail-* codes through a real local SMTP server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from supervisord.core.model import MailSettings, QcbCode, Settings
from supervisord.core.qcb import CODES
from supervisord.core.runtypes import Action, RunRequest, log_path
from supervisord.run.qcb import recipient, render, run_qcb, template_kind
from supervisord.run.runner import Runner
from tests.test_runner import make_callback, make_request, make_settings

ACTION_CODES = sorted(code for code, (action, _, _) in CODES.items() if action is not None)


def qcb_request(codes: list[str], owner: int | None = 1234, **event: Any) -> RunRequest:
    parsed = tuple(QcbCode(n, text, *CODES[text]) for n, text in enumerate(codes, start=1))
    cb = make_callback("status.qcb", qcb=parsed)
    req = make_request(cb, owner=owner, **event)
    job = dict(req.job_doc, mailaddress="alice@example.com", label="render")
    return dataclasses.replace(req, job_doc=job)


def work_event() -> dict[str, Any]:
    return {"type": "work", "subid": 2, "work": "frame5", "host": "node7"}


@pytest.mark.parametrize("code", ACTION_CODES)
async def test_every_action_code(tmp_path: Path, code: str) -> None:
    result = await run_qcb(qcb_request([code], **work_event()), make_settings(tmp_path))
    verb, scope, _ = CODES[code]
    target = {"job": "1234", "work": "1234:frame5", "subjob": "1234.2"}[scope]
    assert (result.outcome, result.actions) == ("ok", (Action(str(verb), target),))
    assert (result.pid, result.exit_code, result.signal) == (None, None, None)


async def test_codes_apply_in_order_and_are_logged(tmp_path: Path) -> None:
    req = qcb_request(["unblock-self", "kill-work-self", "resume-subjob-self"], **work_event())
    result = await run_qcb(req, make_settings(tmp_path))
    assert result.actions == (
        Action("unblock", "1234"), Action("kill", "1234:frame5"), Action("resume", "1234.2"),
    )  # fmt: skip
    assert result.description == "applied unblock-self, kill-work-self, resume-subjob-self"
    assert result.log is not None
    lines = Path(result.log).read_text().splitlines()
    assert lines[0].startswith("=== ") and "callback=status.qcb" in lines[0]
    assert lines[1:] == [
        "unblock-self: unblock 1234", "kill-work-self: kill 1234:frame5",
        "resume-subjob-self: resume 1234.2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "owner", "reason"),
    [
        (["unblock-work-self"], 1234, "unblock-work-self: event complete-job has no work item"),
        (["retry-subjob-self"], 1234, "retry-subjob-self: event complete-job has no subjob id"),
        (["unblock-self"], None, "unblock-self: no owning job"),
    ],
    ids=["work-code-on-job-event", "subjob-code-on-job-event", "global-trigger"],
)
async def test_codes_that_cannot_apply(
    tmp_path: Path, codes: list[str], owner: int | None, reason: str
) -> None:
    result = await run_qcb(
        qcb_request(["block-self", *codes], owner=owner), make_settings(tmp_path)
    )
    assert result.outcome == "failed" and reason in result.description
    assert result.actions == ((Action("block", "1234"),) if owner else ())


async def test_runner_dispatches_qube(tmp_path: Path) -> None:
    runner = Runner(make_settings(tmp_path))
    result = await runner.run(qcb_request(["unblock-self"]))
    await runner.aclose()
    assert result.actions == (Action("unblock", "1234"),) and result.pid is None


@pytest.mark.parametrize(
    ("template", "subject", "body"),
    [
        ("Subject: job $JOB_ID ${JOB_NAME}\nbody $JOB_USER\n", "job 7 shot", "body alice\n"),
        ("Subject: s\n\nafter blank\n", "s", "after blank\n"),
        ("no subject $JOB_ID\n", "[qube] job 7", "no subject 7\n"),
        ("$UNKNOWN stays, $$ is a dollar\n", "[qube] job 7", "$UNKNOWN stays, $ is a dollar\n"),
    ],
    ids=["subject-and-vars", "blank-line-after-subject", "no-subject", "unknown-var"],
)
def test_render(template: str, subject: str, body: str) -> None:
    values = {"JOB_ID": "7", "JOB_NAME": "shot", "JOB_USER": "alice"}
    assert render(template, values) == (subject, body)


@pytest.mark.parametrize(
    ("job", "mail", "to"),
    [
        ({"mailaddress": "a@x.org", "user": "alice"}, MailSettings(domain="y.org"), "a@x.org"),
        ({"user": "alice"}, MailSettings(domain="y.org", administrator="r@z"), "alice@y.org"),
        ({"user": "alice"}, MailSettings(administrator="root@z.org"), "root@z.org"),
        ({}, MailSettings(), None),
    ],
    ids=["mailaddress", "user-at-domain", "administrator", "nobody"],
)
def test_recipient(job: dict[str, Any], mail: MailSettings, to: str | None) -> None:
    assert recipient(job, mail) == to


class Mailbox:
    """An aiosmtpd handler that keeps what it receives, or refuses every recipient."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.received: list[tuple[list[str], Message]] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted"


async def smtp_server(box: Mailbox) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(box, hostname="localhost"), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def mailbox() -> AsyncIterator[tuple[Mailbox, int]]:
    box = Mailbox()
    server, port = await smtp_server(box)
    yield box, port
    server.close()
    await server.wait_closed()


def mail_settings(tmp: Path, port: int, **mail: Any) -> Settings:
    return make_settings(tmp, mail=MailSettings(host="127.0.0.1", port=port, **mail))


async def test_mail_status_with_template(tmp_path: Path, mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "job.mail").write_text(
        "Subject: [qube] $JOB_ID ${JOB_NAME} $JOB_STATUS\n"
        "user=$JOB_USER label=$JOB_LABEL event=${EVENT_NAME}-${EVENT_TYPE} seq=$EVENT_SEQ\n"
    )
    settings = mail_settings(tmp_path, port, job_status_format="job.mail", from_="qube@farm")
    result = await run_qcb(qcb_request(["unblock-self", "mail-status"]), settings)
    assert result.outcome == "ok", result.description
    assert result.actions == (Action("unblock", "1234"),)
    [(rcpts, msg)] = box.received
    assert rcpts == ["alice@example.com"]
    assert (msg["Subject"], msg["From"], msg["To"]) == (
        "[qube] 1234 shot010 complete", "qube@farm", "alice@example.com",
    )  # fmt: skip
    assert msg.get_payload().strip() == "user=alice label=render event=complete-job seq=17"
    assert result.log is not None
    assert "mail-status: mailed alice@example.com" in Path(result.log).read_text()


@pytest.mark.parametrize(
    ("code", "event", "subject", "words"),
    [
        ("mail-status", {}, "[qube] job 1234 shot010: complete",
         "Qube! job 1234 (shot010) of alice is complete."),
        ("mail-status", work_event(), "[qube] job 1234 shot010: work frame5 complete",
         "Work item frame5 of Qube! job 1234 (shot010) of alice has status: complete"),
        ("mail-status", {"type": "subjob", "subid": 3, "name": "failed"},
         "[qube] job 1234 instance 3: failed", "Instance 1234.3 of Qube! job 1234"),
        ("mail-subjob-status", {"type": "subjob", "subid": 3}, "[qube] job 1234 instance 3: "
         "complete", "Instance 1234.3 of Qube! job"),
        ("mail-report-status", work_event(), "[qube] job 1234 shot010: work frame5 complete",
         "  host        node7"),
    ],
    ids=["job", "work-event-picks-work", "subjob-event-picks-subjob", "subjob", "report"],
)  # fmt: skip
async def test_builtin_templates(
    tmp_path: Path, mailbox: tuple[Mailbox, int], code: str, event: dict[str, Any],
    subject: str, words: str,
) -> None:  # fmt: skip
    box, port = mailbox
    result = await run_qcb(qcb_request([code], **event), mail_settings(tmp_path, port))
    assert result.outcome == "ok", result.description
    [(_, msg)] = box.received
    assert msg["Subject"] == subject
    assert words in msg.get_payload()


@pytest.mark.parametrize(
    ("code", "event_type", "kind"),
    [
        ("mail-status", "job", "job"),
        ("mail-status", "work", "work"),
        ("mail-status", "Work", "work"),
        ("mail-status", "subjob", "subjob"),
        ("mail-status", "host", "job"),
        ("mail-status", None, "job"),
        ("mail-report-status", "job", "work"),
        ("mail-subjob-status", "work", "subjob"),
    ],
    ids=lambda v: str(v),
)
def test_template_kind(code: str, event_type: str | None, kind: str) -> None:
    assert template_kind(code, event_type) == kind


async def test_mail_status_on_a_frame_uses_the_work_template_file(
    tmp_path: Path, mailbox: tuple[Mailbox, int]
) -> None:
    box, port = mailbox
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "job.mail").write_text("Subject: job template\n$JOB_STATUS\n")
    (tmp_path / "etc" / "work.mail").write_text(
        "Subject: $JOB_ID:$WORK_NAME $WORK_STATUS\nhost=$WORK_HOST event=$EVENT_NAME\n"
    )
    settings = mail_settings(tmp_path, port, job_status_format="job.mail",
                             work_status_format="work.mail")  # fmt: skip
    req = qcb_request(["mail-status"], **{**work_event(), "name": "Failed", "work": "Frame5"})
    result = await run_qcb(req, settings)
    assert result.outcome == "ok", result.description
    [(_, msg)] = box.received
    assert msg["Subject"] == "1234:Frame5 failed"
    assert msg.get_payload().strip() == "host=node7 event=Failed"


async def test_refusing_server_fails_the_run(tmp_path: Path) -> None:
    server, port = await smtp_server(Mailbox(refuse=True))
    try:
        result = await run_qcb(qcb_request(["mail-status"]), mail_settings(tmp_path, port))
    finally:
        server.close()
        await server.wait_closed()
    assert result.outcome == "failed"
    assert "mail-status: mail to alice@example.com failed" in result.description
    assert "550" in result.description and "no such mailbox" in result.description


@pytest.mark.parametrize(
    ("settings_changes", "reason"),
    [
        ({}, "mail_host is not set in qb.conf"),
        ({"language_flags": frozenset({"qube"})}, "mail is disabled"),
        ({"mail": MailSettings(host="127.0.0.1", port=1, job_status_format="/nonexistent.mail")},
         "No such file"),
    ],
    ids=["no-mail-host", "mail-disabled", "missing-template"],
)  # fmt: skip
async def test_mail_not_sent(tmp_path: Path, settings_changes: dict[str, Any], reason: str) -> None:
    settings = dataclasses.replace(make_settings(tmp_path), **settings_changes)
    result = await run_qcb(qcb_request(["mail-status", "unblock-self"]), settings)
    assert result.outcome == "failed" and reason in result.description
    assert result.actions == (Action("unblock", "1234"),)


async def test_a_log_file_that_blocks_does_not_block_the_loop(tmp_path: Path) -> None:
    # The job's .cb log is a FIFO nobody reads: opening it for writing blocks until a
    # reader comes. The run waits for its log; the loop keeps serving meanwhile.
    settings = make_settings(tmp_path)
    path = Path(log_path(settings.logpath, 1234))
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    run = asyncio.ensure_future(run_qcb(qcb_request(["unblock-self"]), settings))
    for _ in range(100):  # a hundred loop turns: the loop is free while the log waits
        await asyncio.sleep(0)
    assert not run.done()
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # now the writer's open succeeds
    try:
        result = await asyncio.wait_for(run, 30)
        written = b""
        while not written.endswith(b"\n"):
            written += await asyncio.to_thread(os.read, reader, 65536)
    finally:
        os.close(reader)
    assert result.outcome == "ok"
    header, line = written.decode().splitlines()
    assert header.startswith("=== ") and "callback=status.qcb" in header
    assert line == "unblock-self: unblock 1234"


async def test_an_unwritable_log_is_reported_and_the_run_still_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    Path(settings.logpath).mkdir(parents=True, exist_ok=True)
    Path(settings.logpath, "job").write_text("a file where the directory should be")
    result = await run_qcb(qcb_request(["unblock-self"]), settings)
    assert result.outcome == "ok" and result.actions == (Action("unblock", "1234"),)
    assert any("cannot write callback log" in r.getMessage() for r in caplog.records)
