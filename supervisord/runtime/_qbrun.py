"""Bootstrap of a Python callback: ``python _qbrun.py FILE`` runs FILE as __main__ with qb."""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import os
import signal
import sys
import types
from typing import Any, NoReturn

# What a failed flush of stdout at exit makes the interpreter exit with (Py_FinalizeEx).
_FLUSH_FAILED = 120


def compile_file(path: str) -> types.CodeType:
    """FILE's code as ``python FILE`` would compile it: none of this module's __future__s."""
    with io.open_code(path) as f:
        return compile(f.read(), path, "exec", dont_inherit=True)


def new_main(path: str) -> types.ModuleType:
    """A fresh ``__main__`` module for FILE, with ``qb`` given: what runpy.run_path(path,
    run_name="__main__") gives a plain file."""
    # From PYTHONPATH, not a package: mypy cannot see it. Already imported in a fork server.
    qb = sys.modules.get("qb") or importlib.import_module("qb")
    main = types.ModuleType("__main__")
    main.__dict__.update(
        qb=qb,
        __file__=path,
        __cached__=None,
        __doc__=None,
        __loader__=None,
        __package__="",
        __spec__=None,
    )
    return main


def run_script(
    path: str,
    code: types.CodeType | None = None,
    main: types.ModuleType | None = None,
    directory: str | None = None,
    shadowed: tuple[str, ...] = (),
) -> NoReturn:
    """Run FILE (or its already compiled ``code``) as ``__main__`` and exit as ``python
    FILE`` would: same exit status, traceback, thread joins, atexit handlers and flushes.
    ``main``: a new_main(FILE) no one has used yet; ``directory``: FILE's, absolute;
    ``shadowed``: modules already loaded that FILE's directory holds itself.

    Shared by the fresh interpreter (below) and the fork server's children, so both modes
    behave the same. It ends with os._exit: tearing down every module of a forked
    interpreter touches (and copies) its whole heap, which cost ~8 ms a run; collecting
    the callback's own namespace still runs its objects' finalizers (unclosed files).
    """
    # The callback's own directory first, as if it had been started as `python FILE`;
    # the runtime directory (on PYTHONPATH) stays behind it, so `import qb` works too.
    sys.path[0] = directory or os.path.dirname(os.path.abspath(path))
    for name in shadowed:  # loaded by a fork server, but a file beside FILE comes first
        sys.modules.pop(name, None)
    sys.argv = [path]
    main = main or new_main(path)
    sys.modules["__main__"] = main
    interrupted = False
    try:
        exec(code or compile_file(path), main.__dict__)
        status = 0
    except SystemExit as exc:
        status = _system_exit_status(exc)
    except BaseException as exc:  # what the interpreter would report at its top level
        sys.excepthook(type(exc), exc, exc.__traceback__)
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = 1
    status = _wind_down(main, status)
    if interrupted:  # as CPython does: die of SIGINT, so the parent sees why
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _system_exit_status(exc: SystemExit) -> int:
    code: Any = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _wind_down(main: types.ModuleType, status: int) -> int:
    """What Py_FinalizeEx does first: join threads, atexit, finalize, flush stdio."""
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(KeyboardInterrupt):  # interrupted while waiting: exit anyway
            threading._shutdown()  # waits for non-daemon threads, as at interpreter exit
    atexit._run_exitfuncs()
    main.__dict__.clear()
    # Everything before the callback was frozen (gc.freeze), so its objects are all that
    # is collected; they are in the two young generations unless a collection of those
    # moved some into the oldest. A full collection also empties the interpreter's free
    # lists, ~60 page faults in a forked child: done only when it has anything to find.
    gc.collect(2 if gc.get_objects(2) else 1)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            if stream is sys.stdout:
                status = _FLUSH_FAILED
    return status


if __name__ == "__main__":
    gc.freeze()  # as in the fork server: start-up objects are not the callback's
    run_script(sys.argv[1])
