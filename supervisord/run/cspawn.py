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

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from supervisord.run import process

# glibc's flag values (spawn.h); its structures are opaque here, sized generously.
_SETSIGDEF: Final = 0x04
_SETSIGMASK: Final = 0x08
_SETSID: Final = 0x80
_OPAQUE: Final = 1024
# Signals the daemon (Python) ignores that a callback must get with default handling.
_DEFAULTED: Final = (signal.SIGPIPE, signal.SIGXFSZ)
# Spawns in flight at once: each thread waits out one child's exec.
THREADS: Final = 2

T = TypeVar("T")
log = logging.getLogger(__name__)


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
    prepared = Prepared(
        os.fsencode(argv[0]),
        actions,
        _strings([os.fsencode(arg) for arg in argv]),
        _strings([os.fsencode(f"{k}={v}") for k, v in env.items()]),
        tuple(moved.values()),
    )
    try:
        for dst, src in enumerate(fds):
            err = quick.posix_spawn_file_actions_adddup2(actions, moved.get(src, src), dst)
            _check(err, "posix_spawn_file_actions_adddup2")
        err = quick.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd))
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
    for fd in prepared.moved:
        os.close(fd)


def spawn(argv: Sequence[str], env: Mapping[str, str], *, cwd: str, fds: Sequence[int]) -> int:
    """prepare(), launch() and release() in one call on this thread."""
    prepared = prepare(argv, env, cwd=cwd, fds=fds)
    try:
        return launch(prepared)
    finally:
        release(prepared)


class Spawner:
    """Runs launches on a few threads of its own, so that neither the loop nor the GIL
    waits for a child's exec. Hand-overs are kept cheap (each one costs a thread wake-up
    and a GIL transfer): jobs go through a queue, results come back in a deque, and the
    loop is woken once for however many results are waiting."""

    def __init__(self, threads: int = THREADS) -> None:
        self._threads = threads
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._done: collections.deque[tuple[_Job[Any], bool, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._woken = False
        self._workers: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(
        self,
        job: Callable[[], T],
        after: Callable[[], None],
        discard: Callable[[T | None], None],
    ) -> T:
        """``job()``'s result, run on a spawn thread; ``after()`` runs on the loop once the
        job is over, whatever happened. If the caller is cancelled meanwhile the job
        still ends, and ``discard`` then gets its result (None if it raised): a child is
        never left behind."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._start(loop)
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(job, future, after, discard))
        return await future  # cancelling the caller cancels it: _deliver() then discards

    def close(self) -> None:
        """Wait for the jobs in flight (each a few ms) and end the threads."""
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []
        self._loop = None
        self._deliver()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.close()
        self._loop = loop
        for n in range(self._threads):
            worker = threading.Thread(target=self._work, name=f"qb-spawn-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            try:
                done = (item, True, item.fn())
            except BaseException as exc:  # handed to the caller, never lost in this thread
                done = (item, False, exc)
            self._done.append(done)
            with self._lock:
                if self._woken:
                    continue
                self._woken = True
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            self._woken = False
        while self._done:
            item, ok, value = self._done.popleft()
            try:
                item.after()
                if item.future.cancelled():
                    item.discard(value if ok else None)
            except Exception:  # a failed cleanup must not leave the other results waiting
                log.exception("spawn cleanup failed")
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)


@dataclass(frozen=True, slots=True)
class _Job(Generic[T]):
    fn: Callable[[], T]
    future: asyncio.Future[T]
    after: Callable[[], None]
    discard: Callable[[T | None], None]
