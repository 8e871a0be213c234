"""Whether another user may reach a path: modes and ACLs read as the kernel reads them."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
from dataclasses import dataclass
from typing import Final

READ: Final = 4
EXECUTE: Final = 1  # on a directory: search, what entering it or looking a name up needs
# Linux's MAXSYMLINKS: a lookup following more symlinks fails with ELOOP anyway.
_MAX_SYMLINKS: Final = 40
# A POSIX access ACL as the kernel stores it: a little-endian u32 version (2), then one
# (u16 tag, u16 perm, u32 id) entry per tag, sorted by tag (acl/acl_xattr.h).
_ACL_XATTR: Final = "system.posix_acl_access"
_ACL_VERSION: Final = 2
_ACL_ENTRY: Final = struct.Struct("<HHI")
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True, slots=True)
class Who:
    """The user callbacks run as: uid, and every group it is in (primary included)."""

    name: str
    uid: int
    gids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Blocked:
    """The first component of a lookup that the user may not pass, and what it is."""

    path: str  # the component
    mode: int  # its st_mode
    owner: tuple[int, int]  # st_uid, st_gid
    acl: bool  # an access ACL decided, not the mode bits alone
    target: bool  # the path itself, not a directory on the way to it
    link: tuple[str, str] | None  # the last symlink followed on the way, and where it points

    def why(self) -> str:
        """``a parent directory, /x, is 0700``: what to change, for an error message."""
        mode = f"{stat.S_IMODE(self.mode):04o}{' with an ACL' if self.acl else ''}"
        if self.target:
            owned = f"{mode}, owned by {_user_name(self.owner[0])}:{_group_name(self.owner[1])}"
            if self.link is None:
                return f"it is {owned}"
            return f"it links to {self.path}, which is {owned}"
        if self.link is None:
            return f"a parent directory, {self.path}, is {mode}"
        link, target = self.link
        return f"{link} links to {target}, and a directory on the way, {self.path}, is {mode}"


def find_blocker(path: str, who: Who, want: int) -> Blocked | None:
    """What stops ``who`` from ``want`` (READ, EXECUTE or both) on ``path``: search
    permission on every directory the lookup passes, symlinks followed as the kernel
    follows them, then ``want`` on the path itself. None when nothing does, and when the
    path does not resolve (a missing file is another check's to report)."""
    pending = _parts(os.path.abspath(path))
    current = "/"
    link: tuple[str, str] | None = None
    hops = 0
    try:
        root = os.stat("/")
        if not _may("/", root, who, EXECUTE):
            return _blocked("/", root, False, None)
        while pending:
            name = pending.pop()
            if name == "..":
                current = os.path.dirname(current)
                continue
            candidate = os.path.join(current, name)
            info = os.lstat(candidate)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    return None
                target = os.readlink(candidate)
                current = "/" if os.path.isabs(target) else current
                link = (candidate, os.path.normpath(os.path.join(current, target)))
                pending.extend(_parts(target))
                continue
            last = not pending
            if not _may(candidate, info, who, want if last else EXECUTE):
                return _blocked(candidate, info, last, link)
            current = candidate
    except OSError:
        return None
    return None


def _parts(path: str) -> list[str]:
    """The names of ``path``, last first (popped in lookup order)."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _blocked(
    path: str, info: os.stat_result, target: bool, link: tuple[str, str] | None
) -> Blocked:
    acl = _read_acl(path) is not None
    return Blocked(path, info.st_mode, (info.st_uid, info.st_gid), acl, target, link)


def _may(path: str, info: os.stat_result, who: Who, want: int) -> bool:
    """Whether ``who`` has every bit of ``want`` on the inode (generic_permission)."""
    acl = _read_acl(path)
    if acl is not None:
        return acl_allows(acl, (info.st_uid, info.st_gid), who, want)
    if who.uid == info.st_uid:
        granted = info.st_mode >> 6
    elif info.st_gid in who.gids:
        granted = info.st_mode >> 3
    else:
        granted = info.st_mode
    return granted & want == want


def _read_acl(path: str) -> list[tuple[int, int, int]] | None:
    """The access ACL's entries, or None: none set, not supported, or unreadable."""
    try:
        data = os.getxattr(path, _ACL_XATTR)
    except OSError:
        return None
    return parse_acl(data)


def parse_acl(data: bytes) -> list[tuple[int, int, int]] | None:
    """(tag, perm, id) entries of a ``system.posix_acl_access`` value; None if malformed."""
    size = _ACL_ENTRY.size
    if len(data) < 4 or (len(data) - 4) % size:
        return None
    if int.from_bytes(data[:4], "little") != _ACL_VERSION:
        return None
    return [_ACL_ENTRY.unpack_from(data, at) for at in range(4, len(data), size)]


def acl_allows(
    entries: list[tuple[int, int, int]], owner: tuple[int, int], who: Who, want: int
) -> bool:
    """posix_acl_permission(): the owner entry, else a named user, else any group entry
    granting ``want`` (a group that matches but grants too little denies), else other;
    a named user's or a group's grant is cut by the mask."""
    matched_group = False
    for index, (tag, perm, ident) in enumerate(entries):
        if tag == _USER_OBJ and who.uid == owner[0]:
            return perm & want == want
        if tag == _USER and ident == who.uid:
            return _masked(entries[index + 1 :], perm) & want == want
        in_group = (tag == _GROUP_OBJ and owner[1] in who.gids) or (
            tag == _GROUP and ident in who.gids
        )
        if in_group:
            matched_group = True
            if perm & want == want:
                return _masked(entries[index + 1 :], perm) & want == want
        if tag == _OTHER:
            return not matched_group and perm & want == want
    return False


def _masked(rest: list[tuple[int, int, int]], perm: int) -> int:
    for tag, mask, _ in rest:
        if tag == _MASK:
            return perm & mask
    return perm


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
