"""Universal callback (failed-job-self): record a failed job in SQLite.

Writes one row per failure event into $QBDIR/state/failures.db, table
``failures`` (created if missing). Rows are keyed by the event id, so a
redelivered event (QB_REDELIVERED=1, after a daemon crash) never adds a
second row. Prints one line saying what it did; that line lands in the job's
.cb log.

Read the table with:
    sqlite3 $QBDIR/state/failures.db 'SELECT * FROM failures ORDER BY time DESC'
"""

import json
import os
import sqlite3
import sys
import time

# Optional: the daemon already puts `qb` in this script's namespace, as Qube does.
import qb

QBDIR = os.environ.get("QBDIR", "/usr/local/pfx/qube")
DB_PATH = os.path.join(QBDIR, "state", "failures.db")
# Several callbacks may write at once: wait a little for the lock, then fail; the
# delivery policy (policy.yaml) retries the run later instead of holding a slot.
BUSY_TIMEOUT_S = 2.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS failures (
    event_id    TEXT PRIMARY KEY,
    seq         INTEGER,
    job_id      INTEGER,
    name        TEXT,
    user        TEXT,
    status      TEXT,
    time        REAL,
    recorded    REAL,
    redelivered INTEGER
)
"""


def read_document() -> dict:
    """The run's stdin document: {"event": ..., "job": ..., "callback": ...}."""
    text = sys.stdin.read()
    return json.loads(text) if text.strip() else {}


def failure_row(doc: dict) -> dict:
    """The row to record, from qb and the stdin document."""
    event = doc.get("event") or {}
    job = doc.get("job") or event.get("job") or {}
    redelivered = os.environ.get("QB_REDELIVERED") == "1" or bool(doc.get("redelivered"))
    return {
        "event_id": str(event.get("event_id") or os.environ.get("QB_EVENT_ID", "")),
        "seq": event.get("seq", os.environ.get("QB_EVENT_SEQ")),
        "job_id": qb.jobid(),
        "name": job.get("name"),
        "user": job.get("user"),
        "status": job.get("status") or event.get("name"),
        "time": event.get("time", time.time()),
        "recorded": time.time(),
        "redelivered": int(redelivered),
    }


def record(row: dict) -> bool:
    """Insert the row unless this event is already recorded; True if inserted."""
    os.makedirs(os.path.dirname(DB_PATH), exist_ok=True)
    with sqlite3.connect(DB_PATH, timeout=BUSY_TIMEOUT_S) as db:
        db.execute(SCHEMA)
        cursor = db.execute(
            "INSERT OR IGNORE INTO failures (event_id, seq, job_id, name, user, status,"
            " time, recorded, redelivered) VALUES (:event_id, :seq, :job_id, :name, :user,"
            " :status, :time, :recorded, :redelivered)",
            row,
        )
        inserted = cursor.rowcount == 1
    db.close()
    return inserted


def main() -> None:
    row = failure_row(read_document())
    inserted = record(row)
    what = "recorded" if inserted else "already recorded (redelivery, not added again)"
    print(
        f"logFailuresToDB: {what}: job {row['job_id']} {row['name']!r} of {row['user']}"
        f" status={row['status']} event={row['event_id']} seq={row['seq']}"
        f" redelivered={row['redelivered']} -> {DB_PATH}"
    )


if __name__ == "__main__":
    main()
