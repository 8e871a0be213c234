"""Shared fixtures: real daemons on short /tmp trees, cleaned up after each test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, make_tree


@pytest.fixture
def daemon_factory() -> Iterator[Callable[..., Daemon]]:
    """Build a tree and start a daemon on it; every daemon is stopped and its tree removed."""
    made: list[Daemon] = []

    def factory(
        callbacks: dict[str, str], conf: str, qbconf_extra: str = "", start: bool = True,
        **kw: Any,
    ) -> Daemon:  # fmt: skip
        d = Daemon(make_tree(callbacks, conf, qbconf_extra), **kw)
        made.append(d)
        return d.start() if start else d

    yield factory
    for d in made:
        d.close()
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="qbt", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)
