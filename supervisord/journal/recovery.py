"""Redelivery after a restart: stored runs that never finished become run requests again."""

from __future__ import annotations

import logging
from typing import Any, Final

from supervisord.core.errors import ConfigErrors, QbError
from supervisord.core.matching import Table
from supervisord.core.model import Callback
from supervisord.core.runtypes import RunRequest
from supervisord.journal import store
from supervisord.journal.backend import Db

log = logging.getLogger(__name__)

# A run that was started this many times without finishing is given up: each start ended
# in a crash of the daemon, and firing it again could be what crashes it.
MAX_ATTEMPTS: Final = 5


def callback_record(cb: Callback) -> dict[str, Any]:
    """What a run row keeps of its callback, enough to run it again after a restart."""
    return {
        "file": cb.file, "dir": cb.dir, "line": cb.line, "language": cb.language,
        "trigger": cb.trigger_text, "key": cb.key,
    }  # fmt: skip


def resolve_callback(record: dict[str, Any], table: Table) -> Callback:
    """The table's callback for this record if unchanged, else one rebuilt from the record."""
    for cb in table.callbacks:
        if cb.key == record["key"] and cb.file == record["file"]:
            return cb
    from supervisord.core.qcb import parse_qcb
    from supervisord.core.triggers import parse_trigger, terms_of

    trigger = parse_trigger(record["trigger"])
    qcb: tuple[Any, ...] = ()
    if record["language"] == "qube":
        path = f"{record['dir']}/{record['file']}"
        with open(path, encoding="utf-8") as fh:
            qcb = tuple(parse_qcb(fh.read(), path))
    return Callback(
        record["file"], record["dir"], int(record["line"]), record["language"],
        record["trigger"], trigger, terms_of(trigger), qcb,
    )  # fmt: skip


def callback_or_reason(record: dict[str, Any], table: Table) -> Callback | str:
    """The callback a stored run names (``resolve_callback``), or why it no longer loads."""
    try:
        return resolve_callback(record, table)
    except (OSError, QbError, ConfigErrors) as exc:
        return f"callback {record['file']} no longer loads: {exc}"


def request_of(row: store.RunRow, cb: Callback, *, redelivered: bool = False) -> RunRequest:
    """The run request of a stored run, as it was made (attempt, chain, replay)."""
    return RunRequest(
        row.run_id, row.seq, row.event_id, cb, row.owner, row.event_doc, row.job,
        redelivered=redelivered, attempt=row.attempt, first_run_id=row.first_run_id,
        replayed=row.replayed,
    )  # fmt: skip


def recover_runs(db: Db, table: Table, clean_start: bool) -> list[RunRequest]:
    """Unfinished runs in their original order; runs past MAX_ATTEMPTS are closed as errors."""
    requests: list[RunRequest] = []
    given_up: list[tuple[Any, ...]] = []
    for row in store.unfinished_runs(db):
        if row.attempts >= MAX_ATTEMPTS:
            reason = f"gave up after {row.attempts} attempts, each ended by a daemon crash"
            log.error("run given up run_id=%d seq=%d reason=%r", row.run_id, row.seq, reason)
            given_up.append(store.error_row(reason, row.run_id))
            continue
        cb = callback_or_reason(row.cb, table)
        if isinstance(cb, str):
            given_up.append(store.error_row(f"cannot redeliver: {cb}", row.run_id))
            continue
        # After a crash any unfinished run may have started: say it is a redelivery.
        redelivered = row.attempts > 0 or not clean_start
        requests.append(request_of(row, cb, redelivered=redelivered))
    if given_up:
        store.mark_finished(db, given_up)
    if requests:
        log.info("redelivering runs count=%d clean_start=%s", len(requests), clean_start)
    return requests
