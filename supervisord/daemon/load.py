"""Reading qb.conf and every callbacks.conf from disk into a checked callback table."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from supervisord.core.callbacks_conf import Entry, parse_callbacks_conf
from supervisord.core.errors import ConfigError, ConfigErrors
from supervisord.core.model import Callback, QcbCode, Settings
from supervisord.core.qbconf import parse_qbconf
from supervisord.core.qcb import parse_qcb
from supervisord.core.triggers import terms_of
from supervisord.daemon import runas

# Compiling a few hundred files takes well under a second; a hung interpreter must
# still not stop the daemon from starting or reloading forever.
COMPILE_TIMEOUT: Final = 60.0
# Runs under the callback interpreter, which may be a Python 2 of Qube's era: keep
# this script valid in both.
_COMPILE_SCRIPT: Final = """\
import sys, json
out = []
for p in sys.argv[1:]:
    try:
        f = open(p, 'rb')
        try:
            src = f.read()
        finally:
            f.close()
        compile(src, p, 'exec')
    except SyntaxError as e:
        text = e.text
        try:
            json.dumps(text)
        except Exception:
            text = None
        out.append([p, e.lineno, str(e.msg), text])
    except Exception as e:
        out.append([p, None, '%s: %s' % (type(e).__name__, e), None])
sys.stdout.write(json.dumps(out) + '\\n')
"""


@dataclass(frozen=True, slots=True)
class Loaded:
    """The callback table, in start order, and the warnings met while building it."""

    callbacks: tuple[Callback, ...]
    warnings: tuple[str, ...]


@dataclass(slots=True)
class _Collector:
    """What one load accumulates; local to load_callbacks, never shared."""

    uid: int
    settings: Settings
    callbacks: list[Callback] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[tuple[int, ConfigError]] = field(default_factory=list)
    python: list[tuple[int, str, Entry, str]] = field(default_factory=list)
    dirs: dict[str, int] = field(default_factory=dict)  # real directory -> its path index

    def error(self, index: int, conf: str, line: int | None, reason: str) -> None:
        self.errors.append((index, ConfigError(conf, line, reason)))


def read_qbconf(path: str, env: Mapping[str, str], default_python: str) -> Settings:
    """Read and parse qb.conf; a missing or unreadable file is a ConfigErrors too."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigErrors(
            [ConfigError(path, None, f"cannot read qb.conf: {exc.strerror}")]
        ) from exc
    return parse_qbconf(text, path, env, default_python)


class LoadFailed(ConfigErrors):
    """Every problem found, plus what did load (for `check`, which shows both)."""

    def __init__(self, errors: Iterable[ConfigError], partial: Loaded) -> None:
        super().__init__(errors)
        self.partial = partial


def load_callbacks(settings: Settings, *, daemon_uid: int | None = None) -> Loaded:
    """Read every callbacks.conf of the callback path and check every callback file.

    Blocking (file reads, maybe one interpreter run): call it off the event loop.
    Raises ConfigErrors listing every problem as ``callbacks.conf:line: reason``.
    """
    found = _Collector(os.getuid() if daemon_uid is None else daemon_uid, settings)
    seen: set[str] = set()
    for index, directory in enumerate(settings.callback_path):
        real = os.path.realpath(directory)
        if real in seen:
            found.warnings.append(f"{directory}: listed twice in the callback path (skipped)")
            continue
        seen.add(real)
        found.dirs[real] = index
        _load_directory(found, index, directory, real)
    _compile_python(found)
    for callback, reason in runas.check(settings, found.callbacks, found.uid):
        conf = os.path.join(callback.dir, "callbacks.conf")
        found.error(found.dirs[callback.dir], conf, callback.line, reason)
    if found.errors:
        ordered = sorted(found.errors, key=lambda item: (item[0], item[1].line or 0))
        partial = Loaded(tuple(found.callbacks), tuple(found.warnings))
        raise LoadFailed((error for _, error in ordered), partial)
    return Loaded(tuple(found.callbacks), tuple(found.warnings))


def _load_directory(found: _Collector, index: int, directory: str, real: str) -> None:
    conf = os.path.join(real, "callbacks.conf")
    if not os.path.isdir(real):
        what = "does not exist" if not os.path.exists(real) else "is not a directory"
        found.warnings.append(f"{directory}: callback directory {what} (skipped)")
        return
    if not os.path.lexists(conf):
        found.warnings.append(f"{directory}: no callbacks.conf (skipped)")
        return
    for name, path in (("directory", real), ("callbacks.conf", conf)):
        problem = _unsafe(path, found.uid)
        if problem:
            found.error(index, conf, None, f"unsafe {name} {path}: {problem}")
    try:
        with open(conf, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        found.error(index, conf, None, f"cannot read callbacks.conf: {exc.strerror}")
        return
    entries, errors = parse_callbacks_conf(text, conf)
    found.errors.extend((index, error) for error in errors)
    for entry in entries:
        _load_entry(found, index, conf, real, entry)


def _load_entry(found: _Collector, index: int, conf: str, real: str, entry: Entry) -> None:
    flags = found.settings.language_flags
    if entry.language not in flags:
        found.error(index, conf, entry.line, _disabled(entry.language))
    path = os.path.join(real, entry.file)
    problem = _check_file(path, entry.file, found.uid)
    if problem:
        found.error(index, conf, entry.line, problem)
        return
    codes: tuple[QcbCode, ...] = ()
    if entry.language == "qube":
        try:
            codes = _read_qcb(path, entry.file)
        except ConfigErrors as bad:
            for error in bad.errors:
                found.error(index, conf, entry.line, str(error))
        mail = [code for code in codes if code.mail]
        if mail and "mail" not in flags:
            where = f"{entry.file}:{mail[0].line}: {mail[0].text}"
            found.error(index, conf, entry.line, f"{_disabled('mail')} ({where})")
    elif entry.language == "python":
        found.python.append((index, conf, entry, path))
    terms = terms_of(entry.trigger)
    found.callbacks.append(
        Callback(
            entry.file,
            real,
            entry.line,
            entry.language,
            entry.trigger_text,
            entry.trigger,
            terms,
            codes,
        )
    )


def _disabled(language: str) -> str:
    return f"callback language {language!r} is disabled by supervisor_language_flags"


def _check_file(path: str, file: str, uid: int) -> str | None:
    """Why the callback file at ``path`` cannot be used, or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"callback file {file!r} is a symlink to a missing file"
        return f"callback file {file!r} does not exist"
    except OSError as exc:
        return f"cannot read callback file {file!r}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"callback file {file!r} is not a regular file"
    target = os.path.realpath(path)
    problem = _unsafe(target, uid)
    if problem:
        shown = repr(file) if target == path else f"{file!r} (-> {target})"
        return f"unsafe callback file {shown}: {problem}"
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"cannot read callback file {file!r}: {exc.strerror}"
    return None


def _unsafe(path: str, uid: int) -> str | None:
    """Why ``path`` (followed through symlinks) is unsafe to trust, or None."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"
    if info.st_mode & stat.S_IWOTH:
        return "world-writable"
    if info.st_uid not in (0, uid):
        return f"owned by uid {info.st_uid}, not root or the daemon's uid {uid}"
    return None


def _read_qcb(path: str, file: str) -> tuple[QcbCode, ...]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return parse_qcb(handle.read(), file)


def _compile_python(found: _Collector) -> None:
    """Compile every .py callback under the callback interpreter, never running one."""
    if not found.python:
        return
    python = found.settings.callback_python
    paths = [path for _, _, _, path in found.python]
    if _is_running_interpreter(python):
        results = {path: _compile_here(path) for path in paths}
    else:
        try:
            results = _compile_elsewhere(python, paths)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            reason = f"cannot check with supervisor_callback_python {python!r}: {exc}"
            for index, conf, entry, _ in found.python:
                found.error(index, conf, entry.line, reason)
            return
    for index, conf, entry, path in found.python:
        problem = results.get(path)
        if problem:
            found.error(index, conf, entry.line, f"{entry.file}:{problem}")


def _is_running_interpreter(python: str) -> bool:
    resolved = python if os.sep in python else shutil.which(python)
    if resolved is None or not sys.executable:
        return False
    return os.path.realpath(resolved) == os.path.realpath(sys.executable)


def _compile_here(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            compile(handle.read(), path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return _syntax_problem(exc.lineno, exc.msg, exc.text)
    except (ValueError, OSError) as exc:
        return f" {exc}"
    return None


def _compile_elsewhere(python: str, paths: list[str]) -> dict[str, str | None]:
    done = subprocess.run(
        [python, "-c", _COMPILE_SCRIPT, *paths],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=COMPILE_TIMEOUT,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
    )
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ValueError(f"exit status {done.returncode}: {tail[0]}")
    results: dict[str, str | None] = {}
    for path, lineno, message, text in json.loads(done.stdout):
        results[path] = _syntax_problem(lineno, message, text)
    return results


def _syntax_problem(lineno: int | None, message: str, text: str | None) -> str:
    """``3: invalid syntax (except Exception, e:)``, to follow the file name."""
    where = f"{lineno}:" if lineno else ""
    shown = f" ({text.strip()})" if text and text.strip() else ""
    return f"{where} {message}{shown}"
