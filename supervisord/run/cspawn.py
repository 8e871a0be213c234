"""posix_spawn through glibc with the GIL released, waited for off the event loop.

``os.posix_spawn`` holds the GIL for the whole call, and glibc's posix_spawn returns only
once the child has exec'd: on a busy farm host that is 1-3 ms with every thread of the
daemon frozen (measured: 76 µs of CPU, 1.7 ms of wall per spawn with 8 callbacks
running on 2 cores). Here the call is split: prepare() builds glibc's file actions and
argument arrays on the loop (cheap calls that keep the GIL), launch() is the one call
that waits for the exec, made from a spawn thread with the GIL released, and release()
frees what prepare() made. A spawn thread needs the GIL only to start and end its call:
each extra release would make it queue behind the busy loop for a switch interval.

glibc's file actions also do what ``os.posix_spawn`` cannot in 3.11: chdir in the child
(``addchdir_np``, glibc 2.29) and close every descriptor past the ones given
(``addclosefrom_np``, glibc 2.34). Where libc lacks them, ``available()`` is False and
the daemon spawns with ``os.posix_spawn`` on the loop as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisord.run import process

# glibc's flag values (spawn.h); its structures are opaque here, sized generously.
_SETSIGDEF: Final = 0x04
_SETSIGMASK: Final = 0x08
_SETSID: Final = 0x80
_OPAQUE: Final = 1024
# Signals the daemon (Python) ignores that a callback must get with default handling.
_DEFAULTED: Final = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True, slots=True)
class _Libc:
    quick: Any  # PyDLL: calls that keep the GIL (microseconds, never block)
    slow: Any  # CDLL: posix_spawn, which releases the GIL while the child execs
    attr: Any  # one posix_spawnattr_t for every spawn (posix_spawn only reads it)


_libc: list[_Libc | None] = []  # [] before the first look; [None]: libc lacks something


def _load() -> _Libc | None:
    """libc with the functions used here typed, or None when any is missing."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        quick = ctypes.PyDLL(name, use_errno=True)
        slow = ctypes.CDLL(name, use_errno=True)
        functions = (
            quick.posix_spawn_file_actions_init,
            quick.posix_spawn_file_actions_destroy,
            quick.posix_spawn_file_actions_adddup2,
            quick.posix_spawn_file_actions_addchdir_np,
            quick.posix_spawn_file_actions_addclosefrom_np,
            quick.posix_spawnattr_init,
            quick.posix_spawnattr_setflags,
            quick.posix_spawnattr_setsigmask,
            quick.posix_spawnattr_setsigdefault,
            quick.sigemptyset,
            quick.sigaddset,
            quick.close,
            slow.posix_spawn,
        )
    except (OSError, AttributeError):
        return None
    for function in functions:
        function.restype = ctypes.c_int
    slow.posix_spawn.argtypes = (ctypes.POINTER(ctypes.c_int),) + (ctypes.c_void_p,) * 5
    quick.posix_spawn_file_actions_adddup2.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int)
    quick.posix_spawn_file_actions_addchdir_np.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    quick.posix_spawn_file_actions_addclosefrom_np.argtypes = (ctypes.c_void_p, ctypes.c_int)
    quick.close.argtypes = (ctypes.c_int,)
    return _Libc(quick, slow, _make_attr(quick))


def _check(err: int, what: str) -> None:
    if err != 0:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _make_attr(libc: Any) -> Any:
    """New session, empty signal mask, SIGPIPE and SIGXFSZ back to their defaults."""
    attr = ctypes.create_string_buffer(_OPAQUE)
    empty = ctypes.create_string_buffer(_OPAQUE)
    defaulted = ctypes.create_string_buffer(_OPAQUE)
    _check(libc.posix_spawnattr_init(attr), "posix_spawnattr_init")
    libc.sigemptyset(empty)
    libc.sigemptyset(defaulted)
    for sig in _DEFAULTED:
        libc.sigaddset(defaulted, int(sig))
    _check(libc.posix_spawnattr_setsigmask(attr, empty), "posix_spawnattr_setsigmask")
    _check(libc.posix_spawnattr_setsigdefault(attr, defaulted), "posix_spawnattr_setsigdefault")
    flags = ctypes.c_short(_SETSID | _SETSIGMASK | _SETSIGDEF)
    _check(libc.posix_spawnattr_setflags(attr, flags), "posix_spawnattr_setflags")
    return attr


def _get() -> _Libc | None:
    if not _libc:
        _libc.append(_load())
    return _libc[0]


def available() -> bool:
    """True when libc has everything this module needs (looked up once)."""
    return _get() is not None


def _strings(items: Sequence[bytes]) -> Any:
    array: Any = (ctypes.c_char_p * (len(items) + 1))()
    array[: len(items)] = items
    return array


# What os.fsencode does, without its Python-level checks (~20 strings a run).
_FS_ENCODING: Final = sys.getfilesystemencoding()


@functools.lru_cache(maxsize=256)  # bounded: a reload may bring new interpreters or paths
def _command(argv: tuple[str, ...], cwd: str) -> tuple[bytes, Any, bytes]:
    """The program's path, the NULL-terminated argument array and the working directory,
    encoded once per command: a callback's are the same for every run."""
    encoded = [arg.encode(_FS_ENCODING, "surrogateescape") for arg in argv]
    return encoded[0], _strings(encoded), cwd.encode(_FS_ENCODING, "surrogateescape")


@dataclass(frozen=True, slots=True)
class Prepared:
    """One spawn's glibc file actions and argument arrays, and the descriptors prepare()
    duplicated; valid until release()."""

    path: bytes
    actions: Any
    args: Any
    envp: Any
    moved: tuple[int, ...]


def prepare(
    argv: Sequence[str], env: Mapping[str, str], *, cwd: str, fds: Sequence[int]
) -> Prepared:
    """Child fd ``i`` = ``fds[i]``, no other descriptor, cwd ``cwd``, a new session.
    The caller keeps ``fds`` open until release()."""
    libc = _get()
    if libc is None:
        raise OSError(errno.ENOSYS, "libc has no posix_spawn extensions", argv[0])
    quick = libc.quick
    actions = ctypes.create_string_buffer(_OPAQUE)
    _check(quick.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
    moved = process.move_low_sources(fds)  # their duplicates: closed by release()
    path, args, directory = _command(tuple(argv), cwd)
    encoding = _FS_ENCODING
    entries = [f"{k}={v}".encode(encoding, "surrogateescape") for k, v in env.items()]
    prepared = Prepared(path, actions, args, _strings(entries), tuple(moved.values()))
    try:
        for dst, src in enumerate(fds):
            err = quick.posix_spawn_file_actions_adddup2(actions, moved.get(src, src), dst)
            _check(err, "posix_spawn_file_actions_adddup2")
        err = quick.posix_spawn_file_actions_addchdir_np(actions, directory)
        _check(err, "posix_spawn_file_actions_addchdir_np")
        err = quick.posix_spawn_file_actions_addclosefrom_np(actions, len(fds))
        _check(err, "posix_spawn_file_actions_addclosefrom_np")
    except BaseException:
        release(prepared)
        raise
    return prepared


def launch(prepared: Prepared) -> int:
    """The spawn itself: the child's pid once it has exec'd. Releases the GIL for the
    whole call; raises OSError naming the program when it cannot be started."""
    libc = _get()
    assert libc is not None  # prepare() succeeded
    pid = ctypes.c_int()
    err = libc.slow.posix_spawn(
        ctypes.byref(pid), prepared.path, prepared.actions, libc.attr, prepared.args, prepared.envp
    )
    if err != 0:
        raise OSError(err, os.strerror(err), os.fsdecode(prepared.path))
    return pid.value


def release(prepared: Prepared) -> None:
    libc = _get()
    assert libc is not None
    libc.quick.posix_spawn_file_actions_destroy(prepared.actions)
    close(prepared.moved)


def close(fds: Sequence[int]) -> None:
    """Close descriptors without letting go of the GIL, as os.close() does: on a spawn
    thread, each let-go is a hand-over to the busy loop and back (a context switch each
    way, and a wait for the loop's switch interval). close() never blocks on a pipe or a
    memfd, the only kinds given here."""
    libc = _get()
    assert libc is not None
    for fd in fds:
        if libc.quick.close(fd) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def spawn(argv: Sequence[str], env: Mapping[str, str], *, cwd: str, fds: Sequence[int]) -> int:
    """prepare(), launch() and release() in one call on this thread."""
    prepared = prepare(argv, env, cwd=cwd, fds=fds)
    try:
        return launch(prepared)
    finally:
        release(prepared)
