"""Replacing a file atomically, and removing the temporary files of killed saves.

:func:`_replace_atomically` writes a temporary file in the target's folder,
flushes it to disk, renames it over the target and syncs the folder (the
``fastopt.checkpoint`` docstring says what callers see). Temporary files are
named ``.<target>.<host>.<pid>.<random>.fastopt-tmp`` (:func:`_temp_name`),
which lets :func:`_remove_leftovers` tell whose they are.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from typing import BinaryIO

_STALE_AGE_S = 3600     # a temporary file unmodified for this long is a leftover
_TMP_SUFFIX = ".fastopt-tmp"
_TMP_NAME = re.compile(r"\.([0-9a-f]{16})\.([0-9a-f]{8})\.([0-9]{1,10})\.[0-9a-f]{8}"
                       + re.escape(_TMP_SUFFIX) + r"\Z")


def _replace_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Replace the file ``path`` (a symbolic link's target) by what ``write(f)``
    writes to a binary file ``f``; on any error ``path`` is as it was."""
    target = os.path.realpath(path)  # a symbolic link stays, its target is replaced
    folder, name = os.path.split(target)
    if path.endswith((os.sep, os.altsep or os.sep)) or os.path.isdir(target):
        raise IsADirectoryError(f"path {path!r} is a folder")
    _remove_leftovers(folder, name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)  # replacing a file keeps its mode
    except OSError:
        mode = None
    tmp = os.path.join(folder, _temp_name(name, _host_tag(), os.getpid()))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _target_tag(name: str) -> str:
    """16 hex digits naming the file ``name`` in temporary names."""
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:16]


def _temp_name(name: str, host: str, pid: int) -> str:
    """A new temporary name for a save to ``name`` by process ``pid`` on ``host``
    (``.<target>.<host>.<pid>.<random>.fastopt-tmp``, under 60 characters)."""
    return f".{_target_tag(name)}.{host}.{pid}.{secrets.token_hex(4)}{_TMP_SUFFIX}"


def _host_tag() -> str:
    """8 hex digits naming this host and PID namespace (where PIDs mean the same)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError, NotImplementedError):
        namespace = ""
    who = f"{socket.gethostname()}\0{namespace}".encode(errors="surrogateescape")
    return hashlib.sha256(who).hexdigest()[:8]


def _pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` (here) exists: True, False, or None if unknown."""
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return None  # (on Windows os.kill(pid, 0) would send a signal)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    except (OSError, OverflowError):
        return None
    return True


def _remove_leftovers(folder: str, name: str) -> None:
    """Remove the temporary files of earlier saves to ``name`` whose writer is
    dead, or that nobody modified for ``_STALE_AGE_S`` (module docstring)."""
    tag, host = _target_tag(name), _host_tag()
    try:
        with os.scandir(folder) as entries:
            candidates = [(e, m) for e in entries for m in [_TMP_NAME.match(e.name)]
                          if m and m[1] == tag]
    except OSError:
        return
    for entry, m in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            alive = _pid_alive(int(m[3])) if m[2] == host else None
            if alive is False or (alive is None and time.time() - st.st_mtime > _STALE_AGE_S):
                os.unlink(entry.path)
        except OSError:
            pass  # gone already, or not ours to remove: the save goes on


def _fsync_folder(folder: str) -> None:
    """Flush ``folder``'s entries (a rename) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
