"""Whether user nobody may reach a path, decided from modes and ACLs, as the kernel decides."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisord.daemon.access import EXECUTE, READ, Who, acl_allows, find_blocker, parse_acl

NOBODY = pwd.getpwnam("nobody")
WHO = Who("nobody", NOBODY.pw_uid, frozenset(os.getgrouplist("nobody", NOBODY.pw_gid)))
ACL_XATTR = "system.posix_acl_access"
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ANY = 0xFFFFFFFF  # the id field of entries that name no one
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files owned by nobody need root")


def acl(*entries: tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize(
    ("entries", "owner", "want", "allowed"),
    [
        ([(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 0, ANY)], (NOBODY.pw_uid, 0), 4, True),
        ([(USER_OBJ, 0, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 7, ANY)], (NOBODY.pw_uid, 0), 4, False),
        ([(USER_OBJ, 7, ANY), (USER, 5, NOBODY.pw_uid), (GROUP_OBJ, 0, ANY), (MASK, 1, ANY),
          (OTHER, 0, ANY)], (0, 0), 1, True),
        ([(USER_OBJ, 7, ANY), (USER, 5, NOBODY.pw_uid), (GROUP_OBJ, 0, ANY), (MASK, 1, ANY),
          (OTHER, 0, ANY)], (0, 0), 4, False),
        ([(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (GROUP, 0, NOBODY.pw_gid), (MASK, 7, ANY),
          (OTHER, 5, ANY)], (0, 0), 4, False),
        ([(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (GROUP, 4, NOBODY.pw_gid), (MASK, 7, ANY),
          (OTHER, 0, ANY)], (0, 0), 4, True),
        ([(USER_OBJ, 7, ANY), (GROUP_OBJ, 0, ANY), (OTHER, 5, ANY)], (0, 0), 5, True),
    ],
    ids=["owner-entry", "owner-entry-wins-over-other", "named-user", "named-user-masked",
         "matching-group-denies", "named-group", "other"],
)  # fmt: skip
def test_acl_evaluation(
    entries: list[tuple[int, int, int]], owner: tuple[int, int], want: int, allowed: bool
) -> None:
    assert parse_acl(acl(*entries)) == entries
    assert acl_allows(entries, owner, WHO, want) is allowed


@pytest.mark.parametrize("data", [b"", b"\x02\x00\x00", acl()[:4] + b"\x01", b"\x01\0\0\0"])
def test_malformed_acl_is_ignored(data: bytes) -> None:
    assert parse_acl(data) is None


def owner_name() -> str:
    return f"{pwd.getpwuid(os.geteuid()).pw_name}:{grp.getgrgid(os.getegid()).gr_name}"


def mkdir(base: Path, name: str, mode: int) -> Path:
    path = base / name
    path.mkdir(exist_ok=True)
    path.chmod(mode)
    return path


def write(directory: Path, name: str, mode: int = 0o644) -> Path:
    path = directory / name
    path.write_text("x\n")
    path.chmod(mode)
    return path


def with_acl(path: Path, data: bytes) -> Path:
    try:
        os.setxattr(path, ACL_XATTR, data)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {path}: {exc.strerror}")
    return path


def group_dir(base: Path, name: str, mode: int) -> Path:
    path = mkdir(base, name, mode)
    os.chown(path, -1, NOBODY.pw_gid)
    path.chmod(mode)
    return path


def owned_by_nobody(base: Path) -> Path:
    path = write(mkdir(base, "pub", 0o755), "nobodys", 0o044)
    os.chown(path, NOBODY.pw_uid, -1)
    return path


def link(base: Path, name: str, target: str, made: Path) -> Path:
    """A symlink ``pub/name`` to ``target``, once ``made`` (what it points at) exists."""
    assert made.exists()
    path = mkdir(base, "pub", 0o755) / name
    path.symlink_to(target)
    return path


def acl_dir(base: Path, name: str, nobody: int, mask: int) -> Path:
    """A 0700 directory whose ACL gives nobody ``nobody``, cut by ``mask``."""
    entries = [(USER_OBJ, 7, ANY), (USER, nobody, NOBODY.pw_uid), (GROUP_OBJ, 0, ANY),
               (MASK, mask, ANY), (OTHER, 0, ANY)]  # fmt: skip
    return with_acl(mkdir(base, name, 0o700), acl(*entries))


Layout = Callable[[Path], Path]
CASES: list[tuple[str, Layout, int, str | None]] = [
    ("public-file", lambda b: write(mkdir(b, "pub", 0o755), "f"), READ, None),
    ("private-parent", lambda b: write(mkdir(b, "priv", 0o700), "f"), READ,
     "a parent directory, {base}/priv, is 0700"),
    ("file-mode", lambda b: write(mkdir(b, "pub", 0o755), "secret", 0o600), READ,
     "it is 0600, owned by {owner}"),
    ("group-grants", lambda b: write(group_dir(b, "g", 0o750), "f"), READ, None),
    ("group-class-denies", lambda b: write(group_dir(b, "g", 0o705), "f"), READ,
     "a parent directory, {base}/g, is 0705"),
    ("owner-class-denies", owned_by_nobody, READ,
     "it is 0044, owned by nobody:" + grp.getgrgid(os.getegid()).gr_name),
    ("symlink-through-private",
     lambda b: link(b, "l", f"{b}/priv/f", write(mkdir(b, "priv", 0o700), "f")), READ,
     "{base}/pub/l links to {base}/priv/f, and a directory on the way, {base}/priv, is 0700"),
    ("relative-symlink",
     lambda b: link(b, "rel", "../open/f", write(mkdir(b, "open", 0o755), "f")), READ, None),
    ("symlink-to-a-private-file",
     lambda b: link(b, "l2", "s", write(mkdir(b, "pub", 0o755), "s", 0o600)), READ,
     "it links to {base}/pub/s, which is 0600, owned by {owner}"),
    ("not-executable", lambda b: write(mkdir(b, "pub", 0o755), "tool"), EXECUTE,
     "it is 0644, owned by {owner}"),
    ("executable", lambda b: write(mkdir(b, "pub", 0o755), "tool", 0o755), EXECUTE, None),
    ("enter-only-directory", lambda b: mkdir(b, "x", 0o711), READ | EXECUTE,
     "it is 0711, owned by {owner}"),
    ("acl-grants-search", lambda b: write(acl_dir(b, "a", 1, 1), "f"), READ, None),
    ("acl-mask-cuts", lambda b: write(acl_dir(b, "m", 5, 0), "f"), READ,
     "a parent directory, {base}/m, is 0700 with an ACL"),
]  # fmt: skip


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qbacc", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def kernel_allows(path: Path, want: int) -> bool:
    """What the kernel answers nobody (``test -r`` / ``test -x`` run as that user)."""
    flags = [flag for bit, flag in ((READ, "-r"), (EXECUTE, "-x")) if want & bit]
    return all(
        subprocess.run(
            ["/usr/bin/test", flag, str(path)], user=NOBODY.pw_uid, group=NOBODY.pw_gid,
            extra_groups=sorted(WHO.gids), check=False,
        ).returncode == 0
        for flag in flags
    )  # fmt: skip


@needs_root
@pytest.mark.parametrize(
    ("layout", "want", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_blocker_agrees_with_the_kernel(
    base: Path, layout: Layout, want: int, expected: str | None
) -> None:
    path = layout(base)
    blocked = find_blocker(str(path), WHO, want)
    if expected is None:
        assert blocked is None, blocked.why() if blocked else None
    else:
        assert blocked is not None
        assert blocked.why() == expected.format(base=base, owner=owner_name())
    assert kernel_allows(path, want) is (expected is None)


def test_a_missing_path_is_not_a_blocker(base: Path) -> None:
    assert find_blocker(str(base / "nope" / "f"), WHO, READ) is None


def test_a_symlink_loop_is_not_a_blocker(base: Path) -> None:
    (base / "a").symlink_to(base / "b")
    (base / "b").symlink_to(base / "a")
    assert find_blocker(str(base / "a"), WHO, READ) is None
