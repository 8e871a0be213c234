"""Interpreting a .qcb callback in the daemon: its codes become actions, mail-* codes send mail."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import string
import time
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final

from supervisord.core.model import MailSettings, QcbCode, Settings
from supervisord.core.runtypes import (
    Action,
    RunRequest,
    RunResult,
    event_job_id,
    event_subid,
    event_work,
    log_path,
)
from supervisord.run.output import LogWriter, OutputSink, header_line

log = logging.getLogger(__name__)

# Per socket operation; a mail server slower than this is as good as down.
SMTP_TIMEOUT: Final = 30.0
# The three templates and the qb.conf key naming each one's file (SPEC §1.1, §4).
_TEMPLATE_KEY: Final = {
    "job": "job_status_format",
    "work": "work_status_format",
    "subjob": "subjob_status_format",
}
# The template of each mail-* code: `mail-status` follows the event (a frame's event mails
# about that frame, an instance's about that instance), the others name their own.
_CODE_TEMPLATE: Final = {"mail-report-status": "work", "mail-subjob-status": "subjob"}
_DEFAULT_TEMPLATES: Final = {
    "job": (
        "Subject: [qube] job $JOB_ID ${JOB_NAME}: $JOB_STATUS\n"
        "Qube! job $JOB_ID (${JOB_NAME}) of $JOB_USER is $JOB_STATUS.\n\n"
        "Event ${EVENT_NAME}-${EVENT_TYPE} at $EVENT_TIME.\n"
    ),
    "work": (
        "Subject: [qube] job $JOB_ID ${JOB_NAME}: work ${WORK_NAME} $WORK_STATUS\n"
        "Work item ${WORK_NAME} of Qube! job $JOB_ID (${JOB_NAME}) of $JOB_USER"
        " has status: $WORK_STATUS\n\n"
        "  work item   ${WORK_NAME}\n"
        "  status      ${WORK_STATUS}\n"
        "  host        ${WORK_HOST}\n"
        "  job status  ${JOB_STATUS}\n\n"
        "Event ${EVENT_NAME}-${EVENT_TYPE} at $EVENT_TIME.\n"
    ),
    "subjob": (
        "Subject: [qube] job $JOB_ID instance $SUBJOB_ID: $SUBJOB_STATUS\n"
        "Instance $JOB_ID.$SUBJOB_ID of Qube! job $JOB_ID (${JOB_NAME}) of $JOB_USER"
        " has status: $SUBJOB_STATUS\n\n"
        "  instance    $JOB_ID.$SUBJOB_ID\n"
        "  status      ${SUBJOB_STATUS}\n"
        "  host        ${HOST}\n"
        "  job status  ${JOB_STATUS}\n\n"
        "Event ${EVENT_NAME}-${EVENT_TYPE} at $EVENT_TIME.\n"
    ),
}


def template_kind(code: str, event_type: object) -> str:
    """Which template a mail-* code uses for an event of this type: "job", "work" or
    "subjob" (SPEC §4: the event's type picks it for mail-status)."""
    if code in _CODE_TEMPLATE:
        return _CODE_TEMPLATE[code]
    kind = event_type.lower() if isinstance(event_type, str) else ""
    return kind if kind in ("work", "subjob") else "job"


def code_action(code: QcbCode, req: RunRequest) -> Action | str:
    """The action an action code asks for, or why it cannot apply to this event."""
    assert code.action is not None
    ev = req.event_doc
    if req.owner is None:
        return "no owning job (a global time trigger)"
    if code.scope == "work":
        work = event_work(ev)
        if work is None:
            return f"event {ev.get('name')}-{ev.get('type')} has no work item"
        return Action(code.action, f"{req.owner}:{work}")
    if code.scope == "subjob":
        subid = event_subid(ev)
        if subid is None:
            return f"event {ev.get('name')}-{ev.get('type')} has no subjob id"
        return Action(code.action, f"{req.owner}.{subid}")
    return Action(code.action, str(req.owner))


def _text(value: object) -> str:
    return "" if value is None else str(value)


def template_vars(req: RunRequest, logfile: str) -> dict[str, str]:
    """Qube's mail template variables for one run; every JOB_<FIELD> of the job too."""
    ev, job = req.event_doc, req.job_doc
    values = {
        f"JOB_{key.upper()}": _text(value)
        for key, value in job.items()
        if isinstance(key, str) and not isinstance(value, Mapping | list)
    }
    # Statuses are Qube's lower-case words; EVENT_NAME and EVENT_TYPE are as sent.
    kind, status = _text(ev.get("type")).lower(), _text(ev.get("name")).lower()
    when = ev.get("time")
    values.update(
        JOB_ID=_text(req.owner if req.owner is not None else event_job_id(ev)),
        JOB_NAME=_text(job.get("name")),
        JOB_USER=_text(job.get("user")),
        JOB_LABEL=_text(job.get("label")),
        JOB_STATUS=_text(job.get("status") or (status if kind == "job" else "")),
        SUBJOB_ID=_text(event_subid(ev)),
        SUBJOB_STATUS=status if kind == "subjob" else "",
        WORK_NAME=_text(event_work(ev)),
        WORK_STATUS=status if kind == "work" else "",
        WORK_HOST=_text(ev.get("host")) if kind == "work" else "",
        HOST=_text(ev.get("host")),
        EVENT_NAME=_text(ev.get("name")),
        EVENT_TYPE=_text(ev.get("type")),
        EVENT_SEQ=str(req.seq),
        EVENT_ID=req.event_id,
        EVENT_TIME=(
            datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds")
            if isinstance(when, int | float) else ""
        ),
        CALLBACK=req.callback.file,
        TRIGGER=req.callback.trigger_text,
        LOG=logfile,
    )  # fmt: skip
    return values


def render(template: str, values: Mapping[str, str]) -> tuple[str, str]:
    """(subject, body) from a template: ``$VAR``/``${VAR}``, a first ``Subject:`` line."""
    text = string.Template(template).safe_substitute(values)
    first, _, rest = text.partition("\n")
    if first.lower().startswith("subject:"):
        subject, body = first[len("subject:") :].strip(), rest.removeprefix("\n")
    else:
        subject, body = f"[qube] job {values.get('JOB_ID', '')}", text
    return subject, body


def recipient(job: Mapping[str, Any], mail: MailSettings) -> str | None:
    """The job's mailaddress, else <user>@mail_domain, else mail_administrator."""
    if job.get("mailaddress"):
        return str(job["mailaddress"])
    if job.get("user") and mail.domain:
        return f"{job['user']}@{mail.domain}"
    return mail.administrator or None


def template_path(kind: str, settings: Settings) -> str | None:
    """The file of template ``kind`` ("job", "work", "subjob"), or None for the built-in."""
    name = getattr(settings.mail, _TEMPLATE_KEY[kind])
    if not name:
        return None
    return name if os.path.isabs(name) else os.path.join(settings.qbdir, "etc", name)


def _smtp_error(exc: Exception) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        parts = [f"{rcpt}: {code} {msg.decode(errors='replace')}"
                 for rcpt, (code, msg) in exc.recipients.items()]  # fmt: skip
        return "recipient refused: " + "; ".join(parts)
    if isinstance(exc, smtplib.SMTPResponseException):
        detail = exc.smtp_error
        text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        return f"{exc.smtp_code} {text}"
    return str(exc) or type(exc).__name__


def deliver(mail: MailSettings, message: EmailMessage) -> None:
    """Send one message (blocking: run it in an executor)."""
    assert mail.host is not None
    kind = mail.connection_type.lower()
    smtp_class = smtplib.SMTP_SSL if kind == "ssl" else smtplib.SMTP
    with smtp_class(mail.host, mail.port, timeout=SMTP_TIMEOUT) as smtp:
        if kind in ("starttls", "tls"):
            smtp.starttls()
        if mail.user:
            smtp.login(mail.user, mail.password or "")
        smtp.send_message(message)


def _compose(code: str, req: RunRequest, settings: Settings, to: str) -> EmailMessage:
    """Build the message (blocking: reads the template file; run it in an executor)."""
    kind = template_kind(code, req.event_doc.get("type"))
    path = template_path(kind, settings)
    if path is None:
        template = _DEFAULT_TEMPLATES[kind]
    else:
        with open(path, encoding="utf-8", errors="replace") as fh:
            template = fh.read()
    values = template_vars(req, log_path(settings.logpath, req.owner))
    subject, body = render(template, values)
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.mail.from_ or settings.mail.administrator or "qube@localhost"
    message["To"] = to
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid("qbcallbacks")
    message.set_content(body)
    return message


async def send_mail(code: str, req: RunRequest, settings: Settings) -> tuple[bool, str]:
    """Send a mail-* code's message; (sent, what happened in words)."""
    mail = settings.mail
    if "mail" not in settings.language_flags:
        return False, "mail is disabled in supervisor_language_flags"
    if not mail.host:
        return False, "mail_host is not set in qb.conf"
    to = recipient(req.job_doc, mail)
    if to is None:
        return False, "no recipient: no job mailaddress, mail_domain or mail_administrator"
    loop = asyncio.get_running_loop()
    try:
        message = await loop.run_in_executor(None, _compose, code, req, settings, to)
    except OSError as exc:
        return False, f"cannot read mail template: {exc}"
    try:
        await asyncio.wait_for(loop.run_in_executor(None, deliver, mail, message),
                               SMTP_TIMEOUT * 4)  # fmt: skip
    except OSError as exc:
        return False, f"mail to {to} failed: {exc}"
    except (smtplib.SMTPException, TimeoutError) as exc:
        return False, f"mail to {to} failed: {_smtp_error(exc)}"
    return True, f"mailed {to}"


async def run_qcb(req: RunRequest, settings: Settings, logs: LogWriter | None = None) -> RunResult:
    """Apply every code of a .qcb callback, in order; no process is started. Its lines go
    through ``logs`` (a writer of its own for this run when None)."""
    started = time.time()
    path = log_path(settings.logpath, req.owner)
    writer = logs or LogWriter()
    try:
        return await _apply(req, settings, started, path, writer)
    finally:
        if logs is None:
            writer.close()


async def _apply(
    req: RunRequest, settings: Settings, started: float, path: str, logs: LogWriter
) -> RunResult:
    sink = OutputSink(path, lambda: header_line(req, started), settings.output_limit, logs)
    actions: list[Action] = []
    problems: list[str] = []
    for code in req.callback.qcb:
        if code.mail is not None:
            ok, note = await send_mail(code.mail, req, settings)
        else:
            applied = code_action(code, req)
            ok = isinstance(applied, Action)
            note = f"{applied.action} {applied.target}" if isinstance(applied, Action) else applied
            if isinstance(applied, Action):
                actions.append(applied)
        if not ok:
            problems.append(f"{code.text}: {note}")
            log.warning("qcb code failed run=%d callback=%s code=%s reason=%s",
                        req.run_id, req.callback.file, code.text, note)  # fmt: skip
        sink.write(f"{code.text}: {note if ok else 'failed: ' + note}\n".encode())
    sink.close()
    await sink.flushed()
    done = ", ".join(code.text for code in req.callback.qcb) or "nothing"
    outcome, description = (
        ("failed", "; ".join(problems)) if problems else ("ok", f"applied {done}")
    )
    return RunResult(started, time.time(), None, None, outcome, description, sink.truncated,
                     path, tuple(actions), None)  # fmt: skip
