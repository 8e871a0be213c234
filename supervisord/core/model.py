"""The value types shared by the pure core and the I/O shell (frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

# Qube's event names (SPEC §2); `done` is an alias for complete|failed|killed.
EVENT_NAMES: Final = frozenset(
    {
        "submit",
        "assigned",
        "running",
        "complete",
        "failed",
        "killed",
        "done",
        "blocked",
        "waiting",
        "removed",
        "modified",
        "timeout",
        "dummy",
    }
)
DONE_NAMES: Final = frozenset({"complete", "failed", "killed"})
EVENT_TYPES: Final = frozenset(
    {"job", "subjob", "work", "host", "time", "repeat", "global", "globaltime", "globalrepeat"}
)
# The types a client may send; the time types come from the daemon's own clock.
CLIENT_TYPES: Final = ("job", "subjob", "work", "host")
LANGUAGE_BY_EXTENSION: Final = {".py": "python", ".pl": "perl", ".qcb": "qube"}
# Qube's epoch: Qube time = Unix time - QUBE_EPOCH.
QUBE_EPOCH: Final = 946702800


@dataclass(frozen=True, slots=True)
class Term:
    """One event term of a trigger, e.g. ``complete-work-self-Segment:1-100``.

    ``name`` is None only for ``globaltime``/``globalrepeat`` terms, ``context`` is
    ``"self"``, ``"parent"``, a job id in decimal, a label, or None for the global
    forms; ``extra`` is the subjob id, work name, host, Qube time, ``time-interval``,
    ``"*"`` or None.
    """

    name: str | None
    type: str
    context: str | None
    extra: str | None

    def __str__(self) -> str:
        if self.name is None:
            return f"{self.type}-{self.extra}"
        text = f"{self.name}-{self.type}-{self.context}"
        return text if self.extra is None else f"{text}-{self.extra}"


@dataclass(frozen=True, slots=True)
class And:
    """All operands must hold (binds tighter than Or)."""

    operands: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """Any operand may hold."""

    operands: tuple[Expr, ...]


Expr: TypeAlias = "Term | And | Or"


@dataclass(frozen=True, slots=True)
class QcbCode:
    """One line of a ``.qcb`` file: an action on a job, work item or subjob, or a mail."""

    line: int
    text: str  # the code as written, e.g. "unblock-work-self"
    action: str | None  # verb for action codes ("unblock", "kill", ...), None for mail
    scope: str  # "job", "work" or "subjob": what the action targets
    mail: str | None  # "mail-status", "mail-report-status", "mail-subjob-status" or None


@dataclass(frozen=True, slots=True)
class Callback:
    """One line of a callbacks.conf: a file and the trigger that starts it."""

    file: str  # as written in callbacks.conf
    dir: str  # absolute directory holding callbacks.conf and the file
    line: int  # 1-based line in callbacks.conf
    language: str  # "python", "perl" or "qube"
    trigger_text: str  # as written
    trigger: Expr
    terms: tuple[Term, ...]  # the trigger's terms, left to right; latch indices refer here
    qcb: tuple[QcbCode, ...] = ()  # parsed codes of a .qcb file, empty otherwise

    @property
    def path(self) -> str:
        return f"{self.dir}/{self.file}"

    @property
    def key(self) -> str:
        """Stable identity of this callback line, used for latches and run records."""
        return f"{self.dir}/callbacks.conf:{self.line}"


@dataclass(frozen=True, slots=True)
class Event:
    """A validated lifecycle event. ``doc`` is the whole document as received (minus
    ``op``), with ``time`` filled in; it is what callbacks see as ``event``."""

    name: str
    type: str
    job_id: int | None  # None only for global clock events
    subid: int | None
    work: str | None
    host: str | None
    time: float
    event_id: str | None
    doc: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def job(self) -> Mapping[str, Any]:
        job = self.doc.get("job")
        return job if isinstance(job, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Firing:
    """One callback instance an event starts: the callback, its owning job, and why."""

    callback: Callback
    owner: int | None  # the owning job id (QBJOBID); None for global time triggers
    why: tuple[str, ...] = ()  # the terms that were latched when it fired


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Qube's mail_* keys, for the mail-* .qcb codes."""

    host: str | None = None
    port: int = 25
    from_: str | None = None
    domain: str | None = None
    administrator: str | None = None
    connection_type: str = "plain"  # plain | ssl | starttls (Qube: "", "ssl", "tls")
    user: str | None = None
    password: str | None = None
    job_status_format: str | None = None
    subjob_status_format: str | None = None
    work_status_format: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """What this daemon reads from qb.conf (SPEC §1.1), defaults applied, paths expanded."""

    path: str  # the qb.conf file these came from
    qbdir: str
    callback_path: tuple[str, ...]
    language_flags: frozenset[str]  # enabled: subset of qube perl python post mail ...
    logpath: str
    event_socket: str
    event_socket_mode: int
    event_socket_group: str | None
    event_allow_users: tuple[str, ...]  # extra allowed users (names or uids)
    state_dir: str
    callback_timeout: float
    kill_grace: float
    output_limit: int
    concurrency: int
    job_retention: float
    callback_user: str | None
    callback_python: str
    callback_perl: str
    per_job_order: bool  # supervisor_callback_per_job_order [true]
    history_retention: float  # supervisor_callback_history_retention seconds [30 days]
    python_mode: str  # supervisor_callback_python_mode: "forkserver" | "fresh"
    log_level: str  # supervisor_callback_log_level [info]
    mail: MailSettings = field(default_factory=MailSettings)
    # supervisor_callback_journal_sync [full]: SQLite synchronous mode of the journal. Only
    # `full` makes the acknowledgement promise; `off` exists to measure what fsync costs.
    journal_sync: str = "full"
    # Per-run resource limits applied in the child (None = inherit the daemon's):
    # supervisor_callback_limit_cpu (CPU seconds), _nofile (open files), _as (address space
    # bytes), _nproc (processes of the run-as user).
    limit_cpu: int | None = None
    limit_nofile: int | None = None
    limit_as: int | None = None
    limit_nproc: int | None = None
    # supervisor_callback_queue_limit [20000]: queued runs plus uncommitted events beyond
    # which intake stops reading events (replies are delayed, nothing is dropped) until the
    # backlog is down to half.
    queue_limit: int = 20_000
    # supervisor_event_max_connections [4096]: open client connections beyond which a new
    # one gets one `unavailable` line and is closed (capped by what RLIMIT_NOFILE leaves).
    event_max_connections: int = 4096
    # supervisor_callback_background_timeout [3600]: seconds that processes a callback left
    # running may outlive its exit before they are stopped (SPEC §4).
    background_timeout: float = 3600.0
    # SPEC §8, a fleet on PostgreSQL. supervisor_callback_journal [sqlite]: `sqlite` or a
    # PostgreSQL connection string; supervisor_callback_member [host:socket path] names this
    # daemon among the members of one database (empty: the default); _role [all]: all,
    # executor or intake; _lease [10]: seconds a dead member's claimed runs stay its own.
    journal: str = "sqlite"
    member: str = ""
    role: str = "all"
    lease: float = 10.0
