"""What the fork server prepares before it forks: a child's environment, warm imports."""

from __future__ import annotations

import ctypes
import dis
import gc
import importlib
import os
import sys
import types
from typing import Final

_c_environ = ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ")
_FS_ENCODING: Final = sys.getfilesystemencoding()  # what os.fsencode uses, with surrogateescape
# Standard-library modules a callback may import that prewarm() still leaves to the child:
# they act on import (a browser, the terminal, a GUI) or are tools, not libraries.
_NEVER: Final = frozenset(
    {"antigravity", "this", "__main__", "idlelib", "tkinter", "turtle", "turtledemo",
     "readline", "curses", "test", "ensurepip", "venv", "pydoc", "lib2to3"}
)  # fmt: skip


class Environment:
    """The environment the next child starts with, set in the server before it forks.

    In the child this cost ~70 page faults a run. Not through os.environ's setters either:
    glibc's setenv() never frees a value it replaces (someone may still point at it) and
    every run brings new ones (QBJOBID, QB_EVENT_SEQ, ...), so the server would grow a few
    hundred bytes a run, for ever, and fork ever slower. Instead the C ``environ`` points
    at an array owned here, and os.environ's mapping is updated in place, only the keys
    that change; both are what a child inherits. A plain dict mirrors the mapping, so
    that comparing costs no decoding."""

    def __init__(self) -> None:
        self._current = dict(os.environ)
        self._data: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
        self._array: ctypes.Array[ctypes.c_char_p] | None = None
        self._entries: list[bytes] = []  # what the array points into: kept alive with it

    def set(self, env: dict[str, str]) -> None:
        """ValueError (nothing changed) for what execve could not pass either."""
        current = self._current
        if env == current:
            return
        for key, value in env.items():
            if not isinstance(value, str) or not key or "=" in key or "\0" in key + value:
                raise ValueError(f"cannot pass {key!r} in an environment")
        entries = [f"{key}={value}".encode(_FS_ENCODING, "surrogateescape")
                   for key, value in env.items()]  # fmt: skip
        data = self._data
        for key in [key for key in current if key not in env]:
            del data[key.encode(_FS_ENCODING, "surrogateescape")]
            del current[key]
        for key, value in env.items():
            if current.get(key) != value:
                encoded = value.encode(_FS_ENCODING, "surrogateescape")
                data[key.encode(_FS_ENCODING, "surrogateescape")] = encoded
                current[key] = value
        array = (ctypes.c_char_p * (len(entries) + 1))(*entries)  # NULL-terminated
        _c_environ.value = ctypes.addressof(array)
        self._array, self._entries = array, entries


def prewarm(code: types.CodeType, unimportable: set[str], directory: str) -> None:
    """Import here the standard-library modules a callback imports: its children find
    them in sys.modules (paid once, not per run), and a server whose callbacks import
    little stays small, which forks and exits faster. Only the standard library: the
    server never runs the callbacks' own code; ``unimportable``: names not to try again.
    A name the callback's ``directory`` holds itself (``email.py`` beside it) is left
    alone: in the run, as in a fresh interpreter, that file comes first."""
    wanted = [
        name
        for name in _imports(code)
        if name.partition(".")[0] in sys.stdlib_module_names
        and name.partition(".")[0] not in _NEVER
        and name not in sys.modules
        and name not in unimportable
        and not _shadowed(name.partition(".")[0], directory)
    ]
    for name in wanted:
        try:
            importlib.import_module(name)
        except Exception:  # the child's own import will say why
            unimportable.add(name)
    if wanted:
        gc.freeze()  # as at start-up: kept out of the children's collections


def shadowed_modules(directory: str) -> tuple[str, ...]:
    """Modules loaded in this server that ``directory`` holds itself (``json.py`` beside
    a callback): a run drops them from sys.modules so that, as in a fresh interpreter,
    its ``import json`` finds the file beside it."""
    try:
        names = os.listdir(directory)
    except OSError:
        return ()
    tops = {n[:-3] for n in names if n.endswith(".py")} | {n for n in names if "." not in n}
    return tuple(
        sorted(
            name
            for name in sys.modules
            if name.partition(".")[0] in tops
            and name not in _KEEP
            and _shadowed(name.partition(".")[0], directory)
        )
    )


# Never dropped: the interpreter's own, and the qb module every callback is given.
_KEEP: Final = frozenset({"__main__", "builtins", "sys", "qb"})


def _shadowed(top: str, directory: str) -> bool:
    return os.path.exists(os.path.join(directory, top + ".py")) or os.path.isdir(
        os.path.join(directory, top)
    )


def _imports(code: types.CodeType) -> list[str]:
    """The modules ``code`` (and the functions in it) imports absolutely, by name."""
    names = []
    todo = [code]
    while todo:
        co = todo.pop()
        todo += [const for const in co.co_consts if isinstance(const, types.CodeType)]
        before: list[dis.Instruction] = []  # IMPORT_NAME follows LOAD_CONST level, fromlist
        for ins in dis.get_instructions(co):
            if ins.opname == "IMPORT_NAME" and len(before) == 2:
                level = before[0]
                if level.opname == "LOAD_CONST" and level.argval == 0:
                    names.append(ins.argval)
            before = [*before[-1:], ins]
    return names
