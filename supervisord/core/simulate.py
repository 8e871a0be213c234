"""Scenario replay: job lifecycles written in YAML, run through the real matcher (SPEC §5).

A scenario is a YAML mapping::

    # callbacks.conf this scenario is written against:
    #   notify.py = complete-job-self && complete-job-parent
    description: a parent and its child finish     # optional, free text
    jobs:                                          # optional: the jobs events refer to
      - {id: 100, name: parent, user: alice, label: main}
      - {id: 101, name: child, label: render, pgrp: 100, pid: 100}   # `parent:` = `pid:`
    events:                                        # required: in the order they happen
      - {event: submit-job, job: 100}
      - {event: complete-work, job: 101, work: frame5}
      - {event: complete-subjob, job: 101, subid: 2, host: node7}
      - {event: complete-job, job: 101, time: 1764064000, set: {status: complete}}

- a job has an integer ``id``; ``pgrp`` defaults to the id (a job is its own process
  group unless it says otherwise), every other field (``name``, ``user``, ``label``,
  ``pid``, ``mailaddress``, ...) is sent as written in the event's ``job`` object;
- an event has ``event: NAME-TYPE`` and ``job: ID``; ``subid``, ``work``, ``host``,
  ``time`` (Unix seconds) and ``event_id`` as in the socket protocol; ``set`` changes
  fields of the job from this event on (``set: {status: failed}``). A job id that is
  not declared under ``jobs`` is sent as ``{"id": ID}``.

``load_scenario`` turns this into the event documents a client sends; ``simulate`` replays
them, with the daemon's clock (time triggers fire as the event times advance; an event
without ``time`` happens one second after the one before), and says what fires and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import yaml

from supervisord.core.errors import ConfigError, ConfigErrors, EventError
from supervisord.core.events import validate_event
from supervisord.core.matching import MatchState, Table, is_compound, match
from supervisord.core.model import CLIENT_TYPES, EVENT_NAMES, Callback, Event, Firing
from supervisord.core.timers import due_events, next_deadline

# Where simulated time starts when the first event has no `time` (2025-11-25, arbitrary).
SIM_START: Final = 1_764_064_000.0
# Clock steps replayed one by one between two events; past this a long quiet gap
# collapses into one late firing per time term, as after a daemon restart.
MAX_CLOCK_STEPS: Final = 1000
_EVENT_KEYS: Final = frozenset({"event", "job", "subid", "work", "host", "time", "event_id", "set"})
_TOP_KEYS: Final = frozenset({"description", "jobs", "events"})


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _compose(text: str, path: str) -> yaml.MappingNode:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigErrors([ConfigError(path, line, f"not valid YAML: {problem}")]) from None
    if not isinstance(root, yaml.MappingNode):
        line = _line(root) if root is not None else None
        raise ConfigErrors([ConfigError(path, line, "a scenario is a mapping with `events`")])
    return root


def _sections(root: yaml.MappingNode, path: str, errors: list[ConfigError]) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for key_node, value_node in root.value:
        key = _construct(key_node)
        if key not in _TOP_KEYS:
            errors.append(ConfigError(path, _line(key_node), f"unknown key {key!r}"))
        elif key != "description" and not isinstance(value_node, yaml.SequenceNode):
            errors.append(ConfigError(path, _line(value_node), f"`{key}` must be a list"))
        else:
            sections[key] = value_node
    if "events" not in sections and not errors:
        errors.append(ConfigError(path, _line(root), "missing `events`"))
    return sections


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _jobs(
    node: yaml.Node | None, path: str, errors: list[ConfigError]
) -> dict[int, dict[str, Any]]:
    jobs: dict[int, dict[str, Any]] = {}
    for item in node.value if isinstance(node, yaml.SequenceNode) else ():
        job = _construct(item)
        if not isinstance(job, dict) or not _is_int(job.get("id")) or job["id"] < 0:
            errors.append(ConfigError(path, _line(item), "a job needs an integer `id` >= 0"))
            continue
        if "parent" in job:
            job["pid"] = job.pop("parent")
        job.setdefault("pgrp", job["id"])
        jobs[job["id"]] = job
    return jobs


def _event_doc(spec: Any, jobs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The client document for one scenario event; raises ValueError saying what is wrong."""
    if not isinstance(spec, dict):
        raise ValueError("an event is a mapping like {event: complete-job, job: 101}")
    unknown = sorted(set(spec) - _EVENT_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_EVENT_KEYS))})")
    name, _, kind = str(spec.get("event", "")).lower().partition("-")
    if name not in EVENT_NAMES or kind not in CLIENT_TYPES:
        types = "|".join(CLIENT_TYPES)
        raise ValueError(f"`event` must be NAME-TYPE (TYPE {types}), got {spec.get('event')!r}")
    job_id = spec.get("job")
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise ValueError(f"`job` must be a job id (an integer), got {job_id!r}")
    changes = spec.get("set", {})
    if not isinstance(changes, dict):
        raise ValueError("`set` must be a mapping of job fields")
    job = jobs.setdefault(job_id, {"id": job_id})
    job.update(changes)
    doc: dict[str, Any] = {"name": name, "type": kind, "job": dict(job, id=job_id)}
    doc.update((k, spec[k]) for k in ("subid", "work", "host", "time", "event_id") if k in spec)
    return doc


def load_scenario(text: str, path: str) -> list[dict[str, Any]]:
    """The scenario's events as the documents a client sends, in order; ConfigErrors if bad."""
    root = _compose(text, path)
    errors: list[ConfigError] = []
    sections = _sections(root, path, errors)
    jobs = _jobs(sections.get("jobs"), path, errors)
    docs: list[dict[str, Any]] = []
    events = sections.get("events")
    for item in events.value if isinstance(events, yaml.SequenceNode) else ():
        try:
            doc = _event_doc(_construct(item), jobs)
            validate_event(doc, SIM_START)
        except (ValueError, EventError) as exc:
            errors.append(ConfigError(path, _line(item), str(exc)))
            continue
        docs.append(doc)
    if errors:
        raise ConfigErrors(errors)
    return docs


def describe_event(event: Event) -> str:
    """``complete-work job=101 work=frame5``: an event in one short phrase."""
    job = event.job_id
    text = event.type if job is None else f"{event.name}-{event.type} job={job}"
    for label, value in (("subid", event.subid), ("work", event.work), ("host", event.host)):
        if value is not None:
            text += f" {label}={value}"
    if "qube_time" in event.doc:
        text += f" qube_time={event.doc['qube_time']}" + (" (late)" if event.doc["late"] else "")
    return text


def describe_firing(firing: Firing) -> str:
    """``notify.py for job 101 (latched: a, b)``: who runs, for whom, and why."""
    owner = "" if firing.owner is None else f" for job {firing.owner}"
    why = "latched" if is_compound(firing.callback) else "matched"
    return f"{firing.callback.file}{owner} ({why}: {', '.join(firing.why)})"


class _Replay:
    """Numbers events as the daemon would and advances its clock between them."""

    def __init__(self, callbacks: Sequence[Callback], retention: float) -> None:
        self.table = Table(callbacks)
        self.state = MatchState(retention)
        self.seq = 0
        self.now: float | None = None
        self.lines: list[str] = []

    def feed(self, event: Event) -> None:
        self.seq += 1
        prefix = f"#{self.seq} {describe_event(event)} ->"
        firings = match(self.table, self.state, event)
        self.lines.extend(f"{prefix} {describe_firing(f)}" for f in firings)
        if not firings:
            self.lines.append(f"{prefix} (nothing)")

    def advance(self, to: float) -> None:
        """Fire the time triggers due up to ``to``, one clock step at a time."""
        if self.now is None:
            next_deadline(self.table, self.state.clock, to)  # arms the clock at the start
        for _ in range(MAX_CLOCK_STEPS):
            deadline = next_deadline(self.table, self.state.clock, to)
            if deadline is None or deadline > to:
                break
            self._tick(max(deadline, self.now or deadline))
        self._tick(to)
        self.now = to

    def _tick(self, now: float) -> None:
        self.state.expire(now)
        for event in due_events(self.table, self.state, now):
            self.feed(event)


def simulate(
    callbacks: Sequence[Callback], docs: Sequence[dict[str, Any]], retention: float = 86400
) -> list[str]:
    """Replay client event documents through ``match`` and say, line by line, what fires."""
    replay = _Replay(callbacks, retention)
    for doc in docs:
        now = (replay.now + 1.0) if replay.now is not None else SIM_START
        if isinstance(doc.get("time"), int | float) and not isinstance(doc.get("time"), bool):
            now = float(doc["time"])
        try:
            event = validate_event(doc, now)
        except EventError as exc:
            replay.lines.append(f"(rejected) {doc.get('name')}-{doc.get('type')}: {exc}")
            continue
        replay.advance(max(now, replay.now or now))
        replay.feed(event)
    return replay.lines
