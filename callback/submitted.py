"""Universal callback (submit-job-self): log every submitted job.

Appends one line per submitted job to $QBDIR/state/submissions.log:

    2025-11-25T10:00:00+00:00 job=1234 name="shot010 lighting" user=alice label=render event=e-17

A redelivered event (QB_REDELIVERED=1) whose event id is already in the log is
not logged twice.
"""

import json
import os
import sys
import time
from datetime import UTC, datetime

# Optional: the daemon already puts `qb` in this script's namespace, as Qube does.
import qb

QBDIR = os.environ.get("QBDIR", "/usr/local/pfx/qube")
LOG_PATH = os.path.join(QBDIR, "state", "submissions.log")


def read_document() -> dict:
    """The run's stdin document: {"event": ..., "job": ..., "callback": ...}."""
    text = sys.stdin.read()
    return json.loads(text) if text.strip() else {}


def field(value: object) -> str:
    """One value of the line: bare when it is a plain word, else JSON-quoted."""
    text = "" if value is None else str(value)
    plain = text and not any(c.isspace() or c in "\"'=\\" for c in text)
    return text if plain else json.dumps(text)


def submission_line(doc: dict) -> tuple[str, str]:
    """(event id, the log line) for this submission."""
    event = doc.get("event") or {}
    job = doc.get("job") or event.get("job") or {}
    event_id = str(event.get("event_id") or os.environ.get("QB_EVENT_ID", ""))
    when = event.get("time")
    seconds = when if isinstance(when, int | float) else time.time()
    stamp = datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")
    parts = [
        stamp,
        f"job={qb.jobid()}",
        f"name={field(job.get('name'))}",
        f"user={field(job.get('user'))}",
        f"label={field(job.get('label'))}",
        f"event={field(event_id)}",
    ]
    return event_id, " ".join(parts) + "\n"


def is_logged(event_id: str) -> bool:
    """Whether a line for this event id is already in the log."""
    if not event_id or not os.path.exists(LOG_PATH):
        return False
    marker = f" event={field(event_id)}\n"
    with open(LOG_PATH, encoding="utf-8") as log:
        return any(line.endswith(marker) for line in log)


def main() -> None:
    event_id, line = submission_line(read_document())
    redelivered = os.environ.get("QB_REDELIVERED") == "1"
    if redelivered and is_logged(event_id):
        print(f"submitted: event {event_id} already in {LOG_PATH} (redelivery), not added again")
        return
    os.makedirs(os.path.dirname(LOG_PATH), exist_ok=True)
    # One write of one short line to an O_APPEND file: concurrent runs never interleave.
    with open(LOG_PATH, "a", encoding="utf-8") as log:
        log.write(line)
    print(f"submitted: {line.rstrip()} -> {LOG_PATH}")


if __name__ == "__main__":
    main()
